"""The original agent's fixed design (v1.39), run for real beside ours: the comparison column of bench/run.py.

Its batched path: chunks of 50 contracts; every line of a chunk requested at once, a fixed 2.5 s wait, every line
cancelled, then the next chunk. Its sell scan: the stock, its price, its option parameters, one step after the
other, then every grid strike in the window (it did not ask which strikes IB lists) through that batched path.

It sent without pacing (96 messages/s at a chunk edge: error 100 at a real TWS, and a disconnect after repeats).
To run it at all, it talks to a simulator in TWS's "pace for me" mode (``pacing="delay"``: TWS holds back what
goes over 50 messages/s instead of refusing it) through a pacer that does not pace. That is the fairest
setting for it: its waits are what they were, and TWS absorbs its bursts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy

from agent.errors import AgentError
from agent.pacer import Pacer
from agent.selection import merge_option_params, sell_scan_expirations, sell_scan_strikes
from agent.settings import Settings
from agent.tws import TwsBridge
from agent.types import Contract, Quote
from sim.tws import SimConfig, TwsSimulator

FIXED_CHUNK, FIXED_WAIT = 50, 2.5          # the original design: 50 contracts per chunk, a 2.5 s wait each
OPTION_TICKS = "100,101,104,106"
SPOT_WAIT = 4.0
KEY = "bench-fixed-0123456789abcdef"


def fixed_seconds(n: int) -> float:
    """The fixed design's own waits for n contracts, without any sending or answering time: its lower bound."""
    return -(-n // FIXED_CHUNK) * FIXED_WAIT


@contextlib.asynccontextmanager
async def fixed_stack(seed: int):
    sim = TwsSimulator(SimConfig(port=0, latency="realistic", seed=seed, pacing="delay"))
    await sim.start()
    pacer = Pacer(rate=10_000.0, burst=10_000, max_lines=100, line_margin=0)     # does not pace
    bridge = TwsBridge(Settings(provider_key=KEY, ib_port=sim.port, connect_timeout=3.0), pacer)
    try:
        await bridge.connect()
        yield sim, FixedDesign(bridge, pacer, sim.market.today)
    finally:
        await bridge.close()
        await sim.stop()


class FixedDesign:
    def __init__(self, bridge: TwsBridge, pacer: Pacer, today):
        self.bridge, self.pacer, self.today = bridge, pacer, today

    async def batch(self, contracts: list[Contract], ticks: str = OPTION_TICKS) -> list[Quote]:
        quotes: list[Quote] = []
        for i in range(0, len(contracts), FIXED_CHUNK):
            chunk = contracts[i:i + FIXED_CHUNK]
            await self.pacer.acquire_lines(len(chunk))
            opened = await asyncio.gather(*(self.bridge.open_market_data(c, generic_ticks=ticks) for c in chunk),
                                          return_exceptions=True)
            lines = [x for x in opened if not isinstance(x, BaseException)]
            self.pacer.release_lines(len(chunk) - len(lines))
            await asyncio.sleep(FIXED_WAIT)
            quotes += [copy.copy(x.quote) if not isinstance(x, BaseException) else Quote(error=str(x))
                       for x in opened]
            await asyncio.gather(*(self.bridge.close_market_data(line) for line in lines))
        return quotes

    async def sell_scan(self, ticker: str, right: str, business_days: int = 15, ntm_pct: float = 0.05) -> int:
        """The original's sell scan, step after step; returns how many contracts it asked for."""
        info = (await self.bridge.contract_details(Contract.stock(ticker)))[0]
        await self.pacer.acquire_lines(1)
        line = await self.bridge.open_market_data(info.contract)
        try:
            await line.wait(lambda q: q.last is not None, timeout=SPOT_WAIT)
            spot = line.quote.last
        finally:
            await self.bridge.close_market_data(line)
        if spot is None:
            raise AgentError(f"no price for {ticker}")
        params = await self.bridge.option_params(ticker, info.contract.con_id, "STK")
        exps, strikes = merge_option_params(params)
        expiries = sell_scan_expirations(exps, self.today, business_days)
        contracts = [Contract.option(ticker, e, k, right) for e in expiries
                     for k in sell_scan_strikes(strikes, spot, ntm_pct)]
        await self.batch(contracts)
        return len(contracts)
