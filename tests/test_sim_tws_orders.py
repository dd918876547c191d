"""The TWS simulator's orders driven by the real ibapi client (a threaded probe): fills, rests, cancels, what-if,
read-only, manual orders, and the errors TWS 10 gives."""

from __future__ import annotations

import pytest
from ibapi.order import Order

from sim.tws.probe import option, stock

from sim_probe import connected, is_tick, order, run, until


# ---- orders -----------------------------------------------------------------------------------------------

async def test_market_order_fills_with_status_sequence_execution_and_position(sim):
    """MKT buy: PreSubmitted → Submitted → Filled, execDetails + commissionReport with orderRef, position pushed."""
    exp = sim.market.expirations("AAPL")[2]
    async with connected(sim) as p:
        p.client.reqPositions()
        await run(p.wait, "positionEnd")
        p.client.placeOrder(1, option("AAPL", exp, 230.0, "C"), order("BUY", 2, ref="scan-7"))
        filled = await run(p.wait, "orderStatus", lambda e: e[0] == 1 and e[1] == "Filled")
        statuses = [e[1] for e in p.history if e.name == "orderStatus" and e[0] == 1]
        assert statuses[:2] == ["PreSubmitted", "Submitted"] and statuses[-1] == "Filled"
        assert filled[2] == 2 and filled[3] == 0 and filled[4] > 0
        ex = await run(p.wait, "execDetails")
        assert ex[2].orderRef == "scan-7" and ex[2].side == "BOT" and ex[2].shares == 2
        assert ex[2].permId == filled[5] and ex[2].permId > 0
        cr = await run(p.wait, "commissionReport")
        assert cr[0].execId == ex[2].execId and cr[0].commission == pytest.approx(1.30)
        pos = await run(p.wait, "position", lambda e: e[1].secType == "OPT")
        assert pos[2] == 2 and pos[1].strike == 230.0
        assert sim.stats()["orders"][0]["status"] == "Filled"


async def test_limit_order_rests_then_cancel_reports_cancelled(sim):
    """A buy limit far below the market rests (Submitted), shows in reqOpenOrders, cancels with 202."""
    async with connected(sim) as p:
        p.client.placeOrder(3, stock("SPY"), order("BUY", 10, "LMT", 100.0, ref="rest"))
        await run(p.wait, "orderStatus", lambda e: e[0] == 3 and e[1] == "Submitted")
        p.client.reqOpenOrders()
        evs = await run(p.collect, "openOrderEnd")
        opens = [e for e in evs if e.name == "openOrder"]
        assert opens and opens[-1][2].orderRef == "rest" and opens[-1][3].status == "Submitted"
        p.client.cancelOrder(3)
        await run(p.wait, "orderStatus", lambda e: e[0] == 3 and e[1] == "Cancelled")
        assert (await run(p.error_for, 3))[1] == 202
        p.client.reqCompletedOrders(False)
        done = [e for e in await run(p.collect, "completedOrdersEnd") if e.name == "completedOrder"]
        assert done and done[-1][2].status == "Cancelled" and done[-1][1].orderRef == "rest"
        p.client.cancelOrder(99)
        assert (await run(p.error_for, 99))[1] == 10147


async def test_resting_limit_fills_when_market_reaches_it(sim):
    """A sell limit at the current bid is marketable and fills at the bid."""
    async with connected(sim) as p:
        bid = sim.market.stock_quote("JNPR").bid
        p.client.placeOrder(4, stock("JNPR"), order("SELL", 100, "LMT", round(bid - 0.50, 2)))
        filled = await run(p.wait, "orderStatus", lambda e: e[0] == 4 and e[1] == "Filled")
        assert filled[4] >= bid - 0.50


async def test_partial_fills_take_the_size_at_the_touch(make_sim):
    """partial_fills=True: a 61-lot (more than any quoted size) fills in pieces, then Filled at the average."""
    sim = await make_sim(partial_fills=True)
    exp = sim.market.expirations("MSFT")[1]
    async with connected(sim) as p:
        p.client.placeOrder(30, option("MSFT", exp, 420.0, "C"), order("BUY", 61))
        done = await run(p.wait, "orderStatus", lambda e: e[0] == 30 and e[1] == "Filled", 20.0)
        execs = [e for e in p.history if e.name == "execDetails" and e[2].orderId == 30]
        assert len(execs) >= 2 and sum(e[2].shares for e in execs) == 61
        assert [e[2].cumQty for e in execs] == sorted(e[2].cumQty for e in execs)
        partial = [e for e in p.history if e.name == "orderStatus" and e[0] == 30 and 0 < e[2] < 61]
        assert partial and all(e[1] == "Submitted" for e in partial)
        vwap = sum(e[2].shares * e[2].price for e in execs) / 61
        assert done[4] == pytest.approx(vwap)


async def test_what_if_returns_margin_and_places_nothing(sim):
    """A what-if order answers openOrder with whatIf and margin fields; no order is placed or filled."""
    async with connected(sim) as p:
        p.client.placeOrder(5, stock("MSFT"), order("BUY", 10, what_if=True))
        ev = await run(p.wait, "openOrder", lambda e: e[0] == 5)
        assert ev[2].whatIf and float(ev[3].initMarginChange) > 0 and float(ev[3].maintMarginAfter) > 0
        p.client.reqOpenOrders()
        evs = await run(p.collect, "openOrderEnd")
        assert not [e for e in evs if e.name == "openOrder"]
        assert not [e for e in p.history if e.name in ("orderStatus", "execDetails")]
        assert sim.stats()["orders"][0]["what_if"] is True and not sim.broker.orders


async def test_read_only_refuses_orders_hides_them_but_keeps_data(make_sim):
    """Read-Only API: placeOrder/cancelOrder get 321, order lists are just end markers, data still flows."""
    sim = await make_sim()
    async with connected(sim) as p:
        p.client.placeOrder(6, stock("SPY"), order("BUY", 1, "LMT", 100.0))
        await run(p.wait, "orderStatus", lambda e: e[0] == 6 and e[1] == "Submitted")
        sim.set_read_only(True)
        p.client.placeOrder(7, stock("SPY"), order("BUY", 1))
        ev = await run(p.error_for, 7)
        assert ev[1] == 321 and ev[2] == ("Error validating request.-'bN' : cause - The API interface is "
                                          "currently in Read-Only mode.")
        p.client.cancelOrder(6)
        assert (await run(p.error_for, 6))[1] == 321
        for req, end in ((p.client.reqOpenOrders, "openOrderEnd"),
                         (lambda: p.client.reqCompletedOrders(False), "completedOrdersEnd")):
            p.drain()
            req()
            evs = await run(p.collect, end)
            assert not [e for e in evs if e.name in ("openOrder", "completedOrder")]
        p.client.reqPositions()
        assert [e for e in await run(p.collect, "positionEnd") if e.name == "position"]
        p.client.reqMktData(1, stock("SPY"), "", False, False, [])
        await run(p.wait, "tickPrice", is_tick(1, 1))


async def test_auto_open_orders_binds_only_for_client_zero(sim):
    """reqAutoOpenOrders from client 0 lists open orders of all clients and follows them; others get 321."""
    async with connected(sim, 0) as master, connected(sim, 2) as other:
        other.client.placeOrder(21, stock("SPY"), order("BUY", 1, "LMT", 100.0, ref="seen-by-0"))
        await run(other.wait, "orderStatus", lambda e: e[0] == 21 and e[1] == "Submitted")
        master.client.reqAutoOpenOrders(True)
        evs = await run(master.collect, "openOrderEnd")
        assert [e[2].orderRef for e in evs if e.name == "openOrder"] == ["seen-by-0"]
        other.client.cancelOrder(21)
        await run(master.wait, "orderStatus", lambda e: e[0] == 21 and e[1] == "Cancelled")
        other.client.reqAutoOpenOrders(True)
        assert (await run(other.wait, "error", lambda e: e[1] == 321))[0] == -1


async def test_executions_are_reported_with_filter(sim):
    """reqExecutions replays fills (with commission reports) filtered by symbol, then execDetailsEnd."""
    async with connected(sim) as p:
        p.client.placeOrder(8, stock("SPY"), order("BUY", 5, ref="a"))
        p.client.placeOrder(9, stock("MSFT"), order("BUY", 5, ref="b"))
        for oid in (8, 9):
            await run(p.wait, "orderStatus", lambda e, oid=oid: e[0] == oid and e[1] == "Filled")
        from ibapi.execution import ExecutionFilter
        f = ExecutionFilter()
        f.symbol = "MSFT"
        p.client.reqExecutions(77, f)
        evs = await run(p.collect, "execDetailsEnd", lambda e: e[0] == 77)
        ex = [e for e in evs if e.name == "execDetails" and e[0] == 77]
        assert len(ex) == 1 and ex[0][1].symbol == "MSFT" and ex[0][2].orderRef == "b"


async def test_ibapi_default_order_attributes_are_rejected_as_tws_10_does(sim):
    """ibapi 9.81's default Order (eTradeOnly, firmQuoteOnly = True) gets 10268, then 10269; nothing is placed."""
    async with connected(sim) as p:
        o = Order()
        o.action, o.totalQuantity, o.orderType, o.lmtPrice = "BUY", 1, "LMT", 100.0
        p.client.placeOrder(51, stock("SPY"), o)
        assert (await run(p.error_for, 51))[1] == 10268
        o.eTradeOnly = False
        p.client.placeOrder(52, stock("SPY"), o)
        assert (await run(p.error_for, 52))[1] == 10269
        assert not sim.broker.orders


async def test_off_tick_limit_price_gets_110(sim):
    """A limit price finer than the contract's tick is refused with 110; a nickel JNPR option over $3 too."""
    async with connected(sim) as p:
        p.client.placeOrder(53, stock("SPY"), order("BUY", 1, "LMT", 100.004))
        ev = await run(p.error_for, 53)
        assert ev[1] == 110 and "minimum price variation" in ev[2]
        exp = sim.market.expirations("JNPR")[0]
        p.client.placeOrder(54, option("JNPR", exp, 35.0, "C"), order("BUY", 1, "LMT", 4.02))
        assert (await run(p.error_for, 54))[1] == 110
        assert not sim.broker.orders


async def test_several_accounts_need_an_account_on_each_order(make_sim):
    """With two managed accounts an order without an account gets 435; naming one places it there."""
    sim = await make_sim(accounts=("DU111", "DU222"))
    async with connected(sim) as p:
        p.client.placeOrder(55, stock("SPY"), order("BUY", 1, "LMT", 100.0))
        assert (await run(p.error_for, 55))[1] == 435
        p.client.placeOrder(56, stock("SPY"), order("BUY", 1, "LMT", 100.0, account="DU222"))
        await run(p.wait, "orderStatus", lambda e: e[0] == 56 and e[1] == "Submitted")
        assert sim.broker.orders[(p.client_id, 56)].account == "DU222"


async def test_modifying_a_filled_order_gets_104(sim):
    """placeOrder again with a filled order's id: error 104, the fill stands."""
    async with connected(sim) as p:
        p.client.placeOrder(57, stock("SPY"), order("BUY", 1))
        await run(p.wait, "orderStatus", lambda e: e[0] == 57 and e[1] == "Filled")
        p.client.placeOrder(57, stock("SPY"), order("BUY", 2))
        assert (await run(p.error_for, 57))[1] == 104
        assert sim.broker.orders[(p.client_id, 57)].filled == 1


async def test_withheld_order_status_hides_a_working_order_from_its_client(sim):
    """withhold_order_status: the order works (the order list shows it) but no status or fill is pushed."""
    sim.withhold_order_status = True
    async with connected(sim) as p:
        p.client.placeOrder(58, stock("SPY"), order("BUY", 10, "LMT", 100.0, ref="hidden"))
        p.client.reqCurrentTime()
        await run(p.wait, "currentTime")
        await until(lambda: getattr(sim.broker.orders.get((p.client_id, 58)), "status", None) == "Submitted")
        assert sim.broker.orders[(p.client_id, 58)].status == "Submitted"
        assert not [e for e in p.history if e.name in ("openOrder", "orderStatus")]
        p.client.reqAllOpenOrders()
        evs = await run(p.collect, "openOrderEnd")
        assert [e[2].orderRef for e in evs if e.name == "openOrder"] == ["hidden"]


async def test_a_buy_beyond_the_accounts_equity_gets_201(sim):
    """A buy needing more initial margin than the account's equity is rejected with 201 (nothing placed)."""
    async with connected(sim) as p:
        p.client.placeOrder(59, stock("SPY"), order("BUY", 10_000, "LMT", 590.0))
        ev = await run(p.error_for, 59)
        assert ev[1] == 201 and ev[2].startswith("Order rejected - reason:")
        assert not sim.broker.orders


async def test_manual_orders_show_id_zero_and_bind_to_client_zero(sim):
    """An order typed into TWS: reqAllOpenOrders shows it with id 0; client 0 bound by reqAutoOpenOrders sees a
    negative id and may cancel it; another client cannot."""
    manual = sim.place_manual_order("SPY", "BUY", 5, "LMT", 100.0, order_ref="by-hand")
    async with connected(sim, 4) as other, connected(sim, 0) as master:
        other.client.reqAllOpenOrders()
        evs = await run(other.collect, "openOrderEnd")
        opens = [e for e in evs if e.name == "openOrder"]
        assert [(e[0], e[2].clientId, e[2].orderRef) for e in opens] == [(0, 0, "by-hand")]
        master.client.reqAutoOpenOrders(True)
        evs = await run(master.collect, "openOrderEnd")
        assert [e[0] for e in evs if e.name == "openOrder"] == [manual.order_id] and manual.order_id < 0
        other.client.cancelOrder(manual.order_id)
        assert (await run(other.error_for, manual.order_id))[1] == 10147
        master.client.cancelOrder(manual.order_id)
        await run(master.wait, "orderStatus", lambda e: e[0] == manual.order_id and e[1] == "Cancelled")
        assert manual.status == "Cancelled"
