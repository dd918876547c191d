"""The book keeper (the desk's base): listens to TWS's order messages, keeps the order book current, pushes each
change once, and re-reads TWS's lists after every (re)connect and 1101/1102 (agent/orders/desk.py places orders on
top of it).

Every order callback lands in ``_on_tws`` (the bridge's ``order_listener``, on the loop); waiters for a book change
(``_wait_change``, ``wait_for``) are woken by ``_notify``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from agent.errors import IBDisconnected, IBError, OrderRefused, RequestTimeout
from agent.orders.book import OrderBook, is_order_warning
from agent.orders.sentences import read_only_sentence, rejection_sentence
from agent.protocol import account_event_frame
from agent.types import OrderInfo, OrderMessage

log = logging.getLogger("agent.orders")

SYNC_TIMEOUT = 10.0        # each of TWS's three lists (open, completed, executions)


class BookKeeper:
    def __init__(self, bridge: Any, push: Callable[[dict], None] | None = None, *,
                 clock: Callable[[], float] = time.time, sync_timeout: float = SYNC_TIMEOUT):
        self.bridge = bridge
        self.book = OrderBook(clock)
        self._push = push or (lambda frame: None)
        self.sync_timeout = sync_timeout
        self._waiters: set[asyncio.Future] = set()
        self._synced_connection: int | None = None
        self._sync_task: asyncio.Task | None = None
        self._sync_again = False
        self._baseline = True            # the first sync reads the starting state: nothing to report
        self._syncing = False
        self._sync_lock = asyncio.Lock()
        self._previews: dict[int, asyncio.Future] = {}     # what-if order id -> its answer
        self._stop_deadline: float | None = None           # set while stopping: every wait ends by then
        bridge.order_listener = self._on_tws

    # ------------------------------------------------------------------ what TWS says
    def _on_tws(self, kind: str, obj: Any) -> None:
        event = None
        if kind in ("open_order", "completed_order"):
            info: OrderInfo = obj
            if info.ticket.what_if:
                fut = self._previews.get(info.order_id)
                if fut is not None and not fut.done():
                    fut.set_result(info)
            elif kind == "completed_order":
                event = self.book.on_completed(info)
            else:
                event = self.book.on_open_order(info)
        elif kind == "status":
            event = self.book.on_status(obj)
        elif kind == "execution":
            event = self.book.on_execution(obj)
            if event is not None and not self._quiet:
                log.info("Fill: order %d %s %g %s at %g", obj.order_id, obj.side, obj.shares,
                         obj.contract.describe(), obj.price)
        elif kind == "message":
            self._on_message(obj)
        if event is not None and not self._quiet:
            self._push(account_event_frame(event))
        self._notify()

    def _on_message(self, msg: OrderMessage) -> None:
        fut = self._previews.get(msg.order_id)
        warning = is_order_warning(msg.code)
        if fut is not None and not fut.done() and not warning:
            fut.set_exception(OrderRefused(rejection_sentence(msg.code, msg.message), msg.code))
            return
        entry = self.book.on_message(msg, client_id=self._client_id)
        if entry is None:
            log.warning("TWS %d about id %d: %s", msg.code, msg.order_id, msg.message)
        elif warning and msg.code != 202:          # 202 "Order Canceled": the cancel's own line says it
            log.info("TWS %d about order %d: %s", msg.code, msg.order_id, msg.message)
        else:
            log.debug("TWS %d about order %d: %s", msg.code, msg.order_id, msg.message)

    @property
    def _quiet(self) -> bool:
        return self._baseline and self._syncing

    @property
    def _client_id(self) -> int:
        return int(self.bridge.client_id if self.bridge.client_id is not None else -1)

    def _notify(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait_change(self, timeout: float) -> None:
        """Until the book changes (or the connection does), at most ``timeout`` s."""
        if timeout <= 0:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            self._waiters.discard(fut)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until ``predicate()`` holds (checked at every book change), at most ``timeout`` s."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not predicate():
            left = end - loop.time()
            if left <= 0:
                return False
            await self._wait_change(left)
        return True

    def _deadline(self, seconds: float) -> float:
        """A deadline ``seconds`` from now, cut short while the agent is stopping."""
        loop = asyncio.get_running_loop()
        d = loop.time() + seconds
        return min(d, self._stop_deadline) if self._stop_deadline is not None else d

    def _left(self, deadline: float) -> float:
        d = min(deadline, self._stop_deadline) if self._stop_deadline is not None else deadline
        return d - asyncio.get_running_loop().time()


    # ------------------------------------------------------------------ connection events and syncs
    def on_bridge_event(self, name: str, data: dict) -> None:
        """The bridge's events: after every (re)connect and 1101/1102, re-read TWS's order lists."""
        if name in ("tws_connected", "tws_reconnected"):
            self._schedule_sync()
        elif name == "tws_lost":
            self._synced_connection = None
            self._notify()

    def _schedule_sync(self) -> None:
        if self._sync_task is not None and not self._sync_task.done():
            self._sync_again = True
            return
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop(), name="order-book-sync")

    async def _sync_loop(self) -> None:
        while True:
            self._sync_again = False
            await self._sync()
            if not self._sync_again:
                return

    async def _sync(self) -> bool:
        """Re-read TWS's open orders, today's completed orders and executions into the book (one at a time)."""
        async with self._sync_lock:
            return await self._sync_once()

    async def _sync_once(self) -> bool:
        connection = getattr(self.bridge, "connection_id", None)
        if not self.bridge.connected or connection is None:
            return False
        gen = self.book.begin_sync()
        self._syncing = True
        try:
            await self.bridge.open_orders(timeout=self.sync_timeout)
            await self.bridge.completed_orders(timeout=self.sync_timeout)
            await self.bridge.executions(timeout=self.sync_timeout)
            if self.bridge.client_id == 0:
                await self.bridge.bind_manual_orders()
        except (IBDisconnected, RequestTimeout, IBError) as e:
            self.book.abort_sync(gen)
            log.warning("Could not read TWS's order lists (%s): orders wait until they can be checked", e)
            return False
        finally:
            self._syncing = False
            self._notify()
        self.book.end_sync(gen)
        if connection == getattr(self.bridge, "connection_id", None):
            self._synced_connection = connection
        first, self._baseline = self._baseline, False
        log.info("Order book %s: %d open order(s) in TWS", "loaded" if first else "re-synced",
                 len(self.book.open_orders()))
        self._notify()
        return True

    @property
    def synced(self) -> bool:
        return self._synced_connection is not None and \
            self._synced_connection == getattr(self.bridge, "connection_id", None)

    async def wait_synced(self, timeout: float) -> None:
        """Until the book holds this connection's lists (OrderRefused after ``timeout`` s)."""
        await self._ensure_synced(self._deadline(timeout))

    async def _ensure_synced(self, deadline: float) -> None:
        """Until the book holds this connection's lists; refuse (nothing placed) when that cannot be had in time."""
        while not self.synced:
            if not self.bridge.connected:
                raise IBDisconnected("IB not connected")
            if self._sync_task is None or self._sync_task.done():
                self._schedule_sync()
            left = self._left(deadline)
            if left <= 0:
                why = read_only_sentence() if self.bridge.read_only_session else \
                    "TWS did not answer the order-list requests in time"
                raise OrderRefused("Not placed: the agent could not read TWS's order lists to make sure this order "
                                   f"was not placed already ({why}). Try again in a moment.")
            await self._wait_change(left)

    async def close(self) -> None:
        if self._sync_task is not None and not self._sync_task.done():
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
