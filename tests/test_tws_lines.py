"""MarketDataLine.wait (agent/tws/lines.py) on its own: no socket, the test plays the bridge's part (_notify)."""

from __future__ import annotations

import asyncio

import pytest

from agent.tws.lines import MarketDataLine
from agent.types import Contract


def make_line() -> MarketDataLine:
    return MarketDataLine(None, 1, Contract("AAPL"), "", False, 1)   # type: ignore[arg-type]  (no bridge needed)


async def started_wait(line: MarketDataLine, predicate, timeout: float,
                       asked: asyncio.Event | None = None) -> asyncio.Task:
    """A task in ``line.wait``, returned once it has checked the predicate (``asked`` is set at each check)."""
    asked = asked or asyncio.Event()

    def pred(q):
        asked.set()
        return predicate(q)

    task = asyncio.ensure_future(line.wait(pred, timeout))
    await asked.wait()
    return task


async def test_cancel_arriving_with_the_tick_raises_cancelled_error():
    """A wait cancelled in the same loop iteration as the tick that satisfies it raises CancelledError (not True)."""
    line = make_line()
    task = await started_wait(line, lambda q: q.bid is not None, 30.0)
    line.quote.bid = 1.25           # what the bridge does on tickPrice, then _notify
    line._notify()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not line._waiters        # nothing left for a later _notify to touch


async def test_cancelled_wait_raises_cancelled_error():
    """A wait cancelled with no tick in sight raises CancelledError."""
    line = make_line()
    task = await started_wait(line, lambda q: False, 30.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_notify_wakes_the_wait_when_the_predicate_holds():
    """A tick that makes the predicate true ends the wait with True; an unrelated tick does not end it."""
    line, asked = make_line(), asyncio.Event()
    task = await started_wait(line, lambda q: q.bid is not None and q.ask is not None, 30.0, asked)
    asked.clear()
    line.quote.bid = 1.0
    line._notify()
    await asked.wait()              # the wait re-checked the predicate in the step that ended there
    assert not task.done()
    line.quote.ask = 1.1
    line._notify()
    assert await asyncio.wait_for(task, 5.0) is True


async def test_a_failed_line_ends_the_wait_with_true():
    """An error on the line (quote.error_code) ends the wait with True even if the predicate never holds."""
    line = make_line()
    task = await started_wait(line, lambda q: False, 30.0)
    line.quote.error_code = 200
    line._notify()
    assert await asyncio.wait_for(task, 5.0) is True


async def test_timeout_returns_false():
    """With no tick, the wait ends with False once its timeout is over."""
    line = make_line()
    assert await asyncio.wait_for(line.wait(lambda q: False, 0.01), 5.0) is False


async def test_predicate_that_raises_is_not_satisfied():
    """A predicate tripping on a missing field counts as not yet satisfied (False at the timeout, no exception)."""
    line = make_line()
    assert await asyncio.wait_for(line.wait(lambda q: q.bid > 0, 0.01), 5.0) is False
