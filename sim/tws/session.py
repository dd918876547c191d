"""One API client connection to the simulated TWS: handshake, pacing, dispatch, reference data.

Everything runs on the simulator's event loop. A handler that fails logs and answers with an error
message (320, as TWS does for a request it cannot read); it never ends the session. The request
handlers live in mixins by concern: market data (marketdata.py), account (account.py), orders
(trading.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING

from . import messages as M
from . import requests as R
from .account import AccountHandlers
from .contracts import resolve
from .limits import RateWindow
from .marketdata import Line, MarketDataHandlers
from .trading import OrderHandlers
from .wire import FrameBuffer, Fields, WireError, encode, frame, parse_version_range, split_fields

if TYPE_CHECKING:  # pragma: no cover
    from .server import TwsSimulator

log = logging.getLogger("sim.tws")

SERVER_VERSION = M.SERVER_VERSION
MIN_CLIENT_VERSION = 100

MAX_WRITE_BUFFER = 16 * 1024 * 1024


class Session(MarketDataHandlers, AccountHandlers, OrderHandlers):
    """One client connection (startApi'd or not yet)."""

    def __init__(self, sim: "TwsSimulator", reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 conn_no: int) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.conn_no = conn_no
        self.client_id: int | None = None
        self.started = False
        self.server_version = 0
        self.lines: dict[int, Line] = {}
        self.md_type = 1
        self.rate = RateWindow(sim.config.max_rate)
        self.violations = 0
        self._episode_until = -1.0
        self.positions_sub = False
        self.account_sub: str | None = None
        self.summary_subs: dict[int, tuple[str, ...]] = {}
        self.auto_bind = False
        self.pace_api = False
        self.closed = False
        self._tasks: set[asyncio.Task] = set()
        self._buf = FrameBuffer()
        self.task: asyncio.Task | None = None      # the connection's task (set by the server)

    # ---- output ---------------------------------------------------------------------------------

    def send(self, fields: list) -> None:
        if self.closed or self.writer.is_closing():
            return
        if fields and fields[0] == M.ERR_MSG:
            self.sim._record_error(self.client_id, fields[2], fields[3], fields[4])
        self.writer.write(encode(fields))
        transport = self.writer.transport
        if transport is not None and transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("client %s does not read its socket: dropping it", self.client_id)
            self.abort()

    def error(self, req_id: int, code: int, message: str) -> None:
        self.send(M.error(req_id, code, message))

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def abort(self) -> None:
        """Drop the connection now (as a crashing TWS does)."""
        if self.closed:
            return
        self.closed = True
        for line in list(self.lines.values()):
            self._drop_line(line)
        transport = self.writer.transport
        if transport is not None:
            transport.abort()

    # ---- connection -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._handshake()
            if not self.started:
                return
            while not self.closed:
                data = await self.reader.read(65536)
                if not data:
                    break
                for body in self._buf.feed(data):
                    if self.closed:
                        break
                    await self._on_message(split_fields(body))
        except (ConnectionError, asyncio.IncompleteReadError, WireError, asyncio.TimeoutError) as exc:
            log.info("client %s connection ended: %r", self.client_id, exc)
        finally:
            self.closed = True
            for line in list(self.lines.values()):
                self._drop_line(line)
            for t in list(self._tasks):
                t.cancel()
            self.sim._unregister(self)
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - the socket may already be gone
                pass

    async def _handshake(self) -> None:
        timeout = self.sim.config.handshake_timeout
        prefix = await asyncio.wait_for(self.reader.readexactly(4), timeout)
        if prefix != b"API\0":
            log.warning("connection %d: not an IB API client (prefix %r)", self.conn_no, prefix)
            return
        size = int.from_bytes(await asyncio.wait_for(self.reader.readexactly(4), timeout), "big")
        text = (await asyncio.wait_for(self.reader.readexactly(size), timeout)).decode("ascii", "replace")
        if self.sim.silent_handshake:
            # fault: accept TCP, never answer (ibapi's connect() has no timeout of its own)
            while await self.reader.read(4096):
                pass
            return
        lo, hi = parse_version_range(text)
        # "+PACEAPI" in the connect options asks TWS to pace this client's messages instead of error 100
        self.pace_api = "+PACEAPI" in text.upper()
        version = min(hi, SERVER_VERSION)
        if version < lo or version < MIN_CLIENT_VERSION:
            log.warning("connection %d: client versions %s share none with ours (%d)", self.conn_no, text,
                        SERVER_VERSION)
            return
        if version < SERVER_VERSION:
            # message layouts are implemented for v157 only: an older client would misread them
            log.warning("connection %d: client offers at most v%d; the simulator speaks v%d only",
                        self.conn_no, hi, SERVER_VERSION)
            return
        self.server_version = version
        conn_time = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d %H:%M:%S UTC")
        # the version message goes alone: ibapi 9.81 keeps only the first message of its first read
        self.writer.write(frame(f"{version}\0{conn_time}\0"))
        await self.writer.drain()
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return
            bodies = self._buf.feed(data)
            for i, body in enumerate(bodies):
                fields = split_fields(body)
                if not fields or fields[0] != str(R.START_API):
                    log.info("connection %d: message %s before startApi ignored", self.conn_no, fields[:1])
                    continue
                f = Fields(fields, 2)
                self.client_id = f.int()          # set first so a 326 is recorded against it
                if not self.sim._register(self, self.client_id):
                    return
                self.started = True
                self.sim._count_message(self)
                self._greet()
                for rest in bodies[i + 1:]:       # requests sent right behind startApi
                    await self._on_message(split_fields(rest))
                return

    def _greet(self) -> None:
        self.send(M.managed_accounts(self.sim.accounts))
        self.send(M.next_valid_id(self.sim.next_order_id(self.client_id)))
        for name, up in self.sim.farms.items():
            self.error(-1, *self.sim.farm_message(name, up))

    # ---- dispatch -------------------------------------------------------------------------------

    async def _on_message(self, fields: list[str]) -> None:
        if not fields:
            return
        if not await self._pace():
            return
        await self.sim._wait_unstalled()
        if self.closed:
            return
        try:
            msg_id = int(fields[0])
        except ValueError:
            log.warning("client %s sent a message without a numeric id: %r", self.client_id, fields[:3])
            return
        handler = HANDLERS.get(msg_id)
        if handler is None:
            name = R.NAMES.get(msg_id, f"message {msg_id}")
            log.warning("client %s: %s is not implemented by the simulator; ignored", self.client_id, name)
            self.sim.unhandled[msg_id] = self.sim.unhandled.get(msg_id, 0) + 1
            return
        try:
            result = handler(self, fields)
            if asyncio.iscoroutine(result):
                await result
        except WireError as exc:
            log.warning("client %s: cannot read %s: %s", self.client_id, R.NAMES.get(msg_id, msg_id), exc)
            self.error(-1, 320, f"Error reading request.Message id {msg_id}. {exc}")
        except Exception:  # noqa: BLE001 - a bad request must never end the session
            log.exception("client %s: handler for message %s failed", self.client_id, msg_id)
            self.error(-1, 320, f"Error reading request.Message id {msg_id}.")

    async def _pace(self) -> bool:
        """IB's limit: at most max_rate messages in any 1-second window (error 100, or delay)."""
        loop = asyncio.get_running_loop()
        cfg = self.sim.config
        now = loop.time()
        if self.rate.has_room(now):
            self.sim._count_message(self, self.rate.record(now))
            return True
        if cfg.pacing == "delay" or self.pace_api:
            while not self.rate.has_room(loop.time()):
                await asyncio.sleep(self.rate.wait_time(loop.time()))
            self.sim._count_message(self, self.rate.record(loop.time()))
            return True
        received = self.rate.count(now) + 1
        self.sim._count_message(self, received, accepted=False)
        if now >= self._episode_until:
            self.violations += 1
            self._episode_until = now + self.rate.window
            self.sim._record_violation(self.client_id, 100)
            self.error(-1, 100, f"Max rate of messages per second has been exceeded:max={cfg.max_rate} "
                                f"rec={received} ({self.violations})")
            if self.violations >= cfg.max_violations:
                log.warning("client %s: %d pacing violations: disconnecting it", self.client_id,
                            self.violations)
                self.abort()
        return False

    def start_api_again(self, fields: list[str]) -> None:
        log.info("client %s sent startApi twice; ignored", self.client_id)

    # ---- reference data -------------------------------------------------------------------------

    def req_contract_details(self, fields: list[str]) -> None:
        rid, c = R.parse_contract_details(fields)
        found = resolve(self.sim.market, c)
        self._answer_later(self.sim.latency.answer(len(found)), self._send_contract_details, rid, found)

    def _send_contract_details(self, rid: int, found: list) -> None:
        if not found:
            self.error(rid, 200, "No security definition has been found for the request")
            return
        market = self.sim.market
        for ins in found:
            u = market.underlyings[ins.symbol]
            if ins.is_option:
                self.send(M.contract_data(rid, ins, long_name=u.long_name, min_tick=0.01, under_con_id=u.con_id,
                                          primary_exchange="", valid_exchanges=",".join(
                                              ("SMART", "AMEX", "BATS", "BOX", "CBOE", "EDGX", "ISE", "MIAX",
                                               "NASDAQOM", "PHLX")),
                                          order_types="ACTIVETIM,AD,ADJUST,ALERT,ALLOC,AVGCOST,BASKET,DAY,"
                                                      "GTC,LMT,MKT,NONALGO,OPG,STP,STPLMT,TRAIL",
                                          real_expiration=ins.expiry))
            else:
                self.send(M.contract_data(rid, ins, long_name=u.long_name, min_tick=0.01, under_con_id=0,
                                          primary_exchange=u.primary_exchange,
                                          industry="Financial" if u.stock_type == "ETF" else "Technology",
                                          category="", stock_type=u.stock_type,
                                          valid_exchanges="SMART,AMEX,NYSE,ARCA,BATS,IEX,ISLAND,EDGX",
                                          order_types="ACTIVETIM,AD,ADJUST,ALERT,ALLOC,DAY,GTC,LMT,MKT,MOC,"
                                                      "STP,STPLMT,TRAIL"))
        self.send(M.contract_data_end(rid))

    def req_sec_def_opt_params(self, fields: list[str]) -> None:
        f = Fields(fields, 1)
        rid = f.int()
        symbol, fut_fop_exchange, sec_type = f.str().upper(), f.str().upper(), f.str().upper()
        con_id = f.int()
        u = self.sim.market.underlyings.get(symbol)
        if u is None or sec_type not in ("STK", "") or (con_id and con_id != u.con_id):
            self.error(rid, 200, "No security definition has been found for the request")
            return
        self._answer_later(self.sim.latency.answer(), self._send_sec_def_opt_params, rid, u, symbol,
                           fut_fop_exchange)

    def _answer_later(self, delay: float, send, *args) -> None:
        """Answer after ``delay`` without holding up this client's other messages.

        TWS keeps reading a client's socket while it looks reference data up. Sleeping in the read loop instead
        would let the client's next messages pile up in the socket and then count them all at once, a burst
        the client never sent (error 100 for a client that kept to 45/s).
        """
        if not delay:
            send(*args)
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            if self.closed:
                return
            try:
                send(*args)
            except Exception:  # noqa: BLE001 - a bad answer must never end the session
                log.exception("client %s: delayed answer %s failed", self.client_id, send.__name__)

        self.spawn(later())

    def _send_sec_def_opt_params(self, rid: int, u, symbol: str, fut_fop_exchange: str) -> None:
        for exchange, tclass, mult, exps, strikes in self.sim.market.option_params(symbol):
            if fut_fop_exchange and fut_fop_exchange != exchange:
                continue
            self.send(M.secdef_opt_params(rid, exchange, u.con_id, tclass, mult, exps, strikes))
        self.send(M.secdef_opt_params_end(rid))

    # ---- simple requests ------------------------------------------------------------------------

    def req_current_time(self, fields: list[str]) -> None:
        self.send(M.current_time(int(time.time())))

    def req_ids(self, fields: list[str]) -> None:
        self.send(M.next_valid_id(self.sim.next_order_id(self.client_id)))

    def req_managed_accts(self, fields: list[str]) -> None:
        self.send(M.managed_accounts(self.sim.accounts))

HANDLERS = {
    R.REQ_MKT_DATA: Session.req_mkt_data,
    R.CANCEL_MKT_DATA: Session.cancel_mkt_data,
    R.PLACE_ORDER: Session.place_order,
    R.CANCEL_ORDER: Session.cancel_order,
    R.REQ_OPEN_ORDERS: Session.req_open_orders,
    R.REQ_ACCT_DATA: Session.req_account_updates,
    R.REQ_EXECUTIONS: Session.req_executions,
    R.REQ_IDS: Session.req_ids,
    R.REQ_CONTRACT_DATA: Session.req_contract_details,
    R.REQ_AUTO_OPEN_ORDERS: Session.req_auto_open_orders,
    R.REQ_ALL_OPEN_ORDERS: Session.req_all_open_orders,
    R.REQ_MANAGED_ACCTS: Session.req_managed_accts,
    R.REQ_CURRENT_TIME: Session.req_current_time,
    R.REQ_GLOBAL_CANCEL: Session.req_global_cancel,
    R.REQ_MARKET_DATA_TYPE: Session.req_market_data_type,
    R.REQ_POSITIONS: Session.req_positions,
    R.REQ_ACCOUNT_SUMMARY: Session.req_account_summary,
    R.CANCEL_ACCOUNT_SUMMARY: Session.cancel_account_summary,
    R.CANCEL_POSITIONS: Session.cancel_positions,
    R.START_API: Session.start_api_again,
    R.REQ_SEC_DEF_OPT_PARAMS: Session.req_sec_def_opt_params,
    R.REQ_COMPLETED_ORDERS: Session.req_completed_orders,
    R.REQ_POSITIONS_MULTI: Session.req_positions_multi,
    R.CANCEL_POSITIONS_MULTI: Session.cancel_multi,
    R.REQ_ACCOUNT_UPDATES_MULTI: Session.req_account_updates_multi,
    R.CANCEL_ACCOUNT_UPDATES_MULTI: Session.cancel_multi,
}
