"""A market-data line: what the scanner holds while one reqMktData streams into a Quote."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable

from agent.types import Contract, Quote

if TYPE_CHECKING:
    from agent.tws.bridge import TwsBridge

log = logging.getLogger("agent.tws")


class MarketDataLine:
    """One streaming (or snapshot) market-data subscription. ``quote`` is updated on the loop by the bridge."""

    def __init__(self, bridge: "TwsBridge", req_id: int, contract: Contract, generic_ticks: str, snapshot: bool,
                 session_id: int):
        self.contract = contract
        self.quote = Quote()
        self._closed = False
        self._on_close: list[Callable[["MarketDataLine"], None]] = []
        self.updated_at = time.monotonic()      # when TWS last sent something for this line (monotonic)
        self.req_id = req_id
        self.generic_ticks = generic_ticks
        self.snapshot = snapshot
        self.snapshot_done = False
        self._bridge = bridge
        self._session_id = session_id
        self._waiters: set[asyncio.Future] = set()     # one per wait() in progress; _notify wakes them all
        self._closing: asyncio.Task | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        # Set by the bridge when the cancel went out or the connection dropped the line: tell the owners once.
        if value and not self._closed:
            self._closed = True
            callbacks, self._on_close = self._on_close, []
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:       # noqa: BLE001 - one owner's bug must not keep the others uninformed
                    log.exception("on_close callback for %s failed", self)

    def on_close(self, fn: Callable[["MarketDataLine"], None]) -> None:
        """Call ``fn(line)`` on the loop when the line is closed (cancelled, or lost with the connection)."""
        if self._closed:
            fn(self)
        else:
            self._on_close.append(fn)

    def _notify(self) -> None:
        """The quote changed (or the line closed/failed): wake every wait(). Called on the loop."""
        if not self._closed:
            self.updated_at = time.monotonic()
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(False)

    def _settled(self, predicate: Callable[[Quote], bool]) -> bool:
        if self.quote.error_code is not None:
            return True
        try:
            return bool(predicate(self.quote))
        except Exception:       # noqa: BLE001 - a predicate that trips on a None field just isn't satisfied yet
            return False

    async def wait(self, predicate: Callable[[Quote], bool], timeout: float) -> bool:
        """True when ``predicate(quote)`` holds or the line failed (quote.error_code set); False on timeout.

        A cancelled caller always gets CancelledError, even when a tick lands in the same loop iteration: the
        caller awaits a bare future that ``_notify`` or the deadline timer completes. (``asyncio.wait_for`` on
        Python <= 3.11 returns the inner result instead of raising when the cancellation and the completion
        coincide, so a cancelled request went on running with its lines.)
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            if self._settled(predicate):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            fut: asyncio.Future = loop.create_future()
            self._waiters.add(fut)
            timer = loop.call_later(remaining, _complete, fut, True)
            try:
                timed_out = await fut
            finally:
                timer.cancel()
                self._waiters.discard(fut)
            if timed_out:
                return self._settled(predicate)

    def __repr__(self) -> str:
        return f"<MarketDataLine {self.req_id} {self.contract.describe()} closed={self.closed}>"


def _complete(fut: asyncio.Future, value: object) -> None:
    if not fut.done():
        fut.set_result(value)
