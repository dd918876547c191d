"""Test harness for orders: the TWS simulator with the real bridge and the order desk (``desk_stack``), or with the
whole daemon behind the reference relay (``agent_stack``). Everything on 127.0.0.1, port 0, fast latency."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import aiohttp

from agent.daemon import Daemon
from agent.orders.desk import OrderDesk
from agent.pacer import Pacer
from agent.settings import load_settings
from agent.retry import reconnect_wait
from agent.tws import TwsBridge
from sim.relay import ReferenceRelay
from sim.tws import SimConfig, TwsSimulator

from sim_probe import until  # noqa: F401 - the order tests' poll for state without an event, shared

KEY = "orders-provider-key-0123456789"
FAST_TWS = dict(first=0.02, factor=1.5, cap=0.1)


def agent_settings(port: int, relay_url: str = "ws://127.0.0.1:9/ws/data-provider", **env: str):
    base = {"IB_PROVIDER_KEY": KEY, "RELAY_URL": relay_url, "IB_PORT": str(port), "IB_CONNECT_TIMEOUT": "2"}
    return load_settings({**base, **env})


@dataclass
class DeskStack:
    sim: TwsSimulator
    bridge: TwsBridge
    desk: OrderDesk
    pushed: list = field(default_factory=list)

    def events(self, kind: str) -> list[dict]:
        return [f["event"] for f in self.pushed if f.get("type") == "account_event" and f["event"]["event"] == kind]


@contextlib.asynccontextmanager
async def desk_stack(sim: TwsSimulator | None = None, *, accounts=("DU1234567",), env: dict | None = None,
                     **sim_kw):
    """A running simulator (started here unless given), a supervised bridge and a desk, synced."""
    own_sim = sim is None
    if own_sim:
        sim = TwsSimulator(SimConfig(port=0, accounts=tuple(accounts), latency="fast", seed=7, **sim_kw))
        await sim.start()
    env = dict(env or {})
    if any(not a.startswith("D") for a in accounts):
        env.setdefault("IB_MODE", "live")
    settings = agent_settings(sim.port, **env)
    bridge = TwsBridge(settings, Pacer(), backoff=reconnect_wait(**FAST_TWS))
    stack = DeskStack(sim, bridge, None)          # type: ignore[arg-type]
    desk = OrderDesk(bridge, settings, push=stack.pushed.append, presubmit_grace=0.3, fill_grace=0.3,
                     cancel_confirm=3.0)
    stack.desk = desk
    bridge.on_event = desk.on_bridge_event
    run = asyncio.create_task(bridge.run())
    try:
        await bridge.wait_connected(5.0)
        await until(lambda: desk.synced)
        yield stack
    finally:
        await desk.close()
        await bridge.close()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        if own_sim:
            await sim.stop()


def sim_orders(sim: TwsSimulator, **match) -> list:
    """The simulator's real (non-what-if) orders matching the given attributes."""
    return [o for o in sim.broker.orders.values() if all(getattr(o, k) == v for k, v in match.items())]


# --- the whole agent behind the reference relay ---------------------------------------------------------------

@dataclass
class AgentStack:
    sim: TwsSimulator
    relay: ReferenceRelay
    daemon: Daemon
    task: asyncio.Task

    async def http(self, method: str, route: str, body: dict | None = None, params: dict | None = None
                   ) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"{self.relay.http_url}/options/relay/{route}", json=body, params=params,
                                 timeout=aiohttp.ClientTimeout(total=60)) as r:
                return r.status, await r.json()

    def events(self, kind: str) -> list[dict]:
        return [e for e in self.relay.events if e.get("event") == kind]


async def start_agent(sim: TwsSimulator, relay: ReferenceRelay, **env: str) -> tuple[Daemon, asyncio.Task]:
    settings = agent_settings(sim.port, relay.ws_url, **env)

    def bridge_factory(s, pacer, on_event=None):
        return TwsBridge(s, pacer, on_event=on_event, backoff=reconnect_wait(**FAST_TWS))
    d = Daemon(settings, bridge_factory=bridge_factory,
               relay_options={"wait": reconnect_wait(first=0.01, factor=2, cap=0.05), "heartbeat_interval": 0.05})
    d.orders.presubmit_grace = d.orders.fill_grace = 0.3
    task = asyncio.create_task(d.run(), name="daemon-under-test")
    await relay.wait_provider(10)
    await until(lambda: d.bridge.connected and d.orders.synced, 10)
    return d, task


async def stop_agent(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def agent_stack(*, accounts=("DU1234567",), env: dict | None = None, **sim_kw):
    sim = TwsSimulator(SimConfig(port=0, accounts=tuple(accounts), latency="fast", seed=7, **sim_kw))
    await sim.start()
    relay = ReferenceRelay(api_key=KEY, port=0)
    await relay.start()
    env = dict(env or {})
    if any(not a.startswith("D") for a in accounts):
        env.setdefault("IB_MODE", "live")
    try:
        daemon, task = await start_agent(sim, relay, **env)
        try:
            yield AgentStack(sim, relay, daemon, task)
        finally:
            await stop_agent(task)
    finally:
        await relay.stop()
        await sim.stop()
