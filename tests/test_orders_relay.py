"""Orders through the whole agent: the web app's HTTP routes → reference relay → daemon → TWS simulator."""

from __future__ import annotations

import asyncio

from sim.relay import ReferenceRelay
from sim.tws import SimConfig, TwsSimulator

from order_stack import KEY, agent_stack, sim_orders, start_agent, stop_agent, until

SPY = {"symbol": "SPY", "secType": "STK", "exchange": "SMART", "currency": "USD"}


def lmt(qty: int, price: float, **kw) -> dict:
    return {"action": "BUY", "totalQuantity": qty, "orderType": "LMT", "lmtPrice": price, **kw}


async def test_place_show_modify_cancel_through_the_web_routes():
    """place-order (resting LMT) → open-orders lists it → modify-order → cancel-order; events reach the relay."""
    async with agent_stack() as a:
        status, placed = await a.http("POST", "place-order", {"contract": SPY, "order": lmt(10, 100.0),
                                                              "timeout_sec": 10})
        assert status == 200 and placed["status"] == "Submitted" and placed["alreadyPlaced"] is False
        oid = placed["orderId"]
        assert placed["orderRef"].startswith("mat-")             # derived from the relay's request_id
        status, book = await a.http("GET", "open-orders")
        assert status == 200 and book["live_order_count"] == 1 and book["source"] == "book"
        row = book["orders"][0]
        assert (row["orderId"], row["order"]["lmtPrice"], row["orderState"]["status"], row["changeable"]) == \
            (oid, 100.0, "Submitted", True)
        status, changed = await a.http("POST", "modify-order", {"orderId": oid, "contract": SPY,
                                                                "order": lmt(10, 101.25), "timeout_sec": 10})
        assert status == 200 and changed["status"] == "Submitted"
        assert sim_orders(a.sim, order_id=oid)[0].lmt_price == 101.25
        status, cancelled = await a.http("POST", "cancel-order", {"orderId": oid})
        assert status == 200 and cancelled == {"ok": True, "orderId": oid, "status": "Cancelled"}
        await until(lambda: any(e["status"] == "Cancelled" for e in a.events("order_status")))
        seq = [e["status"] for e in a.events("order_status") if e["orderId"] == oid]
        assert seq[0] == "PreSubmitted" and seq[-1] == "Cancelled"
        assert all(x != y for x, y in zip(seq, seq[1:]))          # no status pushed twice in a row


async def test_market_order_fill_and_cancel_after_fill():
    """A paper MKT order fills (200, Filled, execution pushed); cancelling it then answers ok:false Filled."""
    async with agent_stack() as a:
        status, placed = await a.http("POST", "place-order", {"contract": SPY, "order": {
            "action": "BUY", "totalQuantity": 3, "orderType": "MKT"}})
        assert status == 200 and placed["status"] in ("Submitted", "Filled")      # the fill follows at once
        await until(lambda: any(e["status"] == "Filled" and e["filled"] == 3 for e in a.events("order_status")))
        await until(lambda: a.events("execution"))
        assert a.events("execution")[0]["orderId"] == placed["orderId"]
        status, cx = await a.http("POST", "cancel-order", {"orderId": placed["orderId"]})
        assert status == 200 and cx["ok"] is False and cx["status"] == "Filled"


async def test_bad_order_gets_every_problem_in_one_answer_and_reaches_nothing():
    """An order with several bad fields: HTTP 500 naming each field; the simulator saw no order."""
    async with agent_stack() as a:
        status, body = await a.http("POST", "place-order", {
            "contract": {"symbol": "AAPL", "secType": "OPT", "lastTradeDateOrContractMonth": "20200117",
                         "strike": 200},
            "order": {"action": "HOLD", "totalQuantity": -1, "orderType": "LMT"}})
        assert status == 500
        for field in ("contract.lastTradeDateOrContractMonth", "contract.right", "order.action",
                      "order.totalQuantity", "order.lmtPrice"):
            assert field in body["detail"]
        assert "Nothing was sent to TWS" in body["detail"]
        assert not a.sim.stats()["orders"]


async def test_an_order_field_the_agent_does_not_place_is_refused_not_dropped():
    """A bracket child (order.parentId) would be placed on its own, working at once, if the field were dropped:
    refused naming the field; the simulator saw no order."""
    async with agent_stack() as a:
        frame = await a.relay.request("place_order", {"contract": SPY, "order": {
            "action": "SELL", "totalQuantity": 2, "orderType": "STP", "auxPrice": 90.0, "parentId": 12}})
        assert frame["success"] is False and "order.parentId" in frame["error"]
        assert "Nothing was sent to TWS" in frame["error"] and not sim_orders(a.sim)

async def test_ib_rejection_carries_its_code_beside_the_sentence():
    """IB's 110 (price increment) comes back success:false with code 110 and a sentence to act on."""
    async with agent_stack() as a:
        frame = await a.relay.request("place_order", {"contract": SPY, "order": lmt(1, 100.004)})
        assert frame["success"] is False and frame["code"] == 110 and "minimum price increment" in frame["error"]


async def test_redelivered_request_places_one_order():
    """The relay sends the same request (same request_id) again, as after a dropped connection: one order.
    (The same id twice at once is covered at the desk: the relay keeps one waiter per id.)"""
    async with agent_stack() as a:
        payload = {"contract": SPY, "order": lmt(2, 100.0)}
        first = await a.relay.request("place_order", payload, request_id="rq-42")
        await a.relay.kick_provider()                        # the connection drops; the agent comes back
        await a.relay.wait_provider(10)
        again = await a.relay.request("place_order", payload, request_id="rq-42")
        assert first["success"] and again["success"]
        assert again["data"]["alreadyPlaced"] is True and again["data"]["orderId"] == first["data"]["orderId"]
        assert len(sim_orders(a.sim)) == 1


async def test_agent_restart_between_two_identical_requests_places_one_order():
    """Request rq-7 placed by one agent process; the agent restarts; rq-7 again: answered with the same order."""
    sim = TwsSimulator(SimConfig(port=0, latency="fast", seed=7))
    await sim.start()
    relay = ReferenceRelay(api_key=KEY, port=0)
    await relay.start()
    try:
        payload = {"contract": SPY, "order": {"action": "BUY", "totalQuantity": 4, "orderType": "MKT"}}
        _, task = await start_agent(sim, relay)
        first = await relay.request("place_order", payload, request_id="rq-7")
        await until(lambda: sim_orders(sim) and sim_orders(sim)[0].status == "Filled")
        await stop_agent(task)
        await relay.wait_no_provider(5)
        _, task = await start_agent(sim, relay)
        again = await relay.request("place_order", payload, request_id="rq-7")
        await stop_agent(task)
        assert again["data"]["status"] == "Filled" and again["data"]["alreadyPlaced"] is True
        assert again["data"]["permId"] == first["data"]["permId"] and len(sim_orders(sim)) == 1
    finally:
        await relay.stop()
        await sim.stop()


async def test_stopping_the_agent_answers_the_order_in_flight():
    """Ctrl+C (the daemon's task cancelled) while TWS has not confirmed an order: the relay still gets an answer
    saying the order's state is unknown (not 'Provider disconnected')."""
    async with agent_stack() as a:
        a.sim.withhold_order_status = True
        pending = asyncio.create_task(a.relay.request("place_order", {"contract": SPY, "order": lmt(1, 100.0),
                                                                      "timeout_sec": 60}))
        await until(lambda: sim_orders(a.sim))
        await stop_agent(a.task)
        frame = await pending
        assert frame["success"] is True and frame["data"]["status"] == "Unknown"
        assert "stopping" in frame["data"]["message"]


async def test_read_only_order_answers_the_fix_while_data_works():
    """Read-Only API: place-order is refused with the README's fix; positions still answer."""
    async with agent_stack(read_only=True) as a:
        status, body = await a.http("POST", "place-order", {"contract": SPY, "order": lmt(1, 100.0)})
        assert status == 500 and "untick 'Read-Only API'" in body["detail"]
        status, pos = await a.http("GET", "positions")
        assert status == 200 and {p["contract"]["symbol"] for p in pos["positions"]} == {"AAPL", "JNPR"}


async def test_live_guard_through_the_relay():
    """A live login without ALLOW_LIVE_ORDERS: place-order refused naming the setting; the simulator saw nothing."""
    async with agent_stack(accounts=("U7654321",)) as a:
        status, body = await a.http("POST", "place-order", {"contract": SPY, "order": lmt(1, 100.0)})
        assert status == 500 and "ALLOW_LIVE_ORDERS=true" in body["detail"]
        assert not a.sim.stats()["orders"]
