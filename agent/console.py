"""What the trader reads: one clear console line per state change, and a rotating log file for details.

The console shows INFO and above as ``HH:MM:SS message`` with no tracebacks (expected conditions are
sentences, not stack dumps); ``logs/agent.log`` beside the agent gets everything at DEBUG, tracebacks
included. A redacting filter on both handlers removes the provider key from every record, whoever
logged it, as a safety net behind the rule that nobody logs it in the first place. Likewise a line filter
bounds every record and escapes what an encoder cannot write (input may carry a megabyte or a lone
surrogate), behind the rule that input is shown through agent/echo.py.
"""

from __future__ import annotations

import hashlib
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence, TextIO

LOG_FILE = "agent.log"
REDACTED = "***"
_HANDLER_TAG = "_ib_agent_handler"
MAX_LINE = 2000              # characters of one log message (a longer one is cut, saying how long it was)
MAX_TRACEBACK = 20000        # characters of one traceback in the file log

log = logging.getLogger("agent")


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ***. Secrets shorter than 4 characters are ignored (too common)."""
    for s in secrets:
        if s and len(s) >= 4 and s in text:
            text = text.replace(s, REDACTED)
    return text


def redact_frame(raw: str | bytes | bytearray, secrets: Iterable[str]) -> str | bytes:
    """A raw relay frame with every secret replaced by *** before it is parsed: an echo of input cuts long values,
    and a key cut in two would escape the redaction of whole ones."""
    if isinstance(raw, (bytes, bytearray)):
        for s in secrets:
            if s and len(s) >= 4 and s.encode() in raw:
                raw = bytes(raw).replace(s.encode(), REDACTED.encode())
        return raw
    return redact(raw, secrets)


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


def _writable(text: str, encoding: str = "utf-8") -> str:
    """``text`` with every character ``encoding`` cannot write as its escape (a lone surrogate: \\ud800)."""
    try:
        text.encode(encoding)
        return text
    except (UnicodeEncodeError, LookupError):
        return text.encode(encoding, "backslashreplace").decode(encoding, "replace")


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


class SafeLineFilter(logging.Filter):
    """Every record, whoever logged it: its message at most ``limit`` characters (cut ones say their length),
    its traceback at most MAX_TRACEBACK, and nothing an encoder cannot write (a lone surrogate made the handlers
    print '--- Logging error ---' tracebacks and lose the line)."""

    def __init__(self, limit: int = MAX_LINE):
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            msg = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = _writable(_bounded(msg, self.limit)), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = _writable(_bounded(record.exc_text, MAX_TRACEBACK))
        return True


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message`` on one line — never a traceback; warnings and errors say so in front. Characters
    the console's encoding cannot show (a Windows console in cp1252) are escaped rather than lose the line."""

    def __init__(self, encoding: str | None = None):
        super().__init__()
        self.encoding = encoding or "utf-8"

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        prefix = {logging.WARNING: "WARNING: ", logging.ERROR: "ERROR: ", logging.CRITICAL: "ERROR: "}.get(
            record.levelno, "")
        text = " ".join(record.getMessage().split())     # IB's multi-line texts (e.g. error 502) on one line
        return _writable(f"{stamp} {prefix}{text}", self.encoding)


class RepeatFilter(logging.Filter):
    """Console only: the same warning again within ``window`` seconds is not shown again (the file keeps it).

    A retry loop warns the same thing every few seconds while TWS is closed; the trader needs it once.
    INFO lines (requests served, state changes) always show: each one is news. Memory is bounded by count and
    by size: at most ``max_kept`` warnings are remembered, each by a 16-byte digest (120 distinct 1 MB warnings
    once grew the agent by 126 MB), the oldest forgotten first.
    """

    def __init__(self, window: float = 60.0, clock=time.monotonic, max_kept: int = 500):
        super().__init__()
        self.window, self.clock, self.max_kept = window, clock, max_kept
        self._seen: dict[bytes, float] = {}       # digest -> when last shown; insertion order = age

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self.clock()
        key = hashlib.blake2b(f"{record.levelno}:{record.getMessage()}".encode("utf-8", "backslashreplace"),
                              digest_size=16).digest()
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return False
        self._seen.pop(key, None)           # re-inserted below as the newest
        while len(self._seen) >= self.max_kept:
            del self._seen[next(iter(self._seen))]
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

    out = stream if stream is not None else sys.stdout
    console = logging.StreamHandler(out)
    console.setLevel(getattr(logging, level.upper(), logging.INFO))
    console.setFormatter(ConsoleFormatter(getattr(out, "encoding", None)))
    console.addFilter(RedactingFilter(secrets))
    console.addFilter(SafeLineFilter())
    console.addFilter(RepeatFilter())
    setattr(console, _HANDLER_TAG, True)
    root.addHandler(console)

    path: Path | None = Path(log_dir) / file_name
    try:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8",
                                                  errors="backslashreplace")
    except OSError as e:
        log.warning("Cannot write the log file in %s (%s): details go to the console only", log_dir, e.strerror)
        return None
    fh.setLevel(logging.DEBUG)      # the file is for details, whatever the console shows
    fh.setFormatter(logging.Formatter(FILE_FORMAT))
    fh.addFilter(RedactingFilter(secrets))
    fh.addFilter(SafeLineFilter())
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


def relay_lost(reason: str, retry_in: float | None = None) -> str:
    """The relay connection went; ``retry_in`` None: the agent reconnects at once."""
    tail = f"retrying in {seconds(retry_in)}" if retry_in is not None else "reconnecting"
    return f"Relay connection lost ({reason}), {tail}"


def served(request_type: str, ms: float) -> str:
    return f"request {request_type} served in {ms:.0f} ms"


def failed(request_type: str, ms: float, reason: str) -> str:
    return f"request {request_type} failed after {ms:.0f} ms: {reason}"
