"""Fixtures shared by the simulator tests: ``make_sim(**SimConfig fields)`` starts TWS simulators on port 0 (fast
latency unless told) and stops them after the test; ``sim`` is one of them. A module may define its own."""

from __future__ import annotations

import pytest

from sim.tws import SimConfig, TwsSimulator


@pytest.fixture
async def make_sim():
    sims: list[TwsSimulator] = []

    async def factory(**kw) -> TwsSimulator:
        kw.setdefault("latency", "fast")
        sim = TwsSimulator(SimConfig(port=0, **kw))
        await sim.start()
        sims.append(sim)
        return sim

    yield factory
    for s in sims:
        await s.stop()


@pytest.fixture
async def sim(make_sim):
    return await make_sim()
