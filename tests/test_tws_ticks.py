"""Pure bridge rules without sockets: ticks into a Quote, error-code sets, backoff, account/mode matching."""

from __future__ import annotations

import pytest

from agent.tws import ticks as t
from agent.retry import preview, reconnect_wait
from agent.tws import TWS_WAIT, accounts_are_paper, mismatch_message
from agent.types import Contract, Quote
from agent.tws.wrapper import from_ib_contract, to_ib_contract


def test_no_bid_minus_one_is_none_and_clears_stale_bid():
    """Price -1 (IB's "no bid") leaves bid None, also after a real bid was seen."""
    q = Quote()
    t.apply_price(q, 1, 2.5)
    assert q.bid == 2.5
    t.apply_price(q, 1, -1.0)
    t.apply_price(q, 2, -1)
    assert q.bid is None and q.ask is None and not q.has_price


def test_delayed_ticks_fill_the_same_fields_and_mark_delayed():
    """Delayed ticks 66/67/68/75 and 69/70/74 fill bid/ask/last/close/sizes and set delayed."""
    q = Quote()
    for tick, v in ((66, 1.1), (67, 1.3), (68, 1.2), (75, 1.0)):
        t.apply_price(q, tick, v)
    t.apply_size(q, 69, 5)
    t.apply_size(q, 70, 7)
    t.apply_size(q, 74, 1000)
    assert (q.bid, q.ask, q.last, q.close) == (1.1, 1.3, 1.2, 1.0)
    assert (q.bid_size, q.ask_size, q.volume) == (5, 7, 1000)
    assert q.delayed


def test_live_ticks_do_not_mark_delayed_but_market_data_type_does():
    """Live ticks keep delayed False; marketDataType 3 sets it."""
    q = Quote()
    t.apply_price(q, 1, 3.0)
    t.apply_size(q, 0, 10)
    assert not q.delayed and q.bid_size == 10
    t.apply_market_data_type(q, 3)
    assert q.delayed


@pytest.mark.parametrize("right,expect", [("C", 120.0), ("P", 80.0)])
def test_open_interest_uses_the_contracts_own_side(right, expect):
    """Tick 27 is a call's open interest, tick 28 a put's."""
    q = Quote()
    t.apply_size(q, 27, 120)          # a stock line (no right): kept aside, not its open interest
    assert q.open_interest is None and q.extra["call_open_interest"] == 120
    q2 = Quote()
    t.apply_size(q2, 27, 120, right)
    t.apply_size(q2, 28, 80, right)
    t.apply_size(q2, 29, 12, right)
    t.apply_size(q2, 30, 8, right)
    assert q2.open_interest == expect
    assert q2.option_volume == (12.0 if right == "C" else 8.0)


def test_generic_ticks_iv_and_hist_vol():
    """Tick 24 gives implied vol, tick 23 historical vol; an option computation's IV wins over tick 24."""
    q = Quote()
    t.apply_generic(q, 23, 0.22)
    t.apply_generic(q, 24, 0.31)
    assert q.hist_vol == 0.22 and q.implied_vol == 0.31
    t.apply_option_computation(q, 13, 0.29, 0.5, 2.0, 0.01, 0.1, -0.02, 100.0)
    t.apply_generic(q, 24, 0.40)
    assert q.implied_vol == 0.29


def test_model_greeks_preferred_over_bid_ask_average():
    """Without a model tick the greeks are the bid/ask average; a model tick then takes over."""
    q = Quote()
    t.apply_option_computation(q, 10, 0.30, 0.40, 1.9, 0.02, 0.1, -0.03, 100.0)
    t.apply_option_computation(q, 11, 0.34, 0.44, 2.1, 0.04, 0.1, -0.05, 100.0)
    assert q.delta == pytest.approx(0.42) and q.implied_vol == pytest.approx(0.32)
    assert q.gamma == pytest.approx(0.03)
    t.apply_option_computation(q, 13, 0.31, 0.41, 2.0, 0.025, 0.11, -0.04, 100.5)
    assert (q.delta, q.implied_vol, q.model_price, q.und_price) == (0.41, 0.31, 2.0, 100.5)
    t.apply_option_computation(q, 10, 0.50, 0.60, 1.9, 0.02, 0.1, -0.03, 100.0)
    assert q.delta == 0.41          # a later bid computation does not override the model


def test_computation_sentinels_mean_none():
    """IV < 0, greeks -2, prices -1 or >= 1e300 are "not computed"; delta -1 is a real value."""
    q = Quote()
    t.apply_option_computation(q, 83, -1.0, -2.0, -1.0, -2.0, 1.7976931348623157e308, -2.0, -1.0)
    assert q.delayed
    assert (q.implied_vol, q.delta, q.model_price, q.gamma, q.vega, q.theta, q.und_price) == (None,) * 7
    t.apply_option_computation(q, 13, 0.5, -1.0, None, None, None, None, None)
    assert q.delta == -1.0 and q.implied_vol == 0.5


def test_errors_advisory_vs_failure():
    """10167 sets delayed and is not a failure; 10090 is advisory; 200 and 354 fail the line."""
    q = Quote()
    assert not t.apply_error(q, 10167, "Displaying delayed market data")
    assert not t.apply_error(q, 10090, "Part of requested market data is not subscribed")
    assert q.delayed and q.error_code is None
    assert t.apply_error(q, 354, "Requested market data is not subscribed")
    assert q.error_code == 354 and q.failed
    q2 = Quote()
    t.apply_price(q2, 4, 1.5)
    assert t.apply_error(q2, 200, "No security definition")
    assert q2.error_code == 200 and not q2.failed    # it has a price; failed means "no data at all"


def test_warning_range_never_fails_a_line():
    """IB's 2100-2199 warnings are advisories on a line, like 10090."""
    q = Quote()
    assert not t.apply_error(q, 2176, "Warning: fractional share size rules")
    assert q.error_code is None and t.is_warning(2176) and not t.is_warning(200)


def test_code_sets_and_farm_name():
    """Farm OK/down codes are named sets; the farm is the text after the last ':'."""
    assert {2104, 2106, 2158} <= t.INFO_CODES and 2103 in t.FARM_DOWN and 2157 in t.FARM_DOWN
    assert not (t.INFO_CODES & {200, 321, 326, 354, 100, 101})
    assert t.farm_name("Market data farm connection is OK:usfarm.nj") == "usfarm.nj"
    assert t.farm_name("HMDS data farm connection is broken:ushmds") == "ushmds"
    assert t.farm_name("Sec-def data farm connection is OK:secdefil") == "secdefil"


def test_tws_wait_random_first_delay_then_growth_to_the_cap():
    """TWS's delays (tenacity): first in [1, 1.3] s, then growing 1.6x (each above the last) to the 30 s cap."""
    delays = preview(TWS_WAIT, 12)
    assert 1.0 <= delays[0] <= 1.3 and delays[-1] == 30.0
    assert all(a < b or b == 30.0 for a, b in zip(delays, delays[1:])), delays
    assert preview(reconnect_wait(first=1.0, factor=2.0, cap=5.0, jitter=0), 5) == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_accounts_paper_live_and_mismatch_message():
    """D… accounts are paper, U…/F… live; the mismatch message names port, account and both fixes."""
    assert accounts_are_paper(["DU1234567"]) is True
    assert accounts_are_paper(["U1234567"]) is False
    assert accounts_are_paper(["F123", "U1"]) is False
    assert accounts_are_paper([]) is None
    msg = mismatch_message(7496, ["U1234567"], "paper")
    assert msg == ("TWS on port 7496 is logged in to live account U1234567 but IB_MODE=paper — "
                   "log in to your paper account or set IB_MODE=live")


def test_contract_round_trip_through_ibapi():
    """An option contract survives conversion to ibapi's Contract and back."""
    c = Contract.option("aapl", "20261218", 200, "c")
    assert from_ib_contract(to_ib_contract(c)) == c
