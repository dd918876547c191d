"""Warm legs: the pure bookkeeping (WarmBook), then Monitor's refreshes against the TWS simulator (fast latency):
a warm refresh answers from the live lines and sees new ticks, warm lines give way to other flows, expire, are
re-requested after 1101, vanish with the connection, and IB_WARM_LINES=0 keeps none."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings, strategies as st

from agent.pacer import Pacer
from agent.protocol import FetchPricesPayload
from agent.types import Contract
from agent.warm import WarmBook

from bridge_harness import FROZEN, scanner_stack
from sim_probe import until


# --- WarmBook (pure) ------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(cap=st.integers(0, 6), ops=st.lists(st.tuples(st.sampled_from("atx"), st.integers(0, 9),
                                                    st.floats(0, 5, allow_nan=False)), max_size=60))
def test_book_never_holds_more_than_its_lines_and_expires_by_last_ask(cap, ops):
    """Property: at most `capacity` legs; a leg expires `seconds` after its last ask; a push-out takes the oldest."""
    book: WarmBook[str] = WarmBook(cap, 10.0)
    now = 0.0
    asked: dict[int, float] = {}
    for op, key, dt in ops:
        now += dt
        if op == "a":
            before = dict(asked)
            kept, out = book.add(key, f"line{key}", now)
            if kept:
                asked[key] = now
                for line in out:
                    gone = int(line[4:])
                    assert before[gone] == min(before.values())      # the least recently asked made way
                    del asked[gone]
            else:
                assert key in before or cap == 0
        elif op == "t":
            book.touch(key, now)
            if key in asked:
                asked[key] = now
        else:
            for k in book.expired(now):
                assert now - asked[k] >= 10.0
                book.remove(k)
                del asked[k]
        assert len(book) <= cap and set(book.keys()) == set(asked)
    if asked:
        assert book.next_expiry() == min(asked.values()) + 10.0


def test_book_does_not_push_out_legs_of_the_request_asking():
    """A refresh of more legs than there are warm lines keeps the first ones it got, not the newest."""
    book: WarmBook[str] = WarmBook(2, 60.0)
    assert book.add("a", "A", 1.0) == (True, [])
    assert book.add("b", "B", 1.0) == (True, [])
    assert book.add("c", "C", 2.0, since=1.0) == (False, [])      # a and b were asked by this request too
    assert book.add("c", "C", 3.0, since=2.0) == (True, ["A"])    # a later request: the oldest makes way
    assert book.least_recent(5) == ["b", "c"]


# --- against the simulator ---------------------------------------------------------------------------

def stack(*, step: float = FROZEN, lines: int = 100, margin: int = 10, **scanner_kw):
    return scanner_stack(Pacer(max_lines=lines, line_margin=margin), step=step, max_lines=lines,
                         scanner_kw=scanner_kw)


def legs_of(sim, n: int = 4, symbol: str = "AAPL", expiry_index: int = 1, skip: int = 0) -> list[dict]:
    exp = sim.market.expirations(symbol)[expiry_index]
    spot = sim.market.stock_quote(symbol).last
    ks = sorted(sim.market.strikes(symbol, exp), key=lambda k: abs(k - spot))[skip:skip + (n + 1) // 2]
    return [dict(ticker=symbol, strike=k, expiry=exp, right=r) for k in ks for r in "CP"][:n]


async def refresh(scanner, legs: list[dict]) -> dict:
    return await asyncio.wait_for(scanner.fetch_prices(FetchPricesPayload(contracts=legs)), 10)


async def settled(sim, bridge) -> dict:
    """Every cancel out and read by the simulator."""
    assert await bridge.wait_lines_closed(timeout=10.0)
    await bridge.current_time(timeout=5.0)
    return sim.stats()


def warm_line(scanner, leg: dict):
    return scanner.warm.book.get(Contract.option(leg["ticker"], leg["expiry"], leg["strike"], leg["right"]).key)


async def test_a_warm_refresh_answers_from_the_live_lines():
    """The second refresh of the same legs sends TWS nothing and says its rows came from warm lines, with an age."""
    async with stack() as (sim, bridge, pacer, scanner):
        legs = legs_of(sim)
        first = await refresh(scanner, legs)
        assert [r["warm"] for r in first["contracts"]] == [False] * 4
        stats = await settled(sim, bridge)
        assert stats["active_lines"] == pacer.lines_warm == 4 == len(scanner.warm)
        received = sim.stats()["messages_received"]
        second = await refresh(scanner, legs)
        assert sim.stats()["messages_received"] == received
        assert [r["warm"] for r in second["contracts"]] == [True] * 4
        assert all(isinstance(r["tick_age_s"], float) and r["tick_age_s"] >= 0 for r in second["contracts"])
        assert [r["bid"] for r in second["contracts"]] == [r["bid"] for r in first["contracts"]]


async def test_a_warm_refresh_sees_new_ticks():
    """The market moves: once a warm leg has ticked, the next refresh shows the new quote, not the first one."""
    async with stack(step=0.5) as (sim, bridge, pacer, scanner):       # a new market every 0.5 s
        legs = legs_of(sim, 2)
        first = await refresh(scanner, legs)
        line = warm_line(scanner, legs[0])
        before = (line.quote.bid, line.quote.ask)
        assert await line.wait(lambda q: (q.bid, q.ask) != before, timeout=5.0)
        ticked = (line.quote.bid, line.quote.ask)
        second = await refresh(scanner, legs)
        row = second["contracts"][0]
        shown = (row["bid"], row["ask"])
        # what the line held when it ticked, or (the machine stalled past the next step) what it holds now
        assert shown in {tuple(x or 0.0 for x in ticked), tuple(x or 0.0 for x in (line.quote.bid, line.quote.ask))}
        assert row["warm"] is True and shown != (first["contracts"][0]["bid"], first["contracts"][0]["ask"])


async def test_warm_lines_give_way_to_a_request_that_needs_them():
    """10 lines, 8 warm: a 12-contract request gets the warm ones (cancelled first), never over 10 at TWS."""
    async with stack(lines=10, margin=0) as (sim, bridge, pacer, scanner):        # budget 10, reserve 2
        await refresh(scanner, legs_of(sim, 8))
        await settled(sim, bridge)
        assert pacer.lines_warm == 8 and pacer.lines_free == 2
        chain = [Contract.option("MSFT", sim.market.expirations("MSFT")[1], k, r)
                 for k in sorted(sim.market.strikes("MSFT", sim.market.expirations("MSFT")[1]))[10:16] for r in "CP"]
        quotes = await asyncio.wait_for(scanner.get_option_data_batch(chain, need_greeks=True), 10)
        assert all(q.has_price for q in quotes)
        stats = await settled(sim, bridge)
        assert scanner.warm.stats["reclaimed"] == 8 and pacer.lines_warm == 0 == len(scanner.warm)
        assert stats["peak_lines"] <= 10 and stats["active_lines"] == 0 and pacer.lines_in_use == 0
        assert not [e for e in stats["errors_sent"] if e["code"] in (100, 101, 102)]


async def test_a_small_refresh_takes_warm_lines_when_the_free_ones_do_not_suffice():
    """10 lines, 8 warm: another 4-leg refresh gets 2 free lines and 2 warm ones; it keeps its own legs warm."""
    async with stack(lines=10, margin=0) as (sim, bridge, pacer, scanner):
        await refresh(scanner, legs_of(sim, 8))
        await settled(sim, bridge)
        data = await refresh(scanner, legs_of(sim, 4, symbol="MSFT"))
        assert all(r is not None for r in data["contracts"])
        stats = await settled(sim, bridge)
        assert scanner.warm.stats["reclaimed"] >= 2 and stats["peak_lines"] <= 10
        assert stats["active_lines"] == pacer.lines_warm == len(scanner.warm) <= 10


async def test_warm_lines_expire_and_leave_nothing_open():
    """IB_WARM_SECONDS after the last refresh asking for them, the warm lines are cancelled: nothing stays open."""
    async with stack(warm_seconds=0.2) as (sim, bridge, pacer, scanner):
        legs = legs_of(sim)
        await refresh(scanner, legs)
        closed = asyncio.Event()
        remaining = set(scanner.warm.book.keys())

        def gone(line) -> None:
            remaining.discard(line.contract.key)
            if not remaining:
                closed.set()
        for k in list(remaining):
            scanner.warm.book.get(k).on_close(gone)
        await asyncio.wait_for(closed.wait(), 10)
        stats = await settled(sim, bridge)
        assert stats["active_lines"] == 0 and pacer.lines_in_use == 0 and pacer.lines_warm == 0
        assert scanner.warm.stats["expired"] == 4 and len(scanner.warm) == 0


async def test_after_a_disconnect_nothing_is_warm():
    """TWS drops the connection: the warm legs are gone (lines back in the budget); the next refresh goes cold."""
    async with stack() as (sim, bridge, pacer, scanner):
        legs = legs_of(sim)
        await refresh(scanner, legs)
        lost = asyncio.Event()
        warm_line(scanner, legs[0]).on_close(lambda line: lost.set())
        await sim.drop_clients()
        await asyncio.wait_for(lost.wait(), 10)
        assert len(scanner.warm) == 0 and pacer.lines_warm == 0 and pacer.lines_in_use == 0
        await bridge.connect()
        again = await refresh(scanner, legs)
        assert [r["warm"] for r in again["contracts"]] == [False] * 4
        assert all(r["bid"] > 0 for r in again["contracts"])


async def test_warm_lines_are_asked_again_after_1101():
    """The nightly reset drops TWS's lines (1101): the warm legs are re-requested and answer with fresh ticks."""
    async with stack() as (sim, bridge, pacer, scanner):
        legs = legs_of(sim)
        await refresh(scanner, legs)
        await settled(sim, bridge)
        await sim.nightly_reset(data_lost=True, outage=0.05)
        await bridge.current_time(timeout=5.0)            # the 1101 has reached the bridge before this answer
        line = warm_line(scanner, legs[0])
        assert await line.wait(lambda q: q.bid is not None and q.delta is not None, timeout=5.0)
        data = await refresh(scanner, legs)
        assert [r["warm"] for r in data["contracts"]] == [True] * 4 and all(r["bid"] > 0 for r in data["contracts"])
        await bridge.current_time(timeout=5.0)
        assert sim.stats()["active_lines"] == 4 == pacer.lines_warm


async def test_warm_lines_off_keeps_none():
    """IB_WARM_LINES=0: every line of a refresh is cancelled after the answer, as for any other flow."""
    async with stack(warm_lines=0) as (sim, bridge, pacer, scanner):
        data = await refresh(scanner, legs_of(sim))
        assert [r["warm"] for r in data["contracts"]] == [False] * 4
        stats = await settled(sim, bridge)
        assert stats["active_lines"] == 0 and pacer.lines_in_use == 0 and len(scanner.warm) == 0


async def test_a_partly_warm_refresh_fetches_only_the_cold_legs():
    """Legs already warm answer from their lines; the new ones go through the batched path and stay warm too."""
    async with stack() as (sim, bridge, pacer, scanner):
        old = legs_of(sim, 2)
        await refresh(scanner, old)
        opened = scanner.stats["lines_opened"]
        new = legs_of(sim, 2, skip=3)
        data = await refresh(scanner, old + new)
        assert [r["warm"] for r in data["contracts"]] == [True, True, False, False]
        assert scanner.stats["lines_opened"] == opened + 2 and len(scanner.warm) == 4


@pytest.mark.parametrize("quiesce", [False, True])
async def test_stopping_with_warm_lines_leaves_none_open_or_counted(quiesce):
    """The agent stops with warm legs (quiesce then close, as the daemon does; or a plain close): nothing stays
    warm or counted in the budget, no expiry timer is left behind, and TWS holds none of the lines."""
    async with stack() as (sim, bridge, pacer, scanner):
        await refresh(scanner, legs_of(sim))
        await settled(sim, bridge)
        assert pacer.lines_warm == 4 == sim.stats()["active_lines"]
        if quiesce:
            bridge.quiesce()
        await bridge.close()
        assert len(scanner.warm) == 0 and scanner.warm._timer is None
        assert pacer.lines_warm == 0 and pacer.lines_in_use == 0 and bridge.open_lines == 0
        await until(lambda: sim.stats()["active_lines"] == 0, 5.0)
