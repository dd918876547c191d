"""Orders on the bridge (a mixin of ``TwsBridge``): placeOrder / cancelOrder, the order lists, executions, and the
order callbacks, handed to one listener (agent/orders/desk.py keeps the book).

Order ids and request ids come from one sequence (``TwsBridge._new_req_id``, never below TWS's nextValidId), so an
error TWS sends with an id is never ambiguous between an order and a request. Every message is paced.
"""

from __future__ import annotations

import logging
from typing import Callable

from ibapi.execution import ExecutionFilter

from agent.tws.wrapper import (Session, execution_info, order_info, order_status_info, to_ib_contract,
                               to_ib_order)
from agent.types import Contract, ExecutionInfo, OrderInfo, OrderMessage, OrderTicket

log = logging.getLogger("agent.tws")

# registry keys for the order lists TWS answers without a reqId (request reqIds start at 1)
OPEN_ORDERS_KEY = -103
COMPLETED_ORDERS_KEY = -104

#: What the listener receives: ("open_order" | "completed_order", OrderInfo), ("status", OrderStatusInfo),
#: ("execution", ExecutionInfo), ("message", OrderMessage).
OrderListener = Callable[[str, object], None]


class Trading:
    """``new_order_id``, ``place_order``, ``cancel_order``, ``open_orders``, ``completed_orders``, ``executions``,
    ``bind_manual_orders``; ``order_listener`` hears every order callback."""

    order_listener: OrderListener | None = None

    def _order_event(self, kind: str, obj: object) -> None:
        listener = self.order_listener
        if listener is None:
            return
        try:
            listener(kind, obj)
        except Exception:       # noqa: BLE001 - a listener's bug must not break the bridge
            log.exception("order listener failed on %s", kind)

    @property
    def connection_id(self) -> int | None:
        """Which connection is up (a new one after every reconnect), or None while there is none."""
        s = self._session
        return s.id if s is not None and self.connected and not s.lost else None

    # --- sending -------------------------------------------------------------------------------------------

    def new_order_id(self) -> int:
        """A fresh order id for this connection (raises IBDisconnected when there is none)."""
        self._require()
        return self._new_req_id()

    async def place_order(self, order_id: int, contract: Contract, ticket: OrderTicket) -> Session:
        """Send placeOrder (paced). Returns the session it went out on. IBDisconnected: it did not go out."""
        session = self._require()
        ib_contract, ib_order = to_ib_contract(contract), to_ib_order(ticket)
        await self._token(session)
        self._send(session, "placeOrder", session.client.placeOrder, order_id, ib_contract, ib_order)
        return session

    async def cancel_order(self, order_id: int) -> None:
        session = self._require()
        await self._token(session)
        self._send(session, "cancelOrder", session.client.cancelOrder, order_id)

    async def open_orders(self, timeout: float = 10.0) -> list[OrderInfo]:
        """Every open order TWS holds (reqAllOpenOrders: this client's, other clients' and those typed into TWS)."""
        async with self._lock("open_orders"):
            def send(s: Session, key: int) -> None:
                self._send(s, "reqAllOpenOrders", s.client.reqAllOpenOrders)
            return await self._request(OPEN_ORDERS_KEY, "open_orders", send, timeout, "open orders request")

    async def completed_orders(self, timeout: float = 10.0) -> list[OrderInfo]:
        """Today's filled and cancelled orders (reqCompletedOrders, all of them, not only the API's)."""
        async with self._lock("completed_orders"):
            def send(s: Session, key: int) -> None:
                self._send(s, "reqCompletedOrders", s.client.reqCompletedOrders, False)
            return await self._request(COMPLETED_ORDERS_KEY, "completed_orders", send, timeout,
                                       "completed orders request")

    async def executions(self, timeout: float = 10.0) -> list[ExecutionInfo]:
        """Today's executions, of every client."""
        rid = self._new_req_id()

        def send(s: Session, key: int) -> None:
            self._send(s, "reqExecutions", s.client.reqExecutions, key, ExecutionFilter())
        return await self._request(rid, "executions", send, timeout, "executions request")

    async def bind_manual_orders(self) -> bool:
        """Client 0 only: bind orders typed into TWS to this client (reqAutoOpenOrders), so that they can be
        changed and cancelled through the API. False (nothing sent) for any other client id."""
        session = self._require()
        if session.client_id != 0:
            return False
        await self._token(session)
        self._send(session, "reqAutoOpenOrders", session.client.reqAutoOpenOrders, True)
        return True

    # --- callbacks (on the loop, from TwsCallbacks._deliver) ------------------------------------------------

    def _on_openOrder(self, session: Session, order_id, contract, order, state) -> None:
        info = order_info(order_id, contract, order, state)
        pend = self._requests.get(OPEN_ORDERS_KEY)
        if pend is not None and not info.ticket.what_if:
            pend.items.append(info)
        self._order_event("open_order", info)

    def _on_openOrderEnd(self, session: Session) -> None:
        self._finish(OPEN_ORDERS_KEY)

    def _on_completedOrder(self, session: Session, contract, order, state) -> None:
        info = order_info(0, contract, order, state, completed=True)
        pend = self._requests.get(COMPLETED_ORDERS_KEY)
        if pend is not None:
            pend.items.append(info)
        self._order_event("completed_order", info)

    def _on_completedOrdersEnd(self, session: Session) -> None:
        self._finish(COMPLETED_ORDERS_KEY)

    def _on_orderStatus(self, session: Session, *args) -> None:
        self._order_event("status", order_status_info(*args))

    def _on_execDetails(self, session: Session, req_id, contract, execution) -> None:
        ex = execution_info(contract, execution)
        pend = self._requests.get(int(req_id))
        if pend is not None and pend.kind == "executions":
            pend.items.append(ex)
        self._order_event("execution", ex)

    def _on_execDetailsEnd(self, session: Session, req_id) -> None:
        self._finish(int(req_id))

    def _order_error(self, order_id: int, code: int, message: str) -> bool:
        """An error TWS sent with an id that is neither a request nor a line: the listener decides whether it is
        about an order. True when a listener heard it."""
        if self.order_listener is None:
            return False
        self._order_event("message", OrderMessage(order_id, code, message))
        return True

