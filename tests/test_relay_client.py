"""RelayClient against the reference relay (sim.relay) on 127.0.0.1, port 0, with millisecond delays."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from agent.relay import RelayClient
from agent.retry import preview, reconnect_wait
from agent.settings import load_settings
from sim.relay import ProviderDisconnected, ReferenceRelay

KEY = "relay-test-key-0123456789"


FAST = dict(first=0.01, factor=2, cap=0.05)


def fast_wait():
    return reconnect_wait(**FAST)


class Handler:
    """Answers requests; 'block' requests wait on a gate and record their cancellation."""

    def __init__(self):
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = 0

    async def __call__(self, frame):
        rid, rtype = frame["request_id"], frame["request_type"]
        if rtype == "block":
            self.started.set()
            try:
                await asyncio.wait_for(self.gate.wait(), 10)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if rtype == "slow":
            await asyncio.wait_for(self.gate.wait(), 10)
        return {"type": "response", "request_id": rid, "success": True, "data": {"type": rtype}, "error": None}


def state():
    return {"type": "agent_state", "ib_connected": True, "ib_farms": {"usfarm": True}, "ib_data_available": True,
            "available_scan_lines": 90, "scan_batch_size": 50, "max_lines": 100}


@contextlib.asynccontextmanager
async def running(relay: ReferenceRelay, handler=None, **kw):
    settings = load_settings({"IB_PROVIDER_KEY": kw.pop("key", KEY), "RELAY_URL": relay.ws_url})
    kw.setdefault("wait", fast_wait())
    client = RelayClient(settings, handler or Handler(), state, accounts=lambda: ["DU1234567"], **kw)
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


@pytest.fixture
async def relay():
    r = ReferenceRelay(api_key=KEY, port=0)
    await r.start()
    yield r
    await r.stop()


async def test_auth_then_accounts_state_and_boot_phase(relay):
    """The client authenticates with its version, then sends boot_phase, ib_accounts and agent_state."""
    async with running(relay) as client:
        pid = await relay.wait_provider(5)
        await relay.wait_frame(lambda f: f["type"] == "agent_state", 5)
        assert client.provider_id == pid and client.connected
        assert relay.frames[0]["type"] == "auth" and relay.provider_version == client.version
        assert relay.accounts == ["DU1234567"]
        assert relay.boot_phases[0]["phase"] == "relay_connected"
        assert relay.agent_state["available_scan_lines"] == 90


async def test_heartbeat_followed_by_agent_state(relay):
    """Every heartbeat interval the client sends heartbeat then agent_state."""
    async with running(relay, heartbeat_interval=0.02):
        await relay.wait_provider(5)
        await relay.wait_frame(lambda f: f["type"] == "heartbeat", 5)
        start = relay.frames.index(next(f for f in relay.frames if f["type"] == "heartbeat"))
        await relay.wait_frame(lambda f: f["type"] == "heartbeat", 5, start=start + 1)
        kinds = [f["type"] for f in relay.frames[start:]]
        assert kinds[1] == "agent_state" and relay.heartbeats >= 2


async def test_requests_answered_concurrently_in_any_order(relay):
    """A slow request does not hold up a fast one; each answer carries its own request id."""
    handler = Handler()
    async with running(relay, handler):
        await relay.wait_provider(5)
        slow = asyncio.create_task(relay.request("slow", {}, timeout=5))
        fast = await relay.request("fast", {}, timeout=5)
        assert fast["success"] and fast["data"] == {"type": "fast"} and not slow.done()
        handler.gate.set()
        assert (await slow)["data"] == {"type": "slow"}


async def test_bad_key_one_guidance_and_long_backoff(relay, caplog):
    """A rejected key logs the guidance once, naming the key's source, and waits the long auth delay each time."""
    relay.reject_all_keys = True
    delays: list[float] = []
    three = asyncio.Event()

    async def sleep(d):
        delays.append(d)
        if len(delays) >= 3:
            three.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)
    caplog.set_level(logging.INFO, logger="agent")
    async with running(relay, sleep=sleep, auth_fail_delay=300.0):
        await asyncio.wait_for(three.wait(), 5)
    assert delays == [300.0, 300.0, 300.0] and len(relay.auth_attempts) == 3
    guidance = [r for r in caplog.records if "Authentication failed" in r.getMessage()]
    assert len(guidance) == 1
    assert "your environment (IB_PROVIDER_KEY)" in guidance[0].getMessage()
    assert "fresh copy" in guidance[0].getMessage() and KEY not in caplog.text
    assert KEY[-4:] not in caplog.text and "…" not in guidance[0].getMessage()    # not even its last characters


async def test_reconnect_after_kick_and_relay_restart(relay):
    """The client reconnects after the relay drops it and after the relay process restarts on the same port."""
    async with running(relay) as client:
        await relay.wait_provider(5)
        await relay.kick_provider()
        await relay.wait_no_provider(5)
        await relay.wait_provider(5)
        assert relay.providers_seen == 2
        assert client.last_fault == "closed by the relay with code 1001: Relay restarting"
        port = relay.port
        await relay.stop()
        relay2 = ReferenceRelay(api_key=KEY, port=port)
        await relay2.start()
        try:
            await relay2.wait_provider(5)
            await asyncio.wait_for(client.connected_event.wait(), 5)
            assert client.sessions == 3
            r = await relay2.request("fast", {}, timeout=5)
            assert r["success"]
        finally:
            await relay2.stop()


async def test_inflight_cancelled_on_drop(relay):
    """When the relay connection drops, in-flight requests are cancelled and the client reconnects and serves."""
    handler = Handler()
    async with running(relay, handler) as client:
        await relay.wait_provider(5)
        pending = asyncio.create_task(relay.request("block", {}, timeout=5))
        await asyncio.wait_for(handler.started.wait(), 5)
        assert client.in_flight == 1
        await relay.kick_provider()
        with pytest.raises(ProviderDisconnected):
            await pending
        await relay.wait_provider(5)
        assert handler.cancelled == 1 and client.in_flight == 0
        assert (await relay.request("fast", {}, timeout=5))["success"]


async def test_bridge_events_become_frames(relay):
    """Bridge events become ib_accounts, account_event and agent_state frames; events queue while offline."""
    async with running(relay) as client:
        client.on_bridge_event("order_status", {"orderId": 1, "status": "Filled", "filled": 1, "remaining": 0,
                                                "avgFillPrice": 1.5, "ts": 1.0})
        await asyncio.wait_for(client.connected_event.wait(), 5)
        client.on_bridge_event("tws_reconnected", {"ts": 2.0})
        client.on_bridge_event("tws_connected", {"accounts": ["DU7654321"]})
        await relay.wait_frame(lambda f: f["type"] == "ib_accounts" and f["accounts"] == ["DU7654321"], 5)
        await relay.wait_frame(lambda f: f["type"] == "account_event"
                               and f["event"]["event"] == "tws_reconnected", 5)
        assert relay.events[0]["event"] == "order_status" and relay.events[0]["orderId"] == 1


async def test_unreachable_relay_backs_off_with_growing_delays():
    """With no relay listening, the client retries with a random first delay, then growing, capped delays."""
    r = ReferenceRelay(api_key=KEY, port=0)
    await r.start()
    url = r.ws_url
    await r.stop()
    delays: list[float] = []
    enough = asyncio.Event()

    async def sleep(d):
        delays.append(d)
        if len(delays) >= 6:
            enough.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)
    settings = load_settings({"IB_PROVIDER_KEY": KEY, "RELAY_URL": url})
    client = RelayClient(settings, Handler(), state, sleep=sleep,
                         wait=reconnect_wait(first=1, factor=2, cap=4, jitter=0))
    task = asyncio.create_task(client.run())
    await asyncio.wait_for(enough.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # jitter 0 makes the sequence exact: first, doubling, then the cap
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0] and client.last_fault == "connection refused"


class Draws:
    """Stands in for tenacity's ``random`` module: uniform() returns the given fractions of its span in turn."""

    def __init__(self, fractions):
        self.fractions = iter(fractions)

    def uniform(self, a, b):
        return a + (b - a) * next(self.fractions)


@hsettings(max_examples=200, deadline=None)
@given(draws=st.lists(st.floats(0.0, 1.0), min_size=12, max_size=12),
       first=st.floats(0.01, 5.0), factor=st.floats(1.0, 3.0), cap_over_first=st.floats(1.0, 50.0),
       jitter_share=st.floats(0.0, 1.0))
def test_wait_never_shrinks_never_zero_never_over_cap(draws, first, factor, cap_over_first, jitter_share):
    """Whatever tenacity's random draws: every delay is > 0, at most the cap, and no smaller than the one before."""
    from unittest import mock
    cap = first * cap_over_first
    wait = reconnect_wait(first=first, factor=factor, cap=cap, jitter=jitter_share * (factor - 1) * first / 2)
    with mock.patch("tenacity.wait.random", Draws(draws)):
        delays = preview(wait, 12)
    assert all(0 < d <= cap for d in delays)
    assert all(a <= b for a, b in zip(delays, delays[1:])), delays


def test_wait_first_delay_random_and_jitter_bounded():
    """The first delay is random within [first, first + jitter]; a jitter that could shrink the sequence is refused."""
    from unittest import mock
    wait = reconnect_wait(first=1.0, factor=2.0, cap=10.0)
    with mock.patch("tenacity.wait.random", Draws([0.0, 1.0])):
        low, = preview(wait, 1)
        high, = preview(wait, 1)
    assert (low, high) == (1.0, 1.5)
    with pytest.raises(ValueError, match="shorter than the one before"):
        reconnect_wait(first=1.0, factor=2.0, cap=10.0, jitter=0.6)
    with pytest.raises(ValueError):
        reconnect_wait(first=5.0, cap=1.0)


async def test_network_faults_log_one_line_without_traceback(caplog):
    """An unreachable relay logs each retry as one line: no traceback in the file log (DEBUG) either."""
    r = ReferenceRelay(api_key=KEY, port=0)
    await r.start()
    url = r.ws_url
    await r.stop()
    three = asyncio.Event()
    count = 0

    async def sleep(d):
        nonlocal count
        count += 1
        if count >= 3:
            three.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)
    caplog.set_level(logging.DEBUG, logger="agent.relay")
    client = RelayClient(load_settings({"IB_PROVIDER_KEY": KEY, "RELAY_URL": url}), Handler(), state, sleep=sleep,
                         wait=fast_wait())
    task = asyncio.create_task(client.run())
    await asyncio.wait_for(three.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    ended = [rec for rec in caplog.records if "relay session ended" in rec.getMessage()]
    assert len(ended) >= 3 and all(rec.exc_info is None for rec in ended)
    assert "ConnectionRefusedError" in ended[0].getMessage()
    assert all(rec.exc_info is None for rec in caplog.records if rec.name == "agent.relay")


def test_unexpected_faults_keep_their_traceback():
    """Only the network's own faults are quiet: a protocol violation is not one of them."""
    from agent.relay import NETWORK_FAULTS, RelayProtocolError
    assert isinstance(ConnectionRefusedError(), NETWORK_FAULTS) and isinstance(asyncio.TimeoutError(), NETWORK_FAULTS)
    assert not isinstance(RelayProtocolError("bad"), NETWORK_FAULTS) and not isinstance(EOFError(), NETWORK_FAULTS)


async def test_push_from_another_thread(relay):
    """push() from a non-loop thread (e.g. ibapi's reader) is handed to the loop and reaches the relay."""
    import threading
    async with running(relay) as client:
        await asyncio.wait_for(client.connected_event.wait(), 5)
        event = {"event": "execution", "orderId": 3, "symbol": "AAPL", "side": "BOT", "shares": 1, "price": 1.0,
                 "ts": 1.0}
        t = threading.Thread(target=client.on_bridge_event, args=("execution", event))
        t.start()
        t.join(5)
        await relay.wait_frame(lambda f: f["type"] == "account_event" and f["event"]["event"] == "execution", 5)
        assert relay.events[-1]["orderId"] == 3
