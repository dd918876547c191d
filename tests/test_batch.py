"""The batched option-data path against a scripted in-memory bridge: order, dedupe, early end, line ownership,
cancellation and concurrency limits (no sockets; the simulator tests are in test_flows.py)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from agent.errors import IBDisconnected
from agent.pacer import Pacer
from agent.protocol import FetchPricesPayload
from agent.types import Contract, Quote
import ib_scanner
from agent import exchange_time
from ib_scanner import (NEED_GREEKS, NEED_QUOTES, NEED_STATS, OptionScanner, line_done, new_york_today,
                        stock_done)


class FakeLine:
    def __init__(self, bridge: "FakeBridge", contract: Contract):
        self.bridge, self.contract, self.quote, self.closed = bridge, contract, Quote(), False
        self._changed = asyncio.Event()

    def update(self, **values) -> None:
        for k, v in values.items():
            setattr(self.quote, k, v)
        self._changed.set()

    async def wait(self, predicate, timeout: float) -> bool:
        async def until() -> None:
            while not (predicate(self.quote) or self.quote.error_code is not None):
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(until(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


class FakeBridge:
    """Scripted quotes per contract key: a dict of Quote fields applied on open, or None for a silent line."""

    def __init__(self, pacer: Pacer, script: dict | None = None, default: dict | None = None):
        self.pacer = pacer
        self.script = script or {}
        self.default = default
        self.opened: list[Contract] = []
        self.closes = 0
        self.open_now = 0
        self.peak_open = 0
        self.fail_open: Exception | None = None
        self.opened_event = asyncio.Event()

    async def open_market_data(self, contract: Contract, generic_ticks: str = "", snapshot: bool = False):
        await self.pacer.message()
        if self.fail_open is not None:
            raise self.fail_open
        # the scanner must hold a reserved line for every open
        assert self.pacer.lines_in_use >= self.open_now + 1
        line = FakeLine(self, contract)
        self.opened.append(contract)
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        self.opened_event.set()
        values = self.script.get(contract.key, self.default)
        if values is not None:
            asyncio.get_running_loop().call_soon(lambda: line.update(**values))
        return line

    async def opened_at_least(self, n: int, timeout: float = 5.0) -> None:
        async def until() -> None:
            while len(self.opened) < n:
                self.opened_event.clear()
                await self.opened_event.wait()
        await asyncio.wait_for(until(), timeout)

    async def close_market_data(self, line: FakeLine) -> None:
        if line.closed:
            return
        line.closed = True
        self.closes += 1
        self.open_now -= 1
        await self.pacer.message()
        self.pacer.release_lines(1)


FULL = dict(bid=1.0, ask=1.2, bid_size=5.0, ask_size=7.0, delta=0.4, open_interest=100.0)


def opt(k: float, right: str = "C") -> Contract:
    return Contract.option("AAPL", "20300118", k, right)


def make(script=None, default=FULL, window=5.0, max_lines=100, margin=0):
    pacer = Pacer(rate=1000.0, max_lines=max_lines, line_margin=margin)
    bridge = FakeBridge(pacer, script, default)
    return pacer, bridge, OptionScanner(bridge, pacer, window=window)


def test_line_done_rules():
    """A line is done when it has quotes (and greeks / open interest when asked), failed, or is illiquid."""
    assert not line_done(Quote(), NEED_QUOTES)
    assert not line_done(Quote(bid=1.0, bid_size=1.0), NEED_QUOTES)
    assert line_done(Quote(bid=1.0, bid_size=1.0, ask=1.1, ask_size=2.0), NEED_QUOTES)
    assert not line_done(Quote(bid=1.0, ask=1.1), NEED_QUOTES | NEED_GREEKS)
    assert line_done(Quote(bid=1.0, ask=1.1, delta=0.5), NEED_QUOTES | NEED_GREEKS)
    assert not line_done(Quote(bid=1.0, ask=1.1, delta=0.5), NEED_QUOTES | NEED_GREEKS | NEED_STATS)
    assert line_done(Quote(error_code=200, error="no such contract"), NEED_QUOTES | NEED_GREEKS)
    # "no bid" and "no ask" (price -1 -> None, size 0) and no trade: nothing will come
    assert line_done(Quote(bid=None, bid_size=0.0, ask=None, ask_size=0.0), NEED_QUOTES | NEED_GREEKS)
    assert not line_done(Quote(bid=None, bid_size=0.0, ask=0.5, ask_size=3.0), NEED_QUOTES | NEED_GREEKS)


def test_stock_done_rules():
    """A stock line is done with a last price, or a two-sided quote, or a failure."""
    assert stock_done(Quote(last=10.0))
    assert stock_done(Quote(bid=9.9, bid_size=1, ask=10.1, ask_size=1))
    assert stock_done(Quote(error_code=354, error="not subscribed"))
    assert not stock_done(Quote(bid=9.9, bid_size=1))


async def test_results_in_input_order_and_duplicates_fetched_once():
    """Results follow input order; a contract asked twice is fetched once."""
    script = {opt(k).key: dict(FULL, bid=k / 100, ask=k / 100 + 0.1) for k in (100, 105, 110)}
    pacer, bridge, scanner = make(script)
    cs = [opt(110), opt(100), opt(105), opt(100)]
    quotes = await asyncio.wait_for(scanner.get_option_data_batch(cs, need_greeks=True), 10)
    assert [q.bid for q in quotes] == [1.10, 1.00, 1.05, 1.00]
    assert len(bridge.opened) == 3
    assert bridge.closes == 3 and pacer.lines_in_use == 0


async def test_failed_contract_does_not_fail_neighbours():
    """An error-200 contract carries its error; the others have their quotes."""
    script = {opt(101).key: dict(error_code=200, error="No security definition has been found")}
    pacer, bridge, scanner = make(script)
    quotes = await asyncio.wait_for(scanner.get_option_data_batch([opt(100), opt(101), opt(105)]), 10)
    assert quotes[1].error_code == 200 and quotes[1].failed
    assert quotes[0].bid == 1.0 and quotes[2].bid == 1.0 and quotes[0].error_code is None
    assert pacer.lines_in_use == 0


async def test_lines_end_early_when_data_is_complete():
    """With a 30 s window, complete contracts end at once (the request does not wait out the window)."""
    pacer, bridge, scanner = make(window=30.0)
    quotes = await asyncio.wait_for(scanner.get_option_data_batch([opt(k) for k in range(100, 120)],
                                                                  need_greeks=True), 10)
    assert all(q.bid == 1.0 for q in quotes)
    assert scanner.stats["early_ends"] == 20 and scanner.stats["window_ends"] == 0


async def test_illiquid_contract_ends_early():
    """A contract with 'no bid' and 'no ask' ends at once even though greeks were asked for."""
    pacer, bridge, scanner = make(default=dict(bid=None, bid_size=0.0, ask=None, ask_size=0.0), window=30.0)
    quotes = await asyncio.wait_for(scanner.get_option_data_batch([opt(100)], need_greeks=True), 10)
    assert quotes[0].bid is None and scanner.stats["early_ends"] == 1


async def test_silent_contract_gets_the_window_then_its_line_is_cancelled():
    """A contract that never quotes is given up after the window and its line cancelled."""
    pacer, bridge, scanner = make(default=None, window=0.05)
    quotes = await asyncio.wait_for(scanner.get_option_data_batch([opt(100), opt(105)]), 10)
    assert not quotes[0].has_price and scanner.stats["window_ends"] == 2
    assert bridge.closes == 2 and pacer.lines_in_use == 0


async def test_max_batch_bounds_open_lines():
    """_max_batch_size caps how many lines one request holds open at once."""
    pacer, bridge, scanner = make(default=None, window=0.01)
    await asyncio.wait_for(scanner.get_option_data_batch([opt(k) for k in range(100, 130)], max_batch=4), 10)
    assert bridge.peak_open <= 4 and len(bridge.opened) == 30
    assert pacer.lines_in_use == 0


async def test_never_more_than_fifty_lines_per_request():
    """A 120-contract request never has more than 50 lines open."""
    pacer, bridge, scanner = make(default=None, window=0.01, max_lines=200)
    await asyncio.wait_for(scanner.get_option_data_batch([opt(k) for k in range(100, 220)]), 20)
    assert 1 < bridge.peak_open <= 50 and pacer.lines_in_use == 0


async def test_line_budget_bounds_open_lines():
    """With only 8 lines in the budget the request uses at most 8."""
    pacer, bridge, scanner = make(default=None, window=0.01, max_lines=8)
    await asyncio.wait_for(scanner.get_option_data_batch([opt(k) for k in range(100, 140)]), 10)
    assert bridge.peak_open <= 8 and pacer.lines_in_use == 0


async def test_cancelled_request_leaks_no_line():
    """Cancelling a request mid-flight cancels every open line and returns every reserved line."""
    pacer, bridge, scanner = make(default=None, window=30.0)
    task = asyncio.ensure_future(scanner.get_option_data_batch([opt(k) for k in range(100, 160)]))
    await bridge.opened_at_least(10)         # let several lines open
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bridge.open_now == 0 and bridge.closes == len(bridge.opened)
    assert pacer.lines_in_use == 0


async def test_disconnect_fails_the_request_without_leaks():
    """IBDisconnected while opening fails the whole request and returns the reserved lines."""
    pacer, bridge, scanner = make()
    bridge.fail_open = IBDisconnected("IB not connected")
    with pytest.raises(IBDisconnected):
        await asyncio.wait_for(scanner.get_option_data_batch([opt(k) for k in range(100, 110)]), 10)
    assert pacer.lines_in_use == 0


async def test_small_request_is_served_while_a_big_one_holds_lines():
    """A 4-leg request gets lines from the reserve while a big request holds the rest."""
    pacer, bridge, scanner = make(default=None, window=30.0, max_lines=40)
    big = asyncio.ensure_future(scanner.get_option_data_batch([opt(k) for k in range(100, 400)]))
    await bridge.opened_at_least(pacer.lines_budget - pacer.line_reserve)
    legs = [opt(k, "P") for k in (100, 105, 110, 115)]
    bridge.script.update({c.key: FULL for c in legs})
    quotes = await asyncio.wait_for(scanner.get_option_data_batch(legs, need_greeks=True), 10)
    assert all(q.bid == 1.0 for q in quotes)
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
    assert pacer.lines_in_use == 0


async def test_request_cancelled_right_after_reserving_returns_every_line():
    """Cancelling a request just after it reserved its lines (no line opened yet) returns all of them."""
    pacer, bridge, scanner = make(default=None, window=30.0)
    task = asyncio.ensure_future(scanner.get_option_data_batch([opt(k) for k in range(100, 120)]))
    await asyncio.sleep(0)          # the batch reserves its lines and schedules its fetches, which have not run
    assert pacer.lines_in_use == 20 and not bridge.opened
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pacer.lines_in_use == 0 and bridge.open_now == 0


async def test_listing_that_does_not_come_falls_back_and_is_not_asked_again_at_once():
    """A per-expiry listing that times out means 'ask for every strike', and is not retried on the next request."""
    from agent.errors import RequestTimeout

    calls = []

    class SlowListing(FakeBridge):
        async def contract_details(self, contract, timeout=10.0):
            calls.append(contract)
            raise RequestTimeout("TWS did not answer the contract details request")

    pacer = Pacer(rate=1000.0)
    scanner = OptionScanner(SlowListing(pacer), pacer)
    assert await scanner.listed_strikes("AAPL", "20300118") is None
    assert await scanner.listed_strikes("AAPL", "20300118") is None
    assert len(calls) == 1 and calls[0].sec_type == "OPT" and calls[0].expiry == "20300118"


def test_heard_nothing_distinguishes_silence_from_no_market():
    """Silence (nothing at all) differs from an empty market ("no bid" sizes) and from an error."""
    from ib_scanner import heard_nothing
    assert heard_nothing(Quote())
    assert not heard_nothing(Quote(bid=None, bid_size=0.0, ask=None, ask_size=0.0))
    assert not heard_nothing(Quote(error_code=200, error="no such contract"))


# 02:30 UTC on 10 March 2026: already the 10th in Asia and in UTC, still the 9th in New York (EDT, UTC-4).
LATE_EVENING_IN_NEW_YORK = dt.datetime(2026, 3, 10, 2, 30, tzinfo=dt.timezone.utc)


def test_today_is_new_yorks_date_not_the_traders():
    """Expiry dates are judged on New York's calendar: at 02:30 UTC it is still yesterday there."""
    assert new_york_today(lambda tz: LATE_EVENING_IN_NEW_YORK.astimezone(tz)) == dt.date(2026, 3, 9)
    assert OptionScanner(None, Pacer())._today is new_york_today


def test_today_without_a_time_zone_database_uses_new_yorks_standard_offset(monkeypatch):
    """Without tzdata (Windows) ZoneInfo raises; the date then comes from UTC-5 instead of failing."""
    def no_database(key):
        raise exchange_time.ZoneInfoNotFoundError(key)
    monkeypatch.setattr(exchange_time, "ZoneInfo", no_database)
    at_0430_utc = dt.datetime(2026, 1, 10, 4, 30, tzinfo=dt.timezone.utc)      # 23:30 on the 9th at UTC-5
    assert new_york_today(lambda tz: at_0430_utc.astimezone(tz)) == dt.date(2026, 1, 9)


async def test_silent_leg_is_null_with_its_reason_in_fetch_prices_errors():
    """A leg TWS said nothing about in its window is null, and errors names it (the others are priced)."""
    pacer, bridge, scanner = make(script={opt(105).key: None}, window=0.05)
    bridge.farm_status = {"usopt": False}
    legs = [dict(ticker="AAPL", strike=k, expiry="20300118", right="C") for k in (100.0, 105.0)]
    data = await asyncio.wait_for(scanner.fetch_prices(FetchPricesPayload(contracts=legs)), 10)
    assert data["contracts"][0] is not None and data["contracts"][1] is None
    assert [e["index"] for e in data["errors"]] == [1]
    assert "no data from TWS within 0.05 s" in data["errors"][0]["error"] and "usopt" in data["errors"][0]["error"]


class ResetBridge(FakeBridge):
    """TWS cut off from IB (1100): lines opened meanwhile stay silent; data returns (1101) once one of them closes,
    unless ``comes_back`` is False."""

    def __init__(self, pacer: Pacer, comes_back: bool = True):
        self.data_available, self.farm_status, self.comes_back = False, {}, comes_back
        super().__init__(pacer, None, FULL)

    @property
    def default(self) -> dict | None:        # what a line opened now hears: nothing during the outage
        return FULL if self.data_available else None

    @default.setter
    def default(self, value) -> None:
        pass

    async def close_market_data(self, line: FakeLine) -> None:
        await super().close_market_data(line)
        if self.comes_back:
            self.data_available = True


async def test_lines_silent_during_an_outage_are_asked_again_when_data_returns():
    """Contracts silent while TWS was cut off from IB are fetched once more after 1101 and come back priced."""
    pacer = Pacer(rate=1000.0, max_lines=100, line_margin=0)
    bridge = ResetBridge(pacer)
    scanner = OptionScanner(bridge, pacer, window=0.05)
    quotes = await asyncio.wait_for(scanner.get_option_data_batch([opt(100), opt(105)], need_greeks=True), 10)
    assert [q.bid for q in quotes] == [1.0, 1.0] and all(q.error is None for q in quotes)
    assert len(bridge.opened) == 4 and scanner.stats["retried_contracts"] == 2 and pacer.lines_in_use == 0


async def test_outage_that_outlasts_the_wait_leaves_rows_with_their_reason(monkeypatch):
    """Data not back within the recovery wait: no retry, each row says TWS lost its connection to IB."""
    monkeypatch.setattr(ib_scanner, "RECOVERY_WAIT", 0.05)
    pacer = Pacer(rate=1000.0, max_lines=100, line_margin=0)
    bridge = ResetBridge(pacer, comes_back=False)
    scanner = OptionScanner(bridge, pacer, window=0.05)
    quotes = await asyncio.wait_for(scanner.get_option_data_batch([opt(100), opt(105)], need_greeks=True), 10)
    assert len(bridge.opened) == 2 and scanner.stats["retried_contracts"] == 0
    assert all(q.bid is None and "lost its connection to IB" in q.error for q in quotes)
