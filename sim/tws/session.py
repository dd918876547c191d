"""One API client connection to the simulated TWS: handshake, request handlers, market data streams.

Everything runs on the simulator's event loop. A handler that fails logs and answers with an error
message (320, as TWS does for a request it cannot read); it never ends the session.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import bs
from . import messages as M
from . import requests as R
from .contracts import Instrument, resolve
from .limits import RateWindow
from .market import RATE
from .orders import SimOrder
from .wire import FrameBuffer, Fields, WireError, encode, frame, parse_version_range, split_fields

if TYPE_CHECKING:  # pragma: no cover
    from .server import TwsSimulator

log = logging.getLogger("sim.tws")

SERVER_VERSION = M.SERVER_VERSION
MIN_CLIENT_VERSION = 100

# live tick id -> delayed tick id (TWS sends 66-76 and 80-83 for delayed data)
DELAYED = {1: 66, 2: 67, 4: 68, 0: 69, 3: 70, 5: 71, 6: 72, 7: 73, 8: 74, 9: 75, 14: 76,
           10: 80, 11: 81, 12: 82, 13: 83}
DELAY_STEPS_BACK = 1800          # delayed data shows the market of ~15 minutes ago (in walk steps of 0.5 s)
SUMMARY_TAGS = ("AccountType", "NetLiquidation", "TotalCashValue", "SettledCash", "AccruedCash", "BuyingPower",
                "EquityWithLoanValue", "GrossPositionValue", "InitMarginReq", "MaintMarginReq",
                "AvailableFunds", "ExcessLiquidity", "Cushion", "FullInitMarginReq", "FullMaintMarginReq",
                "FullAvailableFunds", "FullExcessLiquidity", "LookAheadInitMarginReq",
                "LookAheadMaintMarginReq", "LookAheadAvailableFunds", "LookAheadExcessLiquidity",
                "DayTradesRemaining", "Leverage")
READ_ONLY_TEXT = "The API interface is currently in Read-Only mode."
MAX_WRITE_BUFFER = 16 * 1024 * 1024


@dataclass
class Line:
    """One market data line (streaming or a snapshot still alive)."""

    req_id: int
    instrument: Instrument
    generic: tuple[int, ...]
    snapshot: bool
    delayed: bool
    task: asyncio.Task | None = None
    nonce: int = 0
    sent: dict = field(default_factory=dict)


class Session:
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

    # ---- market data ----------------------------------------------------------------------------

    def req_mkt_data(self, fields: list[str]) -> None:
        req = R.parse_mkt_data(fields)
        rid = req.req_id
        if rid in self.lines:
            self.error(rid, 102, "Duplicate ticker ID")
            return
        found = resolve(self.sim.market, req.contract)
        if len(found) != 1:
            self.error(rid, 200, "No security definition has been found for the request")
            return
        ins = found[0]
        if req.snapshot and req.generic_ticks:
            self.error(rid, 321, "Error validating request.-'bI' : cause - Snapshot market data subscription "
                                 "is not applicable to generic ticks")
            return
        if req.bad_generic:
            self.error(rid, 321, f"Error validating request.-'bI' : cause - Incorrect generic tick list of "
                                 f"{req.bad_generic}")
            return
        delayed = False
        if not ins.live_permission:
            if self.md_type in (1, 2):
                self.error(rid, 354, f"Requested market data is not subscribed.Delayed market data is "
                                     f"available.{ins.symbol} {ins.primary_exchange or 'SMART'}/TOP/ALL")
                return
            delayed = True
        if self.sim.total_lines() >= self.sim.config.max_lines:
            self.error(rid, 101, "Max number of tickers has been reached")
            return
        line = Line(rid, ins, req.generic_ticks, req.snapshot, delayed)
        self.lines[rid] = line
        self.sim._note_lines()
        if delayed:
            self.error(rid, 10167, "Requested market data is not subscribed. Displaying delayed market data.")
        self.send(M.market_data_type(rid, 3 if delayed else 1))
        self.send(M.tick_req_params(rid, 0.01, "9c0001" if ins.is_option else "a60001", 3))
        line.task = self.spawn(self._stream(line))

    def cancel_mkt_data(self, fields: list[str]) -> None:
        rid = Fields(fields, 2).int()
        line = self.lines.get(rid)
        if line is None:
            self.error(rid, 300, f"Can't find EId with tickerId:{rid}")
            return
        self._drop_line(line)

    def _drop_line(self, line: Line) -> None:
        if self.lines.get(line.req_id) is line:
            del self.lines[line.req_id]
        if line.task is not None and line.task is not asyncio.current_task():
            line.task.cancel()
        self.sim._note_lines()

    def req_market_data_type(self, fields: list[str]) -> None:
        t = Fields(fields, 2).int()
        if t in (1, 2, 3, 4):
            self.md_type = t

    def _tick(self, line: Line, tick: int) -> int:
        return DELAYED.get(tick, tick) if line.delayed else tick

    def _send_price(self, line: Line, tick: int, price: float, size: int, force: bool = False) -> None:
        key = ("p", tick)
        if not force and line.sent.get(key) == (price, size):
            return
        line.sent[key] = (price, size)
        self.send(M.tick_price(line.req_id, self._tick(line, tick), price, size, 1 if tick in (1, 2) else 0))

    def _send_size(self, line: Line, tick: int, size: int, force: bool = False) -> None:
        key = ("s", tick)
        if not force and line.sent.get(key) == size:
            return
        line.sent[key] = size
        self.send(M.tick_size(line.req_id, self._tick(line, tick), size))

    def _quote_step(self, line: Line) -> int:
        k = self.sim.market.step_index()
        return max(0, k - DELAY_STEPS_BACK) if line.delayed else k

    def _send_quote(self, line: Line, first: bool) -> None:
        market = self.sim.market
        ins = line.instrument
        step = self._quote_step(line)
        if not first and line.sent.get("step") == step:
            return              # the model only changes once per walk step: nothing new to send
        line.sent["step"] = step
        if ins.is_option:
            q = market.option_quote(ins.symbol, ins.expiry, ins.strike, ins.right, step)
            if q.quoting or first:
                self._send_price(line, 1, q.bid, q.bid_size, first)
                self._send_price(line, 2, q.ask, q.ask_size, first)
            if q.last > 0:
                self._send_price(line, 4, q.last, q.last_size, first)
            self._send_size(line, 8, q.volume, first)
            if first:
                self._send_price(line, 9, q.close, 0, True)
            self._send_generic(line, first, call=(ins.right == "C"), oi=q.open_interest, vol=q.volume,
                               iv=q.iv)
        else:
            q = market.stock_quote(ins.symbol, step)
            self._send_price(line, 1, q.bid, q.bid_size, first)
            self._send_price(line, 2, q.ask, q.ask_size, first)
            if first or line.sent.get(("p", 4)) != (q.last, q.last_size):
                self._send_price(line, 4, q.last, q.last_size, first)
                # last timestamp (tick 45, a string), as TWS sends beside each trade
                self.send(M.tick_string(line.req_id, 88 if line.delayed else 45, str(int(time.time()))))
            self._send_size(line, 8, q.volume, first)
            if first:
                self.send(M.tick_generic(line.req_id, 90 if line.delayed else 49, 0))   # halted: 0 = not halted
            self._send_price(line, 6, q.high, 0, first)
            self._send_price(line, 7, q.low, 0, first)
            if first:
                self._send_price(line, 9, q.close, 0, True)
                self._send_price(line, 14, q.open, 0, True)
            self._send_generic(line, first, stock=True, iv=q.implied_vol)

    def _send_generic(self, line: Line, first: bool, *, call: bool = True, oi: int = 0, vol: int = 0,
                      iv: float = 0.0, stock: bool = False) -> None:
        """Generic ticks: 100 → option volume (29 call / 30 put), 101 → open interest (27 call / 28 put),
        104 → historical volatility (23), 106 → implied volatility (24)."""
        ins = line.instrument
        u = self.sim.market.underlyings[ins.symbol]
        if stock:
            totals = self.sim.market.chain_totals(ins.symbol)
        if 100 in line.generic:
            if stock:
                self._send_size(line, 29, totals["call_volume"], first)
                self._send_size(line, 30, totals["put_volume"], first)
            else:
                self._send_size(line, 29 if call else 30, vol, first)
        if 101 in line.generic:
            if stock:
                self._send_size(line, 27, totals["call_oi"], first)
                self._send_size(line, 28, totals["put_oi"], first)
            else:
                self._send_size(line, 27 if call else 28, oi, first)
        if 104 in line.generic and first:
            self.send(M.tick_generic(line.req_id, 23, round(u.vol * 0.9, 6)))
        if 106 in line.generic:
            key = ("g", 24)
            val = round(iv, 6)
            if first or line.sent.get(key) != val:
                line.sent[key] = val
                self.send(M.tick_generic(line.req_id, 24, val))

    def _send_greeks(self, line: Line) -> None:
        """Option computation ticks (21): 10 bid, 11 ask, 12 last, 13 model (80-83 when delayed)."""
        ins = line.instrument
        market = self.sim.market
        step = self._quote_step(line)
        if line.sent.get("greeks_step") == step:
            return
        line.sent["greeks_step"] = step
        q = market.option_quote(ins.symbol, ins.expiry, ins.strike, ins.right, step)
        t = market.years_to(ins.expiry)
        und = round(q.und_price, 4)
        for tick, price in ((10, q.bid), (11, q.ask), (12, q.last)):
            if price <= 0:
                continue
            iv = bs.implied_vol(price, q.und_price, ins.strike, t, RATE, ins.right)
            if iv is None:
                self.send(M.tick_option_computation(line.req_id, self._tick(line, tick), None, None, price, 0.0,
                                                    None, None, None, und))
                continue
            g = bs.price_greeks(q.und_price, ins.strike, t, iv, RATE, ins.right)
            self.send(M.tick_option_computation(line.req_id, self._tick(line, tick), round(iv, 6),
                                                round(g.delta, 6), price, 0.0, round(g.gamma, 6),
                                                round(g.vega, 6), round(g.theta, 6), und))
        self.send(M.tick_option_computation(line.req_id, self._tick(line, 13), round(q.iv, 6), round(q.delta, 6),
                                            round(q.model_price, 4), 0.0, round(q.gamma, 6), round(q.vega, 6),
                                            round(q.theta, 6), und))

    async def _stream(self, line: Line) -> None:
        sim = self.sim
        lat = sim.latency
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()
            await asyncio.sleep(lat.first_quote(line.instrument.con_id, line.nonce))
            await sim._wait_feeds()
            self._send_quote(line, first=True)
            if line.instrument.is_option:
                # option computations arrive after the first quote, as in TWS
                await asyncio.sleep(lat.greeks_after(line.instrument.con_id, line.nonce))
                await sim._wait_feeds()
                self._send_greeks(line)
            if line.snapshot:
                end_at = started + lat.snapshot_end()
                await asyncio.sleep(max(end_at - loop.time(), 0.0))
                self.send(M.tick_snapshot_end(line.req_id))
                self._drop_line(line)
                return
            n = 0
            while True:
                await asyncio.sleep(lat.update_interval())
                await sim._wait_feeds()
                self._send_quote(line, first=False)
                n += 1
                if line.instrument.is_option and n % 4 == 0:
                    self._send_greeks(line)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failing stream must not take the session down
            log.exception("client %s: market data stream %d failed", self.client_id, line.req_id)

    # ---- reference data -------------------------------------------------------------------------

    async def req_contract_details(self, fields: list[str]) -> None:
        rid, c = R.parse_contract_details(fields)
        found = resolve(self.sim.market, c)
        delay = self.sim.latency.answer(len(found))
        if delay:
            await asyncio.sleep(delay)
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

    async def req_sec_def_opt_params(self, fields: list[str]) -> None:
        f = Fields(fields, 1)
        rid = f.int()
        symbol, fut_fop_exchange, sec_type = f.str().upper(), f.str().upper(), f.str().upper()
        con_id = f.int()
        u = self.sim.market.underlyings.get(symbol)
        if u is None or sec_type not in ("STK", "") or (con_id and con_id != u.con_id):
            self.error(rid, 200, "No security definition has been found for the request")
            return
        delay = self.sim.latency.answer()
        if delay:
            await asyncio.sleep(delay)
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

    # ---- account --------------------------------------------------------------------------------

    def req_positions(self, fields: list[str]) -> None:
        self.positions_sub = True
        broker = self.sim.broker
        for name, acct in broker.accounts.items():
            for pos in acct.positions.values():
                self.send(M.position(name, pos.instrument, pos.qty, round(pos.avg_cost, 4)))
        self.send(M.position_end())

    def cancel_positions(self, fields: list[str]) -> None:
        self.positions_sub = False

    def req_account_summary(self, fields: list[str]) -> None:
        f = Fields(fields, 2)
        rid = f.int()
        f.str()                                            # group ("All")
        tags = tuple(t.strip() for t in f.str().split(",") if t.strip())
        if rid not in self.summary_subs and len(self.summary_subs) >= 2:
            self.error(rid, 322, "Error processing request.-'bd' : cause - Maximum number of account summary "
                                 "requests exceeded")
            return
        self.summary_subs[rid] = tags
        self.send_account_summary(rid, tags)

    def send_account_summary(self, rid: int, tags: tuple[str, ...]) -> None:
        wanted = [t for t in tags if t in SUMMARY_TAGS]
        for name in self.sim.broker.accounts:
            vals = self.sim.broker.values(name)
            for tag in wanted:
                if tag == "AccountType":
                    self.send(M.account_summary(rid, name, tag, "INDIVIDUAL", ""))
                elif tag == "DayTradesRemaining":
                    self.send(M.account_summary(rid, name, tag, "-1", ""))
                else:
                    self.send(M.account_summary(rid, name, tag, f"{vals[tag]:.2f}", "USD"))
        self.send(M.account_summary_end(rid))

    def cancel_account_summary(self, fields: list[str]) -> None:
        self.summary_subs.pop(Fields(fields, 2).int(), None)

    def req_account_updates(self, fields: list[str]) -> None:
        f = Fields(fields, 2)
        subscribe = f.bool()
        acct = f.str() or self.sim.accounts[0]
        if not subscribe:
            self.account_sub = None
            return
        if acct not in self.sim.broker.accounts:
            self.error(-1, 321, f"Error validating request.-'bB' : cause - Invalid account code {acct}")
            return
        self.account_sub = acct
        self.send_account_update(acct, full=True)

    def send_account_update(self, acct: str, full: bool, con_id: int | None = None) -> None:
        broker = self.sim.broker
        vals = broker.values(acct)
        if full:
            self.send(M.account_value("AccountCode", acct, "", acct))
            self.send(M.account_value("AccountType", "INDIVIDUAL", "", acct))
            self.send(M.account_value("Currency", "USD", "USD", acct))
        for key, val in vals.items():
            self.send(M.account_value(key, f"{val:.2f}", "" if key == "DayTradesRemaining" else "USD", acct))
        for row in broker.portfolio(acct):
            if con_id is not None and row["instrument"].con_id != con_id:
                continue
            self.send(M.portfolio_value(row["instrument"], row["qty"], row["market_price"], row["market_value"],
                                        row["avg_cost"], row["unrealized"], row["realized"], acct))
        self.send(M.account_update_time(dt.datetime.now(dt.timezone.utc).strftime("%H:%M")))
        if full:
            self.send(M.account_download_end(acct))

    def req_positions_multi(self, fields: list[str]) -> None:
        f = Fields(fields, 2)
        rid, acct, model = f.int(), f.str(), f.str()
        for name, account in self.sim.broker.accounts.items():
            if acct and acct != name:
                continue
            for pos in account.positions.values():
                self.send(M.position_multi(rid, name, pos.instrument, pos.qty, round(pos.avg_cost, 4), model))
        self.send(M.position_multi_end(rid))

    def req_account_updates_multi(self, fields: list[str]) -> None:
        """Per-account values (ib_async asks for these on connect and waits for the end marker)."""
        f = Fields(fields, 2)
        rid, acct, model = f.int(), f.str(), f.str()
        for name in self.sim.broker.accounts:
            if acct and acct != name:
                continue
            for key, val in self.sim.broker.values(name).items():
                self.send(M.account_update_multi(rid, name, model, key, f"{val:.2f}", "USD"))
        self.send(M.account_update_multi_end(rid))

    def cancel_multi(self, fields: list[str]) -> None:
        """cancelPositionsMulti / cancelAccountUpdatesMulti: the answers above are one-off, nothing to stop."""

    # ---- orders ---------------------------------------------------------------------------------

    def _read_only_error(self, order_id: int) -> None:
        self.error(order_id, 321, f"Error validating request.-'bN' : cause - {READ_ONLY_TEXT}")

    def place_order(self, fields: list[str]) -> None:
        sim = self.sim
        try:
            req = R.parse_place_order(fields)
        except WireError as exc:
            oid = int(fields[1]) if len(fields) > 1 and fields[1].lstrip("-").isdigit() else -1
            self.error(oid, 321, f"Error validating request.-'bN' : cause - {exc}")
            return
        oid = req.order_id
        sim.note_order_id(self.client_id, oid)
        if sim.read_only:
            sim._record_order({"client_id": self.client_id, "order_id": oid, "rejected": 321,
                               "what_if": req.what_if})
            self._read_only_error(oid)
            return
        found = resolve(sim.market, req.contract)
        if len(found) != 1:
            self.error(oid, 200, "No security definition has been found for the request")
            return
        ins = found[0]
        problem = ""
        if req.action not in ("BUY", "SELL"):
            problem = f"Invalid side {req.action!r}"
        elif req.quantity <= 0:
            problem = "Order quantity must be positive"
        elif req.order_type == "LMT" and req.lmt_price is None:
            problem = "Limit price is missing"
        account = req.account or sim.accounts[0]
        if not problem and account not in sim.broker.accounts:
            problem = f"Invalid account code {account}"
        if problem:
            self.error(oid, 321, f"Error validating request.-'bN' : cause - {problem}")
            return
        existing = sim.broker.orders.get((self.client_id, oid))
        if existing is not None and not req.what_if:
            if not existing.is_open:
                self.error(oid, 103, "Duplicate order id")
                return
            # a placeOrder with the id of an open order modifies it
            existing.quantity, existing.lmt_price = req.quantity, req.lmt_price
            existing.order_type, existing.aux_price = req.order_type, req.aux_price
            sim._publish_order(existing)
            sim.try_fill(existing)
            return
        order = sim.broker.new_order(order_id=oid, client_id=self.client_id, account=account, instrument=ins,
                                     action=req.action, quantity=req.quantity, order_type=req.order_type,
                                     lmt_price=req.lmt_price, aux_price=req.aux_price, tif=req.tif or "DAY",
                                     order_ref=req.order_ref, what_if=req.what_if, transmit=req.transmit,
                                     parent_id=req.parent_id, outside_rth=req.outside_rth)
        sim._record_order(order)
        if req.what_if:
            # what-if: the margin answer in openOrder's orderState, nothing is placed
            order.status = "PreSubmitted"
            self.send(M.open_order(order, margin=sim.broker.what_if(order)))
            return
        order.status = "PreSubmitted"
        sim._publish_order(order)
        sim._spawn(sim._submit(order), name=f"sim-submit-{order.perm_id}")   # orders outlive the session

    def cancel_order(self, fields: list[str]) -> None:
        sim = self.sim
        f = Fields(fields, 2)
        oid = f.int()
        if sim.read_only:
            self._read_only_error(oid)
            return
        order = sim.broker.orders.get((self.client_id, oid))
        if order is None:
            self.error(oid, 10147, f"OrderId {oid} that needs to be cancelled is not found.")
            return
        if not order.is_open:
            self.error(oid, 10148, f"OrderId {oid} that needs to be cancelled cannot be cancelled, state: "
                                   f"{order.status}.")
            return
        sim.cancel(order)

    def req_global_cancel(self, fields: list[str]) -> None:
        if self.sim.read_only:
            self._read_only_error(-1)
            return
        for order in list(self.sim.broker.orders.values()):
            if order.is_open:
                self.sim.cancel(order)

    def _send_open_orders(self, orders: list[SimOrder]) -> None:
        if not self.sim.read_only:           # read-only API hides order information: just the end marker
            for o in orders:
                if o.is_open:
                    self.send(M.open_order(o))
                    self.send(M.order_status(o))
        self.send(M.open_order_end())

    def req_open_orders(self, fields: list[str]) -> None:
        self._send_open_orders([o for o in self.sim.broker.orders.values() if o.client_id == self.client_id])

    def req_all_open_orders(self, fields: list[str]) -> None:
        self._send_open_orders(list(self.sim.broker.orders.values()))

    def req_auto_open_orders(self, fields: list[str]) -> None:
        bind = Fields(fields, 2).bool()
        if self.client_id != 0:
            self.error(-1, 321, "Error validating request.-'bd' : cause - Auto bind of orders is only "
                                "possible for client id 0")
            return
        self.auto_bind = bind
        self._send_open_orders(list(self.sim.broker.orders.values()))

    def req_completed_orders(self, fields: list[str]) -> None:
        if not self.sim.read_only:
            for o in self.sim.broker.orders.values():
                if not o.is_open:
                    self.send(M.completed_order(o))
        self.send(M.completed_orders_end())

    def req_executions(self, fields: list[str]) -> None:
        f = Fields(fields, 2)
        rid = f.int()
        client_id = f.int()
        acct, since, symbol, sec_type, exchange, side = (f.str() for _ in range(6))
        since_key = since.replace("-", " ").strip()
        for e in self.sim.broker.executions:
            if client_id and e.client_id != client_id:
                continue
            if acct and e.account != acct:
                continue
            if symbol and e.instrument.symbol != symbol.upper():
                continue
            if sec_type and e.instrument.sec_type != sec_type.upper():
                continue
            if exchange and e.exchange != exchange.upper():
                continue
            if side and {"BUY": "BOT", "SELL": "SLD"}.get(side.upper(), side.upper()) != e.side:
                continue
            if since_key and e.time.replace("  ", " ") < since_key:
                continue
            self.send(M.execution_data(rid, e))
            self.send(M.commission_report(e))
        self.send(M.execution_data_end(rid))

    def start_api_again(self, fields: list[str]) -> None:
        log.info("client %s sent startApi twice; ignored", self.client_id)


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
