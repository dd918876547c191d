"""The pacer's order: which message goes next (MessageQueue) and who gets which line (LineBudget), as pure
properties, then the asyncio Pacer keeping that order (no sockets; the simulator tests are in test_answer_first.py)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings, strategies as st

from agent.line_budget import LineBudget, LineDemand
from agent.message_queue import BULK, CANCEL, URGENT, MessageQueue
from agent.pacer import JITTER_GUARD, MessageLimiter, Pacer, SlidingWindow, TokenBucket, current_bulk, current_flow

KINDS = st.sampled_from([URGENT, BULK, CANCEL])
FLOWS = st.sampled_from(["chain", "legs", "scan"])


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), KINDS, FLOWS, st.booleans()), min_size=1, max_size=200))
def test_queue_serves_by_class_and_loses_nothing(ops):
    """Property: urgent first; bulk before cancels while lines are free, cancels first when short; each item once."""
    q: MessageQueue[tuple] = MessageQueue()
    queued: dict[tuple, str] = {}
    popped: list[tuple] = []
    for i, (push, kind, flow, short) in enumerate(ops):
        if push or not q:
            item = (i, kind, flow)
            q.push(kind, flow, item)
            queued[item] = kind
            continue
        kinds_waiting = set(queued.values())
        assert q.ahead_of(kind, short) == any(
            k in kinds_waiting for k in MessageQueue.order(short)[:MessageQueue.order(short).index(kind) + 1])
        item = q.pop(short)
        first = next(k for k in MessageQueue.order(short) if k in kinds_waiting)
        assert item[1] == first
        popped.append(item)
        del queued[item]
        assert len(q) == len(queued)
    while q:
        item = q.pop()
        popped.append(item)
        del queued[item]
    assert not queued and len(popped) == len(set(popped))


def test_cancels_go_oldest_first_and_requests_take_turns_by_flow():
    """Within a class: cancels in the order they were asked for; requests round-robin across flows."""
    q: MessageQueue[str] = MessageQueue()
    for i in range(3):
        q.push(CANCEL, "chain", f"x{i}")
    for i in range(4):
        q.push(BULK, "chain", f"c{i}")
    q.push(BULK, "scan", "s0")
    assert [q.pop(lines_short=True) for _ in range(3)] == ["x0", "x1", "x2"]
    assert [q.pop() for _ in range(3)] == ["c0", "s0", "c1"]


def test_removed_ticket_is_not_served():
    """A dropped message leaves its class, wherever it waited."""
    q: MessageQueue[str] = MessageQueue()
    q.push(CANCEL, "a", "x")
    q.push(URGENT, "a", "u")
    assert q.remove(CANCEL, "a", "x") and not q.remove(CANCEL, "a", "x")
    assert q.cancels == 0 and q.pop(True) == "u" and not q


@st.composite
def budget_runs(draw):
    budget = draw(st.integers(1, 120))
    steps = draw(st.lists(st.tuples(st.lists(st.tuples(st.integers(1, 600), st.integers(0, 80)), min_size=1,
                                             max_size=4), st.integers(0, 40)), min_size=1, max_size=40))
    return budget, steps


@settings(max_examples=300, deadline=None)
@given(run=budget_runs())
def test_lines_in_use_never_exceed_the_budget_and_the_reserve_stays_for_small_requests(run):
    """Property: grants never take more than the budget or than wanted; big requests never dip into the reserve;
    a waiter holding fewer lines is served in full before one holding more gets any."""
    budget, steps = run
    b = LineBudget(budget)
    for waiters, back in steps:
        b.give_back(back)
        free_before = b.free
        wants = [size for size, _ in waiters]
        demands = [LineDemand(size=size, held=held) for size, held in waiters]
        grants = b.grant(wants, demands)
        assert 0 <= b.in_use <= b.budget and b.free == free_before - sum(grants)
        assert all(0 <= g <= w for g, w in zip(grants, wants))
        big = sum(g for g, d in zip(grants, demands) if not d.small)
        small = sum(g for g, d in zip(grants, demands) if d.small)
        assert big <= max(0, free_before - b.reserve)          # the reserve is never a big request's
        assert big + small <= free_before
        for i, j in ((i, j) for i in range(len(waiters)) for j in range(len(waiters))):
            if demands[i].held < demands[j].held and demands[i].size == demands[j].size and grants[j]:
                assert grants[i] == wants[i]


@settings(max_examples=300, deadline=None)
@given(warm=st.integers(0, 30), closing=st.integers(0, 30),
       waiters=st.lists(st.tuples(st.integers(1, 80), st.integers(1, 500), st.integers(0, 60)), max_size=5))
def test_warm_lines_are_reclaimed_only_for_a_request_that_cannot_go_on(warm, closing, waiters):
    """Property: reclaim never exceeds the warm lines or the unmet need of requests holding none (or small ones),
    less the lines already on their way back; a big request that streams takes none."""
    b = LineBudget(90)
    b.take(min(90, warm))
    b.warm_up(min(90, warm))
    wants = [w for w, _, _ in waiters]
    demands = [LineDemand(size=s, held=h) for _, s, h in waiters]
    n = b.reclaim(wants, demands, closing)
    need = sum(w for w, d in zip(wants, demands) if d.held == 0 or d.small)
    assert 0 <= n <= b.warm and n == max(0, min(b.warm, need - closing))
    if all(d.held > 0 and not d.small for d in demands):
        assert n == 0


def test_grant_serves_the_request_holding_fewest_lines_first():
    """Two big requests waiting: the freed lines go to the one holding fewer, so they share the budget."""
    b = LineBudget(40)            # reserve 10
    b.take(40)
    b.give_back(5)
    first, second = LineDemand(size=300, held=25), LineDemand(size=300, held=5)
    assert b.grant([30, 30], [first, second]) == [0, 0]          # 5 free: all reserve
    b.give_back(10)
    assert b.grant([30, 30], [first, second]) == [0, 5]


def test_warm_lines_count_within_lines_in_use():
    """Warm lines are lines in use; cooling more than there are is clamped, as is giving back below them."""
    b = LineBudget(20)
    b.take(6)
    b.warm_up(4)
    with pytest.raises(RuntimeError):
        b.warm_up(3)
    b.cool(10)
    assert b.warm == 0
    b.warm_up(4)
    b.give_back(5)
    assert b.in_use == 1 and b.warm == 1


# --- the quiet credit: a short burst after a quiet spell, as safe as the spacing --------------------------

def _send_times(limiter, arrivals: list[float]) -> list[float]:
    """Send one message per arrival, as early as the limiter allows; returns the send times."""
    sends, t = [], 0.0
    for a in arrivals:
        t = max(t, a)
        d = limiter.delay(t)
        while d > 0:
            t += d
            d = limiter.delay(t)
        limiter.record(t)
        sends.append(t)
    return sends


class _Spacing:
    """The pacer's rule without the quiet credit: window and token bucket (what the credit is compared with)."""

    def __init__(self, capacity: int, window: float, burst: int):
        self.w, self.b = SlidingWindow(capacity, window), TokenBucket(capacity / window, burst)

    def delay(self, t: float) -> float:
        return max(self.w.delay(t), self.b.delay(t))

    def record(self, t: float) -> None:
        self.b.record(t)
        self.w.record(t)


def _most_in(sends: list[float], span: float) -> int:
    """The most sends any interval [t, t + span] holds."""
    best, j = 0, 0
    for i in range(len(sends)):
        while sends[i] - sends[j] > span + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.one_of(st.just(0.0), st.floats(0.0, 0.05), st.floats(0.5, 3.0)), min_size=1, max_size=300))
def test_quiet_credit_keeps_every_second_of_tws_within_the_spacings_bound(gaps):
    """Property: with bursts after quiet spells, any 1.1 s holds <= 45 sends and any 1 s + up to 0.2 s of jitter
    holds no more than the spacing alone would allow (so TWS's count stays as safe as before)."""
    arrivals, t = [], 0.0
    for g in gaps:
        t += g
        arrivals.append(t)
    window = 1.0 + JITTER_GUARD
    sends = _send_times(MessageLimiter(45, window, 2, 40, 2 * window), arrivals)
    assert _most_in(sends, window - 1e-6) <= 45
    for jitter in (0.12, 0.15, 0.2):
        spacing_bound = int(2 + 45 / window * (1.0 + jitter) + 1e-9)
        assert _most_in(sends, 1.0 + jitter) <= max(45, spacing_bound)


def test_quiet_credit_sends_a_small_burst_at_once_and_then_spaces():
    """After a quiet spell 30 messages go at once; right after, the spacing applies again (no second burst)."""
    lim = MessageLimiter(45, 1.1, 2, 40, 2.2)
    sends = _send_times(lim, [0.0] * 30)
    assert sends == [0.0] * 30
    more = _send_times(lim, [0.5] * 20)
    assert more[:10] == [0.5] * 10                  # the credit's last 10 of 40
    assert all(b - a >= 1.1 / 45 - 1e-9 for a, b in zip(more[9:14], more[10:15]))   # then spaced again
    assert max(more.count(t) for t in more[10:]) <= 2                               # never more than the burst
    assert _send_times(_Spacing(45, 1.1, 2), [0.0] * 30)[-1] > 0.6    # the spacing alone: 30 take 0.66 s


# --- the asyncio pacer keeping the order ------------------------------------------------------------

async def _sends(p: Pacer, plan: list[tuple[str, str]]) -> list[str]:
    """Queue one message per (flow, name) in plan order (name starting with 'x' = a cancel, 'b' = bulk), all at
    once, and return the names in the order their tokens were granted."""
    order: list[str] = []

    async def send(flow: str, name: str) -> None:
        current_flow.set(flow)
        current_bulk.set(name.startswith("b"))
        t = p.ticket(cancel=name.startswith("x"))
        await t.future
        order.append(name)

    tasks = [asyncio.ensure_future(send(f, n)) for f, n in plan]
    await asyncio.gather(*tasks)
    return order


async def test_urgent_requests_pass_bulk_ones_and_cancels_wait_while_lines_are_free():
    """Lines free: a Monitor leg's request passes a chain's queued bulk requests, which pass the queued cancels."""
    p = Pacer(rate=10, burst=1, quiet_burst=0)
    await p.message()                               # the next token is 0.11 s away: everything below queues
    plan = [("chain", "x1"), ("chain", "x2"), ("chain", "b1"), ("chain", "b2"), ("legs", "u1")]
    assert await asyncio.wait_for(_sends(p, plan), 10) == ["u1", "b1", "b2", "x1", "x2"]


async def test_cancels_go_first_when_a_request_waits_for_lines():
    """A request waiting for a line: the cancels that free lines go before bulk requests (urgent still first)."""
    p = Pacer(rate=10, burst=1, max_lines=2, line_margin=0, quiet_burst=0)
    assert await p.acquire_lines(2) == 2
    waiter = asyncio.ensure_future(p.acquire_lines(1))
    await asyncio.sleep(0)
    assert p.lines_short
    await p.message()
    plan = [("chain", "b1"), ("chain", "x1"), ("legs", "u1"), ("chain", "x2")]
    order = await asyncio.wait_for(_sends(p, plan), 10)
    assert order == ["u1", "x1", "x2", "b1"]
    p.release_lines(1)
    assert await waiter == 1


async def test_a_cancel_ticket_counts_as_closing_until_done():
    """A cancel's line is 'on its way back' from its ticket until the sender says the cancel went out."""
    p = Pacer(rate=100)
    t = p.ticket(cancel=True)
    assert p.lines_closing == 1
    p.cancel_done(t)
    assert p.lines_closing == 0
    t2 = p.ticket(cancel=True)
    p.drop_ticket(t2)
    assert p.lines_closing == 0


async def test_a_small_newcomer_gets_the_reserve_while_a_big_request_waits():
    """A small request arriving behind a waiting big one is served from the reserve at once."""
    p = Pacer(max_lines=30, line_margin=10)         # budget 20, reserve 5
    assert await p.acquire_lines(100) == 15
    big = asyncio.ensure_future(p.acquire_lines(100, demand=LineDemand(size=100, held=15)))
    await asyncio.sleep(0)
    assert not big.done()
    assert await asyncio.wait_for(p.acquire_lines(4), 1) == 4
    big.cancel()
    await asyncio.gather(big, return_exceptions=True)
    assert p.lines_in_use == 19


async def test_reclaimer_is_asked_for_warm_lines_when_a_request_holds_none():
    """Warm lines in the way: a request that holds none asks the reclaimer; one that streams does not."""
    p = Pacer(max_lines=10, line_margin=0)          # budget 10, reserve 2
    asked: list[int] = []
    p.add_reclaimer(lambda n: asked.append(n) or n)
    assert await p.acquire_lines(8) == 8            # 8 lines become warm
    p.warm_lines(8)
    streaming = asyncio.ensure_future(p.acquire_lines(20, demand=LineDemand(size=20, held=3)))
    await asyncio.sleep(0)
    assert asked == []                              # it goes on with its own lines
    assert p.may_warm()                             # and does not stop a Monitor leg from staying warm
    starving = asyncio.ensure_future(p.acquire_lines(20, demand=LineDemand(size=20, held=0)))
    await asyncio.sleep(0)
    assert asked == [8]
    assert not p.may_warm()                         # no line is kept warm while a request starves
    for t in (streaming, starving):
        t.cancel()
    await asyncio.gather(streaming, starving, return_exceptions=True)
    assert not p.lines_short and p.may_warm()
