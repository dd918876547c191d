"""Contract selection rules, chunk planning and request-size refusal (pure)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, strategies as st

from agent.errors import RequestTooLarge
from agent.selection import (add_business_days, chain_expirations, chain_strikes, check_request_size, concurrency,
                             dedupe, estimate_seconds, listed_contracts, max_contracts, merge_option_params, option_contracts,
                             pick_multiplier, sell_scan_expirations, sell_scan_strikes, strike_step)
from agent.types import Contract, OptionParams


def test_grid_is_five_above_fifty_else_two_and_a_half():
    """The strike grid is 5.0 for a price above 50 and 2.5 at or below it."""
    assert strike_step(50.01) == 5.0
    assert strike_step(50.0) == 2.5
    assert strike_step(12.0) == 2.5


def test_chain_strikes_window_and_grid_above_fifty():
    """Chain strikes are the listed ones in 0.75-1.10 x price on the 5.0 grid (off-grid listed strikes dropped)."""
    listed = [70, 72.5, 75, 77.5, 80, 85, 90, 95, 100, 105, 110, 112.5, 115]
    assert chain_strikes(listed, 100.0) == [75, 80, 85, 90, 95, 100, 105, 110]


def test_chain_strikes_window_and_grid_at_or_below_fifty():
    """At a price of 40 the grid is 2.5 and the window 30-44."""
    listed = [27.5, 29, 30, 31, 32.5, 35, 37.5, 40, 42.5, 44, 45]
    assert chain_strikes(listed, 40.0) == [30, 32.5, 35, 37.5, 40, 42.5]


def test_chain_strikes_only_listed():
    """A grid strike that IB does not list is never requested (it would cost two messages and an error 200)."""
    assert 95 not in chain_strikes([80, 90, 100, 105], 100.0)


def test_chain_strikes_zero_price_selects_nothing():
    """No reference price means no window."""
    assert chain_strikes([90, 100], 0.0) == []


@st.composite
def price_and_listing(draw):
    """A price and a listing of half-dollar strikes (k x 0.5) from half to 1.3 x the price, some left out, some
    twice: the window is almost never empty and holds strikes on and off each grid."""
    price = draw(st.floats(min_value=1, max_value=2000))
    low, high = max(1, int(price)), int(2.6 * price) + 1          # 0.5 x price .. 1.3 x price, in half dollars
    left_out = draw(st.sets(st.integers(low, high), max_size=(high - low) // 2))
    twice = draw(st.lists(st.integers(low, high), max_size=5))
    return price, [k for k in range(low, high + 1) if k not in left_out] + twice


@given(price_and_listing())
def test_chain_strikes_are_exactly_the_listed_grid_strikes_in_the_window(case):
    """The chosen strikes are exactly the listed ones inside 0.75-1.10 x price on its grid (5.0 above 50, else
    2.5), sorted, each once: none missing, none extra."""
    price, ks = case
    grid = 10 if price > 50 else 5                                  # the grid in half dollars
    expected = sorted({k * 0.5 for k in ks if k % grid == 0 and 0.75 * price - 1e-6 <= k * 0.5 <= 1.10 * price + 1e-6})
    assert chain_strikes([k * 0.5 for k in ks], price) == expected


def test_chain_expirations_when_close_date_is_an_expiry():
    """Close date on an expiry: that expiry plus the next three."""
    exps = ["20260116", "20260220", "20260320", "20260417", "20260515", "20260618"]
    assert chain_expirations(exps, dt.date(2026, 2, 20)) == ["20260220", "20260320", "20260417", "20260515"]


def test_chain_expirations_when_close_date_is_not_an_expiry():
    """Close date between expiries: only the first three after it."""
    exps = ["20260116", "20260220", "20260320", "20260417", "20260515", "20260618"]
    assert chain_expirations(exps, dt.date(2026, 2, 21)) == ["20260320", "20260417", "20260515"]


def test_chain_expirations_near_the_end_of_the_list():
    """Fewer than three later expiries: whatever IB lists."""
    assert chain_expirations(["20260116", "20260220"], dt.date(2026, 1, 20)) == ["20260220"]
    assert chain_expirations(["20260116"], dt.date(2026, 3, 1)) == []


def test_add_business_days_skips_weekends():
    """Friday + 1 weekday is Monday; + 5 is next Friday; 0 is the same day."""
    fri = dt.date(2026, 1, 9)
    assert add_business_days(fri, 1) == dt.date(2026, 1, 12)
    assert add_business_days(fri, 5) == dt.date(2026, 1, 16)
    assert add_business_days(fri, 0) == fri
    assert add_business_days(dt.date(2026, 1, 10), 1) == dt.date(2026, 1, 12)   # Saturday -> Monday


def test_sell_scan_expirations_window():
    """Sell-scan expiries run from today through today + N weekdays inclusive."""
    today = dt.date(2026, 1, 5)  # Monday
    exps = ["20260102", "20260105", "20260109", "20260116", "20260123", "20260126", "20260130"]
    # 15 weekdays from Mon 5 Jan is Mon 26 Jan
    assert sell_scan_expirations(exps, today, 15) == ["20260105", "20260109", "20260116", "20260123", "20260126"]
    assert sell_scan_expirations(exps, today, 0) == ["20260105"]


def test_sell_scan_strikes_ntm_window():
    """Sell-scan strikes lie within spot x (1 +/- ntm_pct) on the spot's grid."""
    listed = [170, 175, 180, 182.5, 185, 190, 195, 200, 205]
    assert sell_scan_strikes(listed, 190.0, 0.05) == [185, 190, 195]
    assert sell_scan_strikes(listed, 190.0, 0.10) == [175, 180, 185, 190, 195, 200, 205]
    assert sell_scan_strikes([19, 20, 21, 22.5], 21.0, 0.10) == [20, 22.5]   # 2.5 grid at 21


def test_merge_option_params_unions_exchanges():
    """Strikes and expirations are merged across every exchange IB lists, sorted and unique."""
    params = [OptionParams("CBOE", 1, "AAPL", "100", ("20260220", "20260116"), (100.0, 105.0)),
              OptionParams("AMEX", 1, "AAPL", "100", ("20260116",), (95.0, 100.0, 110.0))]
    assert merge_option_params(params) == (["20260116", "20260220"], [95.0, 100.0, 105.0, 110.0])


def test_pick_multiplier_prefers_own_trading_class():
    """The multiplier of the symbol's own trading class wins over an adjusted class."""
    params = [OptionParams("CBOE", 1, "2XYZ", "150", (), ()), OptionParams("CBOE", 1, "XYZ", "100", (), ())]
    assert pick_multiplier(params, "XYZ") == "100"
    assert pick_multiplier([], "XYZ") == "100"


def test_option_contracts_order():
    """Contracts come ordered by expiry, strike, right."""
    cs = option_contracts("aapl", ["20260116", "20260220"], [100.0, 105.0], ["C", "P"])
    assert [(c.expiry, c.strike, c.right) for c in cs][:3] == [("20260116", 100.0, "C"), ("20260116", 100.0, "P"),
                                                               ("20260116", 105.0, "C")]
    assert len(cs) == 8 and all(c.symbol == "AAPL" and c.sec_type == "OPT" for c in cs)


def test_dedupe_maps_every_input_to_one_fetch():
    """Duplicate contracts are fetched once and every input maps back to its result."""
    a = Contract.option("AAPL", "20260116", 100, "C")
    b = Contract.option("AAPL", "20260116", 100, "P")
    unique, index = dedupe([a, b, a, Contract.option("aapl", "20260116", 100.0, "c")])
    assert unique == [a, b]
    assert index == [0, 1, 0, 0]


def test_concurrency_limits():
    """Lines per request: the lines it may use, the relay's _max_batch_size, a chunk size, the number of contracts."""
    assert concurrency(600) == 600
    assert concurrency(600, free_lines=80) == 80
    assert concurrency(600, chunk_size=50, free_lines=80) == 50
    assert concurrency(600, max_batch=20) == 20
    assert concurrency(600, max_batch=20, free_lines=7) == 7
    assert concurrency(4) == 4
    assert concurrency(0) == 0
    assert concurrency(10, free_lines=0) == 1


def test_request_size_refusal_says_how_to_narrow():
    """A request whose messages cannot fit well inside the relay's wait is refused with advice."""
    limit = max_contracts("fetch_prices")
    check_request_size("fetch_prices", limit, "Send fewer legs.")
    with pytest.raises(RequestTooLarge) as e:
        check_request_size("fetch_prices", limit + 1, "Send fewer legs.")
    assert "Send fewer legs." in str(e.value) and "60 s" in str(e.value)


def test_request_size_refusal_names_the_agents_pace_and_ibs_limit_apart():
    """The refusal calls 45/s the agent's own pace and 50/s IB's limit (not "IB's limit of 45")."""
    with pytest.raises(RequestTooLarge) as e:
        check_request_size("fetch_prices", max_contracts("fetch_prices") + 1, "Send fewer legs.", 45.0)
    msg = str(e.value)
    assert "agent's pace of 45 messages per second" in msg and "IB allows at most 50" in msg
    assert "IB's limit of 45" not in msg


def test_request_size_limit_fits_inside_relay_wait():
    """The largest accepted request needs at most half the relay's wait at 45 messages/s."""
    for kind, wait in (("fetch_chain", 180), ("sell_scan", 120), ("fetch_prices", 60)):
        assert estimate_seconds(max_contracts(kind)) <= wait / 2
        assert estimate_seconds(max_contracts(kind) + 2) > wait / 2


def test_listed_contracts_keeps_only_strikes_listed_for_each_expiry():
    """Per expiry only IB's listed strikes are asked for; an expiry with an unknown listing keeps them all."""
    cs, skipped = listed_contracts("AAPL", ["20260116", "20260220"], [95.0, 100.0, 105.0], ["C", "P"],
                                   {"20260116": frozenset({100.0}), "20260220": None})
    assert [(c.expiry, c.strike) for c in cs][::2] == [("20260116", 100.0), ("20260220", 95.0),
                                                       ("20260220", 100.0), ("20260220", 105.0)]
    assert skipped == 4
