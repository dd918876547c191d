"""Order validation (agent/orders/validation.py): pure rules, one sentence per problem naming the field."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings, strategies as st

from agent.orders.validation import (FILE_FIELDS, RELAY_FIELDS, check_order, relay_order_fields,
                                     unsupported_relay_fields)

TODAY = dt.date(2026, 12, 1)
ACCOUNTS = ["DU1234567"]
STOCK = {"symbol": "AAPL", "sec_type": "STK"}
LMT = {"action": "BUY", "quantity": 100, "order_type": "LMT", "lmt_price": 210.5}


def check(contract=None, order=None, accounts=ACCOUNTS, fields=RELAY_FIELDS):
    return check_order({**STOCK, **(contract or {})}, {**LMT, **(order or {})}, today=TODAY, accounts=accounts,
                       fields=fields)


def one_problem(chk) -> str:
    assert len(chk.problems) == 1, chk.problems
    return chk.problems[0]


def test_a_good_limit_order_passes_and_is_normalised():
    """BUY 100 AAPL LMT 210.5: no problems; the ticket and contract carry the values; the one account is used."""
    chk = check(order={"action": "buy", "order_type": "lmt", "tif": "gtc"})
    assert chk.ok and chk.problems == []
    t = chk.ticket
    assert (t.action, t.quantity, t.order_type, t.lmt_price, t.tif, t.account) == \
        ("BUY", 100.0, "LMT", 210.5, "GTC", "DU1234567")
    assert (chk.contract.symbol, chk.contract.sec_type, chk.contract.exchange, chk.contract.currency) == \
        ("AAPL", "STK", "SMART", "USD")


@pytest.mark.parametrize("qty, says", [(0, "more than 0"), (-5, "more than 0"), ("abc", "must be a number"),
                                       (None, "is missing"), (1.5, "whole number"), (float("nan"), "finite number"),
                                       (True, "must be a number"), (2_000_000, "at most 1,000,000")])
def test_quantity_must_be_a_positive_whole_number(qty, says):
    """totalQuantity <= 0, not a number, missing, fractional or absurd: one sentence naming order.totalQuantity."""
    p = one_problem(check(order={"quantity": qty}))
    assert p.startswith("order.totalQuantity") and says in p


@pytest.mark.parametrize("otype", ["LMT", "STP LMT", "LOC", "LMT PRT"])
def test_limit_types_need_a_limit_price(otype):
    """A limit-type order without lmtPrice is refused, naming order.lmtPrice and the order type."""
    order = {"order_type": otype, "lmt_price": None, "aux_price": 200.0}
    p = one_problem(check(order=order))
    assert p.startswith("order.lmtPrice") and otype in p


@pytest.mark.parametrize("price", [0, -1.25, "x", float("inf")])
def test_a_limit_price_must_be_a_positive_number(price):
    """lmtPrice <= 0, not a number or infinite: refused, naming order.lmtPrice."""
    p = one_problem(check(order={"lmt_price": price}))
    assert p.startswith("order.lmtPrice")


def test_stop_orders_need_a_positive_stop_price():
    """STP without auxPrice, and STP LMT with a negative auxPrice, name order.auxPrice."""
    assert one_problem(check(order={"order_type": "STP", "lmt_price": None})).startswith("order.auxPrice")
    p = one_problem(check(order={"order_type": "STP LMT", "aux_price": -3}))
    assert p.startswith("order.auxPrice") and "more than 0" in p


def test_trailing_orders_need_an_amount_or_a_percent():
    """TRAIL needs auxPrice or trailingPercent (not both); TRAIL LIMIT also a limit offset."""
    assert check(order={"order_type": "TRAIL", "lmt_price": None, "trailing_percent": 2.0}).ok
    assert check(order={"order_type": "TRAIL", "lmt_price": None, "aux_price": 1.5}).ok
    p = one_problem(check(order={"order_type": "TRAIL", "lmt_price": None}))
    assert "auxPrice" in p and "trailingPercent" in p
    both = check(order={"order_type": "TRAIL", "lmt_price": None, "aux_price": 1, "trailing_percent": 2})
    assert "not both" in one_problem(both)
    tl = check(order={"order_type": "TRAIL LIMIT", "lmt_price": None, "aux_price": 1.0})
    assert one_problem(tl).startswith("order.lmtPriceOffset")
    assert check(order={"order_type": "TRAIL LIMIT", "lmt_price": None, "aux_price": 1.0,
                        "lmt_price_offset": 0.1}).ok
    assert one_problem(check(order={"order_type": "TRAIL", "lmt_price": None,
                                    "trailing_percent": 150})).startswith("order.trailingPercent")


def test_market_orders_take_no_price():
    """MKT, MOC and MKT PRT need no price."""
    for ot in ("MKT", "MOC", "MKT PRT"):
        assert check(order={"order_type": ot, "lmt_price": None}).ok


@pytest.mark.parametrize("field, value, name", [("action", "HOLD", "order.action"),
                                                ("order_type", "FOO", "order.orderType"),
                                                ("tif", "GTX", "order.tif")])
def test_unknown_action_type_and_tif_are_named(field, value, name):
    """An unknown action / order type / tif is refused with the allowed values listed."""
    p = one_problem(check(order={field: value}))
    assert p.startswith(name) and repr(value) in p


def test_sshort_is_refused_with_what_to_send_instead():
    """SSHORT (institutional short sale) is refused: the sentence says to send SELL."""
    p = one_problem(check(order={"action": "SSHORT"}))
    assert p.startswith("order.action") and "SELL" in p


@pytest.mark.parametrize("sec_type", ["XYZ", "BOND", "WAR", "IND"])
def test_unknown_or_unsupported_sec_type(sec_type):
    """secType outside STK/OPT/FUT/FOP/CASH is refused, naming contract.secType."""
    assert one_problem(check(contract={"sec_type": sec_type})).startswith("contract.secType")


def test_combo_orders_are_refused_in_plain_words():
    """BAG (combo) is refused with a sentence saying it is not modelled, not passed on half-built."""
    p = one_problem(check(contract={"sec_type": "BAG"}))
    assert "combo" in p.lower() and "BAG" in p


def test_an_option_needs_expiry_strike_and_right():
    """An option without expiry, strike and right: three sentences, one per field."""
    chk = check(contract={"sec_type": "OPT", "expiry": "", "strike": 0, "right": ""})
    assert len(chk.problems) == 3
    names = sorted(p.split()[0] for p in chk.problems)
    assert names == ["contract.lastTradeDateOrContractMonth", "contract.right", "contract.strike"]


def test_an_option_expiry_in_the_past_or_malformed():
    """An expiry before today (New York) is refused with today's date; a non-date too."""
    p = one_problem(check(contract={"sec_type": "OPT", "expiry": "20261127", "strike": 230, "right": "C"}))
    assert "in the past" in p and "2026-12-01" in p
    p = one_problem(check(contract={"sec_type": "OPT", "expiry": "2026-13-40", "strike": 230, "right": "C"}))
    assert p.startswith("contract.lastTradeDateOrContractMonth") and "not a date" in p
    ok = check(contract={"sec_type": "OPT", "expiry": "2026-12-01", "strike": 230, "right": "call"})
    assert ok.ok and (ok.contract.expiry, ok.contract.right, ok.contract.multiplier) == ("20261201", "C", "100")


def test_account_must_be_one_the_login_manages():
    """An account TWS does not manage is refused, listing the managed ones; several accounts need one named."""
    p = one_problem(check(order={"account": "U9999999"}))
    assert p.startswith("order.account") and "DU1234567" in p
    p = one_problem(check(accounts=["DU1", "DU2"]))
    assert p.startswith("order.account") and "DU1, DU2" in p
    assert check(order={"account": "DU2"}, accounts=["DU1", "DU2"]).ticket.account == "DU2"


def test_no_accounts_known_is_a_problem():
    """With no managed account reported, nothing can be checked: refused."""
    assert one_problem(check(accounts=[])).startswith("order.account")


def test_symbol_or_con_id_is_required():
    """A contract without symbol or conId is refused."""
    assert one_problem(check(contract={"symbol": ""})).startswith("contract.symbol")
    assert check(contract={"symbol": "", "con_id": 265598}).ok
    assert one_problem(check(contract={"symbol": "", "con_id": 0})).startswith("contract.symbol")


@pytest.mark.parametrize("fields", [RELAY_FIELDS, FILE_FIELDS])
def test_a_bad_con_id_without_symbol_is_one_problem_under_either_naming(fields):
    """A conId given but not a whole number: one sentence naming it, not also 'symbol is required', whatever the
    field names (the relay's contract.conId as an order file's con_id)."""
    assert one_problem(check(contract={"symbol": "", "con_id": -5}, fields=fields)).startswith(fields["con_id"])


def test_order_ref_is_bounded_and_printable():
    """orderRef longer than 64 or with control characters is refused; a normal one is kept."""
    assert check(order={"order_ref": "web-123"}).ticket.order_ref == "web-123"
    assert one_problem(check(order={"order_ref": "x" * 65})).startswith("order.orderRef")
    assert one_problem(check(order={"order_ref": "a\nb"})).startswith("order.orderRef")


def test_transmit_false_and_bad_flags_are_refused():
    """transmit=false (an untransmitted order left in TWS) and non-boolean flags are refused by name."""
    assert one_problem(check(order={"transmit": False})).startswith("order.transmit")
    assert one_problem(check(order={"outside_rth": "maybe"})).startswith("order.outsideRth")


def test_every_problem_is_reported_at_once():
    """Several bad fields give one sentence each, none lost."""
    chk = check(contract={"sec_type": "OPT", "expiry": "", "strike": -1, "right": "X"},
                order={"action": "HOLD", "quantity": 0, "tif": "NEVER"})
    assert len(chk.problems) == 6 and not chk.ok


def test_file_field_names_in_the_same_sentences():
    """With the order file's names the sentence body is the same, only the field name differs."""
    relay = one_problem(check(order={"quantity": -1}))
    file = one_problem(check(order={"quantity": -1}, fields=FILE_FIELDS))
    assert file.startswith("quantity ") and relay.split(" ", 1)[1] == file.split(" ", 1)[1]


def test_relay_payload_fields_map_to_the_checker():
    """The relay's camelCase contract/order objects map onto the checker's fields."""
    contract, order = relay_order_fields(
        {"symbol": "AAPL", "secType": "OPT", "lastTradeDateOrContractMonth": "20261218", "strike": 230,
         "right": "C", "conId": 0},
        {"action": "SELL", "totalQuantity": 2, "orderType": "LMT", "lmtPrice": 4.5, "tif": "DAY",
         "outsideRth": False, "whatIf": True, "orderRef": "r1"})
    chk = check_order(contract, order, today=TODAY, accounts=ACCOUNTS)
    assert chk.ok and chk.ticket.what_if and chk.ticket.order_ref == "r1" and chk.contract.strike == 230.0


def test_a_relay_field_the_agent_does_not_place_is_refused_by_name_unless_empty():
    """An unknown contract/order key holding a value (a bracket child's parentId, a goodTillDate, 'TIF' for tif)
    would be left out of the order: one sentence naming it. Empty values and IB's unset sentinels pass."""
    problems = unsupported_relay_fields(
        {"symbol": "SPY", "includeExpired": True},
        {"action": "SELL", "totalQuantity": 5, "orderType": "STP", "auxPrice": 90, "parentId": 12,
         "goodTillDate": "20300101 10:00:00", "TIF": "GTC", "ocaGroup": "", "hidden": False, "displaySize": 0,
         "minQty": 2147483647, "percentOffset": 1.7976931348623157e308, "algoParams": [], "x" * 500: None})
    assert [p.split()[0] for p in problems] == ["contract.includeExpired", "order.parentId", "order.goodTillDate",
                                                "order.TIF"]
    assert "(got 12)" in problems[1] and all("left out" in p for p in problems)
    assert unsupported_relay_fields({"symbol": "SPY", "secType": "STK"}, {"action": "BUY", "lmtPrice": 1}) == []
    assert unsupported_relay_fields({}, {"y" * 500: 1})[0].startswith("order.'yyy")      # a long key is cut

@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["symbol", "sec_type", "expiry", "strike", "right", "exchange", "currency",
                                        "con_id", "multiplier"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))),
       st.dictionaries(st.sampled_from(["action", "quantity", "order_type", "lmt_price", "aux_price", "tif",
                                        "account", "order_ref", "outside_rth", "what_if", "transmit",
                                        "trailing_percent", "open_close"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))))
def test_any_input_gives_problems_or_a_ticket_never_an_exception(contract, order):
    """Whatever the values, check_order returns: either problems (each naming a field) or a complete ticket."""
    chk = check_order(contract, order, today=TODAY, accounts=ACCOUNTS)
    if chk.ok:
        assert chk.ticket is not None and chk.contract is not None and chk.ticket.quantity > 0
    else:
        assert chk.problems and all(p.split()[0].startswith(("contract.", "order.")) for p in chk.problems)
        assert all(len(p) < 600 for p in chk.problems)
