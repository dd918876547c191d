"""The reference relay (sim/relay) speaks the cloud's protocol: a plain websockets client plays the agent."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sim.relay import NoProvider, ProviderDisconnected, ReferenceRelay, RequestTimeout
from sim.relay import routes

ROOT = Path(__file__).resolve().parents[1]
WAIT = 5.0  # generous upper bound for any single event in these tests


@pytest.fixture
async def relay():
    r = ReferenceRelay(api_key="KEY", port=0, auth_timeout=2.0, heartbeat_timeout=30.0)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT * 2)) as s:
        yield s


async def recv(ws: ClientConnection) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def auth(relay: ReferenceRelay, key: str = "KEY", version: str = "test-1.0") -> tuple[ClientConnection, dict]:
    ws = await connect(relay.ws_url, open_timeout=WAIT)
    await ws.send(json.dumps({"type": "auth", "api_key": key, "version": version}))
    return ws, await recv(ws)


async def wait_closed(ws: ClientConnection) -> ConnectionClosed:
    """Read until the relay closes the socket; return the close exception."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), WAIT)
    return info.value


Handler = Callable[[dict], Awaitable[dict | None]]


class FakeAgent:
    """An authenticated provider that answers request frames with ``handler`` (None = stay silent)."""

    def __init__(self, ws: ClientConnection, handler: Handler) -> None:
        self.ws, self.handler = ws, handler
        self.received: list[dict] = []
        self.got_request = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.received.append(frame)
                if frame.get("type") == "request":
                    self.got_request.set()
                    asyncio.ensure_future(self._answer(frame))
        except ConnectionClosed:
            pass

    async def _answer(self, frame: dict) -> None:
        reply = await self.handler(frame)
        if reply is not None:
            try:
                await self.ws.send(json.dumps(reply))
            except ConnectionClosed:
                pass

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.task, WAIT)


def ok(frame: dict, data: Any) -> dict:
    return {"type": "response", "request_id": frame["request_id"], "success": True, "data": data, "error": None}


def fail(frame: dict, error: str) -> dict:
    return {"type": "response", "request_id": frame["request_id"], "success": False, "data": None, "error": error}


async def echo(frame: dict) -> dict:
    return ok(frame, {"request_type": frame["request_type"], "payload": frame["payload"]})


async def start_agent(relay: ReferenceRelay, handler: Handler = echo, version: str = "test-1.0") -> FakeAgent:
    ws, reply = await auth(relay, version=version)
    assert reply["success"] is True
    return FakeAgent(ws, handler)


# --- authentication ---------------------------------------------------------------------------------

async def test_auth_ok_returns_provider_id(relay):
    """A right key gets success:true with an 8-hex provider_id, and the relay records the agent's version."""
    ws, reply = await auth(relay, version="9.9.9")
    assert reply["type"] == "auth_response" and reply["success"] is True
    assert re.fullmatch(r"[0-9a-f]{8}", reply["provider_id"])
    assert await relay.wait_provider(WAIT) == reply["provider_id"]
    assert relay.auth_attempts[-1]["key_ok"] is True and relay.auth_attempts[-1]["version"] == "9.9.9"
    assert relay.provider_version == "9.9.9"
    await ws.close()
    await relay.wait_no_provider(WAIT)


async def test_bad_key_rejected_and_closed_normally(relay):
    """A wrong key gets success:false "Invalid API key", then a normal close (1000)."""
    ws, reply = await auth(relay, key="WRONG")
    assert reply == {"type": "auth_response", "success": False, "error": "Invalid API key"}
    closed = await wait_closed(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1000
    assert not relay.provider_connected
    assert relay.auth_attempts[-1]["key_ok"] is False


async def test_reject_all_keys_fault(relay):
    """With reject_all_keys even the right key is refused as an invalid key."""
    relay.reject_all_keys = True
    ws, reply = await auth(relay)
    assert reply["success"] is False and reply["error"] == "Invalid API key"
    await wait_closed(ws)
    assert not relay.provider_connected


async def test_no_auth_in_time_is_refused():
    """A client that says nothing within auth_timeout gets "Expected auth message" and a close 1000."""
    async with ReferenceRelay(api_key="KEY", auth_timeout=0.2) as relay:
        ws = await connect(relay.ws_url, open_timeout=WAIT)
        reply = await recv(ws)
        assert reply == {"type": "auth_response", "success": False, "error": "Expected auth message"}
        closed = await wait_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1000
        assert relay.auth_attempts == []


@pytest.mark.parametrize("first", [json.dumps({"type": "heartbeat"}), "not json", json.dumps([1, 2])])
async def test_non_auth_first_message_is_refused(relay, first):
    """Anything but an auth frame first gets "Expected auth message" and the socket closes."""
    ws = await connect(relay.ws_url, open_timeout=WAIT)
    await ws.send(first)
    reply = await recv(ws)
    assert reply["success"] is False and reply["error"] == "Expected auth message"
    await wait_closed(ws)
    assert not relay.provider_connected


# --- bookkeeping ------------------------------------------------------------------------------------

async def test_heartbeat_is_acked_and_counted(relay):
    """Each heartbeat is answered with heartbeat_ack and counted."""
    ws, _ = await auth(relay)
    for _ in range(2):
        await ws.send(json.dumps({"type": "heartbeat"}))
        assert await recv(ws) == {"type": "heartbeat_ack"}
    assert relay.heartbeats == 2
    await ws.close()


async def test_pushed_frames_are_stored(relay):
    """agent_state, ib_accounts, boot_phase and account_event frames are kept for inspection."""
    ws, _ = await auth(relay)
    state = {"type": "agent_state", "ib_connected": True, "ib_farms": {"usfarm": True}, "ib_data_available": True,
             "available_scan_lines": 80, "scan_batch_size": 50, "max_lines": 100}
    event = {"event": "order_status", "orderId": 7, "status": "Filled", "filled": 1, "remaining": 0,
             "avgFillPrice": 1.5, "ts": 1.0}
    for frame in (state, {"type": "ib_accounts", "accounts": ["DU1234567"]},
                  {"type": "boot_phase", "phase": "boot_complete", "detail": "", "progress": 1.0, "timestamp": 2.0},
                  {"type": "account_event", "event": event}):
        await ws.send(json.dumps(frame))
    await relay.wait_frame(lambda f: f.get("type") == "account_event", WAIT)
    assert relay.agent_state == {k: v for k, v in state.items() if k != "type"}
    assert relay.accounts == ["DU1234567"]
    assert relay.boot_phases[-1]["phase"] == "boot_complete"
    assert relay.events == [event]
    await ws.close()


async def test_ib_status_served_from_cached_agent_state(relay, http):
    """ib-status answers from the latest agent_state without sending the agent a request."""
    agent = await start_agent(relay)
    await agent.ws.send(json.dumps({"type": "agent_state", "ib_connected": True, "ib_farms": {"usfarm": True},
                                    "ib_data_available": True, "available_scan_lines": 70, "scan_batch_size": 50,
                                    "max_lines": 100, "read_only_session": False, "status_message": "TWS ok"}))
    await relay.wait_frame(lambda f: f.get("type") == "agent_state", WAIT)
    async with http.get(relay.http_url + "/options/relay/ib-status") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["connected"] is True and body["provider_connected"] is True
    assert body["farm_status"] == {"usfarm": True} and body["data_available"] is True
    assert body["available_scan_lines"] == 70
    assert body["read_only_session"] is False and body["message"] == "TWS ok" and body["reconnecting"] is False
    assert relay.requests_sent == []
    await agent.close()


async def test_ib_status_without_provider_says_disconnected(relay, http):
    """With no agent, ib-status is 200 with connected:false rather than an error."""
    async with http.get(relay.http_url + "/options/relay/ib-status") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["connected"] is False and body["provider_connected"] is False


async def test_ib_status_asks_agent_that_sent_no_state(relay, http):
    """A provider that has sent no agent_state yet is asked with an ib_status request."""
    agent = await start_agent(relay, lambda f: _async(ok(f, {"connected": False, "message": "TWS down"})))
    async with http.get(relay.http_url + "/options/relay/ib-status") as resp:
        assert resp.status == 200
        assert (await resp.json())["message"] == "TWS down"
    assert agent.received[-1]["request_type"] == "ib_status"
    await agent.close()


async def _async(value: Any) -> Any:
    return value


# --- HTTP routes ------------------------------------------------------------------------------------

ROUTE_CASES = [
    ("POST", "/fetch-chain", {"ticker": "AAPL", "dealPrice": 200, "expectedCloseDate": "2026-12-18"}, "fetch_chain"),
    ("POST", "/fetch-prices", {"contracts": [{"ticker": "AAPL", "strike": 200, "expiry": "20261218"}]},
     "fetch_prices"),
    ("POST", "/sell-scan", {"ticker": "MSFT", "right": "P"}, "sell_scan"),
    ("POST", "/stock-quote", {"ticker": "SPY"}, "fetch_underlying"),
    ("POST", "/place-order", {"contract": {"symbol": "AAPL"}, "order": {"action": "BUY"}, "timeout_sec": 5},
     "place_order"),
    ("POST", "/modify-order", {"orderId": 3, "contract": {}, "order": {}}, "modify_order"),
    ("POST", "/cancel-order", {"orderId": 3}, "cancel_order"),
    ("GET", "/positions?timeout_sec=15", {"timeout_sec": 15}, "get_positions"),
    ("GET", "/open-orders?timeout_sec=10&force_refresh=true", {"timeout_sec": 10, "force_refresh": True},
     "get_open_orders"),
]


@pytest.mark.parametrize("method,path,body,request_type", ROUTE_CASES, ids=[c[3] for c in ROUTE_CASES])
async def test_route_reaches_provider_and_returns_data(relay, http, method, path, body, request_type):
    """Each HTTP route sends its request_type with the body (or query) as payload; success → 200 with data."""
    agent = await start_agent(relay)
    kwargs = {"json": body} if method == "POST" else {}
    async with http.request(method, relay.http_url + routes.PREFIX + path, **kwargs) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["request_type"] == request_type
    for key, value in body.items():
        assert data["payload"][key] == value
    assert data["payload"]["_priority"] == routes.PRIORITY[request_type]
    assert "_max_batch_size" not in data["payload"]
    await agent.close()


async def test_agent_error_becomes_500_with_its_message(relay, http):
    """success:false from the agent → HTTP 500 whose detail is the agent's error string."""
    agent = await start_agent(relay, lambda f: _async(fail(f, "No option chain for ZZZZ")))
    async with http.post(relay.http_url + "/options/relay/fetch-chain", json={"ticker": "ZZZZ"}) as resp:
        assert resp.status == 500
        assert await resp.json() == {"detail": "No option chain for ZZZZ"}
    await agent.close()


async def test_no_provider_is_503(relay, http):
    """With no agent connected every relayed route answers 503 "No data provider connected"."""
    async with http.post(relay.http_url + "/options/relay/fetch-prices", json={"contracts": []}) as resp:
        assert resp.status == 503
        assert await resp.json() == {"detail": "No data provider connected"}
    with pytest.raises(NoProvider):
        await relay.request("fetch_prices", {})


async def test_silent_agent_times_out_as_504_and_late_answer_is_ignored(relay, http):
    """An agent slower than the (scaled) wait gives 504; its late answer is logged and ignored."""
    release = asyncio.Event()

    async def late(frame: dict) -> dict:
        await release.wait()
        return ok(frame, {})

    relay.timeout_scale = 0.002  # fetch_underlying's 15 s → 30 ms
    agent = await start_agent(relay, late)
    async with http.post(relay.http_url + "/options/relay/stock-quote", json={"ticker": "AAPL"}) as resp:
        assert resp.status == 504
        assert "timed out" in (await resp.json())["detail"]
    release.set()
    await relay.wait_frame(lambda f: f.get("type") == "response", WAIT)
    assert relay.unknown_responses == [agent.received[-1]["request_id"]]
    assert relay.pending_count == 0
    await agent.close()


async def test_non_object_body_is_400(relay, http):
    """A body that is not a JSON object is refused before it reaches the agent."""
    agent = await start_agent(relay)
    async with http.post(relay.http_url + "/options/relay/fetch-chain", data="[1,2]",
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
    assert relay.requests_sent == []
    await agent.close()


# --- requests in flight -----------------------------------------------------------------------------

async def test_responses_in_any_order_reach_their_requests(relay):
    """Concurrent requests answered in reverse order each get their own response."""
    tags = ["a", "b", "c"]
    gate = {t: asyncio.Event() for t in tags}
    order: list[str] = []

    async def answer(frame: dict) -> dict:
        tag = frame["payload"]["tag"]
        await gate[tag].wait()
        order.append(tag)
        return ok(frame, {"tag": tag})

    agent = await start_agent(relay, answer)
    calls = [asyncio.ensure_future(relay.request("fetch_prices", {"tag": t})) for t in tags]
    for t in reversed(tags):
        gate[t].set()
        await relay.wait_frame(lambda f, t=t: f.get("type") == "response" and f["data"]["tag"] == t, WAIT)
    results = await asyncio.gather(*calls)
    assert order == ["c", "b", "a"]
    assert [r["data"]["tag"] for r in results] == tags
    await agent.close()


async def test_silent_provider_dropped_and_pending_failed():
    """No heartbeat for longer than heartbeat_timeout: provider closed, its pending request fails."""
    async with ReferenceRelay(api_key="KEY", heartbeat_timeout=0.3) as relay:
        agent = await start_agent(relay, lambda f: _async(None))  # never answers, never heartbeats
        with pytest.raises(ProviderDisconnected, match="Provider disconnected"):
            await relay.request("fetch_chain", {"ticker": "AAPL"}, timeout=WAIT)
        assert not relay.provider_connected
        await asyncio.wait_for(agent.task, WAIT)  # the socket was closed from the relay's side
        assert agent.ws.close_code == 1000


async def test_heartbeats_keep_provider_alive():
    """A provider that heartbeats more often than heartbeat_timeout is not dropped."""
    async with ReferenceRelay(api_key="KEY", heartbeat_timeout=1.0) as relay:
        ws, _ = await auth(relay)
        for _ in range(13):  # 13 × 0.1 s: past one timeout, with 0.9 s of slack for a loaded machine
            await ws.send(json.dumps({"type": "heartbeat"}))
            assert await recv(ws) == {"type": "heartbeat_ack"}
            await asyncio.sleep(0.1)  # the passage of time is what this test is about
        assert relay.provider_connected
        await ws.close()


async def test_disconnect_fails_pending_as_500(relay, http):
    """An agent that disconnects with a request pending → that HTTP call gets 500 "Provider disconnected"."""
    agent = await start_agent(relay, lambda f: _async(None))
    call = asyncio.ensure_future(http.post(relay.http_url + "/options/relay/sell-scan", json={"ticker": "AAPL"}))
    await asyncio.wait_for(agent.got_request.wait(), WAIT)
    await agent.close()
    async with await call as resp:
        assert resp.status == 500
        assert await resp.json() == {"detail": "Provider disconnected"}


def tagged(name: str, gate: asyncio.Event | None = None) -> Handler:
    """A handler answering {"agent": name}; with a gate, fetch_chain waits for it first."""
    async def handler(frame: dict) -> dict:
        if gate is not None and frame["request_type"] == "fetch_chain":
            await asyncio.wait_for(gate.wait(), WAIT)
        return ok(frame, {"agent": name})
    return handler


async def until_routed(relay: ReferenceRelay, version: str) -> None:
    """Wait until requests go to the agent of ``version`` (the relay notices a closed socket on its own time)."""
    await relay._wait_until(lambda: relay.provider_version == version, WAIT)


async def test_second_agent_joins_and_the_highest_version_takes_requests(relay):
    """A second agent for the same user joins without dropping the first (whose pending request is still
    answered); requests go to the higher version, and back to the other one when it leaves."""
    gate = asyncio.Event()
    first = await start_agent(relay, tagged("original", gate), version="1.39.2")
    pending = asyncio.ensure_future(relay.request("fetch_chain", {"ticker": "AAPL"}, timeout=WAIT))
    await asyncio.wait_for(first.got_request.wait(), WAIT)
    second = await start_agent(relay, tagged("this"), version="2.0.0")
    assert [p["version"] for p in relay.providers] == ["1.39.2", "2.0.0"] and relay.provider_version == "2.0.0"
    assert (await relay.request("fetch_underlying", {"ticker": "SPY"}))["data"] == {"agent": "this"}
    gate.set()
    assert (await pending)["data"] == {"agent": "original"}          # not failed by the newcomer
    await second.close()
    await until_routed(relay, "1.39.2")
    assert (await relay.request("fetch_underlying", {"ticker": "SPY"}))["data"] == {"agent": "original"}
    assert relay.providers_seen == 2
    await first.close()


async def test_newcomer_with_a_lower_version_does_not_take_requests(relay):
    """An older agent connecting after a newer one joins but gets no requests; on equal versions the most
    recently connected one does; a version that is not dotted integers ties with any (the later one wins)."""
    newer = await start_agent(relay, tagged("2.0.0"), version="2.0.0")
    older = await start_agent(relay, tagged("1.39.2"), version="1.39.2")
    assert (await relay.request("ib_status"))["data"] == {"agent": "2.0.0"}
    twin = await start_agent(relay, tagged("2.0.0 later"), version="2.0.0")
    assert (await relay.request("ib_status"))["data"] == {"agent": "2.0.0 later"}
    assert routes.outranks("doctor", "2.0.0") and routes.outranks("2.0.0", "2.0.0")
    assert not routes.outranks("1.39.2", "2.0.0") and routes.outranks("2.0.10", "2.0.9")
    for agent in (newer, older, twin):
        await agent.close()


async def test_kick_provider_drops_every_agent(relay):
    """A relay restart (kick_provider) closes every connected agent of the user."""
    a, b = await start_agent(relay, version="1.0"), await start_agent(relay, version="2.0")
    assert await relay.kick_provider() is True
    await asyncio.wait_for(asyncio.gather(a.task, b.task), WAIT)
    assert relay.providers == [] and not relay.provider_connected


async def test_kick_provider_closes_and_fails_pending(relay):
    """kick_provider closes the agent's socket and fails what it had in hand."""
    agent = await start_agent(relay, lambda f: _async(None))
    pending = asyncio.ensure_future(relay.request("get_positions", {}, timeout=WAIT))
    await asyncio.wait_for(agent.got_request.wait(), WAIT)
    assert await relay.kick_provider() is True
    with pytest.raises(ProviderDisconnected):
        await pending
    await asyncio.wait_for(agent.task, WAIT)
    assert agent.ws.close_code == 1001
    assert await relay.kick_provider() is False


async def test_max_batch_size_is_stamped_when_set(relay):
    """With max_batch_size set, every request carries payload._max_batch_size."""
    relay.max_batch_size = 7
    agent = await start_agent(relay)
    reply = await relay.request("fetch_prices", {"contracts": []})
    assert reply["data"]["payload"]["_max_batch_size"] == 7
    await agent.close()


async def test_explicit_timeout_raises_request_timeout(relay):
    """request(timeout=...) overrides the relay's wait and raises RequestTimeout carrying the type."""
    agent = await start_agent(relay, lambda f: _async(None))
    with pytest.raises(RequestTimeout) as info:
        await relay.request("fetch_chain", {}, timeout=0.05)
    assert info.value.request_type == "fetch_chain" and info.value.timeout == 0.05
    await agent.close()


# --- pure parts -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rt,payload,expected", [
    ("fetch_chain", {}, 180.0), ("fetch-chain", {}, 180.0), ("sell_scan", {}, 120.0), ("fetch_prices", {}, 60.0),
    ("get_positions", {}, 20.0), ("get_open_orders", {}, 20.0), ("fetch_underlying", {}, 15.0),
    ("cancel_order", {}, 10.0), ("place_order", {"timeout_sec": 5}, 15.0), ("modify_order", {}, 40.0),
    ("place_order", {"timeout_sec": "junk"}, 40.0), ("place_order", {"timeout_sec": -3}, 40.0),
])
def test_request_timeouts_match_the_cloud(rt, payload, expected):
    """The relay's waits per request type are the cloud's (place/modify: timeout_sec + 10 s)."""
    assert routes.request_timeout(rt, payload) == expected
    assert routes.request_timeout(rt, payload, scale=0.5) == expected * 0.5


def test_query_to_payload_types_values():
    """GET query values become bools, ints and floats where they look like them."""
    assert routes.query_to_payload({"a": "true", "b": "15", "c": "2.5", "d": "x"}) == \
        {"a": True, "b": 15, "c": 2.5, "d": "x"}


def test_non_loopback_host_refused():
    """The relay refuses to listen anywhere but loopback."""
    with pytest.raises(ValueError):
        ReferenceRelay(host="0.0.0.0")


# --- CLI --------------------------------------------------------------------------------------------

def test_cli_prints_port_first_and_stops_on_sigterm():
    """python -m sim.relay prints "listening on 127.0.0.1:<port>" first and exits 0 on SIGTERM."""
    with subprocess.Popen([sys.executable, "-m", "sim.relay", "--port", "0", "--key", "K"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as proc:
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert re.fullmatch(r"listening on 127\.0\.0\.1:\d+\n", line), line
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=WAIT * 2) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
