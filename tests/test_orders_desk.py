"""The order desk against the TWS simulator through the real ibapi client: every safety rule of issue 9."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from agent.errors import OrderRefused
from agent.orders.desk import Placement
from agent.orders.refs import request_ref
from sim.tws.probe import stock

from order_stack import desk_stack, sim_orders, until
from sim_probe import connected, run

def ticket_for(desk, contract: dict, order: dict, ref: str = "t-1"):
    chk = desk.check(contract, {"order_ref": ref, **order})
    assert chk.ok, chk.problems
    return chk.contract, chk.ticket


async def place(desk, contract: dict, order: dict, ref: str = "t-1", timeout: float = 5.0) -> Placement:
    c, t = ticket_for(desk, contract, order, ref)
    return await desk.place(c, t, timeout=timeout)


async def filled(r: Placement) -> Placement:
    """A marketable order's answer says Submitted or Filled (the fill follows Submitted within moments, but a
    starved machine may deliver it after the answer's short grace): wait until the book says Filled."""
    assert r.outcome == "placed" and r.entry.status in ("Submitted", "Filled")
    await until(lambda: r.entry.status == "Filled")
    return r


SPY = {"symbol": "SPY", "sec_type": "STK"}


async def test_market_order_fills_and_each_status_is_pushed_once():
    """A paper MKT buy fills; the answer says Filled with its price; each status change is pushed once."""
    async with desk_stack() as s:
        r = await filled(await place(s.desk, SPY, {"action": "BUY", "quantity": 10, "order_type": "MKT"}))
        assert r.entry.filled == 10
        ask = s.sim.market.stock_quote("SPY").ask
        assert abs(r.entry.avg_fill_price - ask) < 2.0
        a = r.answer()
        assert (a["status"], a["filled"], a["remaining"], a["orderRef"]) == ("Filled", 10.0, 0.0, "t-1")
        assert a["permId"] > 0 and a["orderId"] > 0
        assert sim_orders(s.sim, order_ref="t-1")[0].status == "Filled"
        mine = lambda: [e["status"] for e in s.events("order_status") if e["orderId"] == a["orderId"]]  # noqa: E731
        await until(lambda: mine()[-1:] == ["Filled"])         # pushed when its orderStatus arrives
        statuses = mine()
        assert statuses == ["PreSubmitted", "Submitted", "Filled"]
        assert [e["shares"] for e in s.events("execution")] == [10.0]


async def test_marketable_limit_fills_at_the_touch():
    """A buy limit above the ask fills at the ask."""
    async with desk_stack() as s:
        ask = s.sim.market.stock_quote("AAPL").ask
        r = await filled(await place(s.desk, {"symbol": "AAPL"}, {"action": "BUY", "quantity": 5,
                                                                  "order_type": "LMT", "lmt_price": round(ask + 1, 2)}))
        assert r.entry.avg_fill_price <= ask + 1


async def test_resting_limit_then_modify_then_cancel():
    """A buy limit far below the market rests; a change of price and size is confirmed; a cancel is confirmed."""
    async with desk_stack() as s:
        r = await place(s.desk, SPY, {"action": "BUY", "quantity": 10, "order_type": "LMT", "lmt_price": 100.0})
        oid = r.entry.order_id
        assert r.entry.status == "Submitted"
        c, t = ticket_for(s.desk, SPY, {"action": "BUY", "quantity": 12, "order_type": "LMT", "lmt_price": 101.5})
        m = await s.desk.modify(oid, c, t, timeout=5.0)
        assert (m["orderId"], m["status"], m["remaining"]) == (oid, "Submitted", 12.0)
        so = sim_orders(s.sim, order_id=oid)[0]
        assert (so.quantity, so.lmt_price, so.order_ref) == (12.0, 101.5, "t-1")     # the ref stays
        cx = await s.desk.cancel(oid)
        assert cx == {"ok": True, "orderId": oid, "status": "Cancelled"}
        assert so.status == "Cancelled" and s.desk.book.open_orders() == []


async def test_cancel_after_fill_says_filled_and_sends_nothing():
    """Cancelling an order that already filled answers ok:false status Filled; no cancel reaches TWS."""
    async with desk_stack() as s:
        r = await filled(await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "MKT"}))
        before = s.sim.stats()["messages_received"]
        cx = await s.desk.cancel(r.entry.order_id)
        assert cx["ok"] is False and cx["status"] == "Filled" and "filled before" in cx["message"]
        assert s.sim.stats()["messages_received"] == before


async def test_modify_of_a_filled_order_is_refused_with_its_final_state():
    """A filled order cannot change: the sentence gives its final state; nothing is sent."""
    async with desk_stack() as s:
        r = await filled(await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "MKT"}))
        c, t = ticket_for(s.desk, SPY, {"action": "BUY", "quantity": 2, "order_type": "MKT"})
        with pytest.raises(OrderRefused, match=r"is Filled \(1 of 1 at"):
            await s.desk.modify(r.entry.order_id, c, t, timeout=3.0)


async def test_partial_fills_push_every_fill():
    """With partial fills, each fill is one execution event and the statuses grow to Filled."""
    async with desk_stack(partial_fills=True) as s:
        exp = s.sim.market.expirations("MSFT")[1]
        opt = {"symbol": "MSFT", "sec_type": "OPT", "expiry": exp, "strike": 420, "right": "C"}
        r = await place(s.desk, opt, {"action": "BUY", "quantity": 61, "order_type": "MKT"}, timeout=2.0)
        oid = r.entry.order_id
        await until(lambda: s.desk.book.find(s.bridge.client_id, oid).status == "Filled", 20)
        fills = [e for e in s.events("execution") if e["orderId"] == oid]
        assert len(fills) >= 2 and sum(e["shares"] for e in fills) == 61
        states = [(e["status"], e["filled"]) for e in s.events("order_status") if e["orderId"] == oid]
        filled = [f for _, f in states]
        assert filled == sorted(filled) and states[-1] == ("Filled", 61) and len(states) == len(set(states))
        assert len([st for st in states if st[0] == "Submitted" and 0 < st[1] < 61]) >= 1


async def test_ib_rejections_come_back_as_sentences_with_code():
    """Off-tick price (110), unknown contract (200) and too big a buy (201): a sentence, IB's code, nothing live."""
    async with desk_stack() as s:
        with pytest.raises(OrderRefused) as e:
            await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT", "lmt_price": 100.004},
                        ref="a")
        assert e.value.code == 110 and "minimum price increment" in str(e.value)
        with pytest.raises(OrderRefused) as e:
            await place(s.desk, {"symbol": "NOSUCH"}, {"action": "BUY", "quantity": 1, "order_type": "MKT"}, ref="b")
        assert e.value.code == 200 and "NOSUCH" in str(e.value)
        with pytest.raises(OrderRefused) as e:
            await place(s.desk, SPY, {"action": "BUY", "quantity": 10_000, "order_type": "LMT", "lmt_price": 590},
                        ref="c")
        assert e.value.code == 201 and "EQUITY WITH LOAN" in str(e.value) and "Nothing was placed" in str(e.value)
        assert not s.sim.broker.orders


async def test_a_refused_order_may_be_placed_again_under_its_ref():
    """IB refused it before acknowledging (110): the same ref with a good price places the order."""
    async with desk_stack() as s:
        with pytest.raises(OrderRefused):
            await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT", "lmt_price": 100.004})
        r = await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT", "lmt_price": 100.0})
        assert r.outcome == "placed" and len(sim_orders(s.sim, order_ref="t-1")) == 1


async def test_the_orders_sent_carry_current_tws_attributes():
    """The desk's orders are never refused with 10268/10269 (eTradeOnly/firmQuoteOnly off): the sim checks them."""
    async with desk_stack() as s:
        await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "MKT"})
        codes = {e["code"] for e in s.sim.stats()["errors_sent"]}
        assert not codes & {10268, 10269}


async def test_read_only_api_answers_with_the_fix_and_data_keeps_working():
    """Read-Only API: the order is refused with the untick-Read-Only sentence (code 321); positions still work."""
    async with desk_stack(read_only=True) as s:
        with pytest.raises(OrderRefused) as e:
            await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "MKT"})
        assert e.value.code == 321 and "untick 'Read-Only API'" in str(e.value)
        assert s.bridge.read_only_session is True
        positions = await s.bridge.positions()
        assert {(p.contract.symbol, p.position) for p in positions} == {("AAPL", 100.0), ("JNPR", 300.0)}
        book = await s.desk.open_orders(5.0)
        assert book["orders"] == [] and "Read-Only" in book["warning"]


async def test_live_account_is_refused_without_allow_live_orders():
    """On a live account (U…) orders are refused naming ALLOW_LIVE_ORDERS; nothing reaches TWS."""
    async with desk_stack(accounts=("U7654321",)) as s:
        assert s.desk.order_policy_lines() == ["Orders: live account U7654321: refused (ALLOW_LIVE_ORDERS is not set)"]
        with pytest.raises(OrderRefused, match="ALLOW_LIVE_ORDERS=true"):
            await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "MKT"})
        assert not s.sim.broker.orders and not s.sim.stats()["orders"]


async def test_live_account_is_served_with_allow_live_orders():
    """ALLOW_LIVE_ORDERS=true: the live order is placed."""
    async with desk_stack(accounts=("U7654321",), env={"ALLOW_LIVE_ORDERS": "true"}) as s:
        assert s.desk.order_policy_lines() == ["Orders: live account U7654321: allowed (ALLOW_LIVE_ORDERS=true)"]
        await filled(await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "MKT"}))
        assert sim_orders(s.sim, account="U7654321")


async def test_the_same_ref_twice_places_one_order_sequentially_and_concurrently():
    """A re-delivered request (same ref) after the first finished, or while it is in flight: one order."""
    async with desk_stack() as s:
        first = await place(s.desk, SPY, {"action": "BUY", "quantity": 3, "order_type": "LMT", "lmt_price": 100.0},
                            ref=request_ref("req-1"))
        again = await place(s.desk, SPY, {"action": "BUY", "quantity": 3, "order_type": "LMT", "lmt_price": 100.0},
                            ref=request_ref("req-1"))
        assert again.outcome == "already" and again.entry.order_id == first.entry.order_id
        assert "not placed again" in again.answer()["message"] and again.answer()["alreadyPlaced"] is True
        both = await asyncio.gather(*(place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT",
                                                          "lmt_price": 99.0}, ref="twin") for _ in range(2)))
        assert {b.entry.order_id for b in both} == {both[0].entry.order_id}
        assert sorted(b.outcome for b in both) == ["already", "placed"]
        assert len(sim_orders(s.sim, order_ref="twin")) == 1 and len(sim_orders(s.sim)) == 2


async def test_an_order_from_an_earlier_run_is_found_after_a_restart():
    """A new bridge and desk (agent restarted) find the earlier order by its ref and do not place it again."""
    async with desk_stack() as s1:
        first = await filled(await place(s1.desk, SPY, {"action": "BUY", "quantity": 2, "order_type": "MKT"},
                                         ref="restart-1"))
        sim = s1.sim
        perm = first.entry.perm_id
        async with desk_stack(sim) as s2:
            again = await place(s2.desk, SPY, {"action": "BUY", "quantity": 2, "order_type": "MKT"}, ref="restart-1")
            assert again.outcome == "already" and again.entry.perm_id == perm and again.entry.status == "Filled"
            assert len(sim_orders(sim, order_ref="restart-1")) == 1


async def test_unconfirmed_order_is_unknown_not_failed_and_never_cancelled():
    """TWS withholds orderStatus: the answer is status Unknown with the orderId and what to check; the order is
    live in TWS and the desk sent no cancel."""
    async with desk_stack() as s:
        s.sim.withhold_order_status = True
        r = await place(s.desk, SPY, {"action": "BUY", "quantity": 4, "order_type": "LMT", "lmt_price": 100.0},
                        ref="quiet", timeout=0.6)
        a = r.answer()
        assert r.outcome == "unknown" and a["status"] == "Unknown" and a["orderId"] > 0
        assert "orderRef quiet" in a["message"] and "did not cancel" in a["message"]
        live = sim_orders(s.sim, order_ref="quiet")
        assert len(live) == 1 and live[0].status == "Submitted"
        again = await place(s.desk, SPY, {"action": "BUY", "quantity": 4, "order_type": "LMT", "lmt_price": 100.0},
                            ref="quiet", timeout=0.6)
        assert again.outcome == "already" and len(sim_orders(s.sim, order_ref="quiet")) == 1
        s.sim.withhold_order_status = False
        book = await s.desk.open_orders(5.0, force_refresh=True)
        assert [o["orderState"]["status"] for o in book["orders"] if o["order"]["orderRef"] == "quiet"] == \
            ["Submitted"]


async def test_book_and_positions_after_a_tws_reconnect():
    """A resting order and a fill survive TWS dropping us: after the reconnect the book lists the order (re-read)
    and positions include the fill."""
    async with desk_stack() as s:
        rest = await place(s.desk, SPY, {"action": "BUY", "quantity": 7, "order_type": "LMT", "lmt_price": 100.0},
                           ref="rest")
        await place(s.desk, {"symbol": "MSFT"}, {"action": "BUY", "quantity": 5, "order_type": "MKT"}, ref="fill")
        first_connection = s.bridge.connection_id
        await s.sim.drop_clients()
        await until(lambda: s.bridge.connected and s.bridge.connection_id != first_connection)
        await until(lambda: s.desk.synced)
        book = await s.desk.open_orders(5.0)
        assert [(o["orderId"], o["order"]["orderRef"]) for o in book["orders"]] == [(rest.entry.order_id, "rest")]
        positions = {p.contract.symbol: p.position for p in await s.bridge.positions()}
        assert positions["MSFT"] == 5 and positions["AAPL"] == 100


async def test_book_lists_orders_of_other_clients_and_by_hand_but_changes_only_its_own():
    """Orders of another API client and one typed into TWS are in the book (not changeable); cancelling another
    client's order is refused with a sentence naming the client ids."""
    async with desk_stack() as s:
        manual = s.sim.place_manual_order("SPY", "BUY", 2, "LMT", 100.0, order_ref="by-hand")
        async with connected(s.sim, 5) as other:
            o = __import__("ibapi.order", fromlist=["Order"]).Order()
            o.action, o.totalQuantity, o.orderType, o.lmtPrice, o.orderRef = "BUY", 1, "LMT", 100.0, "other-app"
            o.eTradeOnly = o.firmQuoteOnly = False
            other.client.placeOrder(s.bridge.client_id + 1000, stock("SPY"), o)
            await run(other.wait, "orderStatus", lambda e: e[1] == "Submitted")
            book = await s.desk.open_orders(5.0, force_refresh=True)
            rows = {r["order"]["orderRef"]: r for r in book["orders"]}
            assert set(rows) == {"by-hand", "other-app"} and manual.status == "Submitted"
            assert not rows["by-hand"]["changeable"] and not rows["other-app"]["changeable"]
            assert rows["by-hand"]["orderId"] == 0 and rows["other-app"]["clientId"] == 5
            with pytest.raises(OrderRefused, match="API client 5"):
                await s.desk.cancel(rows["other-app"]["orderId"])


async def test_client_zero_binds_orders_typed_into_tws_and_can_cancel_them():
    """IB_CLIENT_ID=0: the desk binds manual orders (negative ids) and can cancel one."""
    async with desk_stack(env={"IB_CLIENT_ID": "0"}) as s:
        manual = s.sim.place_manual_order("SPY", "BUY", 2, "LMT", 100.0, order_ref="by-hand")
        await until(lambda: manual.status == "Submitted")
        book = await s.desk.open_orders(5.0, force_refresh=True)
        row = [r for r in book["orders"] if r["order"]["orderRef"] == "by-hand"][0]
        assert row["orderId"] == manual.order_id < 0 and row["changeable"]
        cx = await s.desk.cancel(manual.order_id)
        assert cx["ok"] is True and manual.status == "Cancelled"


async def test_what_if_preview_places_nothing():
    """whatIf: margin and commission from TWS's what-if order state; no order exists afterwards."""
    async with desk_stack() as s:
        c, t = ticket_for(s.desk, {"symbol": "MSFT"}, {"action": "BUY", "quantity": 10, "order_type": "LMT",
                                                       "lmt_price": 400, "what_if": True})
        a = await s.desk.place(c, t, timeout=5.0)
        assert a["whatIf"] is True and a["status"] == "WhatIf" and a["initMarginChange"] > 0
        assert a["commission"] > 0 and "nothing was placed" in a["message"]
        assert not s.sim.broker.orders and s.desk.book.open_orders() == []


async def test_what_if_is_allowed_on_a_live_account_without_allow_live_orders():
    """A preview is never transmitted: it is not refused on a live account."""
    async with desk_stack(accounts=("U7654321",)) as s:
        c, t = ticket_for(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT", "lmt_price": 500,
                                        "what_if": True})
        assert (await s.desk.place(c, t, timeout=5.0))["whatIf"] is True


async def test_stopping_waits_for_an_order_in_flight_and_answers_with_its_state():
    """stop() while an order waits for TWS: the placement answers (Unknown, 'while the agent was stopping') within
    the stop wait; new orders are refused."""
    async with desk_stack() as s:
        s.sim.withhold_order_status = True
        task = asyncio.create_task(place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT",
                                                       "lmt_price": 100.0}, ref="late", timeout=30.0))
        await until(lambda: sim_orders(s.sim, order_ref="late"))
        await s.desk.stop(0.3)
        r = await asyncio.wait_for(task, 10)          # answered once the stop's wait ran out
        assert r.outcome == "unknown" and "while the agent was stopping" in r.message
        with pytest.raises(OrderRefused, match="stopping"):
            await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "MKT"}, ref="after")


async def test_tws_dropping_mid_placement_then_the_same_request_again_places_one_order():
    """TWS takes the order but drops us before confirming it, with an identical request waiting on the first: both
    answer Unknown (not failed); after the reconnect the same ref again finds the order in TWS's lists: one order."""
    async with desk_stack() as s:
        s.sim.withhold_order_status = True
        order = {"action": "BUY", "quantity": 2, "order_type": "LMT", "lmt_price": 100.0}
        first = asyncio.create_task(place(s.desk, SPY, order, ref="mid-drop", timeout=30.0))
        await until(lambda: sim_orders(s.sim, order_ref="mid-drop"))
        twin = asyncio.create_task(place(s.desk, SPY, order, ref="mid-drop", timeout=30.0))
        connection = s.bridge.connection_id
        await s.sim.drop_clients()
        r1, r2 = await asyncio.wait_for(asyncio.gather(first, twin), 10)
        assert r1.outcome == "unknown" and "dropped" in r1.message
        assert r2.entry.order_id == r1.entry.order_id
        await until(lambda: s.bridge.connected and s.bridge.connection_id != connection and s.desk.synced)
        again = await place(s.desk, SPY, order, ref="mid-drop")
        assert again.outcome == "already" and again.entry.order_id == r1.entry.order_id
        assert len(sim_orders(s.sim, order_ref="mid-drop")) == 1 and len(sim_orders(s.sim)) == 1


async def test_an_order_sent_while_tws_is_down_is_refused_as_not_placed():
    """With the connection gone the order is refused at once ('not placed'), nothing left in the book."""
    async with desk_stack() as s:
        c, t = ticket_for(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "MKT"}, ref="down")
        await s.sim.stop()
        await until(lambda: not s.bridge.connected)
        with pytest.raises(Exception) as e:
            await s.desk.place(c, t, timeout=1.0)
        assert "not connected" in str(e.value).lower()
        assert s.desk.book.find_ref("down") is None


def test_placement_answer_shape():
    """The place_order answer has the fields relay-protocol.md names."""
    from agent.orders.book import BookEntry
    from agent.types import Contract, OrderTicket
    e = BookEntry(17, 7, 900, Contract.stock("SPY"),
                  OrderTicket("BUY", 5, "LMT", 100.0, account="DU1", order_ref="r"), "Submitted", remaining=5.0)
    a = Placement(e, "placed", "ok").answer()
    assert {"orderId", "status", "filled", "remaining", "avgFillPrice", "permId", "warningText"} <= set(a)
    assert dataclasses.asdict(e.ticket)["order_ref"] == a["orderRef"] == "r"


async def test_a_warning_is_not_a_rejection():
    """An at-the-open order: TWS warns (399) and holds it PreSubmitted; the answer is a placed order carrying the
    warning, never a failure."""
    async with desk_stack() as s:
        r = await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT", "lmt_price": 100.0,
                                      "tif": "OPG"})
        a = r.answer()
        assert r.outcome == "placed" and a["status"] == "PreSubmitted" and "until the market opens" in a["warningText"]
        assert sim_orders(s.sim, order_ref="t-1")[0].status == "PreSubmitted"


async def test_the_book_is_re_read_after_tws_reports_data_lost():
    """An order cancelled while TWS told us nothing is seen as Cancelled after 1101 (the book is re-read) and
    the change is pushed once."""
    async with desk_stack() as s:
        r = await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT", "lmt_price": 100.0})
        so = sim_orders(s.sim, order_ref="t-1")[0]
        s.sim.withhold_order_status = True
        s.sim.cancel(so)
        s.sim.withhold_order_status = False
        assert r.entry.status == "Submitted"
        await s.sim.nightly_reset(data_lost=True, outage=0.05)
        await until(lambda: r.entry.status == "Cancelled")
        assert [e["status"] for e in s.events("order_status") if e["orderId"] == r.entry.order_id][-1] == "Cancelled"
        assert s.desk.book.open_orders() == []


async def test_each_order_outcome_is_one_console_line_without_the_key(caplog):
    """Placed, refused, changed and cancelled: one line each from agent.orders, naming account, side, quantity,
    symbol, type, price and ref; the provider key appears nowhere."""
    import logging
    caplog.set_level(logging.INFO, logger="agent.orders")
    async with desk_stack() as s:
        key = s.desk.settings.provider_key.get_secret_value()
        r = await place(s.desk, SPY, {"action": "BUY", "quantity": 2, "order_type": "LMT", "lmt_price": 100.0},
                        ref="line-1")
        c, t = ticket_for(s.desk, SPY, {"action": "BUY", "quantity": 3, "order_type": "LMT", "lmt_price": 100.5})
        await s.desk.modify(r.entry.order_id, c, t, timeout=5.0)
        await s.desk.cancel(r.entry.order_id)
        with pytest.raises(OrderRefused):
            await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT", "lmt_price": 100.004},
                        ref="line-2")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "agent.orders"]
    placed = [x for x in lines if x.startswith("Order placed:")]
    assert placed == [f"Order placed: DU1234567 BUY 2 SPY LMT 100 DAY ref line-1: order {r.entry.order_id}, "
                      f"Submitted (0 of 2 filled)"]
    assert len([x for x in lines if x.startswith("Order changed:")]) == 1
    assert len([x for x in lines if x.startswith("Order cancelled:")]) == 1
    rejected = [x for x in lines if x.startswith("Order rejected by IB:")]
    assert len(rejected) == 1 and "ref line-2" in rejected[0] and "110" in rejected[0]
    assert not any(key in x for x in lines)


async def test_an_unconfirmed_cancel_is_ok_with_a_warning():
    """TWS does not confirm a cancel in time: ok:true with a warning saying what to check (the cancel went out)."""
    async with desk_stack() as s:
        r = await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT", "lmt_price": 100.0})
        s.sim.withhold_order_status = True
        cx = await s.desk.cancel(r.entry.order_id)
        assert cx["ok"] is True and "did not confirm the cancel" in cx["warning"]
        assert sim_orders(s.sim, order_ref="t-1")[0].status == "Cancelled"


async def test_the_book_answers_without_asking_tws_unless_forced():
    """get_open_orders answers from the live book (no message to TWS); force_refresh re-reads TWS's lists."""
    async with desk_stack() as s:
        await place(s.desk, SPY, {"action": "BUY", "quantity": 1, "order_type": "LMT", "lmt_price": 100.0})
        before = s.sim.stats()["messages_received"]
        book = await s.desk.open_orders(5.0)
        assert book["source"] == "book" and book["live_order_count"] == 1
        assert s.sim.stats()["messages_received"] == before
        fresh = await s.desk.open_orders(5.0, force_refresh=True)
        assert fresh["source"] == "tws" and s.sim.stats()["messages_received"] > before
