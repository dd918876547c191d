"""The option-data flows end to end in-process: TWS simulator (fast latency, frozen market) + real ibapi bridge +
pacer + OptionScanner (+ the dispatcher for the relay-facing errors). Loopback only, port 0."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from agent.dispatch import AgentContext, Dispatcher
from agent.errors import InvalidRequest, RequestTimeout
from agent.protocol import FetchChainPayload, FetchPricesPayload, FetchUnderlyingPayload, SellScanPayload, TickerPayload
from agent.selection import (add_business_days, chain_expirations, merge_option_params, strike_step)
from agent.settings import Settings
from agent.types import OptionParams
import ib_scanner
from ib_scanner import OptionScanner

from bridge_harness import scanner_stack

KEY = "flows-key-0123456789abcdef"
# A scanner window (or wait) long enough that only a hang reaches it: lines that get data end early, however busy
# the machine; tests whose lines must hear nothing keep a short window, as the silence lasts as long as the test
# wants (a farm down, an outage), not as long as a clock says.
HANG_GUARD = 30.0


def dispatcher_for(bridge, pacer, scanner) -> Dispatcher:
    d = Dispatcher(AgentContext(Settings(provider_key=KEY), pacer, bridge, scanner))
    ib_scanner.register(d)
    return d


def frame(rtype: str, payload: dict, rid: str = "r1") -> dict:
    return {"type": "request", "request_id": rid, "request_type": rtype, "payload": payload}


def sim_listed_strikes(sim, symbol: str) -> list[float]:
    rows = sim.market.option_params(symbol)
    params = [OptionParams(ex, 0, tc, m, tuple(exps), tuple(ks)) for ex, tc, m, exps, ks in rows]
    return merge_option_params(params)[1]


def assert_row_matches_sim(sim, row: dict, *, chain: bool = True) -> None:
    q = sim.market.option_quote(row.get("symbol") or row["ticker"], row["expiry"], row["strike"], row["right"])
    pos = lambda x: x if x > 0 else 0.0  # noqa: E731  (IB's -1 "no bid" is 0 in rows)
    assert row["bid"] == pos(q.bid) and row["ask"] == pos(q.ask) and row["last"] == pos(q.last)
    expected_mid = (q.bid + q.ask) / 2 if q.bid > 0 and q.ask > 0 else pos(q.last)
    assert row["mid"] == pytest.approx(expected_mid)
    assert row["delta"] == pytest.approx(round(q.delta, 6))
    assert row["implied_vol"] == pytest.approx(round(q.iv, 6))
    if chain:
        assert row["open_interest"] == q.open_interest and row["volume"] == q.volume
        assert row["bid_size"] == q.bid_size and row["ask_size"] == q.ask_size


async def sim_caught_up(bridge) -> None:
    """The flows answer before their cancels go out: wait for those, then for one round trip (the simulator
    handles one client's messages in order: once it answers, it has seen every earlier cancel)."""
    assert await bridge.wait_lines_closed(timeout=10.0)
    await bridge.current_time(timeout=5.0)


async def test_chain_rows_equal_the_simulators_quotes_and_selection_rules():
    """fetch_chain: expiries and strikes follow the rules on the sim's listings; every row equals the sim's quote."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        close = sim.market.today + dt.timedelta(days=30)
        data = await scanner.fetch_chain(FetchChainPayload(ticker="AAPL", dealPrice=230.0, expectedCloseDate=close))
        assert data["expirations"] == chain_expirations(sim.market.expirations("AAPL"), close)
        listed = sim_listed_strikes(sim, "AAPL")
        want = [k for k in listed if 0.75 * 230 - 1e-9 <= k <= 1.10 * 230 + 1e-9 and k % strike_step(230) == 0]
        combos = {(e, k, r) for e in data["expirations"] for k in want for r in "CP"
                  if sim.market.option("AAPL", e, k, r) is not None}
        assert {(r["expiry"], r["strike"], r["right"]) for r in data["contracts"]} == combos
        assert data["not_listed"] == len(data["expirations"]) * len(want) * 2 - len(combos)
        for row in data["contracts"]:
            assert_row_matches_sim(sim, row)
        assert any(r["right"] == "P" and r["open_interest"] > 0 for r in data["contracts"])
        assert data["spotPrice"] == pytest.approx(sim.market.stock_quote("AAPL").last)
        await sim_caught_up(bridge)
        stats = sim.stats()
        assert stats["active_lines"] == 0 and pacer.lines_in_use == 0
        # unlisted (expiry, strike) pairs were never requested: no error 200, no wasted messages
        assert not [e for e in stats["errors_sent"] if e["code"] == 200]


async def test_chain_without_deal_price_centres_on_spot_and_is_cached():
    """dealPrice 0 uses the spot (JNPR 39.40: 2.5 grid); the same request within 60 s is served from cache."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        close = sim.market.today + dt.timedelta(days=45)
        p = FetchChainPayload(ticker="JNPR", dealPrice=0, expectedCloseDate=close)
        data = await scanner.fetch_chain(p)
        spot = sim.market.stock_quote("JNPR").last
        strikes = sorted({r["strike"] for r in data["contracts"]})
        assert strikes and all(0.75 * spot <= k <= 1.10 * spot and k % 2.5 == 0 for k in strikes)
        sent = sim.stats()["messages_received"]
        again = await scanner.fetch_chain(p)
        assert again == data and sim.stats()["messages_received"] == sent


async def test_sell_scan_selects_ranks_and_keeps_one_right():
    """sell_scan: expiries within N weekdays, strikes within spot x (1 +/- ntm), puts only, best yield first."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        data = await scanner.sell_scan(SellScanPayload(ticker="AAPL", right="P", ntm_pct=0.05, business_days=10))
        today = sim.market.today
        hi = add_business_days(today, 10).strftime("%Y%m%d")
        assert data["expirations"] == [e for e in sim.market.expirations("AAPL") if e <= hi]
        spot = data["spotPrice"]
        assert all(r["right"] == "P" and spot * 0.95 <= r["strike"] <= spot * 1.05 and r["strike"] % 5 == 0
                   for r in data["contracts"])
        yields = [r["annual_yield"] for r in data["contracts"] if r["annual_yield"] is not None]
        assert yields == sorted(yields, reverse=True) and len(yields) >= 3
        for r in data["contracts"]:
            assert_row_matches_sim(sim, r)
            assert r["capital_at_risk"] == r["strike"] * 100


async def test_fetch_prices_input_order_and_an_off_grid_leg_fails_alone():
    """fetch_prices answers in input order; an unlisted strike is null with its error 200, the others are priced."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        exp = sim.market.expirations("AAPL")[2]
        legs = [dict(ticker="AAPL", strike=235.0, expiry=exp, right="C"),
                dict(ticker="AAPL", strike=231.0, expiry=exp, right="C"),        # not listed: error 200
                dict(ticker="AAPL", strike=225.0, expiry=exp, right="P"),
                dict(ticker="AAPL", strike=235.0, expiry=exp, right="C")]        # duplicate of leg 1
        data = await scanner.fetch_prices(FetchPricesPayload(contracts=legs))
        rows = data["contracts"]
        assert data["success"] is True and rows[1] is None
        assert data["errors"][0]["index"] == 1 and data["errors"][0]["code"] == 200
        assert [(r["strike"], r["right"]) for r in (rows[0], rows[2], rows[3])] == [(235.0, "C"), (225.0, "P"),
                                                                                   (235.0, "C")]
        for r in (rows[0], rows[2], rows[3]):
            assert_row_matches_sim(sim, r, chain=False)
            assert r["gamma"] is not None and r["theta"] is not None and r["vega"] is not None


async def test_delayed_fallback_marks_rows():
    """TSLA (no live permission in the sim): rows come from delayed data and say delayed: true."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        exp = sim.market.expirations("TSLA")[1]
        data = await scanner.fetch_prices(FetchPricesPayload(contracts=[dict(ticker="TSLA", strike=250.0, expiry=exp,
                                                                             right="C")]))
        row = data["contracts"][0]
        assert row is not None and row["delayed"] is True and row["bid"] > 0
        under = await scanner.fetch_underlying(FetchUnderlyingPayload(ticker="TSLA"))
        assert under["delayed"] is True and under["price"] > 0
        live = await scanner.fetch_underlying(FetchUnderlyingPayload(ticker="AAPL"))
        assert live["delayed"] is False and live["price"] == sim.market.stock_quote("AAPL").last


async def test_check_availability():
    """check_availability counts listed expirations; an unknown symbol is simply not available."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        ok = await scanner.check_availability(TickerPayload(ticker="AAPL"))
        assert ok == {"available": True, "expirationCount": len(sim.market.expirations("AAPL"))}
        assert await scanner.check_availability(TickerPayload(ticker="XYZQ")) == {"available": False,
                                                                                  "expirationCount": 0}


async def test_relay_facing_errors_are_clear():
    """Unknown ticker, past dates, a bad right and empty legs each get a trader-readable success:false answer."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        d = dispatcher_for(bridge, pacer, scanner)
        today = sim.market.today
        future = (today + dt.timedelta(days=30)).isoformat()
        r = await d.handle(frame("fetch-chain", {"ticker": "XYZQ", "dealPrice": 10, "expectedCloseDate": future}))
        assert r["success"] is False and "Unknown ticker 'XYZQ'" in r["error"]
        past = (today - dt.timedelta(days=3)).isoformat()
        r = await d.handle(frame("fetch_chain", {"ticker": "AAPL", "dealPrice": 230, "expectedCloseDate": past}))
        assert r["success"] is False and "in the past" in r["error"]
        r = await d.handle(frame("fetch_prices", {"contracts": [{"ticker": "AAPL", "strike": 230,
                                                                 "expiry": past.replace("-", ""), "right": "C"}]}))
        assert r["success"] is False and "leg 1" in r["error"] and "in the past" in r["error"]
        r = await d.handle(frame("sell_scan", {"ticker": "AAPL", "right": "X"}))
        assert r["success"] is False and "right must be 'C' or 'P'" in r["error"]
        r = await d.handle(frame("fetch-prices", {"contracts": []}))
        assert r["success"] is False and "No contracts specified" in r["error"]
        r = await d.handle(frame("fetch_chain", {"ticker": "AAPL", "dealPrice": 230, "expectedCloseDate": "03/12/26"}))
        assert r["success"] is False and "expectedCloseDate" in r["error"]


async def test_unknown_ticker_raises_invalid_request():
    """The scanner raises InvalidRequest naming the symbol (never an empty chain)."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        with pytest.raises(InvalidRequest, match="IB has no stock by that symbol"):
            await scanner.sell_scan(SellScanPayload(ticker="XYZQ"))


async def test_max_batch_size_bounds_lines_at_tws():
    """_max_batch_size = 3: TWS never sees more than 3 of our lines at once (with no warm lines kept), and none
    is left open."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        scanner = OptionScanner(bridge, pacer, today=lambda: sim.market.today, warm_lines=0)
        exp = sim.market.expirations("AAPL")[1]
        legs = [dict(ticker="AAPL", strike=k, expiry=exp, right=r) for k in (220.0, 225.0, 230.0, 235.0, 240.0)
                for r in "CP"]
        data = await scanner.fetch_prices(FetchPricesPayload(contracts=legs, _max_batch_size=3))
        assert sum(r is not None for r in data["contracts"]) == 10
        await sim_caught_up(bridge)
        stats = sim.stats()
        assert stats["peak_lines"] <= 3 and stats["active_lines"] == 0


async def test_cancelled_request_leaks_no_line():
    """A chain cancelled mid-flight (relay gone, deadline) leaves no line open at TWS or in the pacer."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        close = sim.market.today + dt.timedelta(days=30)
        opened, twenty = [], asyncio.Event()
        real_open = bridge.open_market_data

        async def counting_open(*args, **kw):
            line = await real_open(*args, **kw)
            opened.append(line)
            if len(opened) >= 20:
                twenty.set()
            return line

        bridge.open_market_data = counting_open
        task = asyncio.ensure_future(scanner.fetch_chain(FetchChainPayload(ticker="AAPL", dealPrice=230.0,
                                                                           expectedCloseDate=close)))
        await asyncio.wait_for(twenty.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The bridge finishes the cancelMktData of a line whose request was cancelled while closing it (in its
        # own task, paced): await those tasks, then one more round trip so TWS has read every cancel.
        assert await bridge.wait_lines_closed(10.0)
        await sim_caught_up(bridge)
        assert pacer.lines_in_use == 0 and bridge.open_lines == 0
        assert sim.stats()["active_lines"] == 0


async def test_three_concurrent_flows_trip_no_limit():
    """Curate, Account and Monitor at once through the dispatcher: no error 100/101, no violation, all answered."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        d = dispatcher_for(bridge, pacer, scanner)
        today = sim.market.today
        exp = sim.market.expirations("AAPL")[1]
        chain = frame("fetch_chain", {"ticker": "AAPL", "dealPrice": 230.0,
                                      "expectedCloseDate": (today + dt.timedelta(days=30)).isoformat()}, "c1")
        sell = frame("sell_scan", {"ticker": "MSFT", "right": "C", "business_days": 15}, "s1")
        legs = [{"ticker": "AAPL", "strike": k, "expiry": exp, "right": "C"} for k in (220.0, 225.0, 230.0, 235.0)]
        prices = frame("fetch_prices", {"contracts": legs}, "p1")
        answers = await asyncio.gather(d.handle(chain), d.handle(sell), d.handle(prices))
        assert [a["success"] for a in answers] == [True, True, True], [a["error"] for a in answers]
        await sim_caught_up(bridge)
        stats = sim.stats()
        assert stats["violations"] == []
        assert not [e for e in stats["errors_sent"] if e["code"] in (100, 101, 102)]
        # Only Monitor's legs stay open, kept warm for its next refresh (none while another flow waited for lines).
        assert stats["active_lines"] == pacer.lines_warm == len(scanner.warm) <= 4 and stats["peak_msg_rate"] <= 50


async def test_huge_request_is_refused_up_front_with_advice():
    """A fetch_prices too large for the relay's 60 s wait is refused at once (no TWS message) and says why."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        d = dispatcher_for(bridge, pacer, scanner)
        exp = sim.market.expirations("AAPL")[3]
        legs = [{"ticker": "AAPL", "strike": 100 + k * 0.5, "expiry": exp, "right": r}
                for k in range(400) for r in "CP"]
        before = pacer.messages_sent
        r = await d.handle(frame("fetch_prices", {"contracts": legs}))
        assert r["success"] is False and "800 option quotes" in r["error"] and "fewer legs" in r["error"]
        assert pacer.messages_sent == before


async def test_no_quotes_at_all_is_an_error_not_rows_of_zeros():
    """With the market data farm down TWS sends nothing: the refresh fails and names the farm."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        scanner.window = 0.3
        exp = sim.market.expirations("AAPL")[1]
        legs = [dict(ticker="AAPL", strike=k, expiry=exp, right="C") for k in (225.0, 230.0)]
        await sim.set_farm("usfarm", up=False)
        await sim_caught_up(bridge)          # the 2103 "farm broken" message has arrived before this answer
        with pytest.raises(RequestTimeout, match="usfarm"):
            await scanner.fetch_prices(FetchPricesPayload(contracts=legs))
        await sim.set_farm("usfarm", up=True)
        data = await scanner.fetch_prices(FetchPricesPayload(contracts=legs))
        assert all(r is not None for r in data["contracts"])


async def test_no_stock_price_names_the_symbol_and_what_to_check():
    """With the farm down the stock never prices: sell_scan and the underlying quote say so with the window and the
    farm advice; a chain with no dealPrice to centre on asks for one."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        scanner.spot_window = 0.3
        await sim.set_farm("usfarm", up=False)
        await sim_caught_up(bridge)
        with pytest.raises(RequestTimeout, match=r"IB sent no price for AAPL within 0.3 s; check TWS's market data"):
            await scanner.sell_scan(SellScanPayload(ticker="AAPL", right="C"))
        with pytest.raises(RequestTimeout, match=r"IB sent no price for AAPL within 0.3 s; check TWS's market data"):
            await scanner.fetch_underlying(FetchUnderlyingPayload(ticker="AAPL"))
        close = sim.market.today + dt.timedelta(days=30)
        with pytest.raises(RequestTimeout, match=r"IB sent no price for AAPL, and no dealPrice was given"):
            await scanner.fetch_chain(FetchChainPayload(ticker="AAPL", dealPrice=0, expectedCloseDate=close))
        assert sim.stats()["active_lines"] == 0


async def test_sell_scan_with_no_expiry_in_the_window_says_how_to_widen_it():
    """JNPR lists monthlies only: a 0-day sell scan finds no expiry and says to raise business_days."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        with pytest.raises(InvalidRequest, match="raise business_days") as e:
            await scanner.sell_scan(SellScanPayload(ticker="JNPR", right="C", business_days=0))
        assert sim.market.expirations("JNPR")[0] in str(e.value)      # names the next expiry


async def test_quotes_lost_to_the_nightly_reset_are_asked_again_after_1101():
    """Legs asked during IB's nightly reset (1100) hear nothing; after 1101 they are asked once more and priced."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        scanner.window = 0.3        # a leg listens this long during the outage (it would hear nothing however long)
        exp = sim.market.expirations("AAPL")[1]
        legs = [dict(ticker="AAPL", strike=k, expiry=exp, right="C") for k in (225.0, 230.0)]
        # The outage lasts until the scanner, its legs silent, waits for data to come back: then it ends (cancelling
        # nightly_reset sends its 1101 at once), and the legs asked again listen until they have their data.
        reset = asyncio.ensure_future(sim.nightly_reset(data_lost=True, outage=HANG_GUARD))
        real_data_back = scanner._data_back
        waited = []

        async def outage_ends_while_the_scanner_waits(timeout: float) -> bool:
            waited.append(bridge.data_available)
            scanner.window = HANG_GUARD
            reset.cancel()
            return await real_data_back(HANG_GUARD)
        scanner._data_back = outage_ends_while_the_scanner_waits
        try:
            await sim_caught_up(bridge)          # the 1100 has arrived before this answer
            assert bridge.data_available is False
            data = await scanner.fetch_prices(FetchPricesPayload(contracts=legs))
        finally:
            reset.cancel()
            await asyncio.gather(reset, return_exceptions=True)
        assert waited == [False]                 # the scanner waited once, while TWS still had no data
        assert "errors" not in data and scanner.stats["retried_contracts"] == 2
        for row in data["contracts"]:
            assert_row_matches_sim(sim, row, chain=False)


async def test_chain_with_silent_contracts_marks_them_and_is_not_cached():
    """A farm lost mid-chain: rows TWS said nothing about carry the reason, and the answer is not cached."""
    async with scanner_stack() as (sim, bridge, pacer, scanner):
        scanner.window = 0.3        # a line asked while the farm is down hears nothing, however long it listens
        close = sim.market.today + dt.timedelta(days=30)
        p = FetchChainPayload(ticker="AAPL", dealPrice=230.0, expectedCloseDate=close)
        real_end = bridge.end_market_data
        farm_lost: list[asyncio.Task] = []

        def farm_lost_after_first_quote(line):
            # The first option line to end early has its quote; the lines asked after the farm went hear nothing.
            if not farm_lost and line.contract.sec_type == "OPT" and line.quote.has_price:
                farm_lost.append(asyncio.ensure_future(sim.set_farm("usfarm", up=False)))
            return real_end(line)

        bridge.end_market_data = farm_lost_after_first_quote
        data = await scanner.fetch_chain(p)
        bridge.end_market_data = real_end
        await farm_lost[0]
        silent = [r for r in data["contracts"] if r["bid"] == 0 and r["ask"] == 0 and r["last"] == 0]
        priced = [r for r in data["contracts"] if r["bid"] > 0 or r["ask"] > 0]
        assert silent and priced
        assert all("no data from TWS within 0.3 s" in r["error"] and "usfarm" in r["error"] for r in silent)
        assert all("error" not in r for r in priced)
        await sim.set_farm("usfarm", up=True)
        await sim_caught_up(bridge)
        sent = sim.stats()["messages_received"]
        scanner.window = HANG_GUARD             # the farm is back: every line listens until it has its data
        again = await scanner.fetch_chain(p)
        assert sim.stats()["messages_received"] > sent and scanner.stats["chain_cache_hits"] == 0
        assert all("error" not in r for r in again["contracts"])
