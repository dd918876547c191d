"""The TWS simulator's pure parts: framing, the market model, Black-Scholes, the rate window, and the
message layouts (checked by decoding them with ibapi's own Decoder and encoding requests with EClient)."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from ibapi import comm
from ibapi.client import EClient
from ibapi.decoder import Decoder
from ibapi.order import Order
from ibapi.wrapper import EWrapper

from sim.tws import bs
from sim.tws import messages as M
from sim.tws.contracts import RequestContract, option_instrument, resolve, stock_instrument
from sim.tws.limits import RateWindow
from sim.tws.market import Market, third_friday
from sim.tws.orders import Broker
from sim.tws.probe import option, stock
from sim.tws.requests import parse_contract_details, parse_mkt_data, parse_place_order
from sim.tws.wire import FrameBuffer, Fields, WireError, encode, parse_version_range, split_fields

TODAY = dt.date(2026, 11, 18)   # a Wednesday


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_market(seed: int = 7) -> tuple[Market, Clock]:
    clock = Clock()
    return Market(seed=seed, today=TODAY, clock=clock, step=0.5), clock


# ---- wire -------------------------------------------------------------------------------------------

def test_encode_and_frame_buffer_round_trip_split_across_reads():
    """Messages split at any byte boundary come out whole and in order."""
    data = encode([1, 6, 3, 1, 589.99, 10, 0]) + encode([49, 1, 1700000000])
    buf = FrameBuffer()
    out = []
    for i in range(len(data)):
        out += buf.feed(data[i:i + 1])
    assert [split_fields(b) for b in out] == [["1", "6", "3", "1", "589.99", "10", "0"], ["49", "1", "1700000000"]]


def test_fmt_writes_bools_as_digits_and_whole_floats_without_point():
    """Bools go as 0/1 and 5.0 as '5', the way TWS writes numbers."""
    assert split_fields(encode([True, False, 5.0, 2.5, None])[4:]) == ["1", "0", "5", "2.5", ""]


def test_encode_refuses_nan():
    """NaN never goes on the wire."""
    with pytest.raises(ValueError):
        encode([float("nan")])


def test_version_range_parsing():
    """'v100..157' and 'v157..178 +opts' parse; garbage raises WireError."""
    assert parse_version_range("v100..157") == (100, 157)
    assert parse_version_range("v157..178 +PACEAPI") == (157, 178)
    assert parse_version_range("v157") == (157, 157)
    with pytest.raises(WireError):
        parse_version_range("hello")


def test_fields_cursor_raises_when_short_or_not_numeric():
    """A request missing fields or with text in a number field is a WireError, not a crash."""
    f = Fields(["1", "x"])
    assert f.int() == 1
    with pytest.raises(WireError):
        f.int()
    with pytest.raises(WireError):
        Fields([]).str()


# ---- market model ------------------------------------------------------------------------------------

def test_expirations_are_fridays_with_weeklies_and_monthlies():
    """SPY has 8 weekly Fridays plus third-Friday monthlies ~12 months out; JNPR only monthlies."""
    m, _ = make_market()
    spy = [dt.datetime.strptime(e, "%Y%m%d").date() for e in m.expirations("SPY")]
    assert all(d.weekday() == 4 and d > TODAY for d in spy)
    weeklies = [d for d in spy if d <= TODAY + dt.timedelta(days=56)]
    assert len(weeklies) >= 8
    assert third_friday(2027, 6) in spy
    assert (spy[-1] - TODAY).days > 270
    jnpr = [dt.datetime.strptime(e, "%Y%m%d").date() for e in m.expirations("JNPR")]
    assert all(d == third_friday(d.year, d.month) for d in jnpr)


def test_strike_grids_include_half_strikes_and_one_dollar_spy():
    """AAPL lists 232.5 near the money; SPY has $1 strikes near the money; JNPR 2.5 grid below 50."""
    m, _ = make_market()
    exp = m.expirations("AAPL")[1]
    assert 232.5 in m.strikes("AAPL", exp)
    spy = m.strikes("SPY", m.expirations("SPY")[0])
    assert {588.0, 589.0, 590.0, 591.0} <= set(spy)
    jnpr = m.strikes("JNPR", m.expirations("JNPR")[0])
    assert {37.5, 40.0, 42.5} <= set(jnpr)


def test_option_params_rows_differ_so_clients_must_merge():
    """SMART and CBOE rows list different strikes; neither alone has the whole chain."""
    m, _ = make_market()
    rows = {r[0]: set(r[4]) for r in m.option_params("AAPL")}
    assert set(rows) == {"SMART", "CBOE"}
    assert rows["SMART"] - rows["CBOE"] and rows["CBOE"] - rows["SMART"]
    assert 232.5 in rows["CBOE"] and 232.5 not in rows["SMART"]


def test_market_is_deterministic_for_a_seed_and_moves_over_time():
    """Same seed and step give the same quote; later steps move the underlying; another seed differs."""
    a, ca = make_market(7)
    b, cb = make_market(7)
    c, cc = make_market(8)
    for clock in (ca, cb, cc):
        clock.t += 100.0
    assert a.stock_quote("SPY") == b.stock_quote("SPY")
    assert a.stock_quote("SPY").last != c.stock_quote("SPY").last
    assert a.spot("SPY", 0) != a.spot("SPY", 200)


def test_jnpr_stays_below_its_deal_price():
    """The merger-arbitrage target trades near but under its 40.00 deal price."""
    m, _ = make_market()
    path = [m.spot("JNPR", k) for k in range(0, 5000, 50)]
    assert max(path) < 40.0 and min(path) > 38.0


def test_option_quote_agrees_with_black_scholes_and_greek_signs():
    """Bid < model < ask, call delta in (0,1), put delta in (-1,0), vega > 0, theta < 0."""
    m, _ = make_market()
    exp = m.expirations("AAPL")[2]
    call = m.option_quote("AAPL", exp, 230.0, "C")
    put = m.option_quote("AAPL", exp, 230.0, "P")
    assert 0 < call.bid < call.model_price < call.ask
    assert 0 < call.delta < 1 and -1 < put.delta < 0
    assert call.vega > 0 and call.theta < 0 and call.gamma > 0
    ref = bs.price_greeks(call.und_price, 230.0, m.years_to(exp), call.iv, 0.045, "C")
    assert math.isclose(ref.price, call.model_price, rel_tol=1e-9)


def test_far_otm_far_expiry_never_quotes_and_some_quotes_are_one_sided():
    """Illiquid contracts send bid/ask -1 size 0; across a chain a few have no bid."""
    m, _ = make_market()
    far = m.expirations("SPY")[-1]
    k = max(m.strikes("SPY", far))
    q = m.option_quote("SPY", far, k, "C")
    assert not q.quoting and q.bid == -1 and q.ask == -1 and q.bid_size == 0 and q.ask_size == 0
    exp = m.expirations("MSFT")[3]
    quotes = [m.option_quote("MSFT", exp, s, r) for s in m.strikes("MSFT", exp) for r in "CP"]
    assert any(x.quoting and x.bid == -1 and x.ask > 0 for x in quotes)


def test_smile_puts_more_vol_on_low_strikes():
    """The smile is skewed: a 10% OTM put strike has higher IV than a 10% OTM call strike."""
    m, _ = make_market()
    u = m.underlyings["SPY"]
    assert m.smile_iv(u, 590, 531, 0.1) > m.smile_iv(u, 590, 649, 0.1)


# ---- Black-Scholes -------------------------------------------------------------------------------------

def test_put_call_parity_and_implied_vol_round_trip():
    """C - P = S - K e^{-rT}; implied_vol inverts the price and refuses a price below intrinsic."""
    c = bs.price_greeks(100, 105, 0.5, 0.3, 0.045, "C")
    p = bs.price_greeks(100, 105, 0.5, 0.3, 0.045, "P")
    assert math.isclose(c.price - p.price, 100 - 105 * math.exp(-0.045 * 0.5), rel_tol=1e-9)
    assert math.isclose(bs.implied_vol(c.price, 100, 105, 0.5, 0.045, "C"), 0.3, abs_tol=1e-4)
    assert bs.implied_vol(0.5, 100, 50, 0.1, 0.045, "C") is None      # below intrinsic value


# ---- rate window ----------------------------------------------------------------------------------------

def test_rate_window_slides():
    """50 messages fit in a second; the 51st does not until the oldest is a second old."""
    w = RateWindow(50, 1.0)
    for i in range(50):
        w.record(10.0 + i * 0.001)
    assert not w.has_room(10.5)
    assert w.wait_time(10.5) == pytest.approx(0.5, abs=0.01)
    assert w.has_room(11.0005)


# ---- contracts ------------------------------------------------------------------------------------------

def test_resolve_by_fields_by_conid_and_partial():
    """Exact fields give one contract, a conId gives it back, a partial option gives many, junk none."""
    m, _ = make_market()
    exp = m.expirations("AAPL")[1]
    one = resolve(m, RequestContract(symbol="AAPL", sec_type="OPT", expiry=exp, strike=232.5, right="C",
                                     exchange="SMART", currency="USD"))
    assert len(one) == 1
    assert resolve(m, RequestContract(con_id=one[0].con_id)) == one
    many = resolve(m, RequestContract(symbol="AAPL", sec_type="OPT", expiry=exp, exchange="SMART"))
    assert len(many) == 2 * len(m.strikes("AAPL", exp))
    assert resolve(m, RequestContract(symbol="AAPL", sec_type="OPT", expiry=exp, strike=231.0, right="C")) == []
    assert resolve(m, RequestContract(symbol="NOPE", sec_type="STK")) == []


# ---- message layouts, checked with ibapi itself -----------------------------------------------------------

class Capture(EWrapper):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith("_") or name in ("calls",) or not hasattr(EWrapper, name):
            return attr

        def rec(*args):
            object.__getattribute__(self, "calls").append((name, args))
        return rec


def decode_with_ibapi(fields: list) -> list[tuple[str, tuple]]:
    w = Capture()
    d = Decoder(w, M.SERVER_VERSION)
    d.interpret(comm.read_fields(encode(fields)[4:]))
    return w.calls


def test_ibapi_decodes_ticks_and_option_computation():
    """tickPrice/tickSize/tickGeneric/tickOptionComputation/marketDataType decode to the values sent."""
    assert decode_with_ibapi(M.tick_price(5, 1, 4.22, 51, 1))[0][1][:3] == (5, 1, 4.22)
    assert decode_with_ibapi(M.tick_size(5, 27, 1234)) == [("tickSize", (5, 27, 1234))]
    assert decode_with_ibapi(M.tick_generic(5, 24, 0.25)) == [("tickGeneric", (5, 24, 0.25))]
    calls = decode_with_ibapi(M.tick_option_computation(5, 13, 0.24, 0.45, 4.26, 0.0, 0.03, 0.21, -0.14, 230.0))
    assert calls == [("tickOptionComputation", (5, 13, 1, 0.24, 0.45, 4.26, 0.0, 0.03, 0.21, -0.14, 230.0))]
    none = decode_with_ibapi(M.tick_option_computation(5, 10, None, None, None, None, None, None, None, None))
    assert none[0][1][3:] == (None,) * 8
    assert decode_with_ibapi(M.market_data_type(5, 3)) == [("marketDataType", (5, 3))]
    assert decode_with_ibapi(M.error(-1, 2104, "Market data farm connection is OK:usfarm")) == \
        [("error", (-1, 2104, "Market data farm connection is OK:usfarm"))]


def test_ibapi_decodes_contract_details_and_secdef_params():
    """contractData (v8 layout at 157) and securityDefinitionOptionParameter decode field for field."""
    m, _ = make_market()
    exp = m.expirations("AAPL")[1]
    ins = option_instrument(m, m.option("AAPL", exp, 232.5, "C"))
    calls = decode_with_ibapi(M.contract_data(7, ins, long_name="APPLE INC", min_tick=0.01, under_con_id=265598,
                                              primary_exchange="", real_expiration=exp))
    name, (req_id, cd) = calls[0]
    assert name == "contractDetails" and req_id == 7
    assert (cd.contract.symbol, cd.contract.lastTradeDateOrContractMonth, cd.contract.strike, cd.contract.right) == \
        ("AAPL", exp, 232.5, "C")
    assert cd.contract.conId == ins.con_id and cd.underConId == 265598 and cd.realExpirationDate == exp
    stk = decode_with_ibapi(M.contract_data(8, stock_instrument(m.underlyings["SPY"]), long_name="SPDR",
                                            min_tick=0.01, under_con_id=0, primary_exchange="ARCA",
                                            stock_type="ETF"))[0][1][1]
    assert stk.contract.primaryExchange == "ARCA" and stk.stockType == "ETF"
    sd = decode_with_ibapi(M.secdef_opt_params(9, "CBOE", 265598, "AAPL", "100", ["20261218"], [230.0, 232.5]))
    assert sd == [("securityDefinitionOptionParameter", (9, "CBOE", 265598, "AAPL", "100", {"20261218"},
                                                          {230.0, 232.5}))]


def _order(broker: Broker, m: Market, **kw):
    ins = stock_instrument(m.underlyings["SPY"])
    base = dict(order_id=12, client_id=3, account="DU1", instrument=ins, action="BUY", quantity=10.0,
                order_type="LMT", lmt_price=500.0, aux_price=None, order_ref="ref-1")
    base.update(kw)
    return broker.new_order(**base)


def test_ibapi_decodes_order_messages():
    """openOrder (incl. what-if margins), orderStatus, execDetails, commissionReport, completedOrder decode."""
    m, _ = make_market()
    broker = Broker(m, ("DU1",))
    o = _order(broker, m)
    o.status = "Submitted"
    name, args = decode_with_ibapi(M.open_order(o))[0]
    assert name == "openOrder" and args[0] == 12
    order, state = args[2], args[3]
    assert (order.action, order.totalQuantity, order.orderType, order.lmtPrice, order.orderRef, order.permId) == \
        ("BUY", 10.0, "LMT", 500.0, "ref-1", o.perm_id)
    assert state.status == "Submitted"
    w = _order(broker, m, order_id=13, what_if=True)
    _, args = decode_with_ibapi(M.open_order(w, margin=broker.what_if(w)))[0]
    assert args[2].whatIf and float(args[3].initMarginChange) > 0
    st = decode_with_ibapi(M.order_status(o))[0]
    assert st == ("orderStatus", (12, "Submitted", 0.0, 10.0, 0.0, o.perm_id, 0, 0.0, 3, "", 0.0))
    e = broker.fill(o, 590.01)
    ex = decode_with_ibapi(M.execution_data(-1, e))[0]
    assert ex[0] == "execDetails" and ex[1][2].shares == 10 and ex[1][2].price == 590.01
    assert ex[1][2].orderRef == "ref-1" and ex[1][2].permId == o.perm_id
    cr = decode_with_ibapi(M.commission_report(e))[0][1][0]
    assert cr.execId == e.exec_id and cr.commission == 1.0
    co = decode_with_ibapi(M.completed_order(o))[0]
    assert co[0] == "completedOrder" and co[1][2].status == "Filled" and co[1][1].permId == o.perm_id


def test_ibapi_decodes_account_and_position_messages():
    """position, accountSummary, updateAccountValue, updatePortfolio, accountDownloadEnd decode."""
    m, _ = make_market()
    ins = stock_instrument(m.underlyings["AAPL"])
    pos = decode_with_ibapi(M.position("DU1", ins, 100.0, 210.0))[0]
    assert pos[0] == "position" and pos[1][0] == "DU1" and pos[1][1].symbol == "AAPL" and pos[1][2:] == (100.0, 210.0)
    assert decode_with_ibapi(M.account_summary(4, "DU1", "NetLiquidation", "1000.00", "USD")) == \
        [("accountSummary", (4, "DU1", "NetLiquidation", "1000.00", "USD"))]
    assert decode_with_ibapi(M.account_value("NetLiquidation", "1.00", "USD", "DU1")) == \
        [("updateAccountValue", ("NetLiquidation", "1.00", "USD", "DU1"))]
    pv = decode_with_ibapi(M.portfolio_value(ins, 100.0, 230.0, 23000.0, 210.0, 2000.0, 0.0, "DU1"))[0]
    assert pv[0] == "updatePortfolio" and pv[1][1:] == (100.0, 230.0, 23000.0, 210.0, 2000.0, 0.0, "DU1")
    assert decode_with_ibapi(M.account_download_end("DU1")) == [("accountDownloadEnd", ("DU1",))]


# ---- request layouts, written by ibapi's own encoder ------------------------------------------------------

class FakeConn:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendMsg(self, msg: bytes) -> None:
        self.sent.append(msg)

    def isConnected(self) -> bool:
        return True


def encoded_by_ibapi(call) -> list[str]:
    client = EClient(EWrapper())
    client.conn = FakeConn()
    client.serverVersion_ = M.SERVER_VERSION
    client.connState = EClient.CONNECTED
    call(client)
    return split_fields(client.conn.sent[-1][4:])


def test_parse_requests_written_by_ibapi():
    """reqMktData and reqContractDetails as EClient writes them parse to the same values."""
    f = encoded_by_ibapi(lambda c: c.reqMktData(9, option("AAPL", "20261218", 232.5, "C"), "100,101", False,
                                                   False, []))
    req = parse_mkt_data(f)
    assert req.req_id == 9 and req.generic_ticks == (100, 101) and not req.snapshot
    assert (req.contract.symbol, req.contract.expiry, req.contract.strike, req.contract.right) == \
        ("AAPL", "20261218", 232.5, "C")
    rid, c = parse_contract_details(encoded_by_ibapi(lambda cl: cl.reqContractDetails(4, stock("MSFT"))))
    assert rid == 4 and c.symbol == "MSFT" and c.sec_type == "STK"


@pytest.mark.parametrize("what_if,order_type,lmt", [(False, "MKT", None), (True, "LMT", 1.25)])
def test_parse_place_order_written_by_ibapi(what_if, order_type, lmt):
    """placeOrder is read field by field up to whatIf, for market and limit orders."""
    o = Order()
    o.action, o.totalQuantity, o.orderType, o.orderRef, o.whatIf = "SELL", 3, order_type, "abc", what_if
    if lmt is not None:
        o.lmtPrice = lmt
    o.algoStrategy = "Adaptive"
    from ibapi.tag_value import TagValue
    o.algoParams = [TagValue("adaptivePriority", "Normal")]
    req = parse_place_order(encoded_by_ibapi(lambda c: c.placeOrder(41, stock("SPY"), o)))
    assert (req.order_id, req.action, req.quantity, req.order_type, req.order_ref, req.what_if) == \
        (41, "SELL", 3.0, order_type, "abc", what_if)
    assert req.lmt_price == lmt


# ---- broker ---------------------------------------------------------------------------------------------

def test_fills_update_positions_cash_and_realized_pnl():
    """Buy then sell: position back to flat, realized P&L = price move minus commissions."""
    m, _ = make_market()
    b = Broker(m, ("DU1",), seed_positions=False)
    ins = stock_instrument(m.underlyings["SPY"])
    buy = b.new_order(order_id=1, client_id=1, account="DU1", instrument=ins, action="BUY", quantity=100.0,
                      order_type="MKT", lmt_price=None, aux_price=None)
    b.fill(buy, 500.0)
    assert b.accounts["DU1"].positions[ins.con_id].qty == 100
    sell = b.new_order(order_id=2, client_id=1, account="DU1", instrument=ins, action="SELL", quantity=100.0,
                       order_type="MKT", lmt_price=None, aux_price=None)
    e = b.fill(sell, 501.0)
    assert b.accounts["DU1"].positions[ins.con_id].qty == 0
    assert e.realized_pnl == pytest.approx(100 * 1.0 - 1.0 - 1.0, abs=0.01)
    assert b.accounts["DU1"].cash == pytest.approx(1_000_000 + 100 - 2.0, abs=0.01)


def test_limit_order_marketable_only_at_or_through_the_touch():
    """A buy limit below the ask does not fill; at the ask it fills at the ask."""
    m, _ = make_market()
    b = Broker(m, ("DU1",), seed_positions=False)
    ins = stock_instrument(m.underlyings["SPY"])
    q = m.stock_quote("SPY")
    o = b.new_order(order_id=1, client_id=1, account="DU1", instrument=ins, action="BUY", quantity=1.0,
                    order_type="LMT", lmt_price=q.ask - 1.0, aux_price=None)
    assert b.fill_price(o) is None
    o.lmt_price = q.ask
    assert b.fill_price(o) == q.ask


# ---- properties -----------------------------------------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from sim.tws.latency import Latency  # noqa: E402

FIELD = st.one_of(st.integers(-10**9, 10**9), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                                          max_size=20),
                  st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9))


@given(st.lists(st.lists(FIELD, min_size=1, max_size=12), min_size=1, max_size=5), st.integers(1, 7))
def test_framing_round_trips_any_fields_in_any_chunking(msgs, chunk):
    """Whatever the fields and however the stream is cut, the same field strings come back."""
    data = b"".join(encode(m) for m in msgs)
    buf = FrameBuffer()
    bodies = []
    for i in range(0, len(data), chunk):
        bodies += buf.feed(data[i:i + chunk])
    from sim.tws.wire import fmt
    assert [split_fields(b) for b in bodies] == [[fmt(f) for f in m] for m in msgs]


_MARKET, _CLOCK = make_market()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_listed_option_quote_is_sane(data):
    """Any listed option at any step: bid < ask, sizes 0 exactly for -1 prices, no-bid only OTM, greek signs."""
    sym = data.draw(st.sampled_from(_MARKET.symbols()))
    exp = data.draw(st.sampled_from(_MARKET.expirations(sym)))
    k = data.draw(st.sampled_from(_MARKET.strikes(sym, exp)))
    right = data.draw(st.sampled_from("CP"))
    step = data.draw(st.integers(0, 3000))
    q = _MARKET.option_quote(sym, exp, k, right, step)
    if q.bid > 0 and q.ask > 0:
        assert q.bid < q.ask
    assert (q.bid == -1) == (q.bid_size == 0)
    if q.quoting and q.bid == -1:
        assert abs(q.delta) < 0.5          # one-sided quotes are out-of-the-money ones
    assert (q.ask == -1) == (q.ask_size == 0)
    assert (0 <= q.delta <= 1) if right == "C" else (-1 <= q.delta <= 0)
    assert q.gamma >= 0 and q.vega >= 0 and q.iv > 0 and q.open_interest >= 0


def test_latency_model_is_seeded_with_a_few_slow_contracts():
    """Realistic latency: same seed, same delays; ~3% of contracts slow (1-2 s); fast mode stays in ms."""
    a, b = Latency("realistic", 7), Latency("realistic", 7)
    delays = [a.first_quote(c) for c in range(2000)]
    assert delays == [b.first_quote(c) for c in range(2000)]
    slow = [d for d in delays if d >= 1.0]
    assert 0.01 < len(slow) / len(delays) < 0.06 and max(delays) <= 2.0
    assert all(0.05 <= d <= 0.30 for d in delays if d < 1.0)
    assert all(0.10 <= a.greeks_after(c) <= 0.50 for c in range(100))
    fast = Latency("fast", 7)
    assert max(fast.first_quote(c) for c in range(2000)) < 0.01


def test_walk_keeps_running_high_low_and_bounded_memory(monkeypatch):
    """High/low are running values looked up in O(1); past MAX_STEPS the oldest half is dropped."""
    from sim.tws.market import _Path
    monkeypatch.setattr(_Path, "MAX_STEPS", 10)
    p = _Path(5.0)
    for x in (7.0, 3.0, 4.0):
        p.append(x)
    assert p.at(3) == (4.0, 7.0, 3.0) and p.at(1) == (7.0, 7.0, 5.0)
    for i in range(20):
        p.append(10.0 + i)
    assert len(p.price) <= 10 and p.end == 24 and p.at(23)[0] == 29.0
    assert p.at(0) == p.at(p.offset)          # older than what is kept: the oldest kept step
