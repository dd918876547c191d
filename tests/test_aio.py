"""Waits that never swallow a cancellation (agent/aio.py), and the places that had asyncio.wait_for's race."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.aio import run_within, wait_event
from agent.relay import RelayClient
from agent.settings import load_settings


async def test_run_within_raises_a_cancellation_that_lands_with_the_result():
    """The inner awaitable finishes in the same loop iteration as the caller is cancelled: CancelledError."""
    fut = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_within(fut, 5.0))
    await asyncio.sleep(0)
    fut.set_result("answer")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_within_times_out_and_cancels_the_inner_work():
    """Not done in time: TimeoutError, and the inner task was cancelled (its finally ran)."""
    ran_finally = asyncio.Event()

    async def slow():
        try:
            await asyncio.Event().wait()
        finally:
            ran_finally.set()
    with pytest.raises(asyncio.TimeoutError):
        await run_within(slow(), 0.01)
    assert ran_finally.is_set()
    assert await run_within(asyncio.sleep(0, "ok"), 1.0) == "ok"


async def test_wait_event_raises_a_cancellation_that_lands_with_the_event():
    """The event is set in the same iteration as the waiter is cancelled: CancelledError, not True."""
    ev = asyncio.Event()
    task = asyncio.create_task(wait_event(ev, 5.0))
    await asyncio.sleep(0)
    ev.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_event(ev, 0) is True and await wait_event(asyncio.Event(), 0.01) is False


class _Socket:
    """Just enough of a websocket for the login: recv() answers when the test says."""

    def __init__(self):
        self.answer = asyncio.get_running_loop().create_future()

    async def send(self, text):
        pass

    async def recv(self):
        return await self.answer


async def test_ctrl_c_as_the_relay_accepts_the_login_stops_the_relay_client():
    """Cancelled in the iteration the auth_response arrives: the login raises CancelledError (with wait_for on
    Python <= 3.11 it returned, and the relay client ran on after Ctrl+C)."""
    settings = load_settings({"IB_PROVIDER_KEY": "k" * 24, "RELAY_URL": "ws://127.0.0.1:9/ws/data-provider"})
    client = RelayClient(settings, lambda f: None, dict)
    ws = _Socket()
    task = asyncio.create_task(client._authenticate(ws))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    ws.answer.set_result(json.dumps({"type": "auth_response", "success": True, "provider_id": "abcd1234"}))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
