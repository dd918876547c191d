"""One pacer for everything the agent sends to TWS: a message limiter and a market-data line budget.

TWS allows 50 client messages per second (error 100 above it, disconnect after repeats) and, by default,
100 market-data lines (error 101 for one more). Chunking requests does not keep within either limit when
several requests run at once, so every outgoing message awaits ``Pacer.message()`` and every market-data line
comes out of ``Pacer.acquire_lines()``.

The arithmetic (sliding window, round-robin choice, line grants) is pure and clock-injectable
(``SlidingWindow``, ``RoundRobin``, ``LineBudget``); ``Pacer`` only adds the asyncio waiting around it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

from agent.errors import RequestTimeout

log = logging.getLogger(__name__)

#: The request a message or a line is for. The dispatcher sets it to the relay request_id, so the pacer can
#: take turns between requests; anything the agent sends on its own behalf counts as the "agent" flow.
current_flow: contextvars.ContextVar[str] = contextvars.ContextVar("current_flow", default="agent")

T = TypeVar("T")

#: TWS counts messages by when it reads them, so a few tens of milliseconds of delivery jitter can put more of
#: our sends in its one-second window than we put in ours. Counting over 1.1 s keeps TWS's count at or under
#: ``rate`` for up to 100 ms of jitter (sustained: rate / 1.1, e.g. 40.9 messages/s for rate 45).
JITTER_GUARD = 0.1

#: Requests wanting at most this many lines may use the reserve that big requests must leave free.
SMALL_REQUEST_LINES = 10


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


class RoundRobin(Generic[T]):
    """FIFO queues per flow, served one item per flow in turn (flows in the order they first waited)."""

    def __init__(self) -> None:
        self._queues: OrderedDict[Hashable, deque[T]] = OrderedDict()

    def push(self, flow: Hashable, item: T) -> None:
        q = self._queues.get(flow)
        if q is None:
            q = self._queues[flow] = deque()
        q.append(item)

    def pop(self) -> T:
        """The next item: the first of the flow whose turn it is; that flow then goes to the back."""
        flow, q = next(iter(self._queues.items()))
        item = q.popleft()
        del self._queues[flow]
        if q:
            self._queues[flow] = q          # re-inserted at the end: the others go first
        return item

    def remove(self, flow: Hashable, item: T) -> bool:
        q = self._queues.get(flow)
        if q is None:
            return False
        try:
            q.remove(item)
        except ValueError:
            return False
        if not q:
            del self._queues[flow]
        return True

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __bool__(self) -> bool:
        return bool(self._queues)

    def flows(self) -> list[Hashable]:
        return list(self._queues)


class LineBudget:
    """The market-data line budget and the rule for granting lines to waiting requests.

    ``budget`` lines in all; ``reserve`` of them may only go to small requests (want <= SMALL_REQUEST_LINES),
    so a request asking for many lines never takes the last few that a 4-leg request needs. Waiters are
    considered in arrival order; each gets what it may have (1..want), so the oldest big waiter gets
    first claim on lines above the reserve as they come back.
    """

    def __init__(self, budget: int, reserve: int | None = None):
        if budget < 1:
            raise ValueError(f"line budget must be >= 1, got {budget}")
        self.budget = budget
        # Default reserve: 10 lines, but never more than a quarter of a small budget.
        self.reserve = min(SMALL_REQUEST_LINES, budget // 4) if reserve is None else max(0, min(reserve, budget - 1))
        self.in_use = 0
        self.peak = 0

    @property
    def free(self) -> int:
        return self.budget - self.in_use

    def available_to(self, want: int) -> int:
        """How many lines a request wanting ``want`` could be granted right now."""
        usable = self.free if want <= SMALL_REQUEST_LINES else self.free - self.reserve
        return max(0, min(want, usable))

    def take(self, n: int) -> None:
        if n < 0 or n > self.free:
            raise RuntimeError(f"cannot take {n} lines with {self.free} free")
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    def give_back(self, n: int) -> int:
        """Return ``n`` lines; returns how many were really outstanding (a larger n is a caller bug)."""
        n = max(0, n)
        real = min(n, self.in_use)
        self.in_use -= real
        return real

    def grant(self, wants: list[int]) -> list[int]:
        """For waiters (in arrival order) wanting ``wants``, how many lines each gets now (0 = keeps waiting).

        Takes the granted lines from the budget.
        """
        out = []
        for want in wants:
            n = self.available_to(want)
            if n:
                self.take(n)
            out.append(n)
        return out


# --- the asyncio pacer -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Ticket:
    """A place in the pacer's queue (or a token already granted): see ``Pacer.ticket``."""

    flow: Hashable
    future: asyncio.Future


class Pacer:
    """Message tokens (≤ rate in any 1 s window — counted over 1 s + JITTER_GUARD — round-robin across waiting
    flows) and the line budget."""

    def __init__(self, rate: float = 45.0, max_lines: int = 100, line_margin: int = 10,
                 clock: Callable[[], float] = time.monotonic, *, line_reserve: int | None = None,
                 burst: int = 2, window: float = 1.0 + JITTER_GUARD):
        self.rate = rate
        self._clock = clock
        self._window = SlidingWindow(max(1, int(math.floor(rate))), window)
        self._bucket = TokenBucket(self._window.capacity / window, max(1, min(burst, self._window.capacity)))
        self._waiting: RoundRobin[asyncio.Future] = RoundRobin()
        self._pump_task: asyncio.Task | None = None
        self._lines = LineBudget(max(1, max_lines - line_margin), line_reserve)
        self._line_waiters: list[tuple[int, asyncio.Future]] = []
        self.messages_sent = 0
        self.peak_rate_1s = 0
        self.waits = 0              # messages that had to wait for a token
        self.line_waits = 0         # acquire_lines calls that had to wait

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

    def ticket(self) -> "Ticket":
        """Take the token now, or a place in the queue now (without awaiting, so places follow call order).

        ``ticket.future`` completes when the token is granted; ``drop_ticket`` leaves the queue.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        flow = current_flow.get()
        now = self._clock()
        if not self._waiting and self._delay(now) == 0.0:
            self._count(now)
            fut.set_result(None)
            return Ticket(flow, fut)
        self._waiting.push(flow, fut)
        self.waits += 1
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = loop.create_task(self._pump(), name="pacer-pump")
        return Ticket(flow, fut)

    def drop_ticket(self, ticket: "Ticket") -> None:
        """Not granted yet: leave the queue. Already granted: the token is simply unused (harmless)."""
        self._waiting.remove(ticket.flow, ticket.future)
        if not ticket.future.done():
            ticket.future.cancel()

    def try_message(self) -> bool:
        """Take a message token only if one is free now and nobody is waiting (never waits)."""
        now = self._clock()
        if not self._waiting and self._delay(now) == 0.0:
            self._count(now)
            return True
        return False

    def _delay(self, now: float) -> float:
        return max(self._window.delay(now), self._bucket.delay(now))

    def _count(self, now: float) -> None:
        self._bucket.record(now)
        n = self._window.record(now)
        self.messages_sent += 1
        self.peak_rate_1s = max(self.peak_rate_1s, n)

    async def _pump(self) -> None:
        while self._waiting:
            delay = self._delay(self._clock())
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            fut = self._waiting.pop()
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
    def line_reserve(self) -> int:
        return self._lines.reserve

    async def acquire_lines(self, want: int, timeout: float = 120.0) -> int:
        """Reserve 1..want market-data lines, waiting (at most ``timeout`` s) while none may be had."""
        want = max(1, min(int(want), self._lines.budget))
        if not self._line_waiters:
            n = self._lines.available_to(want)
            if n:
                self._lines.take(n)
                return n
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        entry = (want, fut)
        self._line_waiters.append(entry)
        self.line_waits += 1
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

    def _drop_line_waiter(self, entry: tuple[int, asyncio.Future]) -> None:
        want, fut = entry
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
        if not self._line_waiters or not self._lines.free:
            return
        live = [(w, f) for (w, f) in self._line_waiters if not f.done()]
        grants = self._lines.grant([w for (w, _) in live])
        still = []
        for (w, f), n in zip(live, grants):
            if n:
                f.set_result(n)
            else:
                still.append((w, f))
        self._line_waiters = still

    def stats(self) -> dict:
        return {
            "messages_sent": self.messages_sent,
            "peak_rate_1s": self.peak_rate_1s,
            "rate_now": self._window.count(self._clock()),
            "waits": self.waits,
            "waiting_flows": len(self._waiting.flows()),
            "lines_budget": self._lines.budget,
            "lines_in_use": self._lines.in_use,
            "lines_free": self._lines.free,
            "peak_lines": self._lines.peak,
            "line_waits": self.line_waits,
            "line_waiters": len(self._line_waiters),
        }
