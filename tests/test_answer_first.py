"""Answer first, clean up after, against the TWS simulator (fast latency, loopback): the answer precedes the cancels,
no request ever uses a line before its cancel reached TWS, a request streams on the budget less the reserve, and
the pacer's order (new lines before cancels while lines are free, the freeing cancels first when they run short,
a Monitor refresh before a chain's queued lines) shows in what TWS receives."""

from __future__ import annotations

import asyncio
import contextlib

from agent.errors import IBDisconnected
from agent.pacer import Pacer, current_flow
from agent.types import Contract

from bridge_harness import scanner_stack


@contextlib.asynccontextmanager
async def stack(pacer: Pacer, sim_lines: int = 100):
    async with scanner_stack(pacer, max_lines=sim_lines) as (sim, bridge, _, scanner):
        sent: list[tuple[str, int, str]] = []         # (message, reqId, symbol) in the order TWS reads them
        symbols: dict[int, str] = {}
        real_send = bridge._send

        def record(session, what, fn, *args):
            real_send(session, what, fn, *args)
            if what == "reqMktData":
                symbols[args[0]] = args[1].symbol
            if what in ("reqMktData", "cancelMktData"):
                sent.append((what, args[0], symbols.get(args[0], "")))
        bridge._send = record
        yield sim, bridge, scanner, sent


def listed(sim, symbol: str, n: int) -> list[Contract]:
    """n listed contracts nearest the money."""
    m = sim.market
    spot = m.stock_quote(symbol).last
    out: list[Contract] = []
    for exp in m.expirations(symbol):
        for k in sorted(m.strikes(symbol, exp), key=lambda k: abs(k - spot)):
            for r in "CP":
                out.append(Contract.option(symbol, exp, k, r))
                if len(out) == n:
                    return out
    return out


async def all_cancelled(sim, bridge) -> dict:
    """Wait for the cancels the answer left behind, then one round trip: TWS has read them all."""
    assert await bridge.wait_lines_closed(timeout=10.0)
    await bridge.current_time(timeout=5.0)
    return sim.stats()


def bad_codes(stats: dict) -> list[int]:
    return [e["code"] for e in stats["errors_sent"] if e["code"] in (100, 101, 102)]


async def test_the_answer_comes_before_the_cancels():
    """A batch answers while its cancels still wait in the pacer; they all reach TWS afterwards."""
    pacer = Pacer(rate=20, burst=1, quiet_burst=0)  # a token every 55 ms: the cancels queue behind the answer
    async with stack(pacer) as (sim, bridge, scanner, sent):
        quotes = await scanner.get_option_data_batch(listed(sim, "AAPL", 6), need_greeks=True)
        assert all(q.has_price and q.delta is not None for q in quotes)
        assert pacer.lines_closing >= 1 and sim.stats()["active_lines"] >= 1
        stats = await all_cancelled(sim, bridge)
        assert stats["active_lines"] == 0 and pacer.lines_in_use == 0 and bridge.open_lines == 0
        assert sorted(rid for what, rid, _ in sent if what == "cancelMktData") == \
            sorted(rid for what, rid, _ in sent if what == "reqMktData")


async def test_no_request_overtakes_a_cancel_lines_never_exceed_the_budget():
    """TWS's 12 lines are the whole budget: 24 contracts go through without error 101, never over 12 lines."""
    pacer = Pacer(max_lines=12, line_margin=0)                      # budget 12, reserve 3
    async with stack(pacer, sim_lines=12) as (sim, bridge, scanner, sent):
        quotes = await scanner.get_option_data_batch(listed(sim, "SPY", 24), need_greeks=True)
        assert all(q.has_price for q in quotes)
        stats = await all_cancelled(sim, bridge)
        assert bad_codes(stats) == [] and stats["violations"] == []
        assert stats["peak_lines"] <= 12 and stats["active_lines"] == 0 and pacer.lines_in_use == 0
        open_now = peak = 0
        for what, _, _ in sent:                # what TWS read, in order: never more lines than the budget
            open_now += 1 if what == "reqMktData" else -1
            peak = max(peak, open_now)
        assert peak <= pacer.lines_budget - pacer.line_reserve      # a big request leaves the reserve free


async def test_only_the_cancels_the_budget_forces_go_before_the_last_request():
    """24 contracts on 9 lines (12 less the reserve): the 15 forced cancels precede the last reqMktData, not the rest
    (with cancels always first, 23 go there)."""
    pacer = Pacer(max_lines=12, line_margin=0, burst=1, quiet_burst=0)     # one token at a time
    async with stack(pacer, sim_lines=12) as (sim, bridge, scanner, sent):
        await scanner.get_option_data_batch(listed(sim, "SPY", 24), need_greeks=True)
        last_request = max(i for i, (what, _, _) in enumerate(sent) if what == "reqMktData")
        before_last = sum(1 for what, _, _ in sent[:last_request] if what == "cancelMktData")
        # 15, or one or two more when a stalled loop lets a queued cancel go before the next line is asked
        assert 24 - 9 <= before_last <= 24 - 9 + 2
        await all_cancelled(sim, bridge)


async def test_new_lines_go_before_cancels_while_lines_are_free():
    """With lines to spare, a 16-contract request's reqMktData all go out before any of its cancels."""
    async with stack(Pacer()) as (sim, bridge, scanner, sent):
        await scanner.get_option_data_batch(listed(sim, "MSFT", 16), need_greeks=True)
        kinds = [what for what, _, _ in sent]
        assert kinds == ["reqMktData"] * 16 + ["cancelMktData"] * (len(kinds) - 16)
        stats = await all_cancelled(sim, bridge)
        assert stats["active_lines"] == 0 and len(sent) == 32


async def test_a_monitor_refresh_passes_a_chains_queued_lines():
    """A 4-leg request made while a 40-contract chain streams: its 4 reqMktData go out back to back."""
    pacer = Pacer(max_lines=20, line_margin=0)                      # the chain streams on 15 of 20 lines
    async with stack(pacer, sim_lines=20) as (sim, bridge, scanner, sent):
        chain = asyncio.ensure_future(scanner.get_option_data_batch(listed(sim, "SPY", 40), need_greeks=True))
        chain_going = asyncio.Event()
        real_end = bridge.end_market_data

        def ended(line):
            chain_going.set()               # a chain line is done: the chain is past its first requests
            return real_end(line)
        bridge.end_market_data = ended
        await asyncio.wait_for(chain_going.wait(), 10)
        bridge.end_market_data = real_end
        legs = listed(sim, "AAPL", 4)
        token = current_flow.set("monitor")
        try:
            quotes = await scanner.get_option_data_batch(legs, need_greeks=True)
        finally:
            current_flow.reset(token)
        assert all(q.has_price for q in quotes)
        await chain
        requests = [sym for what, _, sym in sent if what == "reqMktData"]
        first, last = requests.index("AAPL"), len(requests) - 1 - requests[::-1].index("AAPL")
        assert requests[first:last + 1] == ["AAPL"] * 4, requests[first - 2:last + 3]
        assert requests.count("SPY") == 40
        stats = await all_cancelled(sim, bridge)
        assert bad_codes(stats) == [] and stats["active_lines"] == 0


async def test_a_connection_lost_mid_batch_leaves_no_line_counted_or_queued():
    """TWS drops the connection while a batch streams and some of its cancels wait in the pacer: the request fails
    (or answers with what it has), and no line stays in the budget, no cancel in the pacer's queue, none at TWS."""
    pacer = Pacer(rate=20, burst=1, quiet_burst=0)  # slow tokens: cancels are still queued when the link goes
    async with stack(pacer) as (sim, bridge, scanner, sent):
        batch = asyncio.ensure_future(scanner.get_option_data_batch(listed(sim, "SPY", 30), need_greeks=True))
        ending = asyncio.Event()
        real_end = bridge.end_market_data

        def ended(line):
            ending.set()
            return real_end(line)
        bridge.end_market_data = ended
        await asyncio.wait_for(ending.wait(), 10)
        assert pacer.stats()["queued_cancels"] >= 1 and pacer.lines_in_use > 1
        await sim.drop_clients()
        done, _ = await asyncio.wait({batch}, timeout=10)
        assert done and (batch.exception() is None or isinstance(batch.exception(), IBDisconnected))
        assert await bridge.wait_lines_closed(timeout=5.0)
        assert pacer.lines_in_use == 0 and pacer.lines_closing == 0 and bridge.open_lines == 0
        assert pacer.stats()["queued_cancels"] == 0
        assert sim.stats()["active_lines"] == 0
