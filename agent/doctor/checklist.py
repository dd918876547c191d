"""The whole check: step 1 (the configuration), then the TWS steps and the relay step side by side; the report
and the exit status; ``main`` for ``ib_data_agent.py --check``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, Callable, Sequence

from agent.doctor.relay_step import check_relay
from agent.doctor.report import FAIL, OK, PROBE_SYMBOL, SKIP, TITLES, USUAL_PORTS, CheckResult, Timeouts, format_report
from agent.doctor.tws_steps import check_tws
from agent.errors import ConfigError

# --- the whole check --------------------------------------------------------------------------

async def run_checks(environ: dict | None = None, config_path: Any = None, *,
                     timeouts: Timeouts = Timeouts(), usual_ports: Sequence[int] = USUAL_PORTS,
                     settings: Any = None, probe_symbol: str = PROBE_SYMBOL) -> list[CheckResult]:
    """All seven results, in order. ``settings`` short-cuts step 1 (tests, demo)."""
    r1 = CheckResult(1, TITLES[1])
    if settings is None:
        from agent.settings import load_settings
        try:
            settings = load_settings(environ=environ, config_path=config_path)
        except ConfigError as exc:
            problems = [exc, *getattr(exc, "others", ())]
            r1.status = FAIL
            r1.detail = "\n".join(_config_problem(e) for e in problems)
            r1.fix = "\n".join(e.fix for e in problems if e.fix)
            # A missing or wrong key is the commonest first-run problem, and TWS can be checked without it.
            without_key = _settings_without_key(exc, environ, config_path)
            if without_key is None:
                rest = [CheckResult(n, TITLES[n], detail="not checked: the configuration is not valid")
                        for n in range(2, 8)]
                return [r1] + rest
            tws = await _guarded_tws(without_key, timeouts, usual_ports, probe_symbol)
            return [r1, *tws, CheckResult(7, TITLES[7], detail="not checked: no usable API key (see 1)")]
    r1.status = OK
    r1.detail = _config_summary(settings)
    tws, relay = await asyncio.gather(_guarded_tws(settings, timeouts, usual_ports, probe_symbol),
                                      check_relay(settings, timeouts.relay), return_exceptions=True)
    if isinstance(relay, BaseException):
        if not isinstance(relay, Exception):
            raise relay
        relay = CheckResult(7, TITLES[7], FAIL, f"the check itself failed: {type(relay).__name__}",
                            fix="please report this to the MA Tracker team")
    return [r1, *tws, relay]


def _config_problem(exc: ConfigError) -> str:
    shown = "" if exc.value is None else f" (got {exc.value!r})"
    return f"{exc.setting}{shown}: {exc.problem}"


NO_KEY = "doctor-checks-tws-without-a-key"     # stands in for a missing key so the TWS steps can still run


def _settings_without_key(exc: ConfigError, environ: dict | None, config_path: Any) -> Any:
    """Settings with a stand-in key when the key was the only problem; None otherwise. Never sent anywhere:
    the relay step is skipped."""
    if exc.setting != "IB_PROVIDER_KEY" or getattr(exc, "others", ()):
        return None
    import os

    from agent.settings import load_settings
    env = dict(os.environ if environ is None else environ)
    env["IB_PROVIDER_KEY"] = NO_KEY
    try:
        return load_settings(environ=env, config_path=config_path)
    except ConfigError:
        return None


async def _guarded_tws(settings: Any, timeouts: Timeouts, usual_ports: Sequence[int],
                       symbol: str) -> list[CheckResult]:
    try:
        return await check_tws(settings, timeouts, usual_ports, symbol)
    except Exception as exc:  # noqa: BLE001 - --check prints a ✗, never a traceback
        return [CheckResult(n, TITLES[n], FAIL if n == 2 else SKIP,
                            f"the check itself failed: {type(exc).__name__}: {exc}" if n == 2 else "not checked",
                            fix="please report this (with the lines above) to the MA Tracker team" if n == 2 else "")
                for n in range(2, 7)]


def _config_summary(settings: Any) -> str:
    port = settings.ib_port if settings.ib_port else "auto"
    text = (f"IB {settings.ib_host}:{port}, IB_MODE={settings.ib_mode}, clientId {settings.ib_client_id}, "
            f"relay {settings.relay_url}")
    overridden = list(getattr(settings, "overridden", []) or [])
    if overridden:
        text += f" (the environment overrides config.env for {', '.join(sorted(overridden))})"
    return text


async def run(environ: dict | None = None, config_path: Any = None, *, out: Callable[[str], Any] = print,
              timeouts: Timeouts = Timeouts(), usual_ports: Sequence[int] = USUAL_PORTS,
              settings: Any = None, probe_symbol: str = PROBE_SYMBOL) -> int:
    """Run every check, print the report, return the exit status (0 only when all pass)."""
    started = time.monotonic()
    out("IB Data Agent — checking your setup")
    out("")
    results = await run_checks(environ, config_path, timeouts=timeouts, usual_ports=usual_ports, settings=settings,
                               probe_symbol=probe_symbol)
    out(format_report(results))
    out(f"(checked in {time.monotonic() - started:.1f} s)")
    return 0 if all(r.ok for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ib_data_agent.py --check", add_help=True)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help="path of config.env (default: beside the agent)")
    args, _unknown = parser.parse_known_args(list(argv) if argv is not None else sys.argv[1:])
    try:
        return asyncio.run(run(config_path=args.config))
    except KeyboardInterrupt:
        print("check interrupted")
        return 130
