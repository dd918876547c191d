"""Market data for one session: reqMktData / cancelMktData / reqMarketDataType and the tick streams.

Mixed into `Session`. A line is a task that sends the first quote after the model's first-quote
latency, then (options) the tick-21 computations, then updates once per walk step until cancelled; a
snapshot ends with tickSnapshotEnd and frees its line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from . import bs
from . import messages as M
from . import requests as R
from .contracts import Instrument, resolve
from .market import RATE
from .wire import Fields

log = logging.getLogger("sim.tws")

# live tick id -> delayed tick id (TWS sends 66-76 and 80-83 for delayed data)
DELAYED = {1: 66, 2: 67, 4: 68, 0: 69, 3: 70, 5: 71, 6: 72, 7: 73, 8: 74, 9: 75, 14: 76,
           10: 80, 11: 81, 12: 82, 13: 83}
DELAY_STEPS_BACK = 1800          # delayed data shows the market of ~15 minutes ago (in walk steps of 0.5 s)


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


class MarketDataHandlers:
    """reqMktData and friends (mixed into Session, which provides send/error/spawn/sim/lines/md_type)."""

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
