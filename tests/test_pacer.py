"""The pacer: pure arithmetic without sockets (sliding window, round robin, line grants) and its asyncio face."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings, strategies as st

from agent.errors import RequestTimeout
from agent.pacer import (SMALL_REQUEST_LINES, LineBudget, Pacer, RoundRobin, SlidingWindow, TokenBucket,
                         current_flow)


def _simulate(limits: list, arrivals: list[float]) -> list[float]:
    """Send one message per arrival, as early as every limiter allows; returns the send times."""
    sends, t = [], 0.0
    for a in arrivals:
        t = max(t, a)
        d = max(lim.delay(t) for lim in limits)
        while d > 0:
            t += d
            d = max(lim.delay(t) for lim in limits)
        for lim in limits:
            lim.record(t)
        sends.append(t)
    return sends


@settings(max_examples=200, deadline=None)
@given(cap=st.integers(1, 60),
       gaps=st.lists(st.floats(0.0, 0.2, allow_nan=False, allow_infinity=False), min_size=1, max_size=400))
def test_no_window_ever_holds_more_than_rate(cap, gaps):
    """Property: whatever the arrivals, any cap+1 consecutive sends span at least one second."""
    arrivals, t = [], 0.0
    for g in gaps:
        t += g
        arrivals.append(t)
    sends = _simulate([SlidingWindow(cap, 1.0)], arrivals)
    for i in range(len(sends) - cap):
        assert sends[i + cap] - sends[i] >= 1.0 - 1e-9


@settings(max_examples=100, deadline=None)
@given(cap=st.integers(1, 50), n=st.integers(1, 300))
def test_burst_is_sent_at_full_rate(cap, n):
    """Property: a burst is not delayed more than needed: send k goes out at floor(k / cap) seconds."""
    sends = _simulate([SlidingWindow(cap, 1.0)], [0.0] * n)
    for k, s in enumerate(sends):
        assert s == pytest.approx(k // cap, abs=1e-5)


@settings(max_examples=150, deadline=None)
@given(burst=st.integers(1, 5),
       gaps=st.lists(st.floats(0.0, 0.1, allow_nan=False, allow_infinity=False), min_size=1, max_size=300))
def test_spacing_bounds_every_interval(burst, gaps):
    """Property: with spacing, any interval of length L holds at most burst + rate*L sends (and <= rate per 1 s)."""
    rate = 45
    arrivals, t = [], 0.0
    for g in gaps:
        t += g
        arrivals.append(t)
    sends = _simulate([SlidingWindow(rate, 1.0), TokenBucket(rate, burst)], arrivals)
    for i in range(len(sends)):
        for j in range(i + 1, min(len(sends), i + rate + 2)):
            span = sends[j] - sends[i]
            assert j - i + 1 <= burst + rate * span + 1e-6
        if i + rate < len(sends):
            assert sends[i + rate] - sends[i] >= 1.0 - 1e-9


def test_token_bucket_burst_then_spacing():
    """A full bucket lets `burst` sends go at once, then one per 1/rate seconds."""
    b = TokenBucket(10, 2)
    b.record(0.0)
    b.record(0.0)
    assert b.delay(0.0) == pytest.approx(0.1)
    with pytest.raises(RuntimeError):
        b.record(0.05)
    assert b.delay(0.1) == 0.0


def test_window_delay_counts_from_oldest_send():
    """Full window: the wait is until the oldest send is one second old, then a send is allowed."""
    w = SlidingWindow(3, 1.0)
    for t in (10.0, 10.2, 10.5):
        assert w.delay(t) == 0.0
        w.record(t)
    assert w.delay(10.6) == pytest.approx(0.4)
    with pytest.raises(RuntimeError):
        w.record(10.6)  # a fourth send inside (9.6, 10.6]: refused, not silently counted
    assert w.delay(11.0) == 0.0
    assert w.count(11.0) == 2


def test_round_robin_serves_flows_in_turn():
    """A 4-item flow arriving behind a 600-item flow gets its items within the first 8 picks."""
    rr: RoundRobin[str] = RoundRobin()
    for i in range(600):
        rr.push("chain", f"c{i}")
    for i in range(4):
        rr.push("legs", f"l{i}")
    first8 = [rr.pop() for _ in range(8)]
    assert [x for x in first8 if x.startswith("l")] == ["l0", "l1", "l2", "l3"]
    assert [x for x in first8 if x.startswith("c")] == ["c0", "c1", "c2", "c3"]
    assert len(rr) == 596 and rr.flows() == ["chain"]


def test_round_robin_remove_drops_empty_flow():
    """Removing a flow's last item removes the flow from the rotation."""
    rr: RoundRobin[int] = RoundRobin()
    rr.push("a", 1)
    rr.push("b", 2)
    assert rr.remove("a", 1) and not rr.remove("a", 1)
    assert rr.flows() == ["b"] and rr.pop() == 2 and not rr


def test_line_budget_keeps_reserve_for_small_requests():
    """A request for many lines leaves the reserve free; a small request may use it."""
    b = LineBudget(90)
    assert b.reserve == SMALL_REQUEST_LINES
    assert b.grant([600]) == [80]
    assert b.available_to(600) == 0
    assert b.grant([4, 600, 8]) == [4, 0, 6]
    assert b.free == 0 and b.peak == 90


def test_line_budget_grants_in_arrival_order():
    """Lines coming back go first to the oldest waiter that may have them."""
    b = LineBudget(20)        # reserve = 5
    b.take(20)
    b.give_back(8)
    assert b.grant([50, 3, 50]) == [3, 3, 0]
    assert b.give_back(100) == 18  # more than outstanding: clamped, reported
    assert b.in_use == 0


def test_line_budget_small_budget_reserve_is_bounded():
    """A tiny budget keeps a reserve no bigger than a quarter of it, so big requests still get lines."""
    b = LineBudget(4)
    assert b.reserve == 1
    assert b.grant([50]) == [3]


async def test_message_fast_path_and_stats():
    """Under the rate, message() returns at once and counts the send; the budget is max_lines minus margin."""
    p = Pacer(rate=45, max_lines=100, line_margin=10, burst=45)
    for _ in range(45):
        await p.message()
    s = p.stats()
    assert s["messages_sent"] == 45 and s["peak_rate_1s"] == 45 and s["waits"] == 0
    assert p.lines_budget == 90 and p.lines_free == 90


async def test_message_round_robin_between_flows():
    """A small request's messages are not stuck behind a big request's queue."""
    p = Pacer(rate=10, burst=10)
    for _ in range(10):                 # fill the window
        await p.message()
    order: list[str] = []

    async def send(flow: str, i: int) -> None:
        current_flow.set(flow)
        await p.message()
        order.append(f"{flow}{i}")

    big = [asyncio.create_task(send("big", i)) for i in range(30)]
    await asyncio.sleep(0)               # the big flow queues first
    small = [asyncio.create_task(send("small", i)) for i in range(4)]
    await asyncio.gather(*small)
    assert order.index("small3") < 8     # interleaved, not after 30 big ones
    for t in big:
        t.cancel()
    await asyncio.gather(*big, return_exceptions=True)
    assert p.stats()["peak_rate_1s"] <= 10


async def test_cancelled_message_waiter_leaves_queue():
    """A cancelled waiter is removed and does not consume a token."""
    p = Pacer(rate=2, burst=2)
    await p.message()
    await p.message()
    t = asyncio.create_task(p.message())
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert not p._waiting
    assert p.stats()["messages_sent"] == 2


async def test_tickets_keep_call_order_and_dropped_ones_leave_the_queue():
    """ticket() takes its place at call time (no await), so grants follow call order; a dropped one is skipped."""
    p = Pacer(rate=3, burst=3)
    first = [p.ticket() for _ in range(3)]
    assert all(t.future.done() for t in first)            # within the rate: granted at once
    queued = [p.ticket() for _ in range(3)]
    assert not any(t.future.done() for t in queued)
    p.drop_ticket(queued[1])
    granted: list[int] = []
    for i, t in enumerate(queued):
        t.future.add_done_callback(lambda f, i=i: granted.append(i) if not f.cancelled() else None)
    await asyncio.wait_for(queued[2].future, 5)
    assert granted == [0, 2] and queued[1].future.cancelled()


async def test_acquire_lines_waits_and_is_granted_in_order():
    """When the budget is spent, waiters are woken by release_lines in order, small ones using the reserve."""
    p = Pacer(max_lines=30, line_margin=10)         # budget 20, reserve 5
    assert await p.acquire_lines(100) == 15
    assert await p.acquire_lines(5) == 5
    assert p.lines_free == 0
    big = asyncio.create_task(p.acquire_lines(100))
    small = asyncio.create_task(p.acquire_lines(2))
    await asyncio.sleep(0)
    assert not big.done() and not small.done()
    p.release_lines(8)
    assert await small == 2 and await big == 3     # both served; the big one only down to the reserve
    assert p.lines_in_use == 17
    assert p.stats()["peak_lines"] == 20


async def test_acquire_lines_timeout_and_cancel_do_not_leak():
    """A line waiter that times out raises RequestTimeout; a cancelled one leaves no lines taken."""
    p = Pacer(max_lines=12, line_margin=10)         # budget 2
    assert await p.acquire_lines(2) == 2
    with pytest.raises(RequestTimeout):
        await p.acquire_lines(1, timeout=0.01)
    t = asyncio.create_task(p.acquire_lines(1))
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    p.release_lines(2)
    assert p.lines_in_use == 0 and p.stats()["line_waiters"] == 0


async def test_line_waiter_cancelled_as_its_grant_lands_raises_and_gives_the_lines_back():
    """A line waiter cancelled in the same loop iteration as its grant raises CancelledError; the line returns."""
    p = Pacer(max_lines=12, line_margin=10)         # budget 2
    assert await p.acquire_lines(2) == 2
    t = asyncio.create_task(p.acquire_lines(1))
    await asyncio.sleep(0)                          # t is queued for a line
    p.release_lines(1)                              # grants t's line now ...
    t.cancel()                                      # ... and t is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await t
    assert p.lines_in_use == 1 and p.stats()["line_waiters"] == 0


async def test_message_waiter_cancelled_as_its_token_lands_raises():
    """A message waiter cancelled in the same loop iteration as its token is granted raises CancelledError."""
    p = Pacer(rate=2, burst=2)
    await p.message()
    await p.message()
    queued = asyncio.Event()
    real_ticket = p.ticket

    def ticket():
        tk = real_ticket()
        queued.set()
        return tk

    p.ticket = ticket
    t = asyncio.create_task(p.message())
    await queued.wait()                             # t holds a place in the queue and waits for it
    granted = p._waiting.pop()                      # the pump's grant, done here so it lands with the cancel
    granted.set_result(None)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
