"""Warm legs: Monitor's spread legs keep streaming between refreshes, so a refresh answers from live quotes.

Monitor asks for the same legs again and again; opening and cancelling each leg afresh costs two messages and the
wait for its greeks every time. After a ``fetch_prices``, its legs' lines are kept (``WarmLines.adopt``) for
``IB_WARM_SECONDS`` after the last request that asked for them, within ``IB_WARM_LINES`` lines of the budget.
A refresh whose legs are warm reads their quotes at once (``WarmLines.lines_for``).

Warm lines are the first to go: none is kept while a request that cannot go on waits for lines, and the pacer
asks for them back (``Pacer.add_reclaimer``) when a request cannot get a line any other way
(agent/line_budget.py). A big request that streams on lines of its own (a chain) leaves them alone. They are
re-requested by the bridge after 1101 like every open line, and dropped when the connection goes (the line's
``on_close``). ``WarmBook`` is the pure bookkeeping (which lines, until when, which go first); ``WarmLines`` adds
the lines, the pacer and a timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Iterable, TypeVar

log = logging.getLogger("agent.warm")

L = TypeVar("L")

DEFAULT_WARM_SECONDS = 60.0
DEFAULT_WARM_LINES = 20


@dataclass
class _Entry(Generic[L]):
    line: L
    asked: float            # when a request last asked for this leg


class WarmBook(Generic[L]):
    """Which legs are warm and until when (pure; the caller passes the time).

    At most ``capacity`` entries; an entry expires ``seconds`` after the last request that asked for it. When a
    new leg needs room, the least recently asked entry makes way, unless it was asked at or after ``since`` (the
    request doing the asking does not push out its own legs).
    """

    def __init__(self, capacity: int, seconds: float):
        if capacity < 0 or seconds <= 0:
            raise ValueError(f"capacity must be >= 0 and seconds > 0, got {capacity}, {seconds}")
        self.capacity = capacity
        self.seconds = seconds
        self._entries: dict[Hashable, _Entry[L]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> L | None:
        e = self._entries.get(key)
        return e.line if e is not None else None

    def touch(self, key: Hashable, now: float) -> None:
        e = self._entries.get(key)
        if e is not None:
            e.asked = max(e.asked, now)

    def add(self, key: Hashable, line: L, now: float, since: float | None = None) -> tuple[bool, list[L]]:
        """Keep ``line`` warm for ``key``. Returns (kept, lines pushed out to make room)."""
        if key in self._entries or self.capacity == 0:
            return False, []
        out: list[L] = []
        if len(self._entries) >= self.capacity:
            oldest_key = min(self._entries, key=lambda k: self._entries[k].asked)
            oldest = self._entries[oldest_key]
            if since is not None and oldest.asked >= since:
                return False, []
            out.append(self._entries.pop(oldest_key).line)
        self._entries[key] = _Entry(line, now)
        return True, out

    def remove(self, key: Hashable) -> L | None:
        e = self._entries.pop(key, None)
        return e.line if e is not None else None

    def key_of(self, line: L) -> Hashable | None:
        for k, e in self._entries.items():
            if e.line is line:
                return k
        return None

    def expired(self, now: float) -> list[Hashable]:
        """Keys not asked for within ``seconds`` before ``now``."""
        return [k for k, e in self._entries.items() if now - e.asked >= self.seconds]

    def next_expiry(self) -> float | None:
        """When the next entry expires (None when empty)."""
        if not self._entries:
            return None
        return min(e.asked for e in self._entries.values()) + self.seconds

    def least_recent(self, n: int) -> list[Hashable]:
        """The ``n`` least recently asked keys: the first to give up their lines."""
        return sorted(self._entries, key=lambda k: self._entries[k].asked)[:max(0, n)]

    def keys(self) -> list[Hashable]:
        return list(self._entries)


def usable(line) -> bool:
    """A warm line can answer: still open, not being cancelled, no error from TWS."""
    return not line.closed and getattr(line, "_closing", None) is None and line.quote.error_code is None


class WarmLines:
    """The warm lines of one agent (see the module docstring). ``lines=0`` turns it off."""

    def __init__(self, bridge, pacer, *, lines: int = DEFAULT_WARM_LINES, seconds: float = DEFAULT_WARM_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.bridge = bridge
        self.pacer = pacer
        self.book: WarmBook = WarmBook(max(0, int(lines)), float(seconds))
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self.stats = {"adopted": 0, "hits": 0, "expired": 0, "reclaimed": 0, "pushed_out": 0, "lost": 0}

    @property
    def enabled(self) -> bool:
        return self.book.capacity > 0

    def __len__(self) -> int:
        return len(self.book)

    def lines_for(self, keys: Iterable[Hashable]) -> dict:
        """The usable warm line of each key that has one; each counts as asked for now. A line that cannot
        answer (an error, being cancelled) leaves the pool."""
        now = self._clock()
        out = {}
        for k in keys:
            line = self.book.get(k)
            if line is None:
                continue
            if not usable(line):
                self._let_go(k)
                continue
            self.book.touch(k, now)
            out[k] = line
            self.stats["hits"] += 1
        return out

    def adopt(self, line, since: float | None = None) -> bool:
        """Keep this finished line streaming instead of cancelling it. False: the caller cancels it as usual
        (off, full of legs asked more recently, already warm for this contract, a request that cannot go on
        waits for lines, or the line cannot answer)."""
        if not self.enabled or not usable(line) or not self.pacer.may_warm():
            return False
        key = line.contract.key
        kept, out = self.book.add(key, line, self._clock(), since)
        for old in out:
            self.stats["pushed_out"] += 1
            self._end(old)
        if not kept:
            return False
        self.pacer.warm_lines(1)
        self.pacer.add_reclaimer(self._reclaim)     # from the first warm line on, the pacer may ask for them back
        line.on_close(self._closed)
        self.stats["adopted"] += 1
        self._arm()
        return True

    def keeper(self, since: float) -> Callable[[object], bool]:
        """``adopt`` for one request that started at ``since`` (it never pushes out its own legs)."""
        return lambda line: self.adopt(line, since)

    def clear(self) -> None:
        """Cancel every warm line (they come back to the budget as their cancels go out)."""
        for k in self.book.keys():
            self._let_go(k)

    # --- internals ---------------------------------------------------------------------------------------

    def _let_go(self, key: Hashable) -> None:
        line = self.book.remove(key)
        if line is not None:
            self._end(line)

    def _end(self, line) -> None:
        """A line that has left the book stops being warm and its cancel starts (``_closed`` then finds no
        entry for it, so it is not counted twice)."""
        self.pacer.cool_lines(1)
        self.bridge.end_market_data(line)
        if not self.book:
            self._disarm()

    def _closed(self, line) -> None:
        """The line closed under us (the connection went, or it was cancelled by someone): forget it."""
        key = self.book.key_of(line)
        if key is not None:
            self.book.remove(key)
            self.pacer.cool_lines(1)
            self.stats["lost"] += 1
        if not self.book:
            self._disarm()

    def _reclaim(self, n: int) -> int:
        """The pacer needs ``n`` lines for a request that cannot get one otherwise: give up the least recently
        asked warm lines first."""
        keys = self.book.least_recent(n)
        for k in keys:
            self._let_go(k)
        self.stats["reclaimed"] += len(keys)
        if keys:
            log.debug("gave up %d warm lines for a request waiting for lines", len(keys))
        return len(keys)

    def _arm(self) -> None:
        nxt = self.book.next_expiry()
        if nxt is None:
            self._disarm()
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, nxt - self._clock())
        if self._timer is not None:
            if self._timer.when() <= loop.time() + delay:
                return          # an earlier check is already set; it re-arms
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        for k in self.book.expired(self._clock()):
            self.stats["expired"] += 1
            self._let_go(k)
        if self.book:
            self._arm()
