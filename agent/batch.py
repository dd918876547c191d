"""The batched path's line work: stream market data for many contracts on the pacer's lines, answer first, and
leave the clean-up to the bridge.

``LineBatch.fetch`` keeps as many lines busy as the pacer grants the request (up to the line budget less the
reserve for small requests, and the relay's ``_max_batch_size``), ends each contract as soon as it has what the
flow needs (or is known to have none) and at most ``window`` seconds after its line was opened, and returns when
every contract is done. It does not wait for the cancels: each finished line is handed to
``bridge.end_market_data`` (or kept warm by ``keep``, agent/warm.py), whose paced cancel then gives the line back to
the pacer. A big request's reqMktData messages are "bulk" (``pacer.current_bulk``): urgent messages go first.

Line ownership (docs/design.md): a line reserved with ``pacer.acquire_lines`` is consumed by
``bridge.open_market_data``; ``bridge.end_market_data`` returns it to the pacer after the cancelMktData went out;
this module releases only lines it reserved and never opened.

The predicates saying when a line is done (``line_done``, ``line_settled``, ``stock_done``, ``heard_nothing``) are
pure.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from typing import Callable, Sequence

from agent.aio import settle_all
from agent.errors import AgentError, IBDisconnected, IBError
from agent.line_budget import SMALL_REQUEST_LINES, LineDemand
from agent.pacer import current_bulk
from agent.rows import has_two_sided_nothing, underlying_price
from agent.selection import concurrency
from agent.types import Contract, Quote

SETTLE = 0.3                 # after quotes + greeks, how long a chain line waits for volume / open interest

# What a line must have before it can be ended early.
NEED_QUOTES, NEED_GREEKS, NEED_STATS = 1, 2, 4

#: Keeps a finished line streaming instead of cancelling it (agent/warm.py); True when it took the line.
Keep = Callable[[object], bool]


def _side_known(price: float | None, size: float | None) -> bool:
    # IB sends a side as tickPrice then tickSize; "no bid" is price -1 (None here) with size 0, so a size
    # without a price means the side is known to be empty.
    return price is not None or size is not None


def line_done(q: Quote, needs: int) -> bool:
    """Has this line what the request needs, or is it known to have none? (pure)"""
    if q.error_code is not None and not q.has_price:
        return True                                   # 200 no such contract, 354 no permission, ...
    quotes_known = _side_known(q.bid, q.bid_size) and _side_known(q.ask, q.ask_size)
    if needs & NEED_QUOTES and not quotes_known:
        return False
    if quotes_known and has_two_sided_nothing(q) and q.last is None:
        return True                                   # illiquid: "no bid" and "no ask", nothing to wait for
    if needs & NEED_GREEKS and q.delta is None:
        return False
    if needs & NEED_STATS and q.open_interest is None:
        return False
    return True


def line_settled(q: Quote, needs: int) -> bool:
    """Done, and also holding what usually follows within milliseconds: open interest (first burst) and, when
    greeks are wanted, the model computation (tick 13), which TWS sends right after the bid/ask/last ones. (pure)"""
    if not line_done(q, needs | NEED_STATS):
        return False
    if needs & NEED_GREEKS and q.error_code is None:
        comps = q.extra.get("computations")
        if isinstance(comps, dict) and comps and "model" not in comps:
            return False
    return True


def stock_done(q: Quote) -> bool:
    """A stock line is done once it has a price to show (or failed)."""
    if q.error_code is not None and not q.has_price:
        return True
    if q.last is not None and q.last > 0:
        return True
    return _side_known(q.bid, q.bid_size) and _side_known(q.ask, q.ask_size) and underlying_price(q) is not None


def heard_nothing(q: Quote) -> bool:
    """TWS sent nothing at all for this line: no price, no size (not even "no bid"), no error. (pure)"""
    return (q.error_code is None and q.bid is None and q.ask is None and q.last is None and q.bid_size is None
            and q.ask_size is None and q.close is None)


def snapshot(line) -> Quote:
    """A copy of the line's quote as it is now, stamped with when TWS last sent something for it (``extra["at"]``,
    monotonic): a warm line keeps changing, the copy does not."""
    q = dataclasses.replace(line.quote, extra=copy.deepcopy(line.quote.extra))
    q.extra["at"] = getattr(line, "updated_at", None)
    return q


class LineBatch:
    """Many contracts over the pacer's lines for one request (see the module docstring)."""

    def __init__(self, bridge, pacer, stats: dict, *, chunk_size: int | None = None, settle: float = SETTLE,
                 clock: Callable[[], float] = time.monotonic):
        self.bridge = bridge
        self.pacer = pacer
        self.stats = stats
        self.chunk_size = chunk_size
        self.settle = settle
        self._clock = clock
        self.silent_in_outage = 0   # lines that heard nothing while the bridge said TWS had no data (1100)

    def line_ceiling(self, n: int, max_batch: int | None) -> int:
        """How many lines a request of ``n`` contracts may stream on at once: the budget less the reserve kept
        for small requests (a small request may use it), the relay's ``_max_batch_size``, ``chunk_size``."""
        reserve = getattr(self.pacer, "line_reserve", 0) if n > SMALL_REQUEST_LINES else 0
        return concurrency(n, self.chunk_size, max_batch, self.pacer.lines_budget - reserve)

    async def fetch(self, contracts: Sequence[Contract], done: Callable[[Quote], bool], ticks: str,
                    window: float, max_batch: int | None = None,
                    settle_pred: Callable[[Quote], bool] | None = None, keep: Keep | None = None) -> list[Quote]:
        """Quotes for ``contracts`` in order (a failed one carries error / error_code). Only IBDisconnected and
        RequestTimeout (no line within the pacer's wait) escape; the request's lines never leak."""
        n = len(contracts)
        if n == 0:
            return []
        results: list[Quote | None] = [None] * n
        limit = self.line_ceiling(n, max_batch)
        demand = LineDemand(size=n)
        running: set[asyncio.Task] = set()
        all_tasks: list[asyncio.Task] = []
        started: set[int] = set()
        index_of: dict[asyncio.Task, int] = {}
        acquiring: asyncio.Task | None = None
        closing: set[asyncio.Future] = set()    # our finished lines whose cancel has not gone out yet
        next_i = 0

        def start(granted: int) -> None:
            nonlocal next_i
            demand.held += granted
            for _ in range(granted):
                if next_i >= n:                     # cannot happen (granted <= want); never leak
                    demand.held -= 1
                    self.pacer.release_lines(1)
                    continue
                t = asyncio.ensure_future(one(next_i))
                index_of[t] = next_i
                next_i += 1
                running.add(t)
                all_tasks.append(t)

        async def one(i: int) -> None:
            started.add(i)      # from here on _fetch_one owns the reserved line (opens it or releases it)
            try:
                results[i] = await self._fetch_one(contracts[i], done, ticks, window, settle_pred, keep, closing)
            finally:
                demand.held -= 1

        # A big request's reqMktData yield to urgent messages (the tasks below inherit this context).
        bulk = current_bulk.set(n > SMALL_REQUEST_LINES)
        try:
            while next_i < n or running:
                closing -= {c for c in closing if c.done()}
                if acquiring is None and next_i < n:
                    # Lines still open at TWS count against the ceiling until their cancel is out.
                    want = min(limit - demand.held - len(closing), n - next_i)
                    if want > 0 and not running:
                        start(await self.pacer.acquire_lines(want, demand=demand))
                        continue
                    if want > 0:
                        # Waiting for lines while our own contracts stream: the pacer then knows lines are short
                        # (cancels go first) and whom to give the next free line.
                        acquiring = asyncio.ensure_future(self.pacer.acquire_lines(want, demand=demand))
                waiting = running | ({acquiring} if acquiring is not None else set())
                if acquiring is None and next_i < n:
                    waiting |= closing          # at the ceiling: the next cancel out lets the next contract go
                finished, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if acquiring is not None and acquiring in finished:
                    granted, acquiring = acquiring.result(), None
                    start(granted)
                for t in finished & running:
                    running.discard(t)
                    if not t.cancelled() and t.exception() is not None:
                        raise t.exception()
        finally:
            current_bulk.reset(bulk)
            if acquiring is not None:
                if acquiring.done():
                    if not acquiring.cancelled() and acquiring.exception() is None:
                        self.pacer.release_lines(acquiring.result())
                else:
                    acquiring.cancel()      # acquire_lines gives back lines granted meanwhile
                    await asyncio.gather(acquiring, return_exceptions=True)
            await settle_all(all_tasks)
            # A task cancelled before its first step never ran: the line reserved for it is still ours.
            unstarted = sum(1 for t in all_tasks if index_of[t] not in started)
            if unstarted:
                demand.held -= unstarted
                self.pacer.release_lines(unstarted)
        self.stats["contracts"] += n
        return [q if q is not None else Quote(error="not fetched") for q in results]

    async def _fetch_one(self, contract: Contract, done: Callable[[Quote], bool], ticks: str, window: float,
                         settle_pred: Callable[[Quote], bool] | None, keep: Keep | None,
                         closing: set[asyncio.Future]) -> Quote:
        """One contract on one line the caller reserved. Only IBDisconnected escapes; other failures are data."""
        try:
            line = await self.bridge.open_market_data(contract, generic_ticks=ticks, snapshot=False)
        except asyncio.CancelledError:
            self._release_unopened()
            raise
        except IBDisconnected:
            self._release_unopened()
            raise
        except IBError as e:
            self._release_unopened()
            return Quote(error_code=e.code, error=e.message)
        except AgentError as e:
            self._release_unopened()
            return Quote(error=e.user_message)
        self.stats["lines_opened"] += 1
        try:
            t0 = self._clock()
            ok = await line.wait(done, timeout=window)
            if ok and settle_pred is not None and not settle_pred(line.quote):
                left = min(self.settle, window - (self._clock() - t0))
                if left > 0:
                    await line.wait(settle_pred, timeout=left)
            self.stats["early_ends" if ok else "window_ends"] += 1
            quote = snapshot(line)
            if heard_nothing(quote):
                self.stats["silent_lines"] += 1
                if not getattr(self.bridge, "data_available", True):
                    self.silent_in_outage += 1
            return quote
        finally:
            # Whatever happened (done, window over, error, request cancelled): the line is kept warm or its
            # cancel starts now; the answer does not wait for it, and the bridge finishes it (no leaks).
            if keep is None or not keep(line):
                ending = self.bridge.end_market_data(line)
                if not ending.done():
                    closing.add(ending)

    def _release_unopened(self) -> None:
        # open_market_data did not open a line (it raised before the reqMktData went out): the reserved
        # line is still ours to give back.
        self.pacer.release_lines(1)
