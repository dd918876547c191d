"""Order files (agent/orders/files.py): reading and checking a JSON or CSV order file, pure (no TWS)."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given, settings, strategies as st

from agent.orders.files import read_order_file

TODAY = dt.date(2026, 12, 1)
ACCOUNTS = ["DU1234567"]


def read(text: str | bytes, name: str = "orders.csv", accounts=ACCOUNTS):
    data = text.encode() if isinstance(text, str) else text
    return read_order_file(data, name, today=TODAY, accounts=accounts)


GOOD_CSV = """ticker,action,quantity,limit_price
AAPL,BUY,100,210.50
MSFT,SELL,10,420
"""


def test_good_csv_gives_one_order_per_line_with_line_refs_and_content_refs():
    """Two CSV lines: two orders, refs L2 and L3 (file lines), orderRefs of-<hash of the order>, LMT DAY by
    default."""
    f = read(GOOD_CSV)
    assert f.ok and f.problems == [] and [o.ref for o in f.orders] == ["L2", "L3"]
    a, b = f.orders
    assert (a.contract.symbol, a.ticket.action, a.ticket.quantity, a.ticket.order_type, a.ticket.lmt_price,
            a.ticket.tif, a.ticket.account) == ("AAPL", "BUY", 100.0, "LMT", 210.5, "DAY", "DU1234567")
    assert a.ticket.order_ref == a.order_ref and a.order_ref != b.order_ref
    assert all(o.order_ref.startswith("of-") and len(o.order_ref) <= 36 for o in f.orders)
    assert f.sha256[:12] not in a.order_ref and "L2" not in a.order_ref       # the file and the line number aside
    assert len(f.sha256) == 64


def test_an_edited_file_keeps_the_refs_of_its_unchanged_orders():
    """An order's ref is what it asks for, not where it stands: moved, reformatted, in another file or format, or
    with its one managed account written out, it is the same order (a re-run finds it placed); a changed price,
    quantity, side or account makes it another order."""
    before = {o.contract.symbol: o.order_ref for o in read(GOOD_CSV).orders}
    edited = read("Ticker,Action,Qty,Limit Price,Account\nGOOG,BUY,1,100,\nMSFT,sell,10,420.00,\n"
                  "AAPL,BUY,100,210.5,DU1234567\n")
    after = {o.contract.symbol: o.order_ref for o in edited.orders}
    assert edited.ok and after["AAPL"] == before["AAPL"] and after["MSFT"] == before["MSFT"]
    assert after["GOOG"] not in before.values()
    as_json = read(json.dumps([{"ticker": "MSFT", "action": "SELL", "quantity": 10, "limit_price": 420}]),
                   "orders.json")
    assert as_json.orders[0].order_ref == before["MSFT"]
    for changed in ("AAPL,BUY,100,210.25", "AAPL,BUY,101,210.5", "AAPL,SELL,100,210.5"):
        other = read("ticker,action,quantity,limit_price\n" + changed + "\n").orders[0].order_ref
        assert other != before["AAPL"], changed
    two = read("ticker,action,quantity,limit_price,account\nAAPL,BUY,100,210.5,DU2\n", accounts=["DU1234567", "DU2"])
    assert two.orders[0].order_ref != before["AAPL"]


def test_an_option_is_the_same_order_however_its_numbers_are_written():
    """Expiry, strike, right, multiplier and quantity spelled differently (a spreadsheet's '100.0', a JSON float):
    one order, one ref."""
    head = "ticker,action,quantity,limit_price,sec_type,expiry,strike,right,multiplier\n"
    spellings = ["AAPL,BUY,1,4.5,OPT,2026-12-18,230,C,100", "AAPL,BUY,1.0,4.50,OPT,20261218,230.0,CALL,100.0",
                 "aapl,buy,1,4.5,opt,20261218,230,c,"]
    refs = {read(head + line + "\n").orders[0].order_ref for line in spellings}
    as_json = read(json.dumps([{"ticker": "AAPL", "action": "BUY", "quantity": 1, "limit_price": 4.5, "sec_type": "OPT",
                                "expiry": 20261218, "strike": 230.0, "right": "C", "multiplier": 100.0}]), "o.json")
    assert len(refs) == 1 and as_json.orders[0].order_ref in refs


def test_explicit_refs_tell_identical_orders_apart_and_show_in_the_order_ref():
    """Two identical lines with their own refs are two orders (distinct orderRefs ending in the ref); the same order
    with and without a ref are not the same order."""
    f = read("ticker,action,quantity,limit_price,ref\nAAPL,BUY,10,150,first\nAAPL,BUY,10,150,second\n")
    assert f.ok, f.problems
    a, b = f.orders
    assert a.order_ref != b.order_ref and a.order_ref.endswith("-first") and b.order_ref.endswith("-second")
    plain = read("ticker,action,quantity,limit_price\nAAPL,BUY,10,150\n").orders[0]
    assert plain.order_ref not in (a.order_ref, b.order_ref)
    odd = read("ticker,action,quantity,limit_price,ref\nAAPL,BUY,10,150,a b/c\n").orders[0]
    assert odd.order_ref.startswith("of-") and len(odd.order_ref) <= 36 and " " not in odd.order_ref


def test_header_names_are_case_and_spacing_tolerant_and_unknown_columns_warn():
    """'Limit Price', ' TICKER ' and 'Qty' are understood; an unknown column is a warning, not silence."""
    f = read("TICKER , Action,Qty,Limit Price,Notes\nAAPL,buy,5,200,for the demo\n")
    assert f.ok and f.orders[0].ticket.lmt_price == 200.0
    assert f.warnings == ["unknown column 'Notes' is ignored"]


def test_json_list_and_orders_object_and_explicit_refs():
    """JSON as a list or {"orders": [...]}; a line's own ref is used; options need expiry, strike, right."""
    orders = [{"ticker": "AAPL", "action": "BUY", "quantity": 1, "limit_price": 4.5, "sec_type": "OPT",
               "expiry": "2026-12-18", "strike": 230, "right": "C", "ref": "call-1"}]
    for doc in (orders, {"orders": orders}):
        f = read(json.dumps(doc), "orders.json")
        assert f.ok, f.problems
        o = f.orders[0]
        assert o.ref == "call-1" and o.label == "order #1"
        assert (o.contract.sec_type, o.contract.expiry, o.contract.strike, o.contract.right) == \
            ("OPT", "20261218", 230.0, "C")


def test_every_bad_line_is_reported_with_every_reason_and_nothing_is_kept():
    """Three bad lines: each reported by number with all its reasons (the relay's sentences); no orders."""
    f = read("ticker,action,quantity,limit_price\nAAPL,BUY,0,210\nMSFT,HOLD,10,\nGOOD,BUY,1,5\nSPY,SELL,abc,-1\n")
    assert not f.ok and f.orders == []
    by_line = {p.split(":")[0] for p in f.problems}
    assert by_line == {"line 2", "line 3", "line 5"}
    assert any(p.startswith("line 2: quantity must be more than 0") for p in f.problems)
    assert any(p.startswith("line 3: action 'HOLD' is not one of BUY, SELL") for p in f.problems)
    assert any(p.startswith("line 3: limit_price is required for a LMT order") for p in f.problems)
    assert sum(p.startswith("line 5:") for p in f.problems) == 2


def test_no_market_order_unless_written_explicitly():
    """A line without limit_price is a limit order missing its price; 'order_type: MKT' written out is accepted,
    and a MKT line with a limit price is contradictory."""
    assert not read("ticker,action,quantity\nAAPL,BUY,5\n").ok
    f = read("ticker,action,quantity,order_type\nAAPL,BUY,5,MKT\n")
    assert f.ok and f.orders[0].ticket.order_type == "MKT"
    bad = read("ticker,action,quantity,order_type,limit_price\nAAPL,BUY,5,MKT,200\n")
    assert bad.problems == ["line 2: limit_price is given but order_type is MKT: remove one of them"]


def test_file_level_problems():
    """Empty, duplicate refs, the same order twice, not UTF-8, not JSON/CSV: each named; a BOM is fine."""
    assert read("").problems == ["the file is empty"]
    assert read("ticker,action,quantity,limit_price\n").problems == ["the file has a header but no orders"]
    dup = read("ticker,action,quantity,limit_price,ref\nAAPL,BUY,1,200,x\nMSFT,BUY,1,400,x\n")
    assert "ref 'x' is used on line 2 and line 3: each line needs its own ref" in dup.problems
    twice = read("ticker,action,quantity,limit_price\nAAPL,BUY,1,200\nAAPL,BUY,1,200.00\n")
    assert twice.problems == ["line 2 and line 3 are the same order: remove one, or give each its own ref if you "
                              "mean both"]
    latin = read("ticker,action,quantity,limit_price\nNESTL\xc9,BUY,1,200\n".encode("latin-1"))
    assert latin.problems and latin.problems[0].startswith("the file is not UTF-8 text")
    bom = read("\ufeffticker,action,quantity,limit_price\nAAPL,BUY,1,200\n")
    assert bom.ok and bom.orders[0].contract.symbol == "AAPL"
    assert read("[1, 2]", "o.json").problems == ["order #1 is not an object of fields", "order #2 is not an object "
                                                                                         "of fields"]
    assert read("{not json", "o.json").problems[0].startswith("the file is not valid JSON")


def test_identical_orders_with_their_own_refs_are_both_kept():
    """The same order on two lines with distinct refs: both kept (the refs say the trader means both)."""
    f = read("ticker,action,quantity,limit_price,ref\nAAPL,BUY,1,200,a\nAAPL,BUY,1,200,b\n")
    assert f.ok and [o.ref for o in f.orders] == ["a", "b"]


def test_account_checks_wait_for_tws_when_accounts_are_unknown():
    """accounts=None (before connecting): account names are kept unchecked; then a second read checks them."""
    text = "ticker,action,quantity,limit_price,account\nAAPL,BUY,1,200,U999\n"
    assert read(text, accounts=None).ok
    assert read(text).problems[0].startswith("line 2: account 'U999' is not an account this TWS login manages")


def test_one_changed_byte_changes_the_file_hash_and_only_that_lines_ref():
    """One byte changed in line 2: another file (hash), line 2 another order, line 3 the same order as before."""
    a, b = read(GOOD_CSV), read(GOOD_CSV.replace("210.50", "210.51"))
    assert a.sha256 != b.sha256
    assert a.orders[0].order_ref != b.orders[0].order_ref and a.orders[1].order_ref == b.orders[1].order_ref


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_orders_or_problems_never_an_exception(data):
    """Whatever the bytes, reading returns: orders, or problems naming what is wrong."""
    f = read_order_file(data, "x.csv", today=TODAY, accounts=ACCOUNTS)
    assert f.ok == (not f.problems) and (f.orders or f.problems)
    assert all(len(p) < 1000 for p in f.problems)
