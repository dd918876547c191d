"""Hostile relay frames (issue 10, items 1-4): no frame stops the agent, nothing from input reaches a log line or an
answer unescaped or unbounded, and memory stays bounded under a stream of distinct bad values."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging

import pytest

from agent import console
from agent.dispatch import AgentContext, Dispatcher, register_core
from agent.echo import clip, echo
from agent.protocol import (MAX_DEPTH, FrameRejected, TickerPayload, decode_frame, nesting_exceeds,
                            sniff_request_id)
from agent.relay import RelayClient
from agent.retry import reconnect_wait
from agent.settings import load_settings
from sim.relay import ReferenceRelay
from test_dispatch import FakeBridge, FakePacer

KEY = "hostile-key-0123456789abcdef"
DEEP = ["[" * 990 + "]" * 990, '{"a":' * 5000,
        json.dumps({"type": "request", "request_id": "deep-1", "request_type": "ib_status"})[:-1]
        + ', "payload": ' + '{"a": ' * 985 + "1" + "}" * 985 + "}"]


def dispatcher() -> Dispatcher:
    ctx = AgentContext(load_settings({"IB_PROVIDER_KEY": KEY}), FakePacer(), FakeBridge(connected=True))
    d = Dispatcher(ctx)
    register_core(d)
    d.add("check_availability", TickerPayload, _never_called, deadline=13.0)
    return d


async def _never_called(ctx, payload):
    raise AssertionError("an invalid payload reached its handler")


# --- pure bounds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", DEEP, ids=["brackets-990", "objects-5000", "payload-985"])
def test_deep_frames_are_refused_before_parsing(text):
    """Nested JSON past the depth limit is refused with a reason before json.loads could recurse."""
    assert nesting_exceeds(text)
    with pytest.raises(FrameRejected, match=f"deeper than {MAX_DEPTH}"):
        decode_frame(text)


def test_depth_scan_ignores_brackets_in_strings_and_keeps_normal_frames():
    """Brackets inside strings do not count; an ordinary request of 600 legs parses."""
    legs = [{"ticker": "AAPL", "strike": 200 + i, "expiry": "20261218", "right": "C"} for i in range(600)]
    frame = {"type": "request", "request_id": "r", "request_type": "fetch_prices", "payload": {"contracts": legs},
             "note": "[[[[" * 100}
    assert decode_frame(json.dumps(frame)) == frame


def test_request_id_is_read_from_frames_that_are_not_parsed():
    """A refused frame still names its request_id when a bounded pattern finds one (escapes decoded)."""
    assert sniff_request_id('{"type":"request","request_id":"abc\\u0041", [[[') == "abcA"
    assert sniff_request_id('{"request_id": ' + '"' + "x" * 500 + '"}') is None      # longer than 200
    assert sniff_request_id("no id here") is None


def test_echo_escapes_and_bounds():
    """Input shown back is escaped (surrogates, newlines) and cut with its length."""
    assert echo("\ud800\n") == "'\\ud800\\n'"
    shown = echo("A" * 1_000_000)
    assert shown.startswith("'AAAA") and "(1,000,000 characters)" in shown and len(shown) < 100
    assert clip("ok — fine") == "ok — fine"
    assert len(echo(list(range(10_000)))) < 100


# --- item 1: a deep frame killed the process ------------------------------------------------------

@contextlib.asynccontextmanager
async def agent_at(relay: ReferenceRelay, **kw):
    """A RelayClient serving the dispatcher above (TWS 'connected' by a fake bridge), fast reconnects."""
    settings = load_settings({"IB_PROVIDER_KEY": KEY, "RELAY_URL": relay.ws_url})
    d = dispatcher()
    client = RelayClient(settings, d.handle, lambda: {"type": "agent_state", "ib_connected": True},
                         wait=reconnect_wait(first=0.01, factor=2, cap=0.05), **kw)
    task = asyncio.create_task(client.run())
    try:
        await relay.wait_provider(5)
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def test_deep_frames_do_not_stop_the_agent():
    """Three deep frames: the one with a request_id is answered success:false naming the depth, the others are
    ignored with a log line, and the same connection goes on serving."""
    async with ReferenceRelay(api_key=KEY, port=0) as relay, agent_at(relay) as client:
        await relay.request_raw(DEEP[0])
        await relay.request_raw(DEEP[1])
        answer = await relay.request_raw(DEEP[2], request_id="deep-1", timeout=5)
        assert answer["success"] is False and f"deeper than {MAX_DEPTH} levels" in answer["error"]
        assert (await relay.request("ib_status", timeout=5))["success"] is True
        assert client.sessions == 1 and relay.providers_seen == 1


async def test_json_that_is_not_an_object_is_logged_as_a_warning(caplog):
    """Valid JSON that is not an object (an array, a number, a string) has nobody to answer: a warning says it was
    ignored (it was a DEBUG line 'relay frame of type None ignored', in the file log only), and the agent serves on."""
    caplog.set_level(logging.INFO, logger="agent")
    async with ReferenceRelay(api_key=KEY, port=0) as relay, agent_at(relay):
        for raw in ("[1, 2, 3]", "42", '"request"'):
            await relay.request_raw(raw)
        assert (await relay.request("ib_status", timeout=5))["success"] is True
    ignored = [r for r in caplog.records if "not a JSON object" in r.getMessage()]
    assert [r.levelno for r in ignored] == [logging.WARNING] * 3, caplog.text
    assert "[1, 2, 3]" in ignored[0].getMessage()


async def test_a_frame_with_a_request_id_but_no_request_type_is_logged_as_a_warning(caplog):
    """A frame carrying a request_id but whose type is missing or not 'request' is not served (it may be a relay
    message this agent does not know), but the relay may be waiting on that id: a warning names the type and the id,
    where it was a DEBUG line in the file log only. Frames without a request_id stay quiet."""
    caplog.set_level(logging.INFO, logger="agent")
    async with ReferenceRelay(api_key=KEY, port=0) as relay, agent_at(relay):
        for raw in ('{"request_id": "r-no-type", "request_type": "ib_status"}',
                    '{"type": "requets", "request_id": "r-typo", "request_type": "ib_status"}',
                    '{"type": "notice"}'):
            await relay.request_raw(raw)
        assert (await relay.request("ib_status", timeout=5))["success"] is True
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "request_id" in r.getMessage()]
    assert len(warned) == 2 and "r-no-type" in warned[0] and "'requets'" in warned[1] and "r-typo" in warned[1], warned
    assert not any("notice" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# --- item 2: a lone surrogate broke logging ---------------------------------------------------------

async def test_lone_surrogate_request_id_is_served_and_logged(tmp_path, capsys):
    """request_id "\\ud800" (valid JSON): ib_status is served under that id, an invalid request is answered, and
    the warning reaches the console and agent.log escaped, with no '--- Logging error ---'."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")      # strict, as a real console
    console.setup_logging(tmp_path, [KEY], stream=stdout)
    try:
        d = dispatcher()
        ok = await d.handle('{"type":"request","request_id":"\\ud800","request_type":"ib_status","payload":{}}')
        bad = await d.handle('{"type":"request","request_id":"\\ud801","request_type":"fetch_chain",'
                             '"payload":{"ticker":"\\udfff"}}')
        for h in logging.getLogger().handlers:
            h.flush()
        text = (tmp_path / console.LOG_FILE).read_text(encoding="utf-8")
        stdout.flush()
        shown = stdout.buffer.getvalue().decode("utf-8")
    finally:
        console.teardown_logging()
    assert ok["request_id"] == "\ud800" and ok["success"] is True and "connected" in ok["data"]
    assert bad["request_id"] == "\ud801" and bad["success"] is False
    assert json.loads(json.dumps(bad)) == bad                       # the answer goes on the wire as it is
    assert "\\ud801" in text and "\\ud801" in shown                 # the line is there, escaped
    assert "Logging error" not in capsys.readouterr().err


# --- item 3: input echoed without bound, and the repeat filter's memory -------------------------------

async def test_megabyte_tickers_are_echoed_bounded_and_memory_stays_bounded(tmp_path):
    """120 distinct 1 MB tickers: each answer and console line shows at most a short, cut echo with the length,
    and the console's repeat filter keeps a few bytes per warning, not a megabyte."""
    stdout = io.StringIO()
    console.setup_logging(tmp_path, [KEY], stream=stdout)
    try:
        d = dispatcher()
        answers = []
        for i in range(120):
            ticker = f"{i:03d}" + "A" * 1_000_000
            answers.append(await d.handle(json.dumps({"type": "request", "request_id": f"big-{i}",
                                                      "request_type": "check_availability",
                                                      "payload": {"ticker": ticker}})))
        repeat = next(f for h in logging.getLogger().handlers for f in h.filters
                      if isinstance(f, console.RepeatFilter))
        kept = sum(len(k) for k in repeat._seen)
    finally:
        console.teardown_logging()
    assert all(a["success"] is False and len(a["error"]) < 400 for a in answers), len(answers[0]["error"])
    assert "(1,000,003 characters)" in answers[0]["error"]
    lines = stdout.getvalue().splitlines()
    assert lines and max(len(line) for line in lines) < 400
    assert kept <= 120 * 16


def test_repeat_filter_is_bounded_by_count_within_its_window():
    """A flood of distinct warnings inside the window keeps at most max_kept entries (the oldest go first)."""
    f = console.RepeatFilter(window=60, clock=lambda: 0.0)
    for i in range(2000):
        f.filter(logging.makeLogRecord({"levelno": logging.WARNING, "msg": f"bad value {i}"}))
    assert len(f._seen) <= 500


def test_log_lines_are_bounded_and_escaped_whoever_logs_them(tmp_path):
    """A careless call site logging a megabyte with a lone surrogate still writes one bounded, escaped line."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    console.setup_logging(tmp_path, [KEY], stream=stdout)
    try:
        logging.getLogger("agent.test").warning("careless %s", "\ud800" + "x" * 1_000_000)
        for h in logging.getLogger().handlers:
            h.flush()
        text = (tmp_path / console.LOG_FILE).read_text(encoding="utf-8")
    finally:
        console.teardown_logging()
    line = next(t for t in text.splitlines() if "careless" in t)
    assert "\\ud800" in line and len(line) < console.MAX_LINE + 200 and "characters)" in line


# --- item 4: an oversized frame closed the connection and lost every answer in flight -------------------

async def test_oversized_request_is_answered_and_requests_in_flight_survive():
    """A 2 MiB request (the WebSocket used to close at 1 MiB, 1009) gets a success:false answer naming its size;
    a request in flight on the same connection is still answered; no reconnect happens."""
    gate = asyncio.Event()

    async def handle(frame):
        if frame.get("request_type") == "slow":
            await asyncio.wait_for(gate.wait(), 10)
        return {"type": "response", "request_id": frame["request_id"], "success": True, "data": {}, "error": None}

    async with ReferenceRelay(api_key=KEY, port=0) as relay:
        settings = load_settings({"IB_PROVIDER_KEY": KEY, "RELAY_URL": relay.ws_url})
        client = RelayClient(settings, handle, lambda: {"type": "agent_state"},
                             wait=reconnect_wait(first=0.01, factor=2, cap=0.05))
        task = asyncio.create_task(client.run())
        try:
            await relay.wait_provider(5)
            slow = asyncio.create_task(relay.request("slow", {}, timeout=10))
            big = json.dumps({"type": "request", "request_id": "big-1", "request_type": "fetch_prices",
                              "payload": {"note": "x" * (2 * 1024 * 1024)}})
            answer = await relay.request_raw(big, request_id="big-1", timeout=5)
            assert answer["success"] is False and "characters long" in answer["error"]
            assert "2,097," in answer["error"]
            gate.set()
            assert (await slow)["success"] is True
            assert relay.providers_seen == 1 and client.sessions == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
