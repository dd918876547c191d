"""The order desk: places, changes and cancels orders through the bridge, on the book its base keeps current
(agent/orders/keeper.py), and holds the safety rules. Used by the relay handlers (agent/orders/handlers.py) and
by order files (agent/orders/runner.py).

Safety, in the order it is applied:
- every field is checked first (agent/orders/validation.py); nothing reaches TWS half-built;
- live accounts (the account id TWS names, not the port) are refused unless ALLOW_LIVE_ORDERS=true;
- never twice: an order carries an orderRef naming what asked for it; before placing, the desk waits until the
  book holds TWS's open orders, today's completed orders and executions for this connection, and answers with
  the order it finds instead of placing another (also while an identical request is still in flight);
- unknown is not failed: when TWS does not confirm in time the answer says "Unknown", gives the orderId and the
  orderRef to look for, and the desk never cancels on its own;
- on the way out (``stop``) orders in flight get up to 3 s for TWS's answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from agent.errors import IBDisconnected, OrderRefused, RequestTimeout
from agent.exchange_time import new_york_today
from agent.orders.answers import open_order_row, placement_answer, state_phrase, what_if_answer
from agent.orders.book import FINAL, ORDER_GOES_ON, BookEntry
from agent.orders.keeper import SYNC_TIMEOUT, BookKeeper
from agent.orders.sentences import (cancel_refusal_sentence, modify_refusal_sentence, read_only_sentence,
                                    rejection_sentence)
from agent.orders.validation import RELAY_FIELDS, OrderCheck, check_order
from agent.tws.connect import accounts_are_paper
from agent.types import Contract, OrderTicket

log = logging.getLogger("agent.orders")

PRESUBMIT_GRACE = 1.0      # after PreSubmitted, how long to wait for Submitted before answering PreSubmitted
FILL_GRACE = 0.5           # after Submitted, how long to wait for a fill (a marketable order fills at once)
CANCEL_CONFIRM = 8.0       # the relay waits 10 s for a cancel; the dispatcher answers by 9 s
STOP_WAIT = 3.0            # Ctrl+C: how long orders in flight may wait for TWS's answer
CANCEL_STATES = ("Cancelled", "ApiCancelled")
MODIFY_REFUSALS_IGNORED = ORDER_GOES_ON          # warnings that do not refuse a change


@dataclass
class Placement:
    """The outcome of one placement: the book entry, and how it ended for the caller."""

    entry: BookEntry
    outcome: str                 # "placed" | "already" | "unknown"
    message: str = ""

    def answer(self) -> dict:
        return placement_answer(self.entry, already_placed=self.outcome == "already", message=self.message)


def describe(contract: Contract, t: OrderTicket) -> str:
    """'DU1234567 BUY 100 AAPL LMT 210.5 DAY ref mat-…' for the console (never anything secret)."""
    price = "".join(f" {v:g}" for v in (t.lmt_price, t.aux_price) if v is not None)
    ref = f" ref {t.order_ref}" if t.order_ref else ""
    return f"{t.account} {t.action} {t.quantity:g} {contract.describe()} {t.order_type}{price} {t.tif}{ref}"


class _FirstAttemptGone(Exception):
    """An identical placement ended without an answer (cancelled): the next one looks the ref up afresh."""


class OrderDesk(BookKeeper):
    """Places, changes and cancels orders (the book itself is the BookKeeper's, agent/orders/keeper.py)."""

    def __init__(self, bridge: Any, settings: Any, push: Callable[[dict], None] | None = None, *,
                 today: Callable[[], Any] = new_york_today, clock: Callable[[], float] = time.time,
                 sync_timeout: float = SYNC_TIMEOUT, presubmit_grace: float = PRESUBMIT_GRACE,
                 fill_grace: float = FILL_GRACE, cancel_confirm: float = CANCEL_CONFIRM):
        super().__init__(bridge, push, clock=clock, sync_timeout=sync_timeout)
        self.settings = settings
        self._today = today
        self.presubmit_grace, self.fill_grace, self.cancel_confirm = presubmit_grace, fill_grace, cancel_confirm
        self._inflight: dict[str, asyncio.Future] = {}
        self._ops: set[asyncio.Task] = set()
        self.stopping = False
        self._said_accounts: tuple | None = None

    def on_bridge_event(self, name: str, data: dict) -> None:
        if name == "tws_connected":
            self._say_accounts()
        super().on_bridge_event(name, data)

    def _say_accounts(self) -> None:
        accounts = tuple(self.bridge.accounts or ())
        if accounts != self._said_accounts:
            self._said_accounts = accounts
            for line in self.order_policy_lines(accounts):
                log.info(line)

    def order_policy_lines(self, accounts: Any = None) -> list[str]:
        """'Orders: paper account DU…: allowed' or 'Orders: live account U…: refused (ALLOW_LIVE_ORDERS is not
        set)', per account."""
        accounts = list(accounts if accounts is not None else self.bridge.accounts or [])
        if not accounts:
            live = "allowed (ALLOW_LIVE_ORDERS=true)" if self.settings.allow_live_orders else \
                "refused (ALLOW_LIVE_ORDERS is not set)"
            return [f"Orders: paper accounts allowed; live accounts {live}"]
        out = []
        for a in accounts:
            if accounts_are_paper([a]):
                out.append(f"Orders: paper account {a}: allowed")
            elif self.settings.allow_live_orders:
                out.append(f"Orders: live account {a}: allowed (ALLOW_LIVE_ORDERS=true)")
            else:
                out.append(f"Orders: live account {a}: refused (ALLOW_LIVE_ORDERS is not set)")
        return out

    # ------------------------------------------------------------------ checks
    def check(self, contract: Mapping[str, Any], order: Mapping[str, Any],
              fields: Mapping[str, str] = RELAY_FIELDS) -> OrderCheck:
        return check_order(contract, order, today=self._today(), accounts=list(self.bridge.accounts or []),
                           fields=fields)

    def live_refusal(self, account: str) -> str | None:
        """The sentence refusing an order for a live account without ALLOW_LIVE_ORDERS, else None."""
        if accounts_are_paper([account]) or self.settings.allow_live_orders:
            return None
        return (f"Order refused: {account} is a live account and ALLOW_LIVE_ORDERS is not set, so this agent places "
                f"orders on paper accounts only. To allow live orders, set ALLOW_LIVE_ORDERS=true in config.env and "
                f"restart the agent.")

    @staticmethod
    def _of(entry: BookEntry) -> str:
        """An order in the book as one console phrase: account, side, quantity, symbol, type, price, tif, ref."""
        if entry.contract is None or entry.ticket is None:
            return "terms unknown"
        return describe(entry.contract, entry.ticket)

    def _refuse(self, what: str, reason: str, code: int | None = None) -> OrderRefused:
        log.warning("Order refused: %s: %s", what, reason)
        return OrderRefused(reason, code)

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._ops.add(task)
            task.add_done_callback(self._ops.discard)

    def _not_stopping(self, what: str) -> None:
        if self.stopping:
            raise self._refuse(what, "The agent is stopping: nothing was placed, changed or cancelled. Retry once "
                                     "it runs again.")

    # ------------------------------------------------------------------ placing
    async def place(self, contract: Contract, ticket: OrderTicket, timeout: float) -> Placement | dict:
        """Place a validated order (``ticket.order_ref`` set), or answer with the one already placed under its
        ref. A what-if ticket returns the preview answer (a dict); nothing is placed."""
        self._track()
        what = describe(contract, ticket)
        self._not_stopping(what)
        if not ticket.what_if:
            refusal = self.live_refusal(ticket.account)
            if refusal:
                raise self._refuse(what, refusal)
        deadline = self._deadline(timeout)
        if ticket.what_if:
            return await self._preview(contract, ticket, deadline)
        ref = ticket.order_ref
        while (running := self._inflight.get(ref)) is not None:
            try:
                first: Placement = await asyncio.shield(running)
            except _FirstAttemptGone:
                continue                          # it never answered: look the ref up ourselves
            log.info("Order not placed again: %s is being placed by an identical request (order %d)", what,
                     first.entry.order_id)
            return dataclasses.replace(first, outcome="already", message=(
                f"An identical request placed this order (orderRef {ref}): not placed again."))
        fut = asyncio.get_running_loop().create_future()
        self._inflight[ref] = fut
        try:
            result = await self._place_new(contract, ticket, deadline, what)
        except BaseException as e:
            fut.set_exception(e if isinstance(e, OrderRefused) else _FirstAttemptGone())
            fut.exception()                       # retrieved: a lone placement must not warn at exit
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            if self._inflight.get(ref) is fut:
                del self._inflight[ref]

    async def _place_new(self, contract: Contract, ticket: OrderTicket, deadline: float, what: str) -> Placement:
        await self._ensure_synced(deadline)
        existing = self.book.find_ref(ticket.order_ref)
        if existing is not None:
            state = state_phrase(existing)
            log.info("Order not placed again: %s is already order %d (%s)", what, existing.order_id, state)
            return Placement(existing, "already", f"Already placed as order {existing.order_id} ({state}) under "
                                                  f"orderRef {ticket.order_ref}: not placed again.")
        order_id = self.bridge.new_order_id()
        entry = self.book.expect(self._client_id, order_id, contract, ticket)
        connection = getattr(self.bridge, "connection_id", None)
        try:
            await self.bridge.place_order(order_id, contract, ticket)
        except IBDisconnected as e:
            if isinstance(e.__cause__, OSError):
                # The socket failed during the send: TWS may have the order. It stays in the book (ref taken).
                return self._unknown(entry, what, "the connection to TWS failed while the order was being sent")
            self.book.forget(entry)
            raise self._refuse(what, f"Not placed: {e}. Place it again once TWS is connected.") from None
        except BaseException:
            self.book.forget(entry)               # cancelled while waiting to send: it never went out
            raise
        return await self._await_placement(entry, deadline, what, connection)

    async def _await_placement(self, entry: BookEntry, deadline: float, what: str, connection: Any) -> Placement:
        loop = asyncio.get_running_loop()
        seen: dict[str, float] = {}
        try:
            while True:
                if entry.rejected is not None and not entry.acknowledged:
                    msg = entry.rejected
                    log.warning("Order rejected by IB: %s: IB error %d: %s", what, msg.code, msg.message)
                    raise OrderRefused(rejection_sentence(msg.code, msg.message, entry.ticket, entry.contract),
                                       msg.code)
                now = loop.time()
                if entry.status and entry.status not in seen:
                    seen[entry.status] = now
                if entry.status in FINAL:
                    return self._placed(entry, what)
                if getattr(self.bridge, "connection_id", None) != connection or not self.bridge.connected:
                    return self._unknown(entry, what, "the connection to TWS dropped before TWS confirmed it")
                settle = deadline
                if "Submitted" in seen:
                    settle = min(settle, seen["Submitted"] + self.fill_grace)
                elif "PreSubmitted" in seen:
                    settle = min(settle, seen["PreSubmitted"] + self.presubmit_grace)
                left = self._left(settle)
                if left <= 0:
                    if entry.status and entry.status != "PendingSubmit":
                        return self._placed(entry, what)
                    return self._unknown(entry, what, "TWS did not confirm it in time")
                await self._wait_change(left)
        except asyncio.CancelledError:
            log.warning("Order sent, answer not delivered (request cancelled): %s is order %d, %s", what,
                        entry.order_id, state_phrase(entry))
            raise

    def _placed(self, entry: BookEntry, what: str) -> Placement:
        state = state_phrase(entry)
        if entry.rejected is not None:
            log.warning("Order %d (%s) ended %s: IB error %d: %s", entry.order_id, what, state, entry.rejected.code,
                        entry.rejected.message)
            return Placement(entry, "placed", f"TWS ended the order: {entry.rejected.message} "
                                              f"(IB error {entry.rejected.code})")
        log.info("Order placed: %s: order %d, %s", what, entry.order_id, state)
        note = f" ({entry.warning_text})" if entry.warning_text else ""
        return Placement(entry, "placed", f"Order {entry.order_id} {state}{note}.")

    def _unknown(self, entry: BookEntry, what: str, why: str) -> Placement:
        stopping = " while the agent was stopping" if self.stopping else ""
        log.warning("Order sent, not confirmed: %s is order %d: %s%s; check TWS", what, entry.order_id, why, stopping)
        entry_status = entry.status
        if not entry_status or entry_status == "PendingSubmit":
            entry.status = "Unknown"
        msg = (f"Order {entry.order_id} was sent but {why}{stopping}. It may be working: look for orderRef "
               f"{entry.order_ref} in TWS (Orders panel) or refresh the order book before placing it again. The "
               f"agent did not cancel it, and will not place it twice for this request.")
        return Placement(entry, "unknown", msg)

    async def _preview(self, contract: Contract, ticket: OrderTicket, deadline: float) -> dict:
        order_id = self.bridge.new_order_id()
        fut = asyncio.get_running_loop().create_future()
        self._previews[order_id] = fut
        try:
            await self.bridge.place_order(order_id, contract, ticket)
            done, _ = await asyncio.wait({fut}, timeout=max(0.0, self._left(deadline)))
            if not done:
                raise RequestTimeout("TWS did not answer the what-if preview in time (nothing was placed)")
            info = fut.result()
        finally:
            self._previews.pop(order_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()
        log.info("What-if preview: %s: initial margin change %s, commission %s", describe(contract, ticket),
                 (info.margin or {}).get("initMarginChange"), (info.margin or {}).get("commission"))
        return what_if_answer(info)

    # ------------------------------------------------------------------ changing
    async def _own_entry(self, order_id: int, deadline: float, what: str) -> BookEntry:
        await self._ensure_synced(deadline)
        entry = self.book.find(self._client_id, order_id)
        if entry is None:
            await self._sync()
            entry = self.book.find(self._client_id, order_id)
        if entry is None:
            others = [e for e in self.book.open_orders() if e.order_id == order_id]
            whose = (f" TWS has an order {order_id} from API client {others[0].client_id}; this agent is client "
                     f"{self._client_id} and IB lets only the placing client (or client 0 for orders bound to it) "
                     f"change it.") if others else ""
            raise self._refuse(what, f"Order {order_id} is not an order this agent can {what.split()[0]}: TWS lists "
                                     f"no such order from client {self._client_id}.{whose}")
        return entry

    async def modify(self, order_id: int, contract: Contract, ticket: OrderTicket, timeout: float) -> dict:
        """Change a working order (same orderId). A filled or cancelled one is refused with its final state."""
        self._track()
        what = f"change order {order_id}"
        self._not_stopping(what)
        deadline = self._deadline(timeout)
        entry = await self._own_entry(order_id, deadline, what)
        if entry.final:
            raise self._refuse(what, f"Order {order_id} is {state_phrase(entry)}: it can no longer be changed.")
        old = entry.contract
        if old is not None:
            for attr, name in (("symbol", "symbol"), ("sec_type", "secType"),
                               ("expiry", "lastTradeDateOrContractMonth"), ("strike", "strike"), ("right", "right")):
                if getattr(old, attr) and getattr(contract, attr) and getattr(old, attr) != getattr(contract, attr):
                    raise self._refuse(what, f"contract.{name} differs from order {order_id}'s ({old.describe()}): a "
                                             f"change cannot switch the instrument; cancel and place a new order.")
        old_ticket = entry.ticket
        if old_ticket is not None and old_ticket.action and ticket.action != old_ticket.action:
            raise self._refuse(what, f"order.action differs from order {order_id}'s ({old_ticket.action}): cancel "
                                     f"and place a new order instead.")
        account = old_ticket.account if old_ticket is not None and old_ticket.account else ticket.account
        refusal = self.live_refusal(account)
        if refusal:
            raise self._refuse(what, refusal)
        ticket = dataclasses.replace(ticket, account=account, what_if=False,
                                     order_ref=(old_ticket.order_ref if old_ticket is not None else "")
                                     or ticket.order_ref)
        n_messages = len(entry.messages)
        await self.bridge.place_order(order_id, old or contract, ticket)
        while True:
            for msg in entry.messages[n_messages:]:
                if msg.code not in MODIFY_REFUSALS_IGNORED:
                    if msg.code == 104 or entry.status == "Filled":
                        break
                    log.warning("Order change refused by IB: order %d (%s): IB error %d: %s", order_id,
                                self._of(entry), msg.code, msg.message)
                    raise OrderRefused(modify_refusal_sentence(msg.code, msg.message, order_id), msg.code)
            if entry.status == "Filled" or any(m.code == 104 for m in entry.messages[n_messages:]):
                log.warning("Order change too late: order %d (%s) is %s", order_id, self._of(entry),
                            state_phrase(entry))
                raise OrderRefused(f"Order {order_id} filled before the change: {state_phrase(entry)}.", 104)
            t = entry.ticket
            if t is not None and t.quantity == ticket.quantity and t.lmt_price == ticket.lmt_price and \
                    t.aux_price == ticket.aux_price and t.order_type == ticket.order_type and entry.status:
                log.info("Order changed: order %d is now %s: %s", order_id, self._of(entry), state_phrase(entry))
                return placement_answer(entry, message=f"Order {order_id} changed: {state_phrase(entry)}.")
            left = self._left(deadline)
            if left <= 0:
                log.warning("Order change sent, not confirmed: order %d (%s); check TWS", order_id, self._of(entry))
                answer = placement_answer(entry, message=(
                    f"The change to order {order_id} was sent but TWS did not confirm it in time: check the order in "
                    f"TWS before sending the change again."))
                answer["status"] = "Unknown"
                return answer
            await self._wait_change(left)

    async def cancel(self, order_id: int) -> dict:
        """Cancel a working order: ok:true when TWS confirms (or did not answer in time: with a warning);
        ok:false with status Filled when it filled first."""
        self._track()
        what = f"cancel order {order_id}"
        self._not_stopping(what)
        deadline = self._deadline(self.cancel_confirm)
        entry = await self._own_entry(order_id, deadline, what)
        if entry.status == "Filled":
            return self._cancel_too_late(entry)
        if entry.final:
            return {"ok": True, "orderId": order_id, "status": entry.status or "Cancelled",
                    "message": f"Order {order_id} was already {state_phrase(entry)}."}
        n_messages = len(entry.messages)
        await self.bridge.cancel_order(order_id)
        while True:
            if entry.status in CANCEL_STATES:
                log.info("Order cancelled: order %d (%s): %s", order_id, self._of(entry), state_phrase(entry))
                return {"ok": True, "orderId": order_id, "status": entry.status}
            if entry.status == "Filled":
                return self._cancel_too_late(entry)
            refusals = [m for m in entry.messages[n_messages:] if m.code not in (202, 399)]
            if refusals and entry.status not in ("PendingCancel",):
                m = refusals[-1]
                log.warning("Cancel refused by IB: order %d (%s): IB error %d: %s", order_id, self._of(entry), m.code,
                            m.message)
                raise OrderRefused(cancel_refusal_sentence(m.code, m.message, order_id), m.code)
            left = self._left(deadline)
            if left <= 0:
                log.warning("Cancel sent, not confirmed: order %d (%s); check TWS", order_id, self._of(entry))
                return {"ok": True, "orderId": order_id, "status": entry.status or "PendingCancel",
                        "warning": (f"TWS did not confirm the cancel of order {order_id} within "
                                    f"{self.cancel_confirm:g} s: check the order in TWS.")}
            await self._wait_change(left)

    def _cancel_too_late(self, entry: BookEntry) -> dict:
        """The cancel's answer for an order that filled first (before it was sent, or while it was on its way)."""
        log.info("Cancel too late: order %d (%s) is %s", entry.order_id, self._of(entry), state_phrase(entry))
        return {"ok": False, "orderId": entry.order_id, "status": "Filled",
                "message": f"Order {entry.order_id} filled before it could be cancelled: {state_phrase(entry)}."}

    # ------------------------------------------------------------------ the book
    async def open_orders(self, timeout: float, force_refresh: bool = False) -> dict:
        deadline = self._deadline(timeout)
        await self._ensure_synced(deadline)
        source = "book"
        if force_refresh:
            if not await self._sync():
                raise RequestTimeout("TWS did not list its open orders in time; the order book may be out of date")
            source = "tws"
        rows = [open_order_row(e, self._client_id) for e in self.book.open_orders()]
        answer: dict = {"orders": rows, "live_order_count": len(rows), "source": source,
                        "client_id": self._client_id}
        if self.bridge.read_only_session:
            answer["warning"] = read_only_sentence() + " (TWS hides the order book from the API in this mode.)"
        return answer

    # ------------------------------------------------------------------ stopping
    @property
    def in_flight(self) -> int:
        """Order requests (place, change, cancel) still running."""
        return sum(1 for t in self._ops if not t.done())

    async def stop(self, timeout: float = STOP_WAIT) -> None:
        """Refuse new order requests; give those in flight up to ``timeout`` s to hear from TWS and answer."""
        self.stopping = True
        ops = [t for t in self._ops if not t.done() and t is not asyncio.current_task()]
        if not ops:
            return
        log.info("Stopping: waiting up to %g s for TWS to answer %d order request(s) in flight", timeout, len(ops))
        self._stop_deadline = asyncio.get_running_loop().time() + timeout
        self._notify()
        await asyncio.wait(ops, timeout=timeout + 0.5)
