"""What waits for what in the flows: the stock's price is asked at once by symbol, without waiting for the stock's
contract look-up (which only the option parameters need), and falls back to the conId when IB cannot place the
symbol alone."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from agent.pacer import Pacer
from agent.protocol import FetchChainPayload, SellScanPayload
from agent.types import Contract, ContractInfo, Quote
from ib_scanner import OptionScanner

from bridge_harness import scanner_stack


def watch(bridge) -> list[tuple[float, str]]:
    """Record (time, event) for the stock's reqMktData going out and its contract look-up coming back."""
    events: list[tuple[float, str]] = []
    real_send, real_details = bridge._send, bridge.contract_details

    def send(session, what, fn, *args):
        real_send(session, what, fn, *args)
        if what == "reqMktData" and args[1].secType == "STK":
            events.append((time.perf_counter(), "stock price asked"))

    async def details(contract, timeout=10.0):
        out = await real_details(contract, timeout=timeout)
        if contract.sec_type == "STK":
            events.append((time.perf_counter(), "stock looked up"))
        return out
    bridge._send, bridge.contract_details = send, details
    return events


async def test_sell_scan_asks_the_price_before_the_stock_lookup_answers():
    """Account's scan: the stock's reqMktData goes out before its contract look-up has come back."""
    async with scanner_stack() as (sim, bridge, _, scanner):
        events = watch(bridge)
        data = await asyncio.wait_for(scanner.sell_scan(SellScanPayload(ticker="MSFT", right="C")), 10)
        assert data["contracts"] and data["spotPrice"] > 0
        assert [e for _, e in sorted(events)][:2] == ["stock price asked", "stock looked up"]


async def test_chain_without_a_deal_price_asks_the_price_at_once():
    """Curate's chain centred on the spot price: the price is asked before the stock's look-up answers."""
    async with scanner_stack() as (sim, bridge, _, scanner):
        events = watch(bridge)
        close = sim.market.today + dt.timedelta(days=30)
        data = await asyncio.wait_for(scanner.fetch_chain(FetchChainPayload(ticker="AAPL", dealPrice=0,
                                                                            expectedCloseDate=close)), 20)
        assert data["contracts"] and data["spotPrice"] > 0
        assert [e for _, e in sorted(events)][:2] == ["stock price asked", "stock looked up"]


class Line:
    def __init__(self, contract: Contract, quote: Quote):
        self.contract, self.quote, self.closed, self._closing, self.updated_at = contract, quote, False, None, 0.0

    async def wait(self, predicate, timeout: float) -> bool:
        return True


class AmbiguousSymbolBridge:
    """IB cannot place the symbol alone (error 200 for a stock without conId); by conId it can."""

    def __init__(self, pacer: Pacer):
        self.pacer, self.asked = pacer, []

    async def contract_details(self, contract, timeout=10.0):
        return [ContractInfo(contract.with_con_id(4242))]

    async def open_market_data(self, contract, generic_ticks="", snapshot=False):
        await self.pacer.message()
        self.asked.append(contract.con_id)
        if contract.con_id:
            return Line(contract, Quote(last=51.5, bid=51.4, ask=51.6, bid_size=1, ask_size=1, close=50.0, volume=9))
        return Line(contract, Quote(error_code=200, error="The contract description specified is ambiguous"))

    def end_market_data(self, line):
        self.pacer.release_lines(1)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_an_ambiguous_symbol_is_priced_by_conid_after_the_lookup():
    """Error 200 for the symbol alone: the price is asked again with the conId the look-up found."""
    pacer = Pacer()
    bridge = AmbiguousSymbolBridge(pacer)
    scanner = OptionScanner(bridge, pacer)
    spot, q = await asyncio.wait_for(scanner._early_spot("xyz"), 5)
    assert spot == 51.5 and bridge.asked == [0, 4242] and pacer.lines_in_use == 0
