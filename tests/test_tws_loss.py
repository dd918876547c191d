"""A lost TWS connection as seen from outside (the flag, the message, one log line per change), and the bridge's
bounded waits on shared futures (_within) and quiesce()."""

from __future__ import annotations

import asyncio

import pytest

from agent.errors import IBDisconnected
from agent.pacer import Pacer
from agent.retry import reconnect_wait
from agent.tws import TwsBridge

from bridge_harness import AAPL, FAST, Events, bridge_for, settings, simulator, supervising, sync


# --- what the loss looks like from outside -------------------------------------------------------

class StateAtLoss(Events):
    """Events that also note the bridge's reconnecting flag and message when tws_lost is emitted."""

    def __init__(self) -> None:
        super().__init__()
        self.bridge: TwsBridge | None = None
        self.at_loss: list[tuple[bool, str]] = []

    def __call__(self, name: str, data: dict) -> None:
        if name == "tws_lost" and self.bridge is not None:
            self.at_loss.append((self.bridge.reconnecting, self.bridge.status_message))
        super().__call__(name, data)


@pytest.mark.parametrize("supervised, said", [(True, "; reconnecting"), (False, "")])
async def test_loss_says_reconnecting_in_flag_and_message_only_when_supervised(supervised, said):
    """When TWS drops a supervised bridge, tws_lost already sees reconnecting=True next to '...; reconnecting'.
    Without the supervisor nobody reconnects: the flag stays False and the message does not say so."""
    ev = StateAtLoss()
    async with simulator() as sim, bridge_for(sim.port, events=ev, supervised=supervised) as b:
        ev.bridge = b
        lost = asyncio.create_task(ev.next("tws_lost"))
        await asyncio.sleep(0)
        await sim.drop_clients()
        await lost
        assert ev.at_loss == [(supervised, f"Lost the connection to TWS on port {sim.port}{said}")]


class CountingBackoff:
    """A tenacity wait (reconnect_wait) that lets a test await the n-th retry."""

    def __init__(self, **kw) -> None:
        self.wait = reconnect_wait(**kw)
        self.calls = 0
        self.reached = asyncio.Event()
        self.wanted = 1 << 30

    def __call__(self, state) -> float:
        self.calls += 1
        if self.calls >= self.wanted:
            self.reached.set()
        return self.wait(state)


async def test_outage_logs_one_line_per_state_change(caplog):
    """While TWS refuses connections, retries log at DEBUG: one loss warning, one 'not available' warning,
    then one 'Connected ... after N s' line on recovery — however many retries there were."""
    import logging
    caplog.set_level(logging.DEBUG, logger="agent.tws")
    ev = Events()
    backoff = CountingBackoff(**FAST)
    async with simulator() as sim:
        b = TwsBridge(settings(sim.port), Pacer(), on_event=ev, backoff=backoff)
        async with supervising(b):
            await b.wait_connected(5.0)
            caplog.clear()
            backoff.wanted = backoff.calls + 6
            back = asyncio.create_task(ev.next("tws_reconnected"))
            sim.refuse_connections(60.0)
            await asyncio.wait_for(backoff.reached.wait(), 10)
            sim.refuse_connections(0.0)         # listen again now
            await back
    shown = [r for r in caplog.records if r.name == "agent.tws" and r.levelno >= logging.INFO]
    texts = [r.getMessage() for r in shown]
    assert sum("Lost the connection" in t for t in texts) == 1, texts
    assert sum("TWS not available" in t for t in texts) == 1, texts
    assert "retrying in" in next(t for t in texts if "TWS not available" in t)
    assert not any(t.startswith("port ") or t.startswith("reconnecting to TWS") for t in texts), texts
    recovered = [t for t in texts if t.startswith("Connected to TWS") and " after " in t]
    assert len(recovered) == 1, texts
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG and "still not available" in r.getMessage()]
    assert len(retries) >= 3


async def test_client_ids_in_use_warn_on_the_first_attempt_only(caplog):
    """Every clientId held: the per-clientId 326 warnings show on the first attempt, retries log them at DEBUG."""
    import logging
    caplog.set_level(logging.DEBUG, logger="agent.tws")
    async with simulator() as sim:
        holders = [TwsBridge(settings(sim.port), Pacer()) for _ in range(4)]
        backoff = CountingBackoff(**FAST)
        backoff.wanted = 4
        b = TwsBridge(settings(sim.port), Pacer(), backoff=backoff)
        try:
            for h in holders:
                await h.connect()
            caplog.clear()
            async with supervising(b):
                await asyncio.wait_for(backoff.reached.wait(), 20)
        finally:
            for h in holders:
                await h.close()
    warned = [r.getMessage() for r in caplog.records if r.name == "agent.tws" and r.levelno >= logging.WARNING]
    in_use = [r for r in caplog.records if "is in use on port" in r.getMessage()]
    assert sum("is in use on port" in t for t in warned) == 4, warned        # clientIds 17..20, once
    assert len(in_use) >= 12        # at least three more attempts, at DEBUG
    assert sum("TWS not available" in t for t in warned) == 1, warned


# --- _within: the bridge's bounded wait on shared futures ---------------------------------------

async def test_within_ends_on_the_first_error_without_waiting_for_the_others():
    """One future fails while another never completes: the wait ends with that error at once (its own timeout is an
    hour, so only the error can end it; waiting for every future would hang here), and the other is not cancelled."""
    from agent.tws.bridge import _within
    loop = asyncio.get_running_loop()
    a, b = loop.create_future(), loop.create_future()
    waiting = asyncio.create_task(_within(3600.0, a, b))
    await asyncio.sleep(0)
    b.set_exception(IBDisconnected("gone"))
    done, _ = await asyncio.wait({waiting}, timeout=30.0)      # a guard against that hang only
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting in done and isinstance(waiting.exception(), IBDisconnected)
    assert not a.done()


async def test_within_keeps_a_cancellation_that_lands_with_the_answer():
    """The answer and a cancellation of the waiting request in the same loop iteration: the request is cancelled
    (wait_for(shield(...)) returned the answer on Python <= 3.11, so a torn-down request carried on)."""
    from agent.tws.bridge import _within
    fut = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_within(5.0, fut))
    await asyncio.sleep(0)
    fut.set_result("answer")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fut.result() == "answer"          # the shared future itself is untouched


async def test_within_times_out_raises_the_first_error_and_never_cancels_the_futures():
    """_within raises TimeoutError when its futures are not done, the first error among them, else the first
    future's result; it never cancels the (shared) futures."""
    from agent.tws.bridge import _within
    loop = asyncio.get_running_loop()
    a, b = loop.create_future(), loop.create_future()
    with pytest.raises(asyncio.TimeoutError):
        await _within(0.01, a, b)
    assert not a.cancelled() and not b.cancelled()
    loop.call_soon(b.set_exception, IBDisconnected("gone"))
    with pytest.raises(IBDisconnected):
        await _within(5.0, a, b)
    a.set_result(1)
    c = loop.create_future()
    c.set_result(2)
    assert await _within(5.0, a, c) == 1


async def test_quiesce_sends_nothing_more():
    """After quiesce() (the agent stopping) no message reaches TWS: requests fail at once, a line's end frees it
    without a cancel, and the socket count stays where it was."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        pacer = b.pacer
        await pacer.acquire_lines(1)
        line = await b.open_market_data(AAPL)
        await sync(b)
        written, received = b.messages_written, sim.stats()["messages_received"]
        b.quiesce()
        with pytest.raises(IBDisconnected, match="stopping"):
            await b.contract_details(AAPL)
        await b.close_market_data(line)
        assert line.closed and pacer.lines_in_use == 0
        assert b.messages_written == written == b.sent_at_quiesce
        assert sim.stats()["messages_received"] == received
