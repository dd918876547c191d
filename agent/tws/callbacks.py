"""What each TWS message does to the bridge (a mixin of ``TwsBridge``).

Everything here runs on the event loop: ``Session.post`` (agent/tws/wrapper.py) is the one crossing from ibapi's
thread, and it lands in ``_deliver``. Each handler is guarded there, so one bad message never stops the rest.
"""

from __future__ import annotations

import logging
import time

from agent.tws import ticks
from agent.errors import ClientIdInUse, IBDisconnected, IBError, ReadOnlyAPI
from agent.tws.wrapper import Session, from_ib_details, option_params_row, position_row

log = logging.getLogger("agent.tws")

# registry keys for the requests TWS answers without a reqId (never valid reqIds: those start at 1)
CURRENT_TIME_KEY = -101
POSITIONS_KEY = -102


class TwsCallbacks:
    """Handlers ``_on_<ibapi callback name>``; state lives in ``TwsBridge``."""

    # ------------------------------------------------------------------ the one landing place on the loop
    def _deliver(self, session: Session, name: str, args: tuple) -> None:
        try:
            if name == "_handshake":
                if not session.handshake.done():
                    session.handshake.set_result(args[0])
                return
            if name in ("_ended", "connectionClosed"):
                self._on_lost(session, "TWS closed the connection" if name == "connectionClosed" else "thread ended")
                if name == "_ended" and not session.ended.done():
                    session.ended.set_result(None)
                return
            if session is not self._session or session.lost:
                return          # a late message from a connection we already gave up on
            handler = getattr(self, "_on_" + name, None)
            if handler is not None:
                handler(session, *args)
        except Exception:       # noqa: BLE001 - one bad callback must not stop the others
            log.exception("handling %s from TWS failed", name)

    # connection-level callbacks
    def _on_managedAccounts(self, session: Session, accounts_list: str) -> None:
        session.accounts = [a.strip() for a in (accounts_list or "").split(",") if a.strip()]
        if not session.accounts_fut.done():
            session.accounts_fut.set_result(session.accounts)

    def _on_nextValidId(self, session: Session, order_id: int) -> None:
        session.next_order_id = int(order_id)
        if not session.next_id_fut.done():
            session.next_id_fut.set_result(order_id)

    def _on_error(self, session: Session, req_id: int, code: int, message: str) -> None:
        code, req_id = int(code), int(req_id)
        self.errors_seen[code] = self.errors_seen.get(code, 0) + 1
        if code in ticks.INFO_CODES:
            log.info("TWS %d: %s", code, message)
            if code in ticks.FARM_OK or code in ticks.FARM_INACTIVE:
                self.farm_status[ticks.farm_name(message)] = True
            if code in ticks.FARM_OK and self.connected and not self.data_available:
                # After a 2110 (TWS ⇄ server link broken) a farm reporting OK again means data flows again.
                self.data_available = True
                self.status_message = self._connected_message()
            return
        if code in ticks.FARM_DOWN:
            log.warning("TWS %d: %s", code, message)
            self.farm_status[ticks.farm_name(message)] = False
            return
        if code == ticks.CONNECTIVITY_LOST or code == ticks.SERVER_LINK_BROKEN:
            log.warning("TWS %d: %s — market data unavailable until TWS reconnects to IB", code, message)
            self.data_available = False
            self.status_message = "TWS lost its connection to IB's servers (nightly reset?): waiting for it to return"
            return
        if code in (ticks.RESTORED_DATA_LOST, ticks.RESTORED_DATA_KEPT):
            log.warning("TWS %d: %s", code, message)
            self.data_available = True
            self.status_message = self._connected_message()
            if code == ticks.RESTORED_DATA_LOST:
                # 1101: TWS dropped every subscription: ask for each open line again.
                self._spawn(self._resubscribe(session), "tws-resubscribe")
            self._emit("tws_reconnected", {"ts": time.time()})
            return
        if code == ticks.CLIENT_ID_IN_USE:
            session.client_id_in_use = True
            log.debug("TWS %d: %s", code, message)     # the connect loop says it in words, once per clientId
            for fut in (session.accounts_fut, session.next_id_fut):
                if not fut.done():
                    fut.set_exception(ClientIdInUse(f"clientId {session.client_id} is already in use (TWS error 326)"))
            return
        if code == ticks.READ_ONLY and "read-only" in (message or "").lower():
            self.read_only_session = True
        if code == ticks.PACING_VIOLATION:
            log.error("TWS %d (pacing violation): %s — the pacer should have prevented this", code, message)
            if req_id < 0:
                return
        if code in (502, 504) and not session.established:
            # ibapi's own "couldn't connect" / "not connected" during an attempt: the supervisor says it once.
            log.debug("TWS %d during connect: %s", code, message)
            return
        pend = self._requests.get(req_id)
        if pend is not None and ticks.is_warning(code):
            log.info("TWS warning %d for reqId %d: %s", code, req_id, message)
            return
        if pend is not None:
            if not pend.future.done():
                err = (ReadOnlyAPI(req_id, message) if code == ticks.READ_ONLY and self.read_only_session
                       else IBError(code, req_id, message))
                pend.future.set_exception(err)
            return
        line = self._lines.get(req_id)
        if line is not None:
            if ticks.apply_error(line.quote, code, message):
                log.info("market data %s: TWS %d %s", line.contract.describe(), code, message)
            line._notify()
            return
        if code == ticks.CANCELLED_UNKNOWN_ID or code in ticks.MARKET_DATA_ADVISORY:
            log.debug("TWS %d for reqId %d: %s", code, req_id, message)       # a line already closed
            return
        if req_id > 0 or (req_id < -1 and self.client_id == 0):
            # Not a request or a line of ours: an order id (ours, or a bound manual order's negative id).
            if self._order_error(req_id, code, message):
                return
        log.warning("TWS %d (reqId %d): %s", code, req_id, message)

    # market data callbacks
    def _on_tickPrice(self, session: Session, req_id: int, tick: int, price: float) -> None:
        line = self._lines.get(req_id)
        if line is not None:
            ticks.apply_price(line.quote, int(tick), price)
            line._notify()

    def _on_tickSize(self, session: Session, req_id: int, tick: int, size) -> None:
        line = self._lines.get(req_id)
        if line is not None:
            ticks.apply_size(line.quote, int(tick), size, line.contract.right)
            line._notify()

    def _on_tickGeneric(self, session: Session, req_id: int, tick: int, value: float) -> None:
        line = self._lines.get(req_id)
        if line is not None:
            ticks.apply_generic(line.quote, int(tick), value)
            line._notify()

    def _on_tickOptionComputation(self, session: Session, req_id: int, tick: int, args: tuple) -> None:
        line = self._lines.get(req_id)
        if line is None:
            return
        # v157 layout: tickAttrib, iv, delta, optPrice, pvDividend, gamma, vega, theta, undPrice
        vals = list(args)
        if len(vals) == 9:
            vals = vals[1:]
        iv, delta, opt_price, _pv_div, gamma, vega, theta, und = (vals + [None] * 8)[:8]
        ticks.apply_option_computation(line.quote, int(tick), iv, delta, opt_price, gamma, vega, theta, und)
        line._notify()

    def _on_marketDataType(self, session: Session, req_id: int, data_type: int) -> None:
        line = self._lines.get(req_id)
        if line is not None:
            ticks.apply_market_data_type(line.quote, int(data_type))
            line._notify()

    def _on_tickSnapshotEnd(self, session: Session, req_id: int) -> None:
        line = self._lines.get(req_id)
        if line is not None:
            line.snapshot_done = True
            line._notify()

    # reference-data callbacks
    def _on_contractDetails(self, session: Session, req_id: int, details) -> None:
        pend = self._requests.get(req_id)
        if pend is not None:
            pend.items.append(from_ib_details(details))

    def _on_contractDetailsEnd(self, session: Session, req_id: int) -> None:
        self._finish(req_id)

    def _on_securityDefinitionOptionParameter(self, session: Session, req_id: int, *row) -> None:
        pend = self._requests.get(req_id)
        if pend is not None:
            pend.items.append(option_params_row(*row))

    def _on_securityDefinitionOptionParameterEnd(self, session: Session, req_id: int) -> None:
        self._finish(req_id)

    def _on_currentTime(self, session: Session, t: int) -> None:
        pend = self._requests.get(CURRENT_TIME_KEY)
        if pend is not None and not pend.future.done():
            pend.future.set_result(int(t))

    def _on_position(self, session: Session, account, contract, position, avg_cost) -> None:
        pend = self._requests.get(POSITIONS_KEY)
        if pend is not None:
            pend.items.append(position_row(account, contract, position, avg_cost))

    def _on_positionEnd(self, session: Session) -> None:
        self._finish(POSITIONS_KEY)

    def _finish(self, key: int) -> None:
        pend = self._requests.get(key)
        if pend is not None and not pend.future.done():
            pend.future.set_result(list(pend.items))

    # ------------------------------------------------------------------ loss
    def _on_lost(self, session: Session, reason: str) -> None:
        if session.lost:
            return
        session.lost = True
        if not session.lost_fut.done():
            session.lost_fut.set_result(reason)
        for fut in (session.handshake, session.accounts_fut, session.next_id_fut):
            if not fut.done():
                exc = (ClientIdInUse(f"clientId {session.client_id} is already in use (TWS error 326)")
                       if session.client_id_in_use else IBDisconnected(f"TWS closed the connection ({reason})"))
                if fut is session.handshake:
                    fut.set_result(False)
                else:
                    fut.set_exception(exc)
        try:
            session.disconnect()
        except Exception:       # noqa: BLE001
            log.debug("disconnect after loss failed", exc_info=True)
        if session is not self._session:
            return
        was_connected = self.connected
        self.connected = False
        self.data_available = False
        self.farm_status = {}
        if self._connected_evt is not None:
            self._connected_evt.clear()
        self._fail_all(IBDisconnected, f"Connection to TWS lost ({reason})")
        if was_connected:
            if self._closing:
                log.info("Disconnected from TWS on port %s", session.port)
            else:
                log.warning("Lost the connection to TWS on port %s (%s)", session.port, reason)
                self.status_message = f"Lost the connection to TWS on port {session.port}"
                self._down_since = time.monotonic()      # for "Connected ... after N s" on recovery
                if self._supervised:
                    # Say so now, with the message: agent_state is pushed on tws_lost, before the supervisor
                    # wakes up to set it.
                    self.reconnecting = True
                    self.status_message += "; reconnecting"
            self._emit("tws_lost", {})
        if session.established and self._kick_evt is not None:
            self._kick_evt.set()        # wake the supervisor

    def _fail_all(self, exc_type, message: str) -> None:
        """Fail every pending request at once and free every open line (TWS dropped them with the socket)."""
        for pend in list(self._requests.values()):
            if not pend.future.done():
                pend.future.set_exception(exc_type(message))
        lines = list(self._lines.values())
        self._lines.clear()
        for line in lines:
            line.closed = True
            if line.quote.error_code is None:
                line.quote.error_code = 504      # IB's "Not connected"
                line.quote.error = message
            line._notify()
        if lines:
            self.pacer.release_lines(len(lines))
