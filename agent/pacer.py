"""One pacer for everything the agent sends to TWS: a message limiter and a market-data line budget.

TWS allows 50 client messages per second (error 100 above it, disconnect after repeats) and, by default,
100 market-data lines (error 101 for one more). Chunking requests does not keep within either limit when
several requests run at once, so every outgoing message awaits ``Pacer.message()`` and every market-data line
comes out of ``Pacer.acquire_lines()``.

Which message goes next is a priority question: urgent requests first (lookups, orders, small requests' lines:
someone waits on each), then a big request's lines and the cancels of finished lines, in the order the line
budget wants (``MessageQueue``). Lines go to the waiting request holding the fewest, and Monitor's warm lines
(agent/warm.py) are given up first when a request cannot get any other line (``LineBudget.reclaim``).

The arithmetic (sliding window, spacing, queue order, line grants) is pure and clock-injectable
(``SlidingWindow``, ``TokenBucket``, ``RoundRobin``, ``MessageQueue``, ``LineBudget``); ``Pacer`` only adds the
asyncio waiting around it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Hashable

from agent.errors import RequestTimeout
from agent.line_budget import SMALL_REQUEST_LINES, LineBudget, LineDemand
from agent.message_queue import BULK, CANCEL, URGENT, MessageQueue, RoundRobin

# Re-exported: the pure parts live in their own modules; callers import them from here as before.
__all__ = ["BULK", "CANCEL", "JITTER_GUARD", "SMALL_REQUEST_LINES", "URGENT", "LineBudget", "LineDemand",
           "MessageLimiter", "MessageQueue", "Pacer", "QuietCredit", "RoundRobin", "SlidingWindow", "Ticket",
           "TokenBucket", "current_bulk", "current_flow"]

log = logging.getLogger(__name__)

#: The request a message or a line is for. The dispatcher sets it to the relay request_id, so the pacer can
#: take turns between requests; anything the agent sends on its own behalf counts as the "agent" flow.
current_flow: contextvars.ContextVar[str] = contextvars.ContextVar("current_flow", default="agent")

#: True while the batched path streams a big request (more than SMALL_REQUEST_LINES contracts): its reqMktData
#: messages are "bulk" and yield to every urgent message (lookups, orders, a Monitor refresh's legs).
current_bulk: contextvars.ContextVar[bool] = contextvars.ContextVar("current_bulk", default=False)

#: TWS counts messages by when it reads them, so a few tens of milliseconds of delivery jitter can put more of
#: our sends in its one-second window than we put in ours. Counting over 1.1 s keeps TWS's count at or under
#: ``rate`` for up to 100 ms of jitter (sustained: rate / 1.1, e.g. 40.9 messages/s for rate 45).
JITTER_GUARD = 0.1


# --- pure arithmetic ------------------------------------------------------------------------------

class SlidingWindow:
    """Send times of the last ``window`` seconds; allows a send when fewer than ``capacity`` are in it.

    Invariant (checked by a hypothesis property): among the recorded sends, any ``capacity + 1``
    consecutive ones span at least ``window`` seconds, so no window (t - window, t] holds more than
    ``capacity`` sends.
    """

    def __init__(self, capacity: int, window: float = 1.0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.window = window
        self._sends: deque[float] = deque()

    def _expire(self, now: float) -> None:
        # A send at time s stops counting once now - s >= window.
        while self._sends and now - self._sends[0] >= self.window:
            self._sends.popleft()

    def delay(self, now: float) -> float:
        """Seconds to wait from ``now`` before the next send is allowed (0.0: allowed now)."""
        self._expire(now)
        if len(self._sends) < self.capacity:
            return 0.0
        # The oldest send stops counting at oldest + window; never return 0 while still full.
        return max(self._sends[0] + self.window - now, 1e-6)

    def record(self, now: float) -> int:
        """Count a send at ``now``; returns how many sends the window now holds."""
        self._expire(now)
        if len(self._sends) >= self.capacity:
            raise RuntimeError("SlidingWindow.record() while full: call delay() first")
        self._sends.append(now)
        return len(self._sends)

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._sends)


class TokenBucket:
    """Spacing on top of the window: ``burst`` sends at once, then one every 1/rate seconds.

    Why both: the window alone allows ``capacity`` sends in one instant at each window edge, and TWS counts
    messages by when it reads them. A few milliseconds of delay on one batch then puts two batches in TWS's
    one-second window (observed: 51 counted while we sent 45). With spacing, any interval of length L holds
    at most ``burst + rate * L`` sends, so TWS's count stays under 50 unless delivery jitter exceeds
    (50 - 45 - burst) / 45 s (about 66 ms with burst 2).
    """

    def __init__(self, rate: float, burst: int = 2):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst = float(rate), burst
        self._tokens = float(burst)
        self._t: float | None = None

    def _refill(self, now: float) -> None:
        if self._t is None:
            self._t = now
        elif now > self._t:
            self._tokens = min(float(self.burst), self._tokens + (now - self._t) * self.rate)
            self._t = now

    def delay(self, now: float) -> float:
        self._refill(now)
        if self._tokens >= 1.0 - 1e-9:
            return 0.0
        return max((1.0 - self._tokens) / self.rate, 1e-6)

    def record(self, now: float) -> None:
        self._refill(now)
        if self._tokens < 1.0 - 1e-9:
            raise RuntimeError("TokenBucket.record() without a token: call delay() first")
        self._tokens = max(0.0, self._tokens - 1.0)


class QuietCredit:
    """Sends in the last ``quiet`` seconds; while fewer than ``credit``, a send may skip the spacing (pure).

    Why: after a quiet spell, a small request (a sell scan's 20-odd lines, a Monitor refresh) would otherwise
    wait 1/rate s per message although TWS has seen nothing for seconds. It stays as safe as the spacing alone:
    any interval of 1 s + JITTER_GUARD holds at most ``capacity`` sends (the window, always); and in any longer
    interval up to ``quiet`` - 1 s, the sends that skipped the spacing plus those before them number fewer than
    ``credit``, so a 1.2 s interval holds at most max(capacity, credit) + burst + rate x 0.1 sends, the same
    bound the spacing gives (checked by a hypothesis property). A second burst waits until the first has left
    the quiet window, so bursts never meet in one of TWS's seconds.
    """

    def __init__(self, credit: int, quiet: float):
        if credit < 0 or quiet <= 0:
            raise ValueError(f"credit must be >= 0 and quiet > 0, got {credit}, {quiet}")
        self.credit = credit
        self.quiet = quiet
        self._sends: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._sends and now - self._sends[0] >= self.quiet:
            self._sends.popleft()

    def open(self, now: float) -> bool:
        """May a send now skip the spacing?"""
        self._expire(now)
        return len(self._sends) < self.credit

    def record(self, now: float) -> None:
        self._expire(now)
        self._sends.append(now)


class MessageLimiter:
    """The pacer's whole rule for when the next message may go (pure): the sliding window always; the token
    bucket's spacing too, unless the quiet credit lets a short burst through."""

    def __init__(self, capacity: int, window: float, burst: int, credit: int, quiet: float):
        self.window = SlidingWindow(capacity, window)
        self.bucket = TokenBucket(capacity / window, max(1, min(burst, capacity)))
        self.credit = QuietCredit(max(0, min(credit, capacity)), quiet)

    def delay(self, now: float) -> float:
        w = self.window.delay(now)
        if self.credit.open(now):
            return w
        return max(w, self.bucket.delay(now))

    def record(self, now: float) -> int:
        """Count a send at ``now`` (call ``delay`` first); returns how many the window now holds."""
        if self.bucket.delay(now) == 0.0:
            self.bucket.record(now)         # else it rode on the quiet credit
        self.credit.record(now)
        return self.window.record(now)



# --- the asyncio pacer -----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Ticket:
    """A place in the pacer's queue (or a token already granted): see ``Pacer.ticket``."""

    flow: Hashable
    future: asyncio.Future
    kind: str = URGENT


class Pacer:
    """Message tokens (≤ rate in any 1 s window — counted over 1 s + JITTER_GUARD — in ``MessageQueue`` order) and
    the line budget (``LineBudget``), with Monitor's warm lines given up first when a request needs them."""

    def __init__(self, rate: float = 45.0, max_lines: int = 100, line_margin: int = 10,
                 clock: Callable[[], float] = time.monotonic, *, line_reserve: int | None = None,
                 burst: int = 2, window: float = 1.0 + JITTER_GUARD, quiet_burst: int | None = None):
        self.rate = rate
        self._clock = clock
        capacity = max(1, int(math.floor(rate)))
        # After a quiet spell (2 windows), up to capacity - 5 messages may go without spacing (QuietCredit).
        credit = max(0, capacity - 5) if quiet_burst is None else quiet_burst
        self._limiter = MessageLimiter(capacity, window, burst, credit, 2 * window)
        self._window, self._bucket = self._limiter.window, self._limiter.bucket
        self._waiting: MessageQueue[asyncio.Future] = MessageQueue()
        self._pump_task: asyncio.Task | None = None
        self._lines = LineBudget(max(1, max_lines - line_margin), line_reserve)
        self._line_waiters: list[tuple[int, LineDemand, asyncio.Future]] = []
        self._cancels_open: set[Ticket] = set()     # cancel tickets whose line has not come back yet
        self._reclaimers: list[Callable[[int], int]] = []
        self.messages_sent = 0
        self.peak_rate_1s = 0
        self.waits = 0              # messages that had to wait for a token
        self.line_waits = 0         # acquire_lines calls that had to wait
        self.lines_reclaimed = 0    # warm lines given up for a waiting request

    @property
    def quiet_window(self) -> float:
        """Seconds without traffic after which a short burst may skip the spacing (``QuietCredit``)."""
        return self._limiter.credit.quiet

    @property
    def sustained_rate(self) -> float:
        """Messages per second the pacer sends when busy (rate per window of 1 s + JITTER_GUARD)."""
        return self._bucket.rate

    # -- messages --
    async def message(self) -> None:
        """Wait for the token for one outgoing TWS message (requests, cancels, orders, all of them)."""
        ticket = self.ticket()
        if ticket.future.done():
            return
        try:
            # Bounded: the pump grants `rate` tokens a second; the timeout only guards against a dead pump.
            # asyncio.wait, not wait_for(shield(...)): on Python <= 3.11 wait_for returns the result when the
            # grant and a cancellation land in the same loop iteration, so a cancelled caller would send anyway.
            done, _ = await asyncio.wait({ticket.future}, timeout=60.0 + len(self._waiting) / self.rate)
        except asyncio.CancelledError:
            self.drop_ticket(ticket)
            raise
        if not done:
            self.drop_ticket(ticket)
            raise RequestTimeout("timed out waiting for a TWS message slot (pacer)")

    def ticket(self, *, cancel: bool = False) -> "Ticket":
        """Take the token now, or a place in the queue now (without awaiting, so places follow call order).

        ``cancel``: the message is a cancelMktData whose line goes back to the budget once it is sent; the
        sender calls ``cancel_done(ticket)`` then (or ``drop_ticket`` if it will not be sent). Otherwise the
        message is bulk inside a big request's batch (``current_bulk``), else urgent. ``ticket.future`` completes
        when the token is granted; ``drop_ticket`` leaves the queue.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        flow = current_flow.get()
        kind = CANCEL if cancel else BULK if current_bulk.get() else URGENT
        ticket = Ticket(flow, fut, kind)
        if cancel:
            self._cancels_open.add(ticket)
        now = self._clock()
        if not self._waiting.ahead_of(kind, self.lines_short) and self._delay(now) == 0.0:
            self._count(now)
            fut.set_result(None)
            return ticket
        self._waiting.push(kind, flow, fut)
        self.waits += 1
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = loop.create_task(self._pump(), name="pacer-pump")
        return ticket

    def drop_ticket(self, ticket: "Ticket") -> None:
        """Not granted yet: leave the queue. Already granted: the token is simply unused (harmless)."""
        self._waiting.remove(ticket.kind, ticket.flow, ticket.future)
        self._cancels_open.discard(ticket)
        if not ticket.future.done():
            ticket.future.cancel()

    def cancel_done(self, ticket: "Ticket") -> None:
        """The cancel of this ticket has been sent (or will not be): its line is no longer on its way back."""
        self._cancels_open.discard(ticket)

    def try_message(self) -> bool:
        """Take a message token only if one is free now and nobody is waiting (never waits)."""
        now = self._clock()
        if not self._waiting and self._delay(now) == 0.0:
            self._count(now)
            return True
        return False

    def _delay(self, now: float) -> float:
        return self._limiter.delay(now)

    def _count(self, now: float) -> None:
        n = self._limiter.record(now)
        self.messages_sent += 1
        self.peak_rate_1s = max(self.peak_rate_1s, n)

    async def _pump(self) -> None:
        while self._waiting:
            delay = self._delay(self._clock())
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            fut = self._waiting.pop(self.lines_short)
            if fut.done():          # its waiter was cancelled
                continue
            self._count(self._clock())
            fut.set_result(None)

    # -- lines --
    @property
    def lines_budget(self) -> int:
        return self._lines.budget

    @property
    def lines_in_use(self) -> int:
        return self._lines.in_use

    @property
    def lines_free(self) -> int:
        return self._lines.free

    @property
    def lines_warm(self) -> int:
        return self._lines.warm

    @property
    def line_reserve(self) -> int:
        return self._lines.reserve

    @property
    def lines_short(self) -> bool:
        """A request is waiting for a line: cancels go before bulk requests, and no line may be kept warm."""
        return bool(self._line_waiters)

    @property
    def lines_closing(self) -> int:
        """Lines whose cancelMktData is queued or being sent: they come back to the budget shortly."""
        return len(self._cancels_open)

    async def acquire_lines(self, want: int, timeout: float = 120.0, *, demand: LineDemand | None = None) -> int:
        """Reserve 1..want market-data lines, waiting (at most ``timeout`` s) while none may be had.

        ``demand``: the request's size and the lines it holds now (default: a request of ``want`` contracts
        holding none); it decides the reserve, the order among waiters and whether warm lines are given up.
        """
        want = max(1, min(int(want), self._lines.budget))
        demand = demand if demand is not None else LineDemand(size=want)
        if not self._line_waiters:
            n = self._lines.available_to(want, demand.size)
            if n:
                self._lines.take(n)
                return n
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        entry = (want, demand, fut)
        self._line_waiters.append(entry)
        self.line_waits += 1
        self._grant_lines()         # a small newcomer may have the reserve a big waiter may not touch
        try:
            # asyncio.wait, not wait_for(shield(...)): on Python <= 3.11 wait_for returns the grant when it and a
            # cancellation land in the same loop iteration, so a cancelled request would go on with the lines.
            done, _ = await asyncio.wait({fut}, timeout=timeout)
        except asyncio.CancelledError:
            self._drop_line_waiter(entry)       # gives back lines granted meanwhile
            raise
        if not done:
            self._drop_line_waiter(entry)
            raise RequestTimeout(f"no market data line became free within {timeout:g} s "
                                 f"({self._lines.in_use} of {self._lines.budget} in use)")
        return fut.result()

    def _drop_line_waiter(self, entry: tuple[int, LineDemand, asyncio.Future]) -> None:
        fut = entry[2]
        if entry in self._line_waiters:
            self._line_waiters.remove(entry)
        if fut.done() and not fut.cancelled():
            # Granted while we were timing out / being cancelled: give the lines back.
            self.release_lines(fut.result())
        else:
            fut.cancel()

    def release_lines(self, n: int) -> None:
        """Give back ``n`` lines (the bridge does this after the cancelMktData went out)."""
        real = self._lines.give_back(n)
        if real != n:
            log.warning("pacer: release_lines(%d) with only %d in use (caller bug)", n, real)
        self._grant_lines()

    def _grant_lines(self) -> None:
        live = [e for e in self._line_waiters if not e[2].done()]
        if not live:
            self._line_waiters = []
            return
        grants = self._lines.grant([w for (w, _, _) in live], [d for (_, d, _) in live])
        still = []
        for entry, n in zip(live, grants):
            if n:
                entry[2].set_result(n)
            else:
                still.append(entry)
        self._line_waiters = still
        if still and self._lines.warm and self._reclaimers:
            n = self._lines.reclaim([w for (w, _, _) in still], [d for (_, d, _) in still], self.lines_closing)
            for reclaim in list(self._reclaimers):
                if n <= 0:
                    break
                got = reclaim(n)
                self.lines_reclaimed += got
                n -= got

    # -- warm lines (agent/warm.py) --
    def add_reclaimer(self, reclaim: Callable[[int], int]) -> None:
        """``reclaim(n)`` starts the cancels of up to n warm lines (calling ``cool_lines``) and says how many."""
        if reclaim not in self._reclaimers:
            self._reclaimers.append(reclaim)

    def may_warm(self) -> bool:
        """May a line be kept warm now? Not while a request that cannot go on (``LineDemand.stuck``) waits for
        lines: warm lines yield first. A big request that streams on its own lines does not stop it."""
        return not any(d.stuck for (_, d, _) in self._line_waiters)

    def warm_lines(self, n: int = 1) -> None:
        """``n`` lines in use become warm (the caller keeps them streaming instead of cancelling them)."""
        self._lines.warm_up(n)

    def cool_lines(self, n: int = 1) -> None:
        """``n`` warm lines stop being warm (cancelled, or lost with the connection)."""
        self._lines.cool(n)

    def stats(self) -> dict:
        return {
            "messages_sent": self.messages_sent,
            "peak_rate_1s": self.peak_rate_1s,
            "rate_now": self._window.count(self._clock()),
            "waits": self.waits,
            "waiting_flows": len(self._waiting.flows()),
            "queued_cancels": self._waiting.cancels,
            "lines_budget": self._lines.budget,
            "lines_in_use": self._lines.in_use,
            "lines_free": self._lines.free,
            "lines_warm": self._lines.warm,
            "lines_closing": self.lines_closing,
            "peak_lines": self._lines.peak,
            "line_waits": self.line_waits,
            "line_waiters": len(self._line_waiters),
            "lines_reclaimed": self.lines_reclaimed,
        }
