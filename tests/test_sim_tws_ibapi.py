"""The TWS simulator driven by the real ibapi client (a threaded probe): requests, values, limits.
Orders: test_sim_tws_orders.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from sim.tws.probe import Probe, ProbeTimeout, option, stock

from sim_probe import connect, connected, is_tick, order, run


# ---- handshake --------------------------------------------------------------------------------------------

async def test_handshake_greets_with_accounts_next_id_and_farm_status(make_sim):
    """After startApi: managedAccounts, nextValidId, then farm OK messages 2104/2106/2158 with id -1."""
    sim = await make_sim(accounts=("DU111", "DU222"))
    async with connected(sim) as p:
        assert p.client.serverVersion() == 157
        assert (await run(p.wait, "managedAccounts"))[0] == "DU111,DU222"
        codes = set()
        for _ in range(3):
            ev = await run(p.wait, "error")
            assert ev[0] == -1
            codes.add(ev[1])
        assert codes == {2104, 2106, 2158}
        assert sim.stats()["clients"] == [1]


async def test_live_accounts_are_reported(make_sim):
    """A live setup reports its U... accounts in managedAccounts."""
    sim = await make_sim(accounts=("U1234567",))
    async with connected(sim) as p:
        assert (await run(p.wait, "managedAccounts"))[0] == "U1234567"


async def test_client_id_in_use_gets_326_and_is_disconnected(sim):
    """A second connection with a clientId already connected gets error 326 and is dropped."""
    p1 = await connect(sim, 5)
    p2 = Probe(sim.port, 5)
    try:
        await run(p2.connect, 5.0, False)            # the handshake itself succeeds; startApi is refused
        ev = await run(p2.wait, "error", lambda e: e[1] == 326)
        assert "already in use" in ev[2]
        await run(p2.wait, "connectionClosed")
        assert sim.stats()["clients"] == [5]
    finally:
        p1.disconnect()
        p2.disconnect()


# ---- market data ------------------------------------------------------------------------------------------

async def test_stock_stream_quotes_and_generic_ticks(sim):
    """SPY streams bid < ask near the model, close, last timestamp, halted, generic ticks 27-30/23/24; cancel frees it."""
    async with connected(sim) as p:
        p.client.reqMktData(1, stock("SPY"), "100,101,104,106", False, False, [])
        bid = (await run(p.wait, "tickPrice", is_tick(1, 1)))[2]
        ask = (await run(p.wait, "tickPrice", is_tick(1, 2)))[2]
        model = sim.market.stock_quote("SPY")
        assert 0 < bid < ask and abs(bid - model.bid) < 2.0
        await run(p.wait, "tickPrice", is_tick(1, 9))
        sizes = {}
        for t in (27, 28, 29, 30):
            sizes[t] = (await run(p.wait, "tickSize", is_tick(1, t)))[2]
        assert all(v > 0 for v in sizes.values())
        assert abs(int((await run(p.wait, "tickString", is_tick(1, 45)))[2]) - time.time()) < 5   # last timestamp
        assert (await run(p.wait, "tickGeneric", is_tick(1, 49)))[2] == 0                           # not halted
        hv = (await run(p.wait, "tickGeneric", is_tick(1, 23)))[2]
        iv = (await run(p.wait, "tickGeneric", is_tick(1, 24)))[2]
        assert 0 < hv < 1 and 0 < iv < 1
        assert sim.stats()["lines_by_client"] == {1: 1}
        p.client.cancelMktData(1)
        p.client.reqCurrentTime()
        await run(p.wait, "currentTime")
        assert sim.stats()["active_lines"] == 0


async def test_option_stream_sends_greeks_after_first_quote(sim):
    """An option line: first quote, then tick 21 computations; call delta in (0,1), put in (-1,0), IV near model."""
    exp = sim.market.expirations("AAPL")[2]
    async with connected(sim) as p:
        p.client.reqMktData(2, option("AAPL", exp, 232.5, "C"), "", False, False, [])
        p.client.reqMktData(3, option("AAPL", exp, 232.5, "P"), "101", False, False, [])
        model_c = await run(p.wait, "tickOptionComputation", is_tick(2, 13))
        model_p = await run(p.wait, "tickOptionComputation", is_tick(3, 13))
        first_quote = next(i for i, e in enumerate(p.history) if e.name == "tickPrice" and e[0] == 2)
        first_greek = next(i for i, e in enumerate(p.history) if e.name == "tickOptionComputation" and e[0] == 2)
        assert first_quote < first_greek
        iv, delta, price, _, gamma, vega, theta, und = model_c.args[3:]
        q = sim.market.option_quote("AAPL", exp, 232.5, "C")
        assert 0 < delta < 1 and gamma > 0 and vega > 0 and theta < 0
        assert abs(iv - q.iv) < 0.02 and abs(und - q.und_price) / q.und_price < 0.01
        assert -1 < model_p[4] < 0
        oi = await run(p.wait, "tickSize", is_tick(3, 28))       # put open interest comes as tick 28
        assert oi[2] > 0
        bid_comp = await run(p.wait, "tickOptionComputation", is_tick(2, 10))
        assert bid_comp[3] is not None and abs(bid_comp[3] - q.iv) < 0.05


async def test_quotes_move_over_time(sim):
    """The SPY last price changes while the line streams (the seeded walk moves)."""
    async with connected(sim) as p:
        p.client.reqMktData(1, stock("SPY"), "", False, False, [])
        first = (await run(p.wait, "tickPrice", is_tick(1, 4)))[2]
        # the wait is the check: a last price other than the first arrives (ProbeTimeout if the walk stood still)
        await run(p.wait, "tickPrice", lambda e: e[0] == 1 and e[1] == 4 and e[2] != first, 10.0)


async def test_illiquid_option_sends_no_bid_no_ask(sim):
    """A far OTM, far-dated option quotes bid/ask -1 with size 0 (IB's "no bid"/"no ask")."""
    far = sim.market.expirations("SPY")[-1]
    k = max(sim.market.strikes("SPY", far))
    async with connected(sim) as p:
        p.client.reqMktData(4, option("SPY", far, k, "C"), "", False, False, [])
        bid = await run(p.wait, "tickPrice", is_tick(4, 1))
        size = await run(p.wait, "tickSize", is_tick(4, 0))
        assert bid[2] == -1 and size[2] == 0


async def test_snapshot_ends_with_tick_snapshot_end_and_frees_its_line(sim):
    """snapshot=True: quotes then tickSnapshotEnd; the line is gone afterwards."""
    async with connected(sim) as p:
        p.client.reqMktData(7, stock("MSFT"), "", True, False, [])
        await run(p.wait, "tickPrice", is_tick(7, 1))
        await run(p.wait, "tickSnapshotEnd", lambda e: e[0] == 7)
        assert sim.stats()["active_lines"] == 0


async def test_snapshot_with_generic_ticks_is_error_321(sim):
    """A snapshot asking for generic ticks is refused with 321 and takes no line."""
    async with connected(sim) as p:
        p.client.reqMktData(8, stock("MSFT"), "101", True, False, [])
        ev = await run(p.error_for, 8)
        assert ev[1] == 321 and "generic" in ev[2]
        assert sim.stats()["active_lines"] == 0


async def test_unknown_or_ambiguous_contract_is_error_200(sim):
    """An unknown symbol, an off-grid strike and an under-specified option all get 200 for market data."""
    exp = sim.market.expirations("AAPL")[0]
    async with connected(sim) as p:
        p.client.reqMktData(10, stock("NOPE"), "", False, False, [])
        p.client.reqMktData(11, option("AAPL", exp, 231.0, "C"), "", False, False, [])
        p.client.reqMktData(12, option("AAPL", exp, 0.0, "C"), "", False, False, [])
        for rid in (10, 11, 12):
            assert (await run(p.error_for, rid))[1] == 200
        assert sim.stats()["active_lines"] == 0


async def test_duplicate_ticker_id_is_error_102(sim):
    """A second reqMktData with an active ticker id gets 102; the first line keeps streaming."""
    async with connected(sim) as p:
        p.client.reqMktData(1, stock("SPY"), "", False, False, [])
        p.client.reqMktData(1, stock("AAPL"), "", False, False, [])
        assert (await run(p.error_for, 1))[1] == 102
        assert sim.stats()["active_lines"] == 1


async def test_max_lines_shared_by_all_clients_gives_101(make_sim):
    """With max_lines=3, two lines on one client and one on another fill TWS; the next gets 101."""
    sim = await make_sim(max_lines=3)
    async with connected(sim, 1) as a, connected(sim, 2) as b:
        a.client.reqMktData(1, stock("SPY"), "", False, False, [])
        a.client.reqMktData(2, stock("AAPL"), "", False, False, [])
        b.client.reqMktData(1, stock("MSFT"), "", False, False, [])
        await run(b.wait, "tickPrice", is_tick(1, 1))
        await run(a.wait, "tickPrice", is_tick(2, 1))
        b.client.reqMktData(2, stock("JNPR"), "", False, False, [])
        ev = await run(b.error_for, 2)
        assert ev[1] == 101 and ev[2] == "Max number of tickers has been reached"
        st = sim.stats()
        assert st["active_lines"] == 3 and st["lines_by_client"] == {1: 2, 2: 1}


async def test_disconnect_frees_all_lines(sim):
    """A client that goes away leaves no market data line behind."""
    p = await connect(sim)
    p.client.reqMktData(1, stock("SPY"), "", False, False, [])
    await run(p.wait, "tickPrice", is_tick(1, 1))
    await run(p.disconnect)
    for _ in range(200):
        if sim.stats()["active_lines"] == 0:
            break
        await asyncio.sleep(0.01)
    assert sim.stats()["active_lines"] == 0


# ---- delayed data -----------------------------------------------------------------------------------------

async def test_no_permission_with_live_type_is_354_and_no_data(sim):
    """TSLA has no live permission: with market data type 1 it gets 354 and no line."""
    async with connected(sim) as p:
        p.client.reqMktData(1, stock("TSLA"), "", False, False, [])
        assert (await run(p.error_for, 1))[1] == 354
        p.client.reqCurrentTime()
        await run(p.wait, "currentTime")
        assert sim.stats()["active_lines"] == 0
        assert not [e for e in p.history if e.name in ("tickPrice", "tickSize") and e[0] == 1]


async def test_delayed_type_gives_10167_then_delayed_ticks_for_unpermitted_symbol(sim):
    """With type 3: TSLA gets advisory 10167, marketDataType 3 and delayed ticks 66/67 (option: 83)."""
    exp = sim.market.expirations("TSLA")[1]
    async with connected(sim) as p:
        p.client.reqMarketDataType(3)
        p.client.reqMktData(1, stock("TSLA"), "", False, False, [])
        p.client.reqMktData(2, option("TSLA", exp, 250.0, "C"), "", False, False, [])
        assert (await run(p.error_for, 1))[1] == 10167
        assert (await run(p.wait, "marketDataType", lambda e: e[0] == 1))[1] == 3
        bid = await run(p.wait, "tickPrice", is_tick(1, 66))
        ask = await run(p.wait, "tickPrice", is_tick(1, 67))
        assert 0 < bid[2] < ask[2]
        comp = await run(p.wait, "tickOptionComputation", is_tick(2, 83))
        assert 0 < comp[4] < 1
        assert not [e for e in p.history if e.name == "tickPrice" and e[0] == 1 and e[1] in (1, 2)]


async def test_delayed_type_with_permission_sends_live_data(sim):
    """With type 3 and a live permission (SPY): marketDataType 1 and live ticks 1/2, as real TWS does."""
    async with connected(sim) as p:
        p.client.reqMarketDataType(3)
        p.client.reqMktData(1, stock("SPY"), "", False, False, [])
        assert (await run(p.wait, "marketDataType", lambda e: e[0] == 1))[1] == 1
        await run(p.wait, "tickPrice", is_tick(1, 1))
        assert not p.errors(10167)


# ---- pacing -----------------------------------------------------------------------------------------------

async def test_over_50_messages_per_second_is_error_100_and_third_violation_disconnects(sim):
    """A client sending ~80 msg/s gets error 100 (with its count) and is dropped at the 3rd violation."""
    async with connected(sim) as p:

        def flood() -> None:
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline and p.client.isConnected():
                p.client.reqCurrentTime()
                time.sleep(1 / 80)

        await run(flood)
        await run(p.wait, "connectionClosed", None, 5.0)
        errs = p.errors(100)
        assert errs and errs[0][2] == "Max rate of messages per second has been exceeded:max=50 rec=51 (1)"
        st = sim.stats()
        assert len(st["violations"]) == 3 and {v["code"] for v in st["violations"]} == {100}
        assert st["clients"] == [] and st["peak_msg_rate"] >= 51 and st["peak_msg_rate_by_client"][1] >= 51
        sim.reset_stats()
        assert sim.stats()["violations"] == [] and sim.stats()["peak_msg_rate"] == 0


async def test_delay_pacing_mode_answers_everything_without_error(make_sim):
    """pacing="delay": a burst of 120 requests is answered in full, with no error 100."""
    sim = await make_sim(pacing="delay")
    async with connected(sim) as p:
        for _ in range(120):
            p.client.reqCurrentTime()
        got = 0
        while got < 120:
            await run(p.wait, "currentTime", None, 10.0)
            got += 1
        assert not p.errors(100) and not sim.stats()["violations"]
        assert sim.stats()["peak_msg_rate"] <= 50


async def test_paceapi_connect_option_paces_instead_of_rejecting(sim):
    """A client connecting with the "+PACEAPI" option is paced by TWS, not given error 100, in reject mode."""
    p = Probe(sim.port, 1)
    p.client.setConnectionOptions("+PACEAPI")
    await run(p.connect)
    try:
        for _ in range(80):
            p.client.reqCurrentTime()
        for _ in range(80):
            await run(p.wait, "currentTime", None, 10.0)
        assert not p.errors(100) and not sim.stats()["violations"]
    finally:
        p.disconnect()


# ---- reference data ---------------------------------------------------------------------------------------

async def test_contract_details_for_stock_and_partly_specified_option(sim):
    """STK gives one row with its conId; an option with only expiry+right gives one row per listed strike."""
    exp = sim.market.expirations("AAPL")[1]
    async with connected(sim) as p:
        p.client.reqContractDetails(1, stock("AAPL"))
        rows = [e for e in await run(p.collect, "contractDetailsEnd") if e.name == "contractDetails"]
        assert len(rows) == 1 and rows[0][1].contract.conId == 265598 and rows[0][1].longName == "APPLE INC"
        p.client.reqContractDetails(2, option("AAPL", exp, 0.0, "P"))
        rows = [e for e in await run(p.collect, "contractDetailsEnd") if e.name == "contractDetails"]
        strikes = sorted(e[1].contract.strike for e in rows)
        assert strikes == sim.market.strikes("AAPL", exp)
        assert all(e[1].contract.right == "P" and e[1].underConId == 265598 for e in rows)
        p.client.reqContractDetails(3, option("AAPL", exp, 231.0, "C"))
        assert (await run(p.error_for, 3))[1] == 200


async def test_sec_def_opt_params_lists_smart_and_cboe(sim):
    """reqSecDefOptParams answers one row per exchange, then the end marker; their union is the chain."""
    async with connected(sim) as p:
        p.client.reqSecDefOptParams(1, "AAPL", "", "STK", 265598)
        evs = await run(p.collect, "securityDefinitionOptionParameterEnd")
        rows = [e for e in evs if e.name == "securityDefinitionOptionParameter"]
        assert {e[1] for e in rows} == {"SMART", "CBOE"}
        union = set().union(*(e[6] for e in rows))
        assert 232.5 in union
        assert all(e[5] == set(sim.market.expirations("AAPL")) for e in rows)
        p.client.reqSecDefOptParams(2, "NOPE", "", "STK", 0)
        assert (await run(p.error_for, 2))[1] == 200


async def test_current_time_and_req_ids(sim):
    """reqCurrentTime answers the epoch; reqIds answers a nextValidId past any used order id."""
    async with connected(sim) as p:
        p.client.reqCurrentTime()
        assert abs((await run(p.wait, "currentTime"))[0] - time.time()) < 5
        p.client.placeOrder(41, stock("SPY"), order("BUY", 1, "LMT", 1.0))
        await run(p.wait, "orderStatus", lambda e: e[0] == 41)
        p.client.reqIds(1)
        assert (await run(p.wait, "nextValidId"))[0] == 42


async def test_unimplemented_request_is_logged_and_session_survives(sim):
    """A request the simulator does not implement is counted and ignored; the session goes on."""
    async with connected(sim) as p:
        p.client.reqNewsBulletins(True)
        p.client.reqCurrentTime()
        await run(p.wait, "currentTime")
        assert sim.stats()["unhandled"] == {12: 1}


# ---- account ----------------------------------------------------------------------------------------------

async def test_positions_account_summary_and_account_updates(sim):
    """Seeded positions, account summary tags and the account update download all arrive with end markers."""
    async with connected(sim) as p:
        p.client.reqPositions()
        pos = [e for e in await run(p.collect, "positionEnd") if e.name == "position"]
        assert {(e[1].symbol, e[2]) for e in pos} == {("AAPL", 100.0), ("JNPR", 300.0)}
        p.client.reqAccountSummary(5, "All", "NetLiquidation,BuyingPower,AccountType")
        rows = [e for e in await run(p.collect, "accountSummaryEnd") if e.name == "accountSummary"]
        tags = {e[2]: e[3] for e in rows}
        assert set(tags) == {"NetLiquidation", "BuyingPower", "AccountType"} and float(tags["NetLiquidation"]) > 0
        p.client.reqAccountUpdates(True, "")
        evs = await run(p.collect, "accountDownloadEnd")
        assert any(e.name == "updatePortfolio" and e[0].symbol == "AAPL" for e in evs)
        assert any(e.name == "updateAccountValue" and e[0] == "NetLiquidation" for e in evs)
        assert evs[-1][0] == "DU1234567"


async def test_multi_account_requests_answer_with_end_markers(make_sim):
    """reqPositionsMulti and reqAccountUpdatesMulti (asked by ib_async on connect) answer per account + end."""
    sim = await make_sim(accounts=("DU1", "DU2"))
    async with connected(sim) as p:
        p.client.reqPositionsMulti(3, "DU2", "")
        rows = [e for e in await run(p.collect, "positionMultiEnd") if e.name == "positionMulti"]
        assert rows and {e[1] for e in rows} == {"DU2"} and {e[3].symbol for e in rows} == {"AAPL", "JNPR"}
        p.client.reqAccountUpdatesMulti(4, "", "", True)
        rows = [e for e in await run(p.collect, "accountUpdateMultiEnd") if e.name == "accountUpdateMulti"]
        assert {e[1] for e in rows} == {"DU1", "DU2"} and any(e[3] == "NetLiquidation" for e in rows)


async def test_probe_connect_times_out_instead_of_hanging(make_sim):
    """The probe's connect has a deadline even though ibapi's has none (silent handshake)."""
    sim = await make_sim()
    sim.silent_handshake = True
    with pytest.raises(ProbeTimeout):
        await run(Probe(sim.port, 3).connect, 0.5)


async def test_a_slow_contract_lookup_does_not_hold_up_the_clients_other_messages(sim):
    """TWS keeps reading while it looks reference data up: a later reqCurrentTime is answered first."""
    sim.latency.answer = lambda n_items=1: 0.5
    async with connected(sim) as p:
        p.client.reqContractDetails(41, stock("AAPL"))
        p.client.reqCurrentTime()
        await run(p.wait, "currentTime", timeout=2.0)
        assert p.count("contractDetailsEnd") == 0
        await run(p.wait, "contractDetailsEnd", timeout=3.0)
        names = [e.name for e in p.history if e.name in ("currentTime", "contractDetailsEnd")]
        assert names == ["currentTime", "contractDetailsEnd"]
