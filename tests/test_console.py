"""Console and log file: readable lines, tracebacks only in the file, the key redacted everywhere."""

from __future__ import annotations

import io
import logging

import pytest

from agent import console

KEY = "sekret-KEY-0123456789abcdef"


@pytest.fixture
def logs(tmp_path):
    stream = io.StringIO()
    path = console.setup_logging(tmp_path / "logs", [KEY], level="INFO", stream=stream)
    yield stream, path
    console.teardown_logging()


def test_redact_replaces_every_occurrence():
    """redact() replaces each occurrence of each secret and ignores empty/too-short secrets."""
    assert console.redact(f"a {KEY} b {KEY}", [KEY]) == "a *** b ***"
    assert console.redact("abc", ["", "b"]) == "abc"


def test_console_has_no_traceback_file_has_it(logs):
    """An exception logged at ERROR shows one line on the console and the full traceback in logs/agent.log."""
    stream, path = logs
    try:
        raise ValueError("boom in handler")
    except ValueError:
        logging.getLogger("agent.x").error("request failed", exc_info=True)
    out = stream.getvalue()
    assert "ERROR: request failed" in out and "Traceback" not in out
    text = path.read_text()
    assert "Traceback" in text and "boom in handler" in text


def test_key_redacted_in_console_file_and_traceback(logs):
    """A key in a message, its args or an exception's text is replaced by *** on the console and in the file."""
    stream, path = logs
    log = logging.getLogger("agent.y")
    log.info("auth with %s", KEY)
    log.warning(f"inline {KEY}")
    try:
        raise RuntimeError(f"bad key {KEY}")
    except RuntimeError:
        log.exception("oops")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = path.read_text()
    out = stream.getvalue()
    assert KEY not in out and KEY not in text
    assert "auth with ***" in out and "bad key ***" in text


def test_debug_goes_to_file_only(logs):
    """DEBUG details reach the file but not the console at LOG_LEVEL=INFO."""
    stream, path = logs
    logging.getLogger("agent.z").debug("fine detail 42")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "fine detail 42" in path.read_text() and "fine detail 42" not in stream.getvalue()


def test_state_sentences():
    """The state-change sentences carry host:port, account and paper/live, and request timings."""
    line = console.tws_connected("127.0.0.1", 7497, ["DU1234567"], True)
    assert line == "Connected to TWS at 127.0.0.1:7497 as DU1234567 (paper)"
    assert "LIVE" in console.tws_connected("h", 1, ["U1"], False)
    assert console.served("fetch_chain", 812.4) == "request fetch_chain served in 812 ms"
    assert "retrying in 5.0 s" in console.tws_lost(5)


def test_delays_print_one_decimal_and_never_zero():
    """Retry delays read '2.4 s'; a short one is still shown as what it is, never as '0 s'."""
    assert console.seconds(2.36) == "2.4 s" and console.seconds(0.1) == "0.1 s"
    assert console.seconds(0.04) == "0.04 s"
    assert "retrying in 0.3 s" in console.relay_lost("connection refused", 0.3)
    for d in (0.001, 0.04, 0.3, 0.49):
        assert not console.relay_lost("x", d).endswith("in 0 s") and "0.0 s" not in console.relay_lost("x", d)


def test_console_one_line_and_repeats_suppressed(logs):
    """Multi-line texts print on one console line; the same sentence again soon is shown once (file keeps all)."""
    stream, path = logs
    log = logging.getLogger("agent.r")
    for _ in range(3):
        log.warning("TWS 502: Couldn't connect\nto TWS.\n  Check the port")
    for handler in logging.getLogger().handlers:
        handler.flush()
    out = stream.getvalue().splitlines()
    assert len(out) == 1 and out[0].endswith("WARNING: TWS 502: Couldn't connect to TWS. Check the port")
    assert path.read_text().count("Couldn't connect") == 3


def test_repeat_filter_window():
    """RepeatFilter shows a warning again once its window has passed, and never hides INFO lines."""
    now = [0.0]
    f = console.RepeatFilter(window=60, clock=lambda: now[0])
    rec = logging.LogRecord("agent", logging.WARNING, "", 0, "same", None, None)
    assert f.filter(rec) and not f.filter(rec)
    now[0] = 61.0
    assert f.filter(rec)
    info = logging.LogRecord("agent", logging.INFO, "", 0, "request x served in 5 ms", None, None)
    assert f.filter(info) and f.filter(info)
