"""The order book and orderRef rules (agent/orders/book.py, refs.py): pure, no sockets."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from agent.orders.book import OrderBook
from agent.orders.refs import file_ref, own_ref_of, request_ref
from agent.types import Contract, ExecutionInfo, OrderInfo, OrderMessage, OrderStatusInfo, OrderTicket

AAPL = Contract.stock("AAPL")
TICKET = OrderTicket(action="BUY", quantity=100, order_type="LMT", lmt_price=210.5, account="DU1", order_ref="r1")


def info(order_id=7, client_id=17, perm_id=900, status="PreSubmitted", ref="r1", **kw) -> OrderInfo:
    t = OrderTicket(**{**TICKET.__dict__, "order_ref": ref})
    return OrderInfo(order_id=order_id, client_id=client_id, perm_id=perm_id, contract=AAPL, ticket=t,
                     status=status, **kw)


def status(order_id=7, st_="Submitted", filled=0.0, remaining=100.0, avg=0.0, perm_id=900, client_id=17):
    return OrderStatusInfo(order_id, st_, filled, remaining, avg, perm_id, client_id)


def test_request_refs_are_stable_short_and_distinct():
    """The same request id gives the same ref; different ids differ; refs are short and printable."""
    a, b = request_ref("9b2c-1"), request_ref("9b2c-2")
    assert a == request_ref("9b2c-1") and a != b
    assert a.startswith("mat-") and len(a) <= 40 and a.isprintable()
    assert request_ref("\ud800" * 1000).isascii()          # any request id, even one no encoder can write


def test_file_refs_are_a_hash_of_the_order_and_its_own_ref():
    """A file line's ref is a hash of what the order asks for, plus the line's own ref when it has one (hashed when
    it is not a plain word); neither the file nor the line's place in it enter."""
    order = '["AAPL","STK","BUY",10.0,"LMT",150.0]'
    r = file_ref(order, None)
    assert r.startswith("of-") and len(r) <= 40 and r == file_ref(order, None)
    assert r != file_ref(order.replace("10.0", "11.0"), None)
    own = file_ref(order, "a1")
    assert own.endswith("-a1") and own != r and own != file_ref(order, "a2")
    odd = file_ref(order, "a b/c\n" * 20)
    assert len(odd) <= 36 and odd.isprintable() and " " not in odd and odd != file_ref(order, "a b/c")


def test_a_file_refs_own_ref_is_read_back_exactly():
    """The line's own ref is read back whole, dashes and all, so ref '1' is not mistaken for 'aapl-1'."""
    order = '["AAPL"]'
    assert own_ref_of(file_ref(order, "aapl-1")) == "aapl-1" and own_ref_of(file_ref(order, "1")) == "1"
    assert own_ref_of(file_ref(order, None)) is None and own_ref_of(request_ref("r1")) is None
    assert own_ref_of("") is None and own_ref_of("of-") is None


def test_status_changes_are_reported_once():
    """TWS repeats orderStatus: an unchanged status gives no event, a change (fill) gives one."""
    book = OrderBook(clock=lambda: 1000.0)
    book.expect(17, 7, AAPL, TICKET)
    ev = book.on_status(status())
    assert ev == {"event": "order_status", "orderId": 7, "status": "Submitted", "filled": 0.0, "remaining": 100.0,
                  "avgFillPrice": 0.0, "ts": 1000.0, "permId": 900, "clientId": 17, "orderRef": "r1",
                  "account": "DU1", "symbol": "AAPL"}
    assert book.on_status(status()) is None
    assert book.on_open_order(info(status="Submitted")) is None
    assert book.on_status(status(st_="Filled", filled=100, remaining=0, avg=210.4))["status"] == "Filled"


def test_an_open_order_saying_filled_before_its_status_leaves_nothing_remaining():
    """Execution, then openOrder (Filled), before the orderStatus: the entry reads Filled, 100 filled, 0 remaining
    (seen on a starved machine: the answer said 'Filled' with 100 remaining)."""
    book = OrderBook()
    book.expect(17, 7, AAPL, TICKET)
    book.on_execution(ExecutionInfo("e9", 7, 17, 900, AAPL, "BOT", 100, 210.4, 100, 210.4, "r1", "DU1"))
    book.on_open_order(info(status="Filled"))
    e = book.find(17, 7)
    assert (e.status, e.filled, e.remaining, e.avg_fill_price) == ("Filled", 100.0, 0.0, 210.4)


def test_open_order_then_status_is_one_change():
    """openOrder (Filled, no fill price) then orderStatus (Filled at 210.4): one event, from the orderStatus."""
    book = OrderBook()
    assert book.on_open_order(info(status="Filled")) is None
    ev = book.on_status(status(st_="Filled", filled=100, remaining=0, avg=210.4))
    assert (ev["status"], ev["avgFillPrice"]) == ("Filled", 210.4)
    assert book.on_status(status(st_="Filled", filled=100, remaining=0, avg=210.4)) is None


def test_expected_order_is_found_by_ref_before_tws_answers():
    """An order sent but not yet acknowledged blocks its ref (a re-delivered request must not place again)."""
    book = OrderBook()
    e = book.expect(17, 7, AAPL, TICKET)
    assert book.find_ref("r1") is e and e.status == "" and not e.acknowledged
    assert book.find_ref("other") is None


def test_a_rejected_unacknowledged_order_frees_its_ref():
    """IB refused it before acknowledging it (e.g. 110): nothing is live, the ref may be used again."""
    book = OrderBook()
    book.expect(17, 7, AAPL, TICKET)
    e = book.on_message(OrderMessage(7, 110, "price does not conform"), client_id=17)
    assert e is not None and e.rejected is not None and book.find_ref("r1") is None


def test_a_warning_does_not_reject():
    """A warning (399) leaves the order live and its ref taken; the text is kept."""
    book = OrderBook()
    book.expect(17, 7, AAPL, TICKET)
    e = book.on_message(OrderMessage(7, 399, "Order Message: will be placed at the open"), client_id=17)
    assert e.rejected is None and "placed at the open" in e.warning_text and book.find_ref("r1") is e


def test_a_rejection_after_acknowledgement_keeps_the_ref():
    """Once TWS acknowledged the order, a later rejection does not free its ref (it may have been live)."""
    book = OrderBook()
    book.expect(17, 7, AAPL, TICKET)
    book.on_open_order(info())
    book.on_message(OrderMessage(7, 201, "Order rejected - reason: margin"), client_id=17)
    assert book.find_ref("r1") is not None


def test_orders_of_other_clients_and_manual_orders_are_kept_apart():
    """Order id 7 of client 17 and of client 3, and manual orders (id 0) with different permIds: four entries."""
    book = OrderBook()
    book.on_open_order(info(7, 17, 900, ref="a"))
    book.on_open_order(info(7, 3, 901, ref="b"))
    book.on_open_order(info(0, 0, 902, ref=""))
    book.on_open_order(info(0, 0, 903, ref=""))
    assert len(book.open_orders()) == 4
    assert book.find(17, 7).perm_id == 900 and book.find(3, 7).perm_id == 901
    assert book.find_perm(903).order_id == 0


def test_completed_orders_leave_the_open_list_but_keep_their_ref():
    """A completed (Filled) order is not open; its ref still blocks a repeat."""
    book = OrderBook()
    book.on_open_order(info())
    ev = book.on_completed(info(status="Filled", completed=True, filled=100.0))
    assert (ev["status"], ev["filled"], ev["remaining"]) == ("Filled", 100.0, 0.0)
    assert book.open_orders() == [] and book.find_ref("r1").status == "Filled"
    assert book.find_ref("r1").filled == 100.0


def test_executions_are_new_once_and_create_an_entry_when_needed():
    """The same execId twice is one execution event; an execution of an unknown order makes its ref known."""
    book = OrderBook(clock=lambda: 5.0)
    ex = ExecutionInfo("e1", 9, 17, 950, AAPL, "BOT", 10, 210.0, 10, 210.0, "from-yesterday", "DU1")
    ev = book.on_execution(ex)
    assert ev == {"event": "execution", "orderId": 9, "symbol": "AAPL", "side": "BOT", "shares": 10.0,
                  "price": 210.0, "ts": 5.0, "execId": "e1", "permId": 950, "orderRef": "from-yesterday",
                  "account": "DU1"}
    assert book.on_execution(ex) is None
    assert book.find_ref("from-yesterday").filled == 10.0


def test_what_if_answers_never_enter_the_book():
    """A what-if openOrder is a preview: not an order, no event, no ref taken."""
    book = OrderBook()
    preview = OrderInfo(order_id=8, client_id=17, perm_id=0, contract=AAPL,
                        ticket=OrderTicket("BUY", 1, "LMT", 1.0, what_if=True, order_ref="w"), status="PreSubmitted",
                        margin={"initMarginChange": 10.0})
    assert book.on_open_order(preview) is None and book.find_ref("w") is None and book.open_orders() == []


def test_sync_marks_open_orders_tws_no_longer_lists():
    """After a full sync, an open order TWS neither lists as open nor as completed is no longer shown as open."""
    book = OrderBook()
    book.on_open_order(info(7, 17, 900, ref="gone"))
    book.on_open_order(info(8, 17, 901, ref="stays"))
    gen = book.begin_sync()
    book.on_open_order(info(8, 17, 901, ref="stays"))
    book.end_sync(gen)
    assert [e.order_ref for e in book.open_orders()] == ["stays"]
    assert book.find_ref("gone").status == "Unknown"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["PreSubmitted", "Submitted", "Filled", "Cancelled"]),
                          st.integers(0, 100)), max_size=30))
def test_events_equal_distinct_consecutive_states(updates):
    """Any stream of orderStatus repeats yields exactly one event per change of (status, filled, remaining)."""
    book = OrderBook()
    book.expect(17, 7, AAPL, TICKET)
    events, last, expected = [], None, 0
    for s, filled in updates:
        key = (s, float(filled), float(100 - filled))
        if key != last:
            expected += 1
            last = key
        ev = book.on_status(status(st_=s, filled=filled, remaining=100 - filled))
        if ev is not None:
            events.append(ev)
    assert len(events) == expected
