"""Row building: mid rule, sentinels never pass, put open interest, nulls, seller ranking (pure)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, strategies as st

from agent.rows import (chain_row, clean_greek, mid_price, price_row, rank_for_seller, sell_row, seller_metrics,
                        underlying_price, underlying_row)
from agent.types import Contract, Quote

CALL = Contract.option("AAPL", "20260220", 190.0, "C")
PUT = Contract.option("AAPL", "20260220", 180.0, "P")
CHAIN_KEYS = ["symbol", "strike", "expiry", "right", "bid", "ask", "mid", "last", "volume", "open_interest",
              "implied_vol", "delta", "bid_size", "ask_size"]
PRICE_KEYS = ["ticker", "strike", "expiry", "right", "bid", "ask", "mid", "last", "delta", "gamma", "theta", "vega",
              "implied_vol"]


def test_chain_row_has_the_original_fields_in_order():
    """A chain row carries the original's fields (plus extras after them)."""
    row = chain_row(CALL, Quote(bid=1.0, ask=1.2))
    assert list(row)[:len(CHAIN_KEYS)] == CHAIN_KEYS
    assert row["symbol"] == "AAPL" and row["expiry"] == "20260220" and row["right"] == "C"


def test_mid_is_average_when_both_sides_positive():
    """mid = (bid + ask) / 2 when both are > 0."""
    assert chain_row(CALL, Quote(bid=1.0, ask=1.5, last=9.0))["mid"] == 1.25


def test_mid_falls_back_to_last():
    """mid = last when a side is missing or zero, and 0 when there is no last either."""
    assert mid_price(None, 1.5, 1.1) == 1.1
    assert mid_price(0.0, 1.5, 1.1) == 1.1
    assert mid_price(-1.0, -1.0, None) == 0.0


def test_minus_one_never_passes():
    """IB's -1 'no bid/no ask' becomes 0 in price and size fields, never -1."""
    row = chain_row(CALL, Quote(bid=-1.0, ask=-1.0, last=-1.0, bid_size=-1, ask_size=0, volume=-1))
    for k in ("bid", "ask", "mid", "last", "bid_size", "ask_size", "volume", "open_interest"):
        assert row[k] == 0.0, k


# What IB sends: its exact sentinels (-1 no bid/ask/size, -2 not computed, DBL_MAX no value) as often as any float
IB_NUMBER = st.one_of(st.none(), st.sampled_from([-1.0, -2.0, 0.0, -0.0, 1.7976931348623157e308, 1e300]),
                      st.floats(allow_nan=True, allow_infinity=True))


@given(IB_NUMBER, IB_NUMBER, IB_NUMBER, IB_NUMBER, IB_NUMBER, IB_NUMBER)
def test_prices_and_sizes_are_never_negative_or_non_finite(bid, ask, last, bid_size, ask_size, volume):
    """Whatever IB sends (its -1 / DBL_MAX sentinels included), row prices and sizes are finite, >= 0 and below
    the 1e300 sentinel, in chain and price rows."""
    q = Quote(bid=bid, ask=ask, last=last, bid_size=bid_size, ask_size=ask_size, volume=volume)
    row = chain_row(CALL, q)
    for k in ("bid", "ask", "mid", "last", "bid_size", "ask_size", "volume"):
        assert isinstance(row[k], float) and 0 <= row[k] < 1e300, k
    prow = price_row(CALL, q)
    for k in ("bid", "ask", "mid", "last") if prow is not None else ():
        assert isinstance(prow[k], float) and 0 <= prow[k] < 1e300, k


def test_put_open_interest_is_reported():
    """A put row shows its open interest (tick 28), not 0 as the original did."""
    assert chain_row(PUT, Quote(bid=2.0, ask=2.2, open_interest=1234.0))["open_interest"] == 1234.0


def test_missing_greeks_and_iv_are_null():
    """Greeks and IV that IB did not compute are null, not 0 or -2."""
    row = chain_row(CALL, Quote(bid=1.0, ask=1.1, implied_vol=-1.0, delta=-2.0))
    assert row["implied_vol"] is None and row["delta"] is None
    prow = price_row(CALL, Quote(bid=1.0, ask=1.1, gamma=-2.0, theta=-2.0, vega=1e308, delta=1.7))
    assert prow["gamma"] is None and prow["theta"] is None and prow["vega"] is None and prow["delta"] is None


def test_real_negative_greeks_pass():
    """A put's negative delta and a real negative theta are kept."""
    assert clean_greek("delta", -0.45) == -0.45
    assert clean_greek("theta", -0.08) == -0.08


def test_price_row_fields_and_values():
    """A priced leg gives the original's price-row fields with the quote's values."""
    q = Quote(bid=2.0, ask=2.4, last=2.1, delta=0.5, gamma=0.02, theta=-0.05, vega=0.3, implied_vol=0.25)
    row = price_row(CALL, q)
    assert list(row)[:len(PRICE_KEYS)] == PRICE_KEYS
    assert row["ticker"] == "AAPL" and row["mid"] == 2.2 and row["delta"] == 0.5 and row["implied_vol"] == 0.25


def test_price_row_null_without_bid_and_ask():
    """A leg with no bid and no ask is null in fetch_prices."""
    assert price_row(CALL, Quote(bid=-1.0, ask=-1.0, last=3.0)) is None
    assert price_row(CALL, Quote()) is None
    assert price_row(CALL, Quote(bid=None, ask=0.05)) is not None


def test_delayed_and_error_extras():
    """Delayed quotes are marked delayed: true; a failed contract says why."""
    assert chain_row(CALL, Quote(bid=1.0, ask=1.1, delayed=True))["delayed"] is True
    row = chain_row(CALL, Quote(error_code=200, error="No security definition has been found"))
    assert row["error_code"] == 200 and "security definition" in row["error"]
    assert "error" not in chain_row(CALL, Quote(bid=1.0, ask=1.1))


def test_underlying_price_preference():
    """Stock price: last, else mid, else close, else None."""
    assert underlying_price(Quote(last=10.0, bid=9.0, ask=11.0)) == 10.0
    assert underlying_price(Quote(last=-1.0, bid=9.0, ask=11.0)) == 10.0
    assert underlying_price(Quote(close=8.0)) == 8.0
    assert underlying_price(Quote(bid=-1.0, ask=-1.0)) is None
    assert underlying_row("X", Quote())["price"] == 0.0


def test_covered_call_yield_math():
    """Covered call out of the money: premium = mid x 100, capital = spot x 100, yield = premium / capital x 365 / days."""
    today = dt.date(2026, 1, 21)       # 30 days before 20260220
    m = seller_metrics(CALL, 2.0, 185.0, today)
    assert m["premium"] == 200.0 and m["time_value"] == 200.0
    assert m["capital_at_risk"] == 18500.0 and m["days_to_expiry"] == 30
    assert abs(m["annual_yield"] - 200.0 / 18500.0 * 365 / 30) < 1e-12
    assert abs(m["otm_distance"] - (190.0 - 185.0) / 185.0) < 1e-12


def test_in_the_money_call_yields_only_its_time_value():
    """An in-the-money call's intrinsic value is not income: yield counts only premium above it."""
    today = dt.date(2026, 1, 21)
    m = seller_metrics(CALL, 10.5, 200.0, today)            # intrinsic 10.00, time value 0.50
    assert m["premium"] == 1050.0 and abs(m["time_value"] - 50.0) < 1e-9
    assert abs(m["annual_yield"] - 50.0 / 20000.0 * 365 / 30) < 1e-12
    assert abs(m["otm_distance"] - (190.0 - 200.0) / 200.0) < 1e-12       # in the money: negative
    assert seller_metrics(CALL, 9.0, 200.0, today)["annual_yield"] is None  # below intrinsic: nothing to earn


def test_cash_secured_put_yield_math():
    """Cash-secured put: capital = strike x 100, OTM distance = (spot - strike) / spot; ITM yields time value only."""
    today = dt.date(2026, 1, 21)
    m = seller_metrics(PUT, 1.5, 200.0, today)
    assert m["capital_at_risk"] == 18000.0
    assert abs(m["annual_yield"] - 150.0 / 18000.0 * 365 / 30) < 1e-12
    assert abs(m["otm_distance"] - 0.1) < 1e-12
    itm = seller_metrics(PUT, 12.0, 170.0, today)            # intrinsic 10.00, time value 2.00
    assert abs(itm["time_value"] - 200.0) < 1e-9
    assert abs(itm["annual_yield"] - 200.0 / 18000.0 * 365 / 30) < 1e-12


def test_same_day_expiry_counts_one_day_and_no_premium_no_yield():
    """A 0-day expiry counts as one day; no premium means no yield (None)."""
    today = dt.date(2026, 2, 20)
    assert seller_metrics(CALL, 1.0, 185.0, today)["annual_yield"] == 1.0 * 100 / 18500 * 365
    assert seller_metrics(CALL, 0.0, 185.0, today)["annual_yield"] is None


def test_ranking_best_yield_first_nothing_last():
    """Sell-scan rows are sorted by annual yield, best first, unpriced rows last."""
    today = dt.date(2026, 1, 21)
    rows = [sell_row(Contract.option("AAPL", "20260220", k, "C"), Quote(bid=b, ask=b + 0.2), 200.0, today)
            for k, b in ((200.0, 3.0), (210.0, -1.0), (205.0, 5.0), (195.0, 6.0))]
    ranked = rank_for_seller(rows)
    assert [r["strike"] for r in ranked] == [205.0, 200.0, 195.0, 210.0]
    assert ranked[-1]["annual_yield"] is None


def test_seller_premium_is_the_bid_not_the_mid():
    """A sell fills at the bid: premium, time value and yield come from the bid; the row's mid is unchanged."""
    today = dt.date(2026, 1, 21)
    row = sell_row(CALL, Quote(bid=1.0, ask=3.0, last=2.5), 185.0, today)
    assert row["mid"] == 2.0 and row["premium"] == 100.0 and row["time_value"] == 100.0
    assert abs(row["annual_yield"] - 100.0 / 18500.0 * 365 / 30) < 1e-12


def test_seller_row_without_a_bid_earns_nothing_and_ranks_last():
    """No bid (IB's -1): premium 0 and yield None even with an ask and a last trade (a stale price is not income)."""
    today = dt.date(2026, 1, 21)
    no_bid = sell_row(Contract.option("AAPL", "20260220", 195.0, "C"), Quote(bid=-1.0, ask=2.0, last=1.5), 185.0,
                      today)
    assert no_bid["mid"] == 1.5 and no_bid["premium"] == 0.0 and no_bid["annual_yield"] is None
    priced = sell_row(CALL, Quote(bid=0.05, ask=0.1), 185.0, today)
    assert rank_for_seller([no_bid, priced]) == [priced, no_bid]


def test_rows_carry_no_binary_float_noise():
    """Prices, mids and money are rounded to 4 decimals, greeks and IV to 6 (0.1 + 0.2 shows as 0.3)."""
    q = Quote(bid=0.1, ask=0.2, last=0.1 + 0.2, delta=0.123456789, gamma=0.0123456789, theta=-0.0456789123,
              vega=0.2987654321, implied_vol=0.312345678)
    row = chain_row(CALL, q)
    assert (row["mid"], row["last"], row["delta"], row["implied_vol"]) == (0.15, 0.3, 0.123457, 0.312346)
    prow = price_row(CALL, q)
    assert (prow["mid"], prow["gamma"], prow["theta"], prow["vega"]) == (0.15, 0.012346, -0.045679, 0.298765)
    itm = seller_metrics(CALL, 5.07, 192.33, dt.date(2026, 1, 21))     # 507 - 233 of intrinsic value
    assert itm["premium"] == 507.0 and itm["time_value"] == 274.0
    assert underlying_price(Quote(bid=0.1, ask=0.2)) == 0.15
