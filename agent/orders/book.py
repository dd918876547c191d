"""The order book (pure: no I/O). What TWS has said about every order it told us of, kept current by openOrder,
orderStatus, completedOrder, execDetails and the errors TWS sends with an order id.

Identity: IB order ids are per API client (client 17's order 7 and client 3's order 7 are different orders) and
orders typed into TWS by hand have order id 0 unless bound to client 0; the permId is TWS's own unique id, known
from the first openOrder / orderStatus on. So entries are found by permId, or by (clientId, orderId) when the
order id is not 0.

Every ``on_*`` method returns the relay event to push (``account_event``'s "event" dict) when something changed,
else None: TWS repeats orderStatus freely, the web app hears each change once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from agent.types import Contract, ExecutionInfo, OrderInfo, OrderMessage, OrderStatusInfo, OrderTicket

WORKING = frozenset({"PendingSubmit", "ApiPending", "PreSubmitted", "Submitted", "PendingCancel"})
FINAL = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})

# Errors TWS sends with an order id that leave the order as it was (it stays live, or was never affected).
# Codes from 2100 up are warnings too; any other code refuses an order TWS has not acknowledged yet.
# First, warnings about the order itself (their text is kept as its warningText):
ORDER_GOES_ON = frozenset({
    399,    # Order Message: a warning (e.g. held until the open); the order goes on
    404,    # held while securities are located (short sale); the order goes on
    2109,   # outside-RTH attribute ignored; the order goes on
})
# then answers to a cancel or a change, which say nothing of the order's own terms:
CANCEL_OR_CHANGE_ANSWERS = frozenset({
    202,    # "Order Canceled - reason:": orderStatus Cancelled says it too
    10147, 10148, 161, 135, 136,    # cancel / lookup of an order that is not there or cannot be cancelled
    104, 105,                       # a modification refused: the order itself stands
})
ORDER_WARNINGS = ORDER_GOES_ON | CANCEL_OR_CHANGE_ANSWERS


def is_order_warning(code: int) -> bool:
    """Does this error, sent with an order id, leave the order as it was (a warning, not a refusal)?"""
    return code in ORDER_WARNINGS or 2100 <= code < 10000


@dataclass(eq=False)
class BookEntry:
    client_id: int
    order_id: int
    perm_id: int = 0
    contract: Contract | None = None
    ticket: OrderTicket | None = None
    status: str = ""                     # TWS's last word; "" = nothing yet; "Unknown" = lost track (see end_sync)
    filled: float = 0.0
    remaining: float | None = None
    avg_fill_price: float = 0.0
    warning_text: str = ""
    commission: float | None = None
    messages: list[OrderMessage] = field(default_factory=list)
    rejected: OrderMessage | None = None  # refused before TWS acknowledged it: nothing went live
    acknowledged: bool = False           # TWS said anything about it (openOrder, orderStatus, execution)
    placed_here: bool = False            # placed by this process (agent/orders/desk.py)
    updated: float = 0.0
    touched: int = 0                     # the sync generation that last saw it
    _pushed: tuple | None = None         # the last (status, filled, remaining, avg) reported

    @property
    def order_ref(self) -> str:
        return self.ticket.order_ref if self.ticket is not None else ""

    @property
    def working(self) -> bool:
        return self.status in WORKING or (self.status == "" and self.rejected is None)

    @property
    def final(self) -> bool:
        return self.status in FINAL or (self.rejected is not None and not self.acknowledged)

    @property
    def blocks_ref(self) -> bool:
        """Does this entry keep its ref from being used again? Always, unless TWS refused it unacknowledged."""
        return not (self.rejected is not None and not self.acknowledged)


class OrderBook:
    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._entries: list[BookEntry] = []
        self._by_perm: dict[int, BookEntry] = {}
        self._by_id: dict[tuple[int, int], BookEntry] = {}
        self._exec_ids: set[str] = set()
        self._sync = 0               # current sync generation (0: none yet)
        self._syncing = False

    # --- lookups -------------------------------------------------------------------------------------------

    def find(self, client_id: int, order_id: int) -> BookEntry | None:
        return self._by_id.get((client_id, order_id)) if order_id else None

    def find_perm(self, perm_id: int) -> BookEntry | None:
        return self._by_perm.get(perm_id) if perm_id else None

    def find_ref(self, ref: str) -> BookEntry | None:
        """The order carrying ``ref`` that keeps the ref taken (the most recent such), or None."""
        if not ref:
            return None
        for e in reversed(self._entries):
            if e.order_ref == ref and e.blocks_ref:
                return e
        return None

    def entries(self) -> list[BookEntry]:
        """Every order the book knows of, oldest first."""
        return list(self._entries)

    def open_orders(self) -> list[BookEntry]:
        return [e for e in self._entries if e.working and e.acknowledged]

    def __len__(self) -> int:
        return len(self._entries)

    # --- entries -------------------------------------------------------------------------------------------

    def expect(self, client_id: int, order_id: int, contract: Contract, ticket: OrderTicket) -> BookEntry:
        """An order about to be sent by this process: from now on its ref is taken."""
        e = self.find(client_id, order_id)
        if e is None:
            e = BookEntry(client_id=client_id, order_id=order_id)
            self._add(e)
        e.contract, e.ticket, e.placed_here = contract, ticket, True
        e.remaining = ticket.quantity
        e.updated = self._clock()
        return e

    def forget(self, entry: BookEntry) -> None:
        """The placeOrder never went out: the entry (and its ref) goes."""
        if entry in self._entries:
            self._entries.remove(entry)
        if self._by_id.get((entry.client_id, entry.order_id)) is entry:
            del self._by_id[(entry.client_id, entry.order_id)]
        if entry.perm_id and self._by_perm.get(entry.perm_id) is entry:
            del self._by_perm[entry.perm_id]

    def _add(self, e: BookEntry) -> None:
        self._entries.append(e)
        if e.order_id:
            self._by_id[(e.client_id, e.order_id)] = e
        if e.perm_id:
            self._by_perm[e.perm_id] = e

    def _locate(self, client_id: int, order_id: int, perm_id: int) -> BookEntry:
        e = self.find_perm(perm_id) or self.find(client_id, order_id)
        if e is None:
            e = BookEntry(client_id=client_id, order_id=order_id, perm_id=perm_id)
            self._add(e)
        elif perm_id and not e.perm_id:
            e.perm_id = perm_id
            self._by_perm[perm_id] = e
        if order_id and not e.order_id:       # a manual order bound to client 0 gets its (negative) id
            e.order_id = order_id
            self._by_id[(client_id, order_id)] = e
        e.acknowledged = True
        e.updated = self._clock()
        if self._syncing:
            e.touched = self._sync
        return e

    # --- what TWS says -------------------------------------------------------------------------------------

    def on_open_order(self, info: OrderInfo) -> dict | None:
        """openOrder: the order's terms and state. It reports no change itself: TWS follows every openOrder with an
        orderStatus that carries the fill figures (reporting both would say "Filled" twice)."""
        self._apply_order(info)
        return None

    def on_completed(self, info: OrderInfo) -> dict | None:
        """completedOrder: read on a sync, with no orderStatus after it, so its final state is reported here (an
        order that ended while the agent was away is news)."""
        e = self._apply_order(info)
        return self._changed(e) if e is not None else None

    def _apply_order(self, info: OrderInfo) -> BookEntry | None:
        if info.ticket.what_if:
            return None                 # a margin preview: never an order
        e = self._locate(info.client_id, info.order_id, info.perm_id)
        e.contract, e.ticket = info.contract, info.ticket
        if info.warning_text:
            e.warning_text = info.warning_text
        if info.commission is not None:
            e.commission = info.commission
        if info.filled is not None:
            e.filled = info.filled
        if info.status:
            e.status = info.status
        # What is left follows from the terms and the fills so far (an openOrder saying Filled may arrive before
        # the orderStatus that carries the figures: the answer must not read "Filled, 10 remaining").
        e.remaining = max(info.ticket.quantity - e.filled, 0.0)
        return e

    def on_status(self, st: OrderStatusInfo) -> dict | None:
        e = self._locate(st.client_id, st.order_id, st.perm_id)
        e.status, e.filled, e.remaining, e.avg_fill_price = st.status, st.filled, st.remaining, st.avg_fill_price
        return self._changed(e)

    def on_execution(self, ex: ExecutionInfo) -> dict | None:
        if ex.exec_id in self._exec_ids:
            return None
        self._exec_ids.add(ex.exec_id)
        e = self._locate(ex.client_id, ex.order_id, ex.perm_id)
        if e.contract is None:
            e.contract = ex.contract
        if e.ticket is None:
            action = "BUY" if ex.side == "BOT" else "SELL"
            e.ticket = OrderTicket(action=action, quantity=ex.cum_qty or ex.shares, order_type="",
                                   account=ex.account, order_ref=ex.order_ref)
        if (ex.cum_qty or ex.shares) >= e.filled:
            e.filled = ex.cum_qty or ex.shares
            if ex.avg_price > 0:
                e.avg_fill_price = ex.avg_price
        return {"event": "execution", "orderId": ex.order_id, "symbol": ex.contract.symbol, "side": ex.side,
                "shares": float(ex.shares), "price": float(ex.price), "ts": self._clock(), "execId": ex.exec_id,
                "permId": ex.perm_id, "orderRef": ex.order_ref, "account": ex.account}

    def on_message(self, msg: OrderMessage, client_id: int) -> BookEntry | None:
        """An error or warning TWS sent with this order id (ours: ``client_id``). None if no such order."""
        e = self.find(client_id, msg.order_id)
        if e is None:
            return None
        e.messages.append(msg)
        e.updated = self._clock()
        if is_order_warning(msg.code):
            if msg.code not in CANCEL_OR_CHANGE_ANSWERS:
                e.warning_text = msg.message
        elif e.status not in FINAL:
            e.rejected = msg
        return e

    def _changed(self, e: BookEntry) -> dict | None:
        key = (e.status, float(e.filled), None if e.remaining is None else float(e.remaining),
               float(e.avg_fill_price))
        if not e.status or key == e._pushed:
            return None
        e._pushed = key
        t = e.ticket
        return {"event": "order_status", "orderId": e.order_id, "status": e.status, "filled": float(e.filled),
                "remaining": key[2], "avgFillPrice": float(e.avg_fill_price), "ts": self._clock(),
                "permId": e.perm_id, "clientId": e.client_id, "orderRef": e.order_ref,
                "account": t.account if t else "", "symbol": e.contract.symbol if e.contract else ""}

    # --- syncs ---------------------------------------------------------------------------------------------

    def begin_sync(self) -> int:
        """A full re-read of TWS's lists starts (after a (re)connect): returns its generation."""
        self._sync += 1
        self._syncing = True
        return self._sync

    def abort_sync(self, gen: int) -> None:
        """The re-read failed part-way: what it saw stands, nothing is marked unknown."""
        if gen == self._sync:
            self._syncing = False

    def end_sync(self, gen: int) -> None:
        """The re-read is complete: an order we hold as working that TWS did not mention is no longer known."""
        if gen != self._sync:
            return
        self._syncing = False
        for e in self._entries:
            if e.acknowledged and e.status in WORKING and e.touched != gen:
                e.status = "Unknown"

    @property
    def synced(self) -> int:
        return self._sync if not self._syncing else self._sync - 1
