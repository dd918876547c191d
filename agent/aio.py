"""Waits with a timeout that never swallow a cancellation.

``asyncio.wait_for`` on Python <= 3.11 returns the inner result when the inner awaitable finishes in the same loop
iteration as the caller is cancelled: the cancellation is lost. Seen here: Ctrl+C landing as the relay answered
the agent's login (the relay client then ran on, and the agent never stopped), and a supervisor woken by its
event as it was cancelled. These helpers wait with ``asyncio.wait``, which always raises the cancellation.

``settle_all`` and ``gather_all`` end a group of tasks cleanly: what still runs is cancelled and awaited, so every
task's ``finally`` (where market-data lines go back to the budget) has run before the caller goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable


async def run_within(aw: Awaitable[Any], timeout: float) -> Any:
    """``aw``'s result; ``asyncio.TimeoutError`` (``aw`` cancelled and awaited) when not done within ``timeout``.
    If the caller is cancelled, ``aw`` is cancelled and awaited too, and the cancellation is raised."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout))
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise asyncio.TimeoutError
    return task.result()


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True once ``event`` is set, False after ``timeout`` s. A cancellation is always raised."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=max(0.0, timeout))
    finally:
        if not waiter.done():
            waiter.cancel()
    return bool(done)


async def settle_all(tasks: list[asyncio.Task]) -> None:
    """Cancel what is still running and wait for every task's ``finally`` (where lines are handed back)."""
    for t in tasks:
        if not t.done():
            t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def gather_all(*aws: Awaitable[Any]) -> list:
    """asyncio.gather that, when one fails or the caller is cancelled, cancels and waits for the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        await settle_all(tasks)
