"""What the trader reads: one clear console line per state change, and a rotating log file for details.

The console shows INFO and above as ``HH:MM:SS message`` with no tracebacks (expected conditions are
sentences, not stack dumps); ``logs/agent.log`` beside the agent gets everything at DEBUG, tracebacks
included. A redacting filter on both handlers removes the provider key from every record, whoever
logged it, as a safety net behind the rule that nobody logs it in the first place.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence, TextIO

LOG_FILE = "agent.log"
REDACTED = "***"
_HANDLER_TAG = "_ib_agent_handler"

log = logging.getLogger("agent")


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ***. Secrets shorter than 4 characters are ignored (too common)."""
    for s in secrets:
        if s and len(s) >= 4 and s in text:
            text = text.replace(s, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no secret survives in its message, arguments or traceback."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            msg = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(msg, self.secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        # The traceback is now text; drop the live objects so no formatter re-renders it unredacted.
        record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message`` on one line — never a traceback; warnings and errors say so in front."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        prefix = {logging.WARNING: "WARNING: ", logging.ERROR: "ERROR: ", logging.CRITICAL: "ERROR: "}.get(
            record.levelno, "")
        text = " ".join(record.getMessage().split())     # IB's multi-line texts (e.g. error 502) on one line
        return f"{stamp} {prefix}{text}"


class RepeatFilter(logging.Filter):
    """Console only: the same warning again within ``window`` seconds is not shown again (the file keeps it).

    A retry loop warns the same thing every few seconds while TWS is closed; the trader needs it once.
    INFO lines (requests served, state changes) always show: each one is news.
    """

    def __init__(self, window: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.window, self.clock = window, clock
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self.clock()
        key = f"{record.levelno}:{record.getMessage()}"
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return False
        if len(self._seen) > 500:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.window}
        self._seen[key] = now
        return True


FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(log_dir: Path | str, secrets: Iterable[str] = (), *, level: str = "INFO",
                  stream: TextIO | None = None, max_bytes: int = 2_000_000, backups: int = 5,
                  file_name: str = LOG_FILE) -> Path | None:
    """Install the console and file handlers on the root logger (replacing ones this function installed before).

    Returns the log file's path, or None when the log directory cannot be written (the console still works,
    and says so once).
    """
    secrets = [s for s in secrets if s]
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_TAG, False):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.DEBUG)
    # ibapi logs every message it sends and receives at INFO/DEBUG: too much for anyone but a debugger.
    logging.getLogger("ibapi").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)

    console = logging.StreamHandler(stream if stream is not None else sys.stdout)
    console.setLevel(getattr(logging, level.upper(), logging.INFO))
    console.setFormatter(ConsoleFormatter())
    console.addFilter(RedactingFilter(secrets))
    console.addFilter(RepeatFilter())
    setattr(console, _HANDLER_TAG, True)
    root.addHandler(console)

    path: Path | None = Path(log_dir) / file_name
    try:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    except OSError as e:
        log.warning("Cannot write the log file in %s (%s): details go to the console only", log_dir, e.strerror)
        return None
    fh.setLevel(logging.DEBUG)      # the file is for details, whatever the console shows
    fh.setFormatter(logging.Formatter(FILE_FORMAT))
    fh.addFilter(RedactingFilter(secrets))
    setattr(fh, _HANDLER_TAG, True)
    root.addHandler(fh)
    return path


def teardown_logging() -> None:
    """Remove (and close) the handlers setup_logging installed; used by tests and at exit."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_TAG, False):
            root.removeHandler(h)
            h.close()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with right-aligned columns (the demo's and the order files' printouts)."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


# --- the sentences a trader reads (one per state change) ---------------------------------------

def tws_connected(host: str, port: int | None, accounts: list[str], paper: bool | None) -> str:
    kind = {True: "paper", False: "LIVE"}.get(paper, "account type unknown")
    acct = ", ".join(accounts) if accounts else "no account reported"
    return f"Connected to TWS at {host}:{port} as {acct} ({kind})"


def tws_lost(retry_in: float | None = None) -> str:
    tail = f", retrying in {seconds(retry_in)}" if retry_in is not None else ", retrying"
    return f"TWS connection lost{tail} (is TWS/IB Gateway running and logged in?)"


def relay_connected(url: str, provider_id: str | None) -> str:
    pid = f" (provider {provider_id})" if provider_id else ""
    return f"Connected to relay {url}{pid}"


def seconds(d: float) -> str:
    """A delay for the console: one decimal ('2.4 s'), never a misleading '0 s' for a short one."""
    return f"{d:.1f} s" if d >= 0.1 else f"{d:.2g} s"


def relay_lost(reason: str, retry_in: float) -> str:
    return f"Relay connection lost ({reason}), retrying in {seconds(retry_in)}"


def served(request_type: str, ms: float) -> str:
    return f"request {request_type} served in {ms:.0f} ms"


def failed(request_type: str, ms: float, reason: str) -> str:
    return f"request {request_type} failed after {ms:.0f} ms: {reason}"
