"""A drop-in for today's relay (issue 13): ib_reconnect's answer through the relay's route, boot_complete after every
relay session, no boot phase left after a relay restart, and the close code of a normal stop (1001)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import pytest

from sim.relay import ReferenceRelay

from agent_process import agent_process
from test_daemon_e2e import KEY, http, next_weekday_in, stack, stop, tws_down, until


def phases(relay: ReferenceRelay, start: int = 0) -> list[str]:
    return [f["phase"] for f in relay.frames[start:] if f.get("type") == "boot_phase"]


async def ib_status(relay: ReferenceRelay) -> dict:
    status, body = await http(relay, "GET", "ib-status")
    assert status == 200
    return body


async def test_reconnect_route_connected_and_forced(tmp_path):
    """The web app's Reconnect IB (POST ib-reconnect) reads success/connected: true while TWS is connected, and
    true again after a forced reconnect that dropped TWS and came back."""
    async with stack(tmp_path) as (sim, relay, d, task):
        status, body = await http(relay, "POST", "ib-reconnect", {"force": False})
        assert status == 200 and body["success"] is True and body["connected"] is True
        assert body["message"].startswith("Already connected")
        status, body = await http(relay, "POST", "ib-reconnect", {"force": True})
        assert status == 200 and body == {"success": True, "connected": True, "message": body["message"]}
        assert d.bridge.connected


async def test_reconnect_route_while_tws_is_down():
    """With TWS down (the agent still reconnecting), the route says success:false, connected:false, and why."""
    async with tws_down() as (relay, d):
        await relay.wait_provider(5)
        status, body = await http(relay, "POST", "ib-reconnect", {})
        assert status == 200 and body["success"] is False and body["connected"] is False
        assert body["message"] == "TWS not reachable on port 7497"


async def test_boot_complete_after_every_relay_session_with_tws(tmp_path):
    """Every authentication is followed by relay_connected then boot_complete, and ib-status shows no boot phase,
    after the first session and after the relay dropped the agent."""
    async with stack(tmp_path) as (sim, relay, d, task):
        await relay.wait_frame(lambda f: f.get("phase") == "boot_complete", 5)
        assert phases(relay) == ["relay_connected", "boot_complete"]
        assert (await ib_status(relay))["boot_phase"] is None
        mark = len(relay.frames)
        await relay.kick_provider()
        await relay.wait_frame(lambda f: f.get("phase") == "boot_complete", 5, start=mark)
        assert phases(relay, mark) == ["relay_connected", "boot_complete"]
        assert (await ib_status(relay))["boot_phase"] is None


async def test_boot_complete_without_tws():
    """With TWS down the agent still completes its boot at the relay (TWS state travels in agent_state)."""
    async with tws_down() as (relay, d):
        frame = await relay.wait_frame(lambda f: f.get("phase") == "boot_complete", 5)
        assert "TWS not connected" in frame["detail"]
        body = await ib_status(relay)
        assert body["boot_phase"] is None and body["provider_connected"] is True and body["connected"] is False


async def test_relay_restart_leaves_no_boot_phase(tmp_path):
    """A relay restarted on the same port sees the agent authenticate and boot_complete: no "starting" left."""
    async with stack(tmp_path) as (sim, relay, d, task):
        port = relay.port
        await relay.stop()
        async with ReferenceRelay(api_key=KEY, port=port) as relay2:
            await relay2.wait_frame(lambda f: f.get("phase") == "boot_complete", 10)
            body = await ib_status(relay2)
            assert body["provider_connected"] is True and body["boot_phase"] is None
            await stop(task)


async def test_cancelled_daemon_closes_the_relay_socket_with_1001(tmp_path):
    """Shutdown is cancellation: the relay sees close code 1001 (going away), not 1011 (internal error)."""
    async with stack(tmp_path) as (sim, relay, d, task):
        await stop(task)
        await relay._wait_until(lambda: relay.close_codes, 5)
        assert relay.close_codes == [1001]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_signal_closes_the_relay_socket_with_1001(tmp_path, sig):
    """ib_data_agent.py as a process: SIGINT and SIGTERM each end with close code 1001 at the relay, exit 0."""
    from sim.tws import SimConfig, TwsSimulator

    async with TwsSimulator(SimConfig(port=0, latency="fast")) as sim, ReferenceRelay(api_key=KEY, port=0) as relay:
        async with agent_process(tmp_path, sim, relay, KEY) as proc:
            await relay.wait_frame(lambda f: f.get("phase") == "boot_complete", 20)
            proc.send_signal(sig)
            rc = await asyncio.wait_for(proc.wait(), 10)
        await relay._wait_until(lambda: relay.close_codes, 5)
        assert rc == 0 and relay.close_codes == [1001]


async def test_ctrl_c_words_and_lines_agree(tmp_path):
    """Item 8: the daemon's docstring says what Ctrl+C does with market-data lines, and it is so: no cancelMktData
    goes out on the way (the socket drops at once) and TWS frees every line of the closed client."""
    import agent.daemon
    doc = " ".join(agent.daemon.__doc__.split())
    assert "not cancelled one by one on the way out" in doc and "TWS frees every line" in doc
    async with stack(tmp_path) as (sim, relay, d, task):
        status, q = await http(relay, "POST", "stock-quote", {"ticker": "AAPL"})
        await sim.set_farm("usfarm", up=False)                   # quotes held back: lines stay open
        fetch = asyncio.create_task(relay.request("fetch_chain", {
            "ticker": "AAPL", "dealPrice": q["price"], "expectedCloseDate": next_weekday_in(20)}, timeout=30))
        await until(lambda: sim.stats()["active_lines"] > 0)
        await stop(task)
        with contextlib.suppress(Exception):
            await fetch
        await until(lambda: sim.stats()["active_lines"] == 0)
        # Nothing was handed to the socket once the stop began: no cancels on the way out. (Counted at the agent:
        # the simulator's count races the messages still in transit when the stop begins.)
        assert d.bridge.sent_at_quiesce is not None and d.bridge.messages_written == d.bridge.sent_at_quiesce
