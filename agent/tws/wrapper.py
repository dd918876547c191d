"""The ibapi side of the bridge: the client subclass run in its own thread, and the wrapper whose callbacks
cross into asyncio.

Threading rule: ibapi calls the wrapper from its session thread. Every callback does exactly one thing,
``Session.post(name, *args)``, and ``post`` is the ONE place that crosses into asyncio
(``loop.call_soon_threadsafe``). The callbacks themselves are guarded, and so is the message loop, so one bad
message or callback never kills the thread. Conversion of ibapi objects into ``agent.types`` happens here in
pure functions (called on the loop by the bridge).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import threading
from typing import Callable

from ibapi import comm
from ibapi.client import EClient
from ibapi.common import MAX_MSG_LEN
from ibapi.contract import Contract as IBContract
from ibapi.order import Order as IBOrder
from ibapi.wrapper import EWrapper

from agent.types import (AccountPosition, Contract, ContractInfo, ExecutionInfo, OptionParams, OrderInfo,
                         OrderStatusInfo, OrderTicket)

log = logging.getLogger("agent.tws")


# --- conversions (pure) ---------------------------------------------------------------------------

def to_ib_contract(c: Contract) -> IBContract:
    ib = IBContract()
    ib.symbol = c.symbol
    ib.secType = c.sec_type
    ib.exchange = c.exchange
    ib.currency = c.currency
    ib.lastTradeDateOrContractMonth = c.expiry
    ib.strike = float(c.strike or 0.0)
    ib.right = c.right
    ib.multiplier = c.multiplier
    ib.conId = int(c.con_id or 0)
    ib.primaryExchange = c.primary_exchange
    ib.tradingClass = c.trading_class
    ib.localSymbol = c.local_symbol
    return ib


def new_ib_order() -> IBOrder:
    """An ibapi Order that current TWS accepts. ibapi 9.81 defaults ``eTradeOnly`` and ``firmQuoteOnly`` to True;
    TWS 10.x rejects an order carrying either with error 10268 / 10269 ("attribute is not supported")."""
    o = IBOrder()
    o.eTradeOnly = False
    o.firmQuoteOnly = False
    return o


def _right(r: str) -> str:
    r = (r or "").upper()
    return {"CALL": "C", "PUT": "P"}.get(r, r)


def from_ib_contract(ib) -> Contract:
    return Contract(symbol=ib.symbol or "", sec_type=ib.secType or "", exchange=ib.exchange or "",
                    currency=ib.currency or "", expiry=ib.lastTradeDateOrContractMonth or "",
                    strike=float(ib.strike or 0.0), right=_right(ib.right), multiplier=ib.multiplier or "",
                    con_id=int(ib.conId or 0), primary_exchange=ib.primaryExchange or "",
                    trading_class=ib.tradingClass or "", local_symbol=ib.localSymbol or "")


def from_ib_details(cd) -> ContractInfo:
    return ContractInfo(contract=from_ib_contract(cd.contract), long_name=cd.longName or "",
                        min_tick=float(cd.minTick or 0.0), under_con_id=int(cd.underConId or 0),
                        valid_exchanges=cd.validExchanges or "", order_types=cd.orderTypes or "",
                        time_zone=cd.timeZoneId or "")


def option_params_row(exchange, underlying_con_id, trading_class, multiplier, expirations, strikes) -> OptionParams:
    return OptionParams(exchange=exchange, underlying_con_id=int(underlying_con_id), trading_class=trading_class,
                        multiplier=str(multiplier), expirations=tuple(sorted(expirations)),
                        strikes=tuple(sorted(float(s) for s in strikes)))


def _num(v) -> float | None:
    """IB's unset double (1.797e308), an empty string or junk: None; else the float."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if x != x or abs(x) >= 1e300 else x


def to_ib_order(t: OrderTicket) -> IBOrder:
    """An ibapi Order from a validated ticket (only the fields the ticket's order type uses are set)."""
    o = new_ib_order()
    o.action, o.totalQuantity, o.orderType, o.tif = t.action, t.quantity, t.order_type, t.tif
    for attr, v in (("lmtPrice", t.lmt_price), ("auxPrice", t.aux_price), ("trailStopPrice", t.trail_stop_price),
                    ("trailingPercent", t.trailing_percent), ("lmtPriceOffset", t.lmt_price_offset)):
        if v is not None:
            setattr(o, attr, float(v))
    o.outsideRth, o.account, o.orderRef, o.whatIf = t.outside_rth, t.account, t.order_ref, t.what_if
    o.openClose = t.open_close
    o.transmit = True
    return o


MARGIN_FIELDS = ("initMarginBefore", "maintMarginBefore", "equityWithLoanBefore", "initMarginChange",
                 "maintMarginChange", "equityWithLoanChange", "initMarginAfter", "maintMarginAfter",
                 "equityWithLoanAfter")


def order_info(order_id, contract, order, state, completed: bool = False) -> OrderInfo:
    """openOrder (5) / completedOrder (101) as an ``OrderInfo``."""
    ticket = OrderTicket(action=order.action or "", quantity=float(order.totalQuantity or 0),
                         order_type=order.orderType or "", lmt_price=_num(order.lmtPrice),
                         aux_price=_num(order.auxPrice), trail_stop_price=_num(order.trailStopPrice),
                         trailing_percent=_num(order.trailingPercent), lmt_price_offset=_num(order.lmtPriceOffset),
                         tif=order.tif or "", outside_rth=bool(order.outsideRth), account=order.account or "",
                         order_ref=order.orderRef or "", what_if=bool(order.whatIf), open_close=order.openClose or "")
    margin = None
    if order.whatIf:
        margin = {f: _num(getattr(state, f, None)) for f in MARGIN_FIELDS}
        margin.update(commission=_num(state.commission), minCommission=_num(state.minCommission),
                      maxCommission=_num(state.maxCommission), commissionCurrency=state.commissionCurrency or "")
    filled = _num(getattr(order, "filledQuantity", None)) if completed else None
    return OrderInfo(order_id=int(order_id or 0), client_id=int(order.clientId or 0), perm_id=int(order.permId or 0),
                     contract=from_ib_contract(contract), ticket=ticket, status=state.status or "",
                     warning_text=state.warningText or "", commission=_num(state.commission), completed=completed,
                     completed_time=getattr(state, "completedTime", "") or "",
                     completed_status=getattr(state, "completedStatus", "") or "", filled=filled, margin=margin)


def order_status_info(order_id, status, filled, remaining, avg_fill_price, perm_id, parent_id, last_fill_price,
                      client_id, why_held, *_rest) -> OrderStatusInfo:
    return OrderStatusInfo(order_id=int(order_id), status=status or "", filled=float(filled or 0),
                           remaining=float(remaining or 0), avg_fill_price=float(avg_fill_price or 0),
                           perm_id=int(perm_id or 0), client_id=int(client_id or 0),
                           last_fill_price=float(last_fill_price or 0), why_held=why_held or "")


def execution_info(contract, ex) -> ExecutionInfo:
    return ExecutionInfo(exec_id=ex.execId or "", order_id=int(ex.orderId or 0), client_id=int(ex.clientId or 0),
                         perm_id=int(ex.permId or 0), contract=from_ib_contract(contract), side=ex.side or "",
                         shares=float(ex.shares or 0), price=float(ex.price or 0), cum_qty=float(ex.cumQty or 0),
                         avg_price=float(ex.avgPrice or 0), order_ref=ex.orderRef or "", account=ex.acctNumber or "",
                         time=ex.time or "")


def position_row(account, contract, position, avg_cost) -> AccountPosition:
    return AccountPosition(account=account, contract=from_ib_contract(contract), position=float(position),
                           avg_cost=float(avg_cost))


# --- the session thread ---------------------------------------------------------------------------

class GuardedClient(EClient):
    """EClient whose message loop survives a message it cannot decode (ibapi's own loop dies on it)."""

    def connected_now(self) -> bool:
        conn = self.conn            # read once: another thread may reset it to None
        return conn is not None and conn.isConnected() and self.connState == EClient.CONNECTED

    def run(self) -> None:
        while self.connected_now() or not self.msg_queue.empty():
            try:
                try:
                    text = self.msg_queue.get(block=True, timeout=0.1)   # bounds how long a closed session lingers
                except queue.Empty:
                    continue
                if len(text) > MAX_MSG_LEN:
                    log.error("TWS sent a message of %d bytes (over ibapi's limit): dropping the connection", len(text))
                    break
                self.decoder.interpret(comm.read_fields(text))
            except Exception:   # noqa: BLE001 - one bad message must not end the session
                log.exception("ignored a message from TWS that could not be decoded")

    def set_nodelay(self) -> None:
        """Send each small request at once. ibapi leaves Nagle's algorithm on, which holds a message back until
        the previous one is acknowledged (tens of ms per answer under load, measured against the simulator)."""
        sock = getattr(self.conn, "socket", None) if self.conn is not None else None
        if sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            log.debug("could not set TCP_NODELAY on the TWS socket", exc_info=True)

    def kill_socket(self) -> None:
        """Unblock a recv() in another thread at once (shutdown wakes it; close alone may not)."""
        conn = self.conn
        sock = getattr(conn, "socket", None) if conn is not None else None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Session:
    """One connection attempt: its client, wrapper and thread, and the crossing into the loop."""

    _ids = 0

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[["Session", str, tuple], None],
                 host: str, port: int, client_id: int):
        Session._ids += 1
        self.id = Session._ids
        self.loop = loop
        self._deliver = deliver
        self.host, self.port, self.client_id = host, port, client_id
        self.wrapper = Wrapper(self)
        self.client = GuardedClient(self.wrapper)
        self.thread: threading.Thread | None = None
        # loop-side state (touched only on the loop)
        self.handshake: asyncio.Future = loop.create_future()
        self.accounts_fut: asyncio.Future = loop.create_future()
        self.next_id_fut: asyncio.Future = loop.create_future()
        self.ended: asyncio.Future = loop.create_future()
        self.lost_fut: asyncio.Future = loop.create_future()   # resolved when the bridge gives the session up
        self.accounts: list[str] = []
        self.next_order_id: int | None = None
        self.established = False       # handshake, 15 and 9 all done
        self.lost = False
        self.client_id_in_use = False

    def post(self, name: str, *args) -> None:
        """THE crossing from ibapi's thread into asyncio: queue the callback on the loop, never raise."""
        try:
            self.loop.call_soon_threadsafe(self._deliver, self, name, args)
        except RuntimeError:          # the loop is closed: the agent is shutting down
            pass
        except Exception:             # noqa: BLE001
            log.exception("could not hand %s to the event loop", name)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._thread_main, name=f"ib-session-{self.id}-{self.port}",
                                       daemon=True)
        self.thread.start()

    def _thread_main(self) -> None:
        ok = False
        try:
            # ibapi's connect blocks until the server version arrives (no timeout of its own: the loop side
            # times it out and shuts the socket, which makes connect return).
            self.client.connect(self.host, self.port, self.client_id)
            ok = self.client.connected_now()
            if ok:
                self.client.set_nodelay()
        except Exception as e:    # noqa: BLE001
            log.debug("ibapi connect raised %r", e)
        self.post("_handshake", ok)
        if ok:
            try:
                self.client.run()
            except Exception:     # noqa: BLE001
                log.exception("ibapi message loop ended with an error")
        self.post("_ended")

    def disconnect(self) -> None:
        """Close the socket from the loop thread; the session thread then ends by itself."""
        self.client.kill_socket()
        try:
            self.client.disconnect()
        except Exception:         # noqa: BLE001
            log.debug("ibapi disconnect raised", exc_info=True)


class Wrapper(EWrapper):
    """Every callback the bridge uses, each forwarded to the loop through ``Session.post`` and nothing else."""

    def __init__(self, session: Session):
        super().__init__()
        self._s = session

    def _p(self, name: str, *args) -> None:
        try:
            self._s.post(name, *args)
        except Exception:         # noqa: BLE001 - never let a callback kill ibapi's thread
            log.exception("callback %s failed", name)

    # connection
    def error(self, reqId, errorCode, errorString, *rest):
        self._p("error", reqId, errorCode, errorString)

    def connectionClosed(self):
        self._p("connectionClosed")

    def managedAccounts(self, accountsList):
        self._p("managedAccounts", accountsList)

    def nextValidId(self, orderId):
        self._p("nextValidId", orderId)

    def currentTime(self, time):
        self._p("currentTime", time)

    # market data
    def tickPrice(self, reqId, tickType, price, attrib):
        self._p("tickPrice", reqId, tickType, price)

    def tickSize(self, reqId, tickType, size):
        self._p("tickSize", reqId, tickType, size)

    def tickGeneric(self, reqId, tickType, value):
        self._p("tickGeneric", reqId, tickType, value)

    def tickString(self, reqId, tickType, value):
        pass    # RT volume / timestamps: not used

    def tickOptionComputation(self, reqId, tickType, *args):
        # 9.81 at v157: (tickAttrib, impliedVol, delta, optPrice, pvDividend, gamma, vega, theta, undPrice)
        self._p("tickOptionComputation", reqId, tickType, args)

    def tickSnapshotEnd(self, reqId):
        self._p("tickSnapshotEnd", reqId)

    def marketDataType(self, reqId, marketDataType):
        self._p("marketDataType", reqId, marketDataType)

    def tickReqParams(self, tickerId, minTick, bboExchange, snapshotPermissions):
        pass

    # reference data
    def contractDetails(self, reqId, contractDetails):
        self._p("contractDetails", reqId, contractDetails)

    def contractDetailsEnd(self, reqId):
        self._p("contractDetailsEnd", reqId)

    def securityDefinitionOptionParameter(self, reqId, exchange, underlyingConId, tradingClass, multiplier,
                                          expirations, strikes):
        self._p("securityDefinitionOptionParameter", reqId, exchange, underlyingConId, tradingClass, multiplier,
                set(expirations), set(strikes))

    def securityDefinitionOptionParameterEnd(self, reqId):
        self._p("securityDefinitionOptionParameterEnd", reqId)

    # account
    def position(self, account, contract, position, avgCost):
        self._p("position", account, contract, position, avgCost)

    def positionEnd(self):
        self._p("positionEnd")

    # orders
    def orderStatus(self, orderId, status, filled, remaining, avgFillPrice, permId, parentId, lastFillPrice,
                    clientId, whyHeld, mktCapPrice=None):
        self._p("orderStatus", orderId, status, filled, remaining, avgFillPrice, permId, parentId, lastFillPrice,
                clientId, whyHeld)

    def openOrder(self, orderId, contract, order, orderState):
        self._p("openOrder", orderId, contract, order, orderState)

    def openOrderEnd(self):
        self._p("openOrderEnd")

    def completedOrder(self, contract, order, orderState):
        self._p("completedOrder", contract, order, orderState)

    def completedOrdersEnd(self):
        self._p("completedOrdersEnd")

    def execDetails(self, reqId, contract, execution):
        self._p("execDetails", reqId, contract, execution)

    def execDetailsEnd(self, reqId):
        self._p("execDetailsEnd", reqId)
