"""The TWS bridge's market data lines against the simulator: quotes, greeks, delayed data, the line budget,
the pacer under a burst, the nightly reset, and closing."""

from __future__ import annotations

import asyncio

import pytest

from agent.pacer import Pacer, current_flow
from agent.tws import TwsBridge
from agent.types import Contract

from bridge_harness import AAPL, Events, bridge_for, settings, simulator, sync


# --- market data -------------------------------------------------------------------------------

async def open_line(b: TwsBridge, contract: Contract, ticks: str = ""):
    assert await b.pacer.acquire_lines(1) == 1
    try:
        return await b.open_market_data(contract, generic_ticks=ticks)
    except BaseException:
        b.pacer.release_lines(1)
        raise


async def test_market_data_line_quotes_and_close_returns_line():
    """A stock line fills bid/ask; closing cancels it at TWS and returns the line to the pacer."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        line = await open_line(b, AAPL)
        assert await line.wait(lambda q: q.bid is not None and q.ask is not None, 5.0)
        assert line.quote.bid <= line.quote.ask and line.quote.error_code is None
        assert b.pacer.lines_in_use == 1
        await b.close_market_data(line)
        await b.close_market_data(line)          # idempotent
        assert line.closed and b.pacer.lines_in_use == 0
        await sync(b)
        assert sim.stats()["active_lines"] == 0


async def test_option_line_gets_greeks_and_failed_line_wakes_waiter():
    """An option line gets greeks from option computations; an unknown contract's line fails with 200."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        info = (await b.contract_details(AAPL))[0]
        p = (await b.option_params("AAPL", info.contract.con_id))[0]
        strike = p.strikes[len(p.strikes) // 2]
        opt = Contract.option("AAPL", p.expirations[0], strike, "C")
        line = await open_line(b, opt, "100,101,106")
        assert await line.wait(lambda q: q.delta is not None, 5.0)
        assert 0 <= line.quote.delta <= 1 and line.quote.implied_vol and line.quote.implied_vol > 0
        bad = await open_line(b, Contract.option("AAPL", p.expirations[0], strike + 0.123, "C"))
        assert await bad.wait(lambda q: False, 5.0)          # True because the line failed
        assert bad.quote.error_code == 200 and bad.quote.failed
        await b.close_market_data(line)
        await b.close_market_data(bad)
        assert b.pacer.lines_in_use == 0


@pytest.mark.parametrize("contract, code", [(Contract.stock("NOSUCH"), 200), (Contract.stock("TSLA"), 354)])
async def test_a_refused_line_comes_back_without_a_cancel(monkeypatch, contract, code):
    """TWS refuses a reqMktData (200 no such contract; 354 not subscribed, with live data asked for): it holds no
    line for it, so ending the line sends no cancelMktData (no error 300) and gives the line back at once."""
    monkeypatch.setattr("agent.tws.bridge.MARKET_DATA_TYPE", 1)         # live only: TSLA has no live permission
    async with simulator() as sim, bridge_for(sim.port) as b:
        line = await open_line(b, contract)
        assert await line.wait(lambda q: False, 5.0)         # True: the line failed
        assert line.quote.error_code == code and line.quote.failed
        written = b.messages_written
        await b.close_market_data(line)
        assert line.closed and b.pacer.lines_in_use == 0 and b.open_lines == 0
        assert b.messages_written == written                 # no cancelMktData went out
        await sync(b)
        st = sim.stats()
        assert st["active_lines"] == 0 and not [e for e in st["errors_sent"] if e["code"] == 300]


async def test_no_live_permission_gives_delayed_quotes_not_a_failure():
    """Without live permission (reqMarketDataType 3 sent on connect) TWS sends 10167 and delayed ticks: the
    quote is marked delayed, carries prices and is not failed."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        line = await open_line(b, Contract.stock("TSLA"))
        assert await line.wait(lambda q: q.bid is not None and q.ask is not None, 5.0)
        assert line.quote.delayed and line.quote.error_code is None and not line.quote.failed
        assert b.errors_seen.get(10167) == 1
        await b.close_market_data(line)


async def test_wait_times_out_false():
    """wait() returns False when the predicate never holds and the line does not fail."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        line = await open_line(b, AAPL)
        assert not await line.wait(lambda q: False, 0.05)
        await b.close_market_data(line)


async def test_close_from_cancelled_task_still_cancels_line():
    """A task cancelled while waiting on its line still cancels it at TWS and returns the line (no leak)."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        opened = asyncio.Event()

        async def user() -> None:
            line = await open_line(b, AAPL)
            try:
                opened.set()
                await line.wait(lambda q: False, 30)
            finally:
                await b.close_market_data(line)

        t = asyncio.create_task(user())
        await opened.wait()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await sync(b)
        assert b.pacer.lines_in_use == 0 and b.open_lines == 0
        assert sim.stats()["active_lines"] == 0


async def test_many_concurrent_lines_stay_within_budget_and_do_not_leak():
    """60 concurrent users sharing a budget of 15 never exceed it, never get error 101, and leave no line open."""
    pacer = Pacer(max_lines=20, line_margin=5)
    async with simulator(max_lines=20) as sim, bridge_for(sim.port, pacer=pacer) as b:
        peak = 0

        async def user(i: int) -> None:
            nonlocal peak
            current_flow.set(f"req{i % 6}")
            await b.pacer.acquire_lines(1)
            try:
                line = await b.open_market_data(AAPL if i % 2 else Contract.stock("MSFT"))
            except BaseException:
                b.pacer.release_lines(1)
                raise
            try:
                peak = max(peak, b.pacer.lines_in_use, sim.stats()["active_lines"])
                await line.wait(lambda q: q.bid is not None, 5.0)
            finally:
                await b.close_market_data(line)

        users = [asyncio.create_task(user(i)) for i in range(60)]
        await asyncio.gather(*users[:50])
        for t in users[50:]:
            t.cancel()                           # some owners are cancelled mid-way
        await asyncio.gather(*users[50:], return_exceptions=True)
        assert await b.wait_lines_closed(5.0)    # cancels whose callers were cancelled still go out
        await sync(b)
        st = sim.stats()
        assert peak <= 15
        assert st["active_lines"] == 0 and b.pacer.lines_in_use == 0 and b.open_lines == 0
        assert 101 not in b.errors_seen and not st["violations"]


async def test_pacer_keeps_a_300_request_burst_under_the_limit():
    """300 concurrent requests go out at <= 45 messages/s: no pacing violation (error 100) at the simulator.

    The 45 is the agent's own count when it sends (deterministic); the simulator counts on arrival, where a
    loaded machine's scheduling jitter can add one or two, so there the bound is IB's real one (50).
    """
    async with simulator() as sim, bridge_for(sim.port) as b:
        results = await asyncio.gather(*(b.contract_details(AAPL, timeout=30) for _ in range(300)))
        assert all(r and r[0].contract.symbol == "AAPL" for r in results)
        st = sim.stats()
        assert b.pacer.messages_sent >= 300 and b.pacer.peak_rate_1s <= 45
        assert not st["violations"] and st["peak_msg_rate"] <= 50
        assert 100 not in b.errors_seen


async def test_nightly_reset_data_lost_resubscribes_open_lines():
    """1100 marks data unavailable; 1101 re-requests open lines (quotes flow again) and emits a resync."""
    ev = Events()
    async with simulator() as sim, bridge_for(sim.port, events=ev) as b:
        line = await open_line(b, AAPL)
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        resync = asyncio.create_task(ev.next("tws_reconnected"))
        await sim.nightly_reset(data_lost=True)
        await resync
        assert b.errors_seen.get(1100) == 1 and b.errors_seen.get(1101) == 1
        line.quote.bid = None                    # forget the old quote: only a re-subscribed line refills it
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        assert b.data_available and line.quote.error_code is None
        await sync(b)
        assert sim.stats()["active_lines"] == 1
        await b.close_market_data(line)


async def test_nightly_reset_data_kept_keeps_lines():
    """1102 keeps the subscriptions: no re-request (no duplicate ticker id 102) and quotes keep coming."""
    ev = Events()
    async with simulator() as sim, bridge_for(sim.port, events=ev) as b:
        line = await open_line(b, AAPL)
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        resync = asyncio.create_task(ev.next("tws_reconnected"))
        await sim.nightly_reset(data_lost=False)
        await resync
        line.quote.bid = None
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        await sync(b)
        assert 102 not in b.errors_seen and sim.stats()["active_lines"] == 1
        await b.close_market_data(line)


async def test_close_disconnects_and_ends_the_thread():
    """close() cancels lines, disconnects and ends the session thread; state says disconnected."""
    async with simulator() as sim:
        b = TwsBridge(settings(sim.port), Pacer())
        await b.connect()
        line = await open_line(b, AAPL)
        session = b._session
        await b.close()
        assert not b.connected and line.closed and b.pacer.lines_in_use == 0
        # The thread's last act is to post "_ended" to the loop, so close() can return while the thread is still
        # returning from its function (seen under load): join it (bounded) rather than sample is_alive().
        assert session.thread is not None
        await asyncio.to_thread(session.thread.join, 5.0)
        assert not session.thread.is_alive()
