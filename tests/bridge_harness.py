"""What the TWS bridge tests share: a simulator, a bridge on it, an event recorder; and for the
scanner's tests, the three together with an OptionScanner (``scanner_stack``)."""

from __future__ import annotations

import asyncio
import contextlib

from agent.pacer import Pacer
from agent.settings import Settings
from agent.retry import reconnect_wait
from agent.tws import TwsBridge
from agent.types import Contract
from ib_scanner import OptionScanner
from sim.tws import SimConfig, TwsSimulator

FAST = dict(first=0.01, factor=2.0, cap=0.05)
FROZEN = 1e9        # seconds per market step: the simulated market stands still, so rows can be compared exactly


def settings(port: int | None, **kw) -> Settings:
    kw.setdefault("connect_timeout", 2.0)
    return Settings(provider_key="k" * 24, ib_port=port, **kw)


class Events:
    """Collects on_event calls; lets a test await the next one of a name."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []
        self._waiters: dict[str, asyncio.Event] = {}

    def __call__(self, name: str, data: dict) -> None:
        self.seen.append((name, data))
        self._evt(name).set()

    def _evt(self, name: str) -> asyncio.Event:
        return self._waiters.setdefault(name, asyncio.Event())

    def names(self) -> list[str]:
        return [n for n, _ in self.seen]

    async def next(self, name: str, timeout: float = 5.0) -> dict:
        ev = self._evt(name)
        ev.clear()
        await asyncio.wait_for(ev.wait(), timeout)
        return [d for n, d in self.seen if n == name][-1]


@contextlib.asynccontextmanager
async def simulator(**kw):
    sim = TwsSimulator(SimConfig(port=0, **kw))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def supervising(b: TwsBridge):
    """``b.run()`` (the supervisor) in a task for the block; then the bridge is closed and the task ended."""
    task = asyncio.create_task(b.run())
    try:
        yield task
    finally:
        await b.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def bridge_for(port: int | None, *, pacer: Pacer | None = None, events: Events | None = None,
                     supervised: bool = False, ports: list[int] | None = None, **kw):
    b = TwsBridge(settings(port, **kw), pacer or Pacer(), on_event=events, backoff=reconnect_wait(**FAST), ports=ports)
    if supervised:
        async with supervising(b):
            await b.wait_connected(5.0)
            yield b
        return
    try:
        await b.connect()
        yield b
    finally:
        await b.close()




@contextlib.asynccontextmanager
async def scanner_stack(pacer: Pacer | None = None, *, scanner_kw: dict | None = None, **sim_kw):
    """The simulator (fast latency, seed 7, a frozen market unless ``step`` is given; more ``sim_kw``), a bridge
    connected to it with ``pacer`` (default ``Pacer()``) and an OptionScanner on both: (sim, bridge, pacer, scanner)."""
    sim_kw = {"latency": "fast", "seed": 7, "step": FROZEN, **sim_kw}
    pacer = Pacer() if pacer is None else pacer
    async with simulator(**sim_kw) as sim, bridge_for(sim.port, pacer=pacer) as bridge:
        yield sim, bridge, pacer, OptionScanner(bridge, pacer, today=lambda: sim.market.today, **(scanner_kw or {}))


AAPL = Contract.stock("AAPL")


async def sync(bridge: TwsBridge) -> None:
    """A round trip: everything TWS sent before its answer has reached the loop by the time it returns."""
    await bridge.current_time()
