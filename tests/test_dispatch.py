"""Dispatcher: routing, validation, deadlines, IB-not-connected, typed errors and concurrency."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from agent.dispatch import (IB_NOT_CONNECTED, AgentContext, Dispatcher, agent_state, register_core)
from agent.errors import IBDisconnected, IBError
from agent.orders import handlers as order_handlers
from agent.pacer import current_flow
from agent.protocol import FetchPricesPayload, TickerPayload
from agent.settings import load_settings
from agent.types import AccountPosition, Contract

KEY = "dispatch-key-0123456789"


class FakeBridge:
    def __init__(self, connected=True):
        self.connected = connected
        self.reconnecting = not connected
        self.status_message = "connected" if connected else "TWS not reachable"
        self.host, self.port = "127.0.0.1", 7497
        self.accounts = ["DU1234567"]
        self.is_paper = True
        self.farm_status = {"usfarm": True}
        self.data_available = connected
        self.read_only_session = False
        self.last_connected = 1700000000.0
        self.reconnects = []

    async def positions(self, timeout=15.0):
        return [AccountPosition("DU1234567", Contract.option("AAPL", "20260116", 200, "C").with_con_id(9), 2, 350.5)]

    async def reconnect(self, force=False):
        self.reconnects.append(force)
        return "reconnecting to TWS"


class FakePacer:
    lines_free, lines_budget, lines_in_use, lines_warm, line_reserve = 82, 90, 8, 8, 10


def make(connected=True) -> Dispatcher:
    ctx = AgentContext(load_settings({"IB_PROVIDER_KEY": KEY}), FakePacer(), FakeBridge(connected))
    d = Dispatcher(ctx)
    register_core(d)
    return d


def req(rtype, payload=None, rid="r1"):
    return {"type": "request", "request_id": rid, "request_type": rtype, "payload": payload or {}}


@pytest.mark.parametrize("connected", [True, False], ids=["connected", "disconnected"])
async def test_ib_status_says_what_the_bridge_says(connected):
    """ib-status (hyphenated) answers every field the relay expects with the bridge's own values, connected or not."""
    d = make(connected)
    b = d.ctx.bridge
    r = await d.handle(json.dumps(req("ib-status")))
    assert r["success"] is True and r["request_id"] == "r1"
    data = r["data"]
    assert data["connected"] is connected and data["reconnecting"] is (not connected)
    assert data["data_available"] is connected and data["message"] == b.status_message
    assert data["farm_status"] == {"usfarm": True} and data["read_only_session"] is False
    assert data["last_connected"] == 1700000000.0 and data["accounts"] == ["DU1234567"] and data["paper"] is True
    assert (data["host"], data["port"]) == ("127.0.0.1", 7497)
    assert (data["lines_in_use"], data["lines_warm"], data["lines_free"]) == (8, 8, 82)


async def test_get_positions_shape():
    """get_positions returns positions with the full contract dict and the account list."""
    r = await make().handle(req("get-positions", {"timeout_sec": 5}))
    pos = r["data"]["positions"][0]
    assert pos["contract"]["symbol"] == "AAPL" and pos["contract"]["conId"] == 9
    assert pos["contract"]["lastTradeDateOrContractMonth"] == "20260116" and pos["contract"]["right"] == "C"
    assert pos["position"] == 2 and pos["avgCost"] == 350.5 and r["data"]["accounts"] == ["DU1234567"]


async def test_ib_reconnect_calls_bridge():
    """ib_reconnect passes force through to the bridge and answers its message; success/connected (what the
    relay's route reads) and ok are true only when connected."""
    d = make(connected=False)
    r = await d.handle(req("ib_reconnect", {"force": True}))
    assert r["data"] == {"success": False, "connected": False, "reconnecting": True, "ok": False,
                         "message": "reconnecting to TWS"} and d.ctx.bridge.reconnects == [True]


async def test_unknown_type():
    """An unknown request type gets success:false naming the type and the known ones."""
    r = await make().handle(req("fetch_weather"))
    assert r["success"] is False and "fetch_weather" in r["error"] and "ib_status" in r["error"]


@pytest.mark.parametrize("raw", ["{not json", "[1,2]", json.dumps({"type": "request", "request_type": "ib_status"}),
                                 b"\xff\xfe"])
async def test_malformed_without_request_id_is_logged_not_answered(raw, caplog):
    """Bad JSON, a non-object or a frame without request_id gets no answer (nobody to answer) and a log line."""
    assert await make().handle(raw) is None
    assert "Ignored" in caplog.text


async def test_payload_not_an_object():
    """A payload that is not an object is answered success:false naming the payload."""
    r = await make().handle(req("ib_status") | {"payload": [1, 2]})
    assert r["success"] is False and "payload" in r["error"]


async def test_missing_request_type():
    """A frame with a request_id but no request_type is answered with a Malformed request error."""
    r = await make().handle({"type": "request", "request_id": "x"})
    assert r["success"] is False and r["request_id"] == "x" and "request_type" in r["error"]


async def test_invalid_payload_names_field():
    """An invalid payload is answered success:false naming the field and the problem."""
    d = make()

    async def h(ctx, p):
        return {}
    d.add("fetch_prices", FetchPricesPayload, h, 55)
    r = await d.handle(req("fetch-prices", {"contracts": [{"ticker": "AAPL", "strike": 100, "expiry": "2026-13-45"}]}))
    assert r["success"] is False and "expiry" in r["error"]
    r = await d.handle(req("fetch_prices", {"contracts": []}))
    assert "No contracts specified" in r["error"]


async def test_order_payloads_must_be_objects():
    """place_order's contract and order must be JSON objects; cancel_order's orderId a non-zero whole number."""
    d = make()
    order_handlers.register(d)
    bad = await d.handle(req("place_order", {"contract": "AAPL", "order": {"action": "BUY"}}))
    assert bad["success"] is False and "contract" in bad["error"]
    r = await d.handle(req("cancel-order", {"orderId": 0}))
    assert r["success"] is False and "orderId" in r["error"]


async def test_needs_ib_when_disconnected_answers_at_once():
    """A request that needs IB while TWS is down is answered at once with the not-connected guidance."""
    d = make(connected=False)
    called = []

    async def h(ctx, p):
        called.append(p)
        return {}
    d.add("check_availability", TickerPayload, h, 13)
    r = await d.handle(req("check_availability", {"ticker": "AAPL"}))
    assert r["error"] == IB_NOT_CONNECTED and called == []


async def test_deadline_expiry_answers_in_words():
    """A handler that outlives its deadline is cancelled and answered 'timed out after N s'."""
    d = make()
    cancelled = asyncio.Event()

    async def slow(ctx, p):
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
    d.add("fetch_chain", TickerPayload, slow, deadline=0.05)
    r = await d.handle(req("fetch-chain", {"ticker": "AAPL"}))
    assert r["success"] is False and "fetch_chain timed out after" in r["error"]
    assert cancelled.is_set() and d.in_flight == {}


async def test_deadline_from_payload():
    """A callable deadline is computed from the parsed payload (place/modify: timeout_sec + 8)."""
    d = make()
    order_handlers.register(d)
    route = d.routes["place_order"]

    class P:
        timeout_sec = 30
    assert route.deadline(P()) == 38


async def test_typed_errors_map_to_messages_with_code():
    """IBError carries its code beside the error; IBDisconnected mid-request reads as a retry hint."""
    d = make()

    async def ib_fail(ctx, p):
        raise IBError(200, 7, "No security definition has been found for the request")

    async def dropped(ctx, p):
        raise IBDisconnected("TWS connection lost during the request")

    async def bug(ctx, p):
        raise ZeroDivisionError("x")
    d.add("fetch_underlying", TickerPayload, ib_fail, 13)
    d.add("check_availability", TickerPayload, dropped, 13)
    d.add("sell_scan", TickerPayload, bug, 13)
    r = await d.handle(req("fetch_underlying", {"ticker": "ZZZZ"}))
    assert r["code"] == 200 and "no contract" in r["error"] and "No security definition" in r["error"]
    r = await d.handle(req("check_availability", {"ticker": "AAPL"}))
    assert "TWS connection lost" in r["error"] and "code" not in r
    r = await d.handle(req("sell_scan", {"ticker": "AAPL"}))
    assert r["success"] is False and "internal agent error" in r["error"]


async def test_concurrent_requests_each_own_flow():
    """Concurrent requests run together, each sees its own request id as the pacing flow, answers match ids."""
    d = make()
    gate = asyncio.Event()
    seen = {}

    async def h(ctx, p):
        seen[p.ticker] = current_flow.get()
        if len(seen) == 3:
            gate.set()
        await asyncio.wait_for(gate.wait(), 5)   # all three are in flight at the same time
        return {"ticker": p.ticker}
    d.add("check_availability", TickerPayload, h, 13)
    rs = await asyncio.gather(*(d.handle(req("check_availability", {"ticker": t}, rid=f"id-{t}"))
                                for t in ("AAA", "BBB", "CCC")))
    assert [r["request_id"] for r in rs] == ["id-AAA", "id-BBB", "id-CCC"]
    assert [r["data"]["ticker"] for r in rs] == ["AAA", "BBB", "CCC"]
    assert seen == {"AAA": "id-AAA", "BBB": "id-BBB", "CCC": "id-CCC"}
    assert current_flow.get() == "agent"


async def test_agent_state_fields():
    """agent_state carries the fields the relay caches, from bridge, pacer and settings."""
    d = make()
    st = agent_state(d.ctx, d)
    assert st["type"] == "agent_state" and st["ib_connected"] is True and st["ib_farms"] == {"usfarm": True}
    assert st["available_scan_lines"] == 82 and st["scan_batch_size"] == 80 and st["max_lines"] == 100
    assert (st["lines_in_use"], st["lines_warm"], st["lines_free"], st["lines_budget"]) == (8, 8, 82, 90)
    assert st["ib_account"] == "DU1234567" and st["paper"] is True


async def test_agent_state_carries_last_connected_and_reconnecting():
    """agent_state has last_connected (the relay's ib-status reads it) and the bridge's reconnecting flag."""
    d = make(connected=False)
    st = agent_state(d.ctx, d)
    assert st["last_connected"] == d.ctx.bridge.last_connected == 1700000000.0
    assert st["reconnecting"] is True and st["ib_connected"] is False


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                 max_size=4), max_leaves=12)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rtype=st.sampled_from(["ib_status", "fetch-prices", "place_order", "cancel-order", "get_positions", "nope",
                              "", 5, None]),
       payload=_json, rid=st.one_of(st.text(max_size=8), st.none(), st.integers()))
def test_garbage_frames_never_raise(rtype, payload, rid):
    """Any frame shape gets one well-formed response when it has a request_id (a non-blank string), and no answer
    (nobody to answer) only when it has none; never an exception."""
    d = make()

    async def h(ctx, p):
        return {"ok": True}
    d.add("fetch_prices", FetchPricesPayload, h, 55)
    frame = {"type": "request", "request_id": rid, "request_type": rtype, "payload": payload}
    r = asyncio.run(d.handle(json.dumps(frame)))
    if not (isinstance(rid, str) and rid.strip()):
        assert r is None
        return
    assert r is not None, frame
    assert r["type"] == "response" and r["request_id"] == rid and isinstance(r["success"], bool)
    assert (r["error"] is None) == r["success"]
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("raw, rid", [
    ({"request_id": "r1"}, "r1"), ('{"request_id": "r2", [[[', "r2"), (b'{"request_id": "r3"}', "r3"),
    ({"request_id": "x" * 201}, None), ({"request_id": "  "}, None), ({"request_id": 5}, None),
    ('{"request_id": "k-%s"}' % KEY, None), (42, None)], ids=["dict", "text", "bytes", "long-id", "blank-id",
                                                              "number-id", "id-with-key", "not-a-frame"])
async def test_a_dispatcher_bug_is_answered_under_an_answerable_id_only(raw, rid):
    """The last line of defence: the dispatcher failing on a frame answers 'internal agent error' under its
    request_id when that is a short, non-blank string without the key (read from the dict or the raw text), and
    answers nothing otherwise; it never raises."""
    d = make()

    async def bug(raw):
        raise RuntimeError("bug")
    d._handle = bug
    r = await d.handle(raw)
    if rid is None:
        assert r is None
    else:
        assert r["request_id"] == rid and r["success"] is False and "internal agent error" in r["error"]
