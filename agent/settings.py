"""The agent's settings: one frozen object built in main() and passed down.

Sources, strongest first: the process environment (so CI secrets and service managers work), then
``config.env`` beside the agent (read with ``dotenv_values``; never loaded into os.environ), then defaults.
The original agent let a stale key exported in a user's shell silently beat a freshly downloaded
config.env; so every setting remembers where it came from, and the daemon says so at start-up.

Every bad value stops the agent before it connects anywhere, as a ``ConfigError`` naming the setting,
the value and the fix. The provider key is a ``SecretStr``: it never appears in a str, a repr, an error
or a log line, not even in part; start-up says only that it is set and where it came from (``key_source``).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, SecretStr

from agent.errors import ConfigError

AGENT_DIR = Path(__file__).resolve().parent.parent          # where ib_data_agent.py lives
DEFAULT_CONFIG = AGENT_DIR / "config.env"
DEFAULT_RELAY_URL = "wss://dr3-dashboard.com/ws/data-provider"

# env name -> Settings field, in the order the start-up banner lists them.
ENV_FIELDS: dict[str, str] = {
    "IB_PROVIDER_KEY": "provider_key",
    "IB_HOST": "ib_host",
    "IB_PORT": "ib_port",
    "IB_MODE": "ib_mode",
    "IB_CLIENT_ID": "ib_client_id",
    "RELAY_URL": "relay_url",
    "ALLOW_LIVE_ORDERS": "allow_live_orders",
    "IB_MAX_LINES": "max_lines",
    "IB_LINE_MARGIN": "line_margin",
    "IB_MSG_RATE": "msg_rate",
    "IB_CONNECT_TIMEOUT": "connect_timeout",
    "IB_WARM_SECONDS": "warm_seconds",
    "IB_WARM_LINES": "warm_lines",
    "LOG_DIR": "log_dir",
    "LOG_LEVEL": "log_level",
}

# What a key looks like before anyone filled it in (config.env.example, docs, templates).
PLACEHOLDER_KEYS = {
    "your-api-key-here", "your_api_key_here", "your-api-key", "your_api_key", "yourapikey", "api-key", "apikey",
    "changeme", "change-me", "change_me", "replace-me", "replace_me", "replaceme", "todo", "xxx", "xxxx",
    "none", "null", "key", "secret", "ib_provider_key", "your-key", "your_key", "paste-your-key-here",
}

FRESH_COPY = "download a fresh copy of the agent from the MA Tracker web app (its config.env carries your key)"

PAPER_PORTS = [7497, 4002, 7496]     # TWS paper, Gateway paper, then the seed README's "paper" 7496
LIVE_PORTS = [7496, 4001, 7497]


class Settings(BaseModel):
    """Everything the agent reads from its configuration. Frozen; build with ``load_settings``."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    provider_key: SecretStr
    ib_host: str = "127.0.0.1"
    ib_port: int | None = None
    ib_mode: Literal["paper", "live"] = "paper"
    ib_client_id: int = 17
    relay_url: str = DEFAULT_RELAY_URL
    allow_live_orders: bool = False
    max_lines: int = 100
    line_margin: int = 10
    msg_rate: float = 45.0
    connect_timeout: float = 5.0
    warm_seconds: float = 60.0           # Monitor's legs stay streaming this long after the last refresh asking
    warm_lines: int = 20                 # ... within this many lines of the budget (0: off)
    log_dir: Path = AGENT_DIR / "logs"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # where each env name's value came from: "environment", "config.env" or "default"
    sources: dict[str, str] = {}
    # names set both in the environment and in config.env (the environment wins)
    overridden: tuple[str, ...] = ()
    config_path: Path | None = None      # the config.env that was read (None: there was none)
    unknown: tuple[str, ...] = ()        # names in config.env the agent does not know (typos: said at start-up)

    def candidate_ports(self) -> list[int]:
        """Ports to try: IB_PORT if set, else by mode. TWS and the seed README disagree on 7496/7497: try both."""
        if self.ib_port is not None:
            return [self.ib_port]
        return list(PAPER_PORTS if self.ib_mode == "paper" else LIVE_PORTS)

    @property
    def key_source(self) -> str:
        """Where the key came from, in words: 'your environment (IB_PROVIDER_KEY)' or 'config.env (<path>)'."""
        src = self.sources.get("IB_PROVIDER_KEY", "default")
        if src == "environment":
            return "your environment (IB_PROVIDER_KEY)"
        if src == "demo":
            return "the demo (a key for its local relay only)"
        return f"config.env ({self.config_path})" if self.config_path else "config.env"

    def secrets(self) -> list[str]:
        """Strings that must never be logged (for console.redact)."""
        k = self.provider_key.get_secret_value()
        return [k] if k else []

    def source_lines(self) -> list[str]:
        """Start-up lines naming where overridden settings came from (never a key value)."""
        lines = []
        for name in self.overridden:
            lines.append(f"{name} comes from your environment and overrides config.env")
        env_only = [n for n, s in self.sources.items() if s == "environment" and n not in self.overridden]
        if env_only:
            lines.append("Set from your environment: " + ", ".join(env_only))
        for name in self.unknown:
            guess = difflib.get_close_matches(name, list(ENV_FIELDS), n=1)
            hint = f" — did you mean {guess[0]}?" if guess else ""
            lines.append(f"config.env sets {name}, which this agent does not use{hint}")
        if "demo" in self.sources.values():
            lines.append("Demo settings: the TWS simulator and the local relay (config.env is not read)")
        elif self.config_path is None:
            lines.append("No config.env file: using environment variables and defaults")
        else:
            lines.append(f"Config file: {self.config_path}")
        return lines

    def __repr_args__(self):  # the key is a SecretStr already; keep reprs short as well
        for k, v in super().__repr_args__():
            if k in ("sources", "overridden", "unknown"):
                continue
            yield k, v


# --- parsing one value -------------------------------------------------------------------------

def secrets_of(settings: Any) -> list[str]:
    """``settings.secrets()``, or none for a stand-in without that method (tests' fakes, None)."""
    try:
        return list(settings.secrets())
    except AttributeError:
        return []


def _int(name: str, raw: str, lo: int, hi: int, fix: str) -> int:
    try:
        v = int(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, "is not a whole number", fix) from None
    if not lo <= v <= hi:
        raise ConfigError(name, raw, f"is out of range ({lo}..{hi})", fix)
    return v


def _float(name: str, raw: str, lo: float, hi: float, fix: str) -> float:
    try:
        v = float(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, "is not a number", fix) from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ConfigError(name, raw, f"is out of range ({lo:g}..{hi:g})", fix)
    return v


def _bool(name: str, raw: str) -> bool:
    s = raw.strip().lower()
    if s in ("1", "true", "yes", "on", "y"):
        return True
    if s in ("0", "false", "no", "off", "n", ""):
        return False
    raise ConfigError(name, raw, "is not true or false", f"set {name}=true or {name}=false")


def is_loopback(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _key(raw: str, source: str, config_path: Path | None) -> SecretStr:
    # The value itself is never put in the error: a half-pasted real key is still a secret.
    k = raw.strip()
    where = "your environment (IB_PROVIDER_KEY)" if source == "environment" else \
        (f"config.env ({config_path})" if config_path else "config.env")
    if not k:
        if config_path is None and source == "default":
            raise ConfigError("IB_PROVIDER_KEY", None, "no API key: config.env was not found beside the agent "
                              "and IB_PROVIDER_KEY is not set in the environment",
                              f"{FRESH_COPY}, and run it from the folder it unpacks to; "
                              "or set IB_PROVIDER_KEY in the environment")
        raise ConfigError("IB_PROVIDER_KEY", None, f"the API key in {where} is empty", FRESH_COPY)
    low = k.lower()
    if (low in PLACEHOLDER_KEYS or (k.startswith("<") and k.endswith(">")) or low.startswith("your")
            or (k.startswith("${") and k.endswith("}")) or set(low) <= {"x", "*", ".", "-", "_"}):
        raise ConfigError("IB_PROVIDER_KEY", None, f"the API key in {where} is still a placeholder, not a key",
                          FRESH_COPY)
    if any(c.isspace() for c in k) or len(k) < 8:
        raise ConfigError("IB_PROVIDER_KEY", None, f"the API key in {where} does not look like a key "
                          "(too short, or contains spaces)", FRESH_COPY)
    return SecretStr(k)


def _relay_url(raw: str) -> str:
    url = raw.strip()
    fix = f"use the default {DEFAULT_RELAY_URL} (delete the RELAY_URL line), or a wss:// URL"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("RELAY_URL", raw, "is not a valid URL", fix) from None
    if parts.scheme not in ("ws", "wss") or not host:
        raise ConfigError("RELAY_URL", raw, "must be a ws(s)://host/path URL", fix)
    if parts.scheme == "ws" and not is_loopback(host):
        # Unencrypted WebSocket would send the API key in clear over the network.
        raise ConfigError("RELAY_URL", raw, "uses unencrypted ws:// to a host that is not this machine "
                          "(it would send your API key in clear)", fix)
    return url


def _host(raw: str) -> str:
    h = raw.strip()
    if not h or any(c.isspace() for c in h) or "/" in h or (":" in h and not _is_ipv6(h)):
        raise ConfigError("IB_HOST", raw, "is not a host name or IP address",
                          "set IB_HOST=127.0.0.1 when TWS runs on this machine (put the port in IB_PORT)")
    return h


def _is_ipv6(h: str) -> bool:
    try:
        return ipaddress.ip_address(h.strip("[]")).version == 6
    except ValueError:
        return False


def _parse(name: str, raw: str, source: str, config_path: Path | None):
    if name == "IB_PROVIDER_KEY":
        return _key(raw, source, config_path)
    if name == "IB_HOST":
        return _host(raw)
    if name == "IB_PORT":
        if not raw.strip():
            return None
        return _int(name, raw, 1, 65535, "use the Socket Port shown in TWS → Global Configuration → API → "
                    "Settings (TWS 7497 paper / 7496 live; IB Gateway 4002 / 4001), or delete the line and "
                    "set IB_MODE instead")
    if name == "IB_MODE":
        s = raw.strip().lower()
        if s not in ("paper", "live"):
            raise ConfigError(name, raw, "is not a known mode", "set IB_MODE=paper or IB_MODE=live")
        return s
    if name == "IB_CLIENT_ID":
        return _int(name, raw, 0, 2**31 - 1, "use a whole number such as 17 that no other API program on "
                    "this TWS uses")
    if name == "RELAY_URL":
        return _relay_url(raw)
    if name == "ALLOW_LIVE_ORDERS":
        return _bool(name, raw)
    if name == "IB_MAX_LINES":
        return _int(name, raw, 1, 10_000, "use the market data lines your IB account has (100 by default)")
    if name == "IB_LINE_MARGIN":
        return _int(name, raw, 0, 9_999, "use a small number of lines left for your TWS windows, e.g. 10")
    if name == "IB_MSG_RATE":
        return _float(name, raw, 1.0, 50.0, "TWS allows at most 50 messages per second: use 45")
    if name == "IB_CONNECT_TIMEOUT":
        return _float(name, raw, 0.5, 120.0, "use a number of seconds such as 5")
    if name == "IB_WARM_SECONDS":
        return _float(name, raw, 1.0, 3600.0, "use the seconds Monitor's legs stay streaming after a refresh, "
                      "e.g. 60")
    if name == "IB_WARM_LINES":
        return _int(name, raw, 0, 10_000, "use how many market data lines may stay warm for Monitor's legs, e.g. "
                    "20 (0 turns warm legs off)")
    if name == "LOG_DIR":
        if not raw.strip():
            raise ConfigError(name, raw, "is empty", "delete the LOG_DIR line to log to logs/ beside the agent")
        p = Path(raw.strip()).expanduser()
        # A double-clicked agent's working directory is anyone's guess: relative means beside the agent.
        return p if p.is_absolute() else AGENT_DIR / p
    if name == "LOG_LEVEL":
        s = raw.strip().upper()
        if s == "WARN":
            s = "WARNING"
        if s not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(name, raw, "is not a log level", "set LOG_LEVEL to DEBUG, INFO, WARNING or ERROR")
        return s
    raise KeyError(name)


def load_settings(environ: Mapping[str, str] | None = None, config_path: str | Path | None = None, *,
                  need_key: bool = True) -> Settings:
    """Read config.env (if any) and the environment into one validated, frozen ``Settings``.

    ``environ`` defaults to ``os.environ`` (read now, never at import). ``config_path`` defaults to config.env
    beside the agent; an explicit path that does not exist is an error, the default one may be absent.
    Raises ``ConfigError`` for the first bad setting, with every other bad one in its ``others`` (a trader
    fixing config.env should not have to restart once per mistake). ``need_key=False`` (order files, which never
    talk to the relay): the key is not required, nor checked.
    """
    env = dict(os.environ if environ is None else environ)
    path: Path | None
    if config_path is not None:
        path = Path(config_path).expanduser()
        if not path.is_file():
            raise ConfigError("--config", str(config_path), "no such file",
                              "give the path of your config.env, or leave --config out to use the one beside "
                              "the agent")
    else:
        path = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None

    file_values: dict[str, str] = {}
    if path is not None:
        try:
            file_values = {k: ("" if v is None else v) for k, v in dotenv_values(path).items()}
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("config.env", str(path), f"cannot be read ({type(e).__name__})",
                              "check the file's permissions, or " + FRESH_COPY) from None

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    overridden: list[str] = []
    errors: list[ConfigError] = []
    for name, field in ENV_FIELDS.items():
        # An empty environment variable counts as unset (a CI secret that is not defined expands to "").
        in_env = name in env and env[name].strip() != ""
        in_file = name in file_values and file_values[name].strip() != ""
        if in_env:
            raw, src = env[name], "environment"
            if in_file:
                overridden.append(name)
        elif in_file:
            raw, src = file_values[name], "config.env"
        else:
            raw, src = "", "default"
        sources[name] = src
        if src == "default" and name != "IB_PROVIDER_KEY":
            continue
        if name == "IB_PROVIDER_KEY" and not need_key:
            values[field] = SecretStr(raw.strip())      # still a secret: redacted wherever it might show
            continue
        try:
            values[field] = _parse(name, raw, src, path)
        except ConfigError as e:
            errors.append(e)

    max_lines = values.get("max_lines", 100)
    margin = values.get("line_margin", 10)
    bad = {e.setting for e in errors}
    # Compared only when both are valid: a bad IB_MAX_LINES must not also read as a bad margin.
    if margin >= max_lines and not bad & {"IB_MAX_LINES", "IB_LINE_MARGIN"}:  # type: ignore[operator]
        errors.append(ConfigError("IB_LINE_MARGIN", str(margin), f"leaves no lines for the agent (IB_MAX_LINES "
                                  f"is {max_lines})", "use a margin smaller than IB_MAX_LINES, e.g. 10 of 100"))
    warm: int = values.get("warm_lines", 20)  # type: ignore[assignment]
    budget = max_lines - margin  # type: ignore[operator]
    # Compared only when the budget itself is sound (a bad budget is reported once, as above).
    if warm and budget > 0 and not bad & {"IB_MAX_LINES", "IB_LINE_MARGIN", "IB_WARM_LINES"} and warm >= budget:
        errors.append(ConfigError("IB_WARM_LINES", str(warm), f"would let warm legs take every line the agent has "
                                  f"(IB_MAX_LINES - IB_LINE_MARGIN = {budget})",
                                  "use fewer warm lines than that, e.g. 20 of 90, or 0 to turn warm legs off"))
    if errors:
        first = errors[0]
        first.others = tuple(errors[1:])
        raise first
    unknown = tuple(sorted(k for k in file_values if k not in ENV_FIELDS))
    return Settings(**values, sources=sources, overridden=tuple(overridden), config_path=path, unknown=unknown)
