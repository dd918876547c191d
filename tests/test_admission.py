"""Admission of bulk requests (pure): admitted while the queued work fits every budget, else "busy" at once."""

from __future__ import annotations

import datetime as dt

from agent.admission import Admission, estimate_messages
from agent.protocol import FetchChainPayload, FetchPricesPayload, SellScanPayload


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def chain(deal: float) -> FetchChainPayload:
    return FetchChainPayload.model_validate({"ticker": "JNPR", "dealPrice": deal,
                                             "expectedCloseDate": (dt.date.today() + dt.timedelta(30)).isoformat()})


def test_estimates_follow_the_selection_rules():
    """A chain costs two messages per strike x 4 expiries x 2 rights on its grid; prices two per leg."""
    assert estimate_messages("fetch_chain", chain(40.0)) == 2 * 6 * 8 + 8        # 30-44 on a 2.5 grid: 6 strikes
    assert estimate_messages("fetch_chain", chain(200.0)) == 2 * 15 * 8 + 8      # 150-220 on a 5 grid: 15
    legs = FetchPricesPayload.model_validate({"contracts": [{"ticker": "AAPL", "strike": 200, "expiry": "20301218"}] * 8})
    assert estimate_messages("fetch_prices", legs) == 17
    assert estimate_messages("sell_scan", SellScanPayload(ticker="MSFT")) > 0
    assert estimate_messages("ib_status", None) == 0


def test_admitted_while_the_queue_fits_then_busy_with_its_size_and_wait():
    """At 10 msg/s, 104-message chains (10.4 s) fit three to a 35 s budget; the fourth is told how many are ahead
    and when to retry; other types are never queued."""
    clock = Clock()
    a = Admission(rate=10.0, budgets={"fetch_chain": 35.0}, clock=clock)
    tickets = [a.admit("fetch_chain", chain(40.0), 170.0) for _ in range(3)]
    assert all(t is not None and why is None for t, why in tickets)
    ticket, why = a.admit("fetch_chain", chain(40.0), 170.0)
    assert ticket is None and why == "busy: 3 requests ahead, retry in about 32 s"
    assert a.admit("ib_status", None, 10.0) == (None, None) and a.refused == 1 and a.peak_active == 3


def test_nothing_ahead_is_always_admitted():
    """A request larger than its budget is admitted when nothing is ahead (the scanner's size check decides)."""
    a = Admission(rate=1.0, budgets={"fetch_chain": 1.0}, clock=Clock())
    ticket, why = a.admit("fetch_chain", chain(200.0), 170.0)
    assert ticket is not None and why is None


def test_a_newcomer_may_not_push_an_earlier_request_past_its_budget():
    """Fair sharing slows what is already running: a price refresh with a long budget is refused when the chain
    admitted before it would then miss its own."""
    clock = Clock()
    a = Admission(rate=10.0, budgets={"fetch_chain": 12.0, "fetch_prices": 1000.0}, clock=clock)
    a.admit("fetch_chain", chain(40.0), 170.0)                                     # 10.4 s of 12
    legs = FetchPricesPayload.model_validate({"contracts": [{"ticker": "AAPL", "strike": 200, "expiry": "20301218"}] * 20})
    ticket, why = a.admit("fetch_prices", legs, 55.0)                             # +4.1 s: chain would end at 14.5
    assert ticket is None and why.startswith("busy: 1 requests ahead")


def test_done_gives_back_the_unused_share():
    """A request that finishes early frees the rest of its estimate; the last one to finish empties the queue."""
    clock = Clock()
    a = Admission(rate=10.0, budgets={"fetch_chain": 25.0}, clock=clock)
    first, _ = a.admit("fetch_chain", chain(40.0), 170.0)
    second, _ = a.admit("fetch_chain", chain(40.0), 170.0)
    assert a.admit("fetch_chain", chain(40.0), 170.0)[0] is None                 # 31.2 s > 25
    clock.t += 1.0
    a.done(first)                                                                # used 1 s of its 10.4
    assert a.admit("fetch_chain", chain(40.0), 170.0)[0] is not None
    a.done(second)
    clock.t += 100.0
    a.done(next(iter(a._active)))
    assert a.active == 0 and a.admit("fetch_chain", chain(40.0), 170.0)[0] is not None
