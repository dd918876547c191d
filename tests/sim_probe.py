"""Probe helpers shared by the TWS simulator tests (imported as ``sim_probe``: pytest puts this folder on
sys.path): a probe, waits, an order as TWS 10 wants it. The ``make_sim`` / ``sim`` fixtures are in conftest.py."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from ibapi.order import Order

from sim.tws import TwsSimulator
from sim.tws.probe import Probe


async def connect(sim: TwsSimulator, client_id: int = 1) -> Probe:
    return await asyncio.to_thread(Probe(sim.port, client_id).connect)


@asynccontextmanager
async def connected(sim: TwsSimulator, client_id: int = 1) -> AsyncIterator[Probe]:
    """``async with connected(sim) as p:`` a connected probe, disconnected when the block ends (however it ends)."""
    p = await connect(sim, client_id)
    try:
        yield p
    finally:
        p.disconnect()


async def until(cond, timeout: float = 10.0) -> None:
    """Wait for state that offers no event to await (the simulator's counters or book, another task's progress):
    poll; ``timeout`` only guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def run(fn, *args, **kw):
    return asyncio.to_thread(fn, *args, **kw)


def is_tick(req_id: int, tick_type: int):
    return lambda e: e[0] == req_id and e[1] == tick_type


def order(action: str, qty: float, order_type: str = "MKT", lmt: float | None = None, ref: str = "",
          what_if: bool = False, account: str = "") -> Order:
    """An order as a client of current TWS must send it (ibapi 9.81's defaults eTradeOnly/firmQuoteOnly=True
    are rejected by TWS 10.x with 10268/10269)."""
    o = Order()
    o.action, o.totalQuantity, o.orderType, o.orderRef, o.whatIf = action, qty, order_type, ref, what_if
    o.eTradeOnly = o.firmQuoteOnly = False
    o.account = account
    if lmt is not None:
        o.lmtPrice = lmt
    return o
