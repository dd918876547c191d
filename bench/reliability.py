"""The relay drills at their real settings (the tests shorten them): a table of figures.

    python -m bench.reliability [--only silent,outage,load] [--outage 60] [--runs 2] [--model 10000]

In-process and loopback only: the reference relay (sim/relay), the real RelayClient / daemon with their default
settings, and for the load the TWS simulator with realistic latency. Scenarios:

  silent   the relay stops reading and answering (socket open) right after acking a heartbeat: seconds until the
           agent logs "Relay silent for N s" and until it is authenticated again
  outage   the relay process is gone for --outage seconds, then listens again on the same port: seconds from its
           return to the agent's authentication (--runs times); plus the same figure modelled --model times from
           the relay's real delay policy (tenacity, agent/relay.py RELAY_WAIT) with its random draws
  load     200 fetch_chain for different deals (JNPR deal prices 36.00-43.96, AAPL around its price) at once with
           the relay's real 180 s wait, and 5,000 ib_status meanwhile: answered with data, answered busy up front,
           lost; the slowest answer; pacing violations and lines left open; peak memory traced

Takes about 26 s + runs x (outage + 10) s + 2 min.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import statistics
import time
import tracemalloc

from agent.daemon import Daemon
from agent.relay import RELAY_WAIT, RelayClient
from agent.retry import preview
from agent.settings import load_settings
from sim.relay import ReferenceRelay

KEY = "bench-reliability-key-0123456789"


class Seen(logging.Handler):
    """Remembers when a log line containing ``text`` was first emitted."""

    def __init__(self, text: str):
        super().__init__(logging.DEBUG)
        self.text, self.at = text, None

    def emit(self, record):
        if self.at is None and self.text in record.getMessage():
            self.at = time.monotonic()


def state() -> dict:
    return {"type": "agent_state", "ib_connected": True}


async def answer(frame):
    return {"type": "response", "request_id": frame["request_id"], "success": True, "data": {}, "error": None}


@contextlib.asynccontextmanager
async def client_at(url: str):
    client = RelayClient(load_settings({"IB_PROVIDER_KEY": KEY, "RELAY_URL": url}), answer, state)
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def silent() -> list[tuple[str, str]]:
    seen = Seen("Relay silent for")
    logging.getLogger("agent.relay").addHandler(seen)
    try:
        async with ReferenceRelay(api_key=KEY, port=0) as relay, client_at(relay.ws_url):
            first = await relay.wait_provider(15)
            mark = len(relay.frames)
            await relay.wait_frame(lambda f: f.get("type") == "heartbeat", 15, start=mark)
            relay.silence()               # right after the ack of that heartbeat: the silence starts now
            t0 = time.monotonic()
            await relay._wait_until(lambda: relay.provider_connected and relay.provider_id != first, 60)
            back = time.monotonic() - t0
        detected = seen.at - t0 if seen.at else float("nan")
    finally:
        logging.getLogger("agent.relay").removeHandler(seen)
    return [("silent relay detected (target < 30 s)", f"{detected:.1f} s"),
            ("silent relay: authenticated again (target < 45 s)", f"{back:.1f} s")]


async def outage(seconds: float, runs: int, model: int) -> list[tuple[str, str]]:
    backs = []
    for _ in range(runs):
        relay = ReferenceRelay(api_key=KEY, port=0)
        await relay.start()
        port = relay.port
        async with client_at(relay.ws_url):
            await relay.wait_provider(15)
            await relay.stop()
            await asyncio.sleep(seconds)
            async with ReferenceRelay(api_key=KEY, port=port) as again:
                t0 = time.monotonic()
                await again.wait_provider(60)
                backs.append(time.monotonic() - t0)
    # The same figure from the policy itself: an immediate attempt as the relay goes, then the delays.
    modelled = []
    for _ in range(model):
        t, delays = 0.0, iter(preview(RELAY_WAIT, 64))
        while t < seconds:
            t += next(delays)
        modelled.append(t - seconds)
    modelled.sort()
    rows = [(f"relay gone {seconds:.0f} s: back after it returns, measured ({runs} runs)",
             ", ".join(f"{b:.1f} s" for b in backs))]
    rows.append((f"  modelled from RELAY_WAIT ({model:,} outages): median / p95 / max",
                 f"{statistics.median(modelled):.1f} / {modelled[int(0.95 * len(modelled))]:.1f} / "
                 f"{modelled[-1]:.1f} s"))
    return rows


async def load() -> list[tuple[str, str]]:
    from sim.tws import SimConfig, TwsSimulator
    tracemalloc.start()
    async with TwsSimulator(SimConfig(port=0, latency="realistic", seed=7)) as sim, \
            ReferenceRelay(api_key=KEY, port=0) as relay:
        settings = load_settings({"IB_PROVIDER_KEY": KEY, "RELAY_URL": relay.ws_url, "IB_PORT": str(sim.port)})
        d = Daemon(settings)
        task = asyncio.create_task(d.run())
        try:
            await relay.wait_frame(lambda f: f.get("type") == "agent_state" and f.get("ib_connected"), 30)
            aapl = sim.market.stock_quote("AAPL").last
            close = (dt.date.today() + dt.timedelta(days=20)).isoformat()
            deals = [("JNPR", round(36.0 + 0.04 * i, 2)) for i in range(100)] + \
                    [("AAPL", round(aapl * (0.9 + 0.002 * i), 2)) for i in range(100)]
            t0 = time.monotonic()
            took: list[float] = []

            async def one(ticker, deal):
                try:
                    r = await relay.request("fetch_chain", {"ticker": ticker, "dealPrice": deal,
                                                            "expectedCloseDate": close})
                except Exception as e:          # noqa: BLE001 - a lost answer is a figure, not a crash
                    return type(e).__name__
                took.append(time.monotonic() - t0)
                if r["success"]:
                    return "data"
                return "busy" if r["error"].startswith("busy: ") else "error: " + r["error"][:60]

            chains = asyncio.gather(*(one(t, p) for t, p in deals))
            s0 = time.monotonic()
            statuses = await asyncio.gather(*(relay.request("ib_status") for _ in range(5000)),
                                            return_exceptions=True)
            status_s = time.monotonic() - s0
            outcomes = await chains
            stats = sim.stats()
            # Answers come before their cancels: count what is open once the agent's cancels are out (warm legs
            # are kept open on purpose; chains keep none).
            await d.bridge.wait_lines_closed(60)
            for _ in range(100):              # the last cancels may still be on their way to the simulator
                if sim.stats()["active_lines"] <= d.pacer.lines_warm:
                    break
                await asyncio.sleep(0.05)
            lines_left = sim.stats()["active_lines"] - d.pacer.lines_warm
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    count = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    ok_status = sum(1 for s in statuses if isinstance(s, dict) and s.get("success"))
    return [("200 fetch_chain at once: outcomes", ", ".join(f"{k} {v}" for k, v in count.items())),
            ("  slowest answer (the relay waits 180 s)", f"{max(took):.1f} s"),
            ("  5,000 ib_status meanwhile: answered", f"{ok_status:,} in {status_s:.1f} s"),
            ("  pacing violations / lines left open", f"{len(stats['violations'])} / {lines_left}"),
            ("  peak memory traced (whole process)", f"{peak / 1e6:.0f} MB")]


async def main(args) -> None:
    rows: list[tuple[str, str]] = []
    only = set(args.only.split(","))
    if "silent" in only:
        rows += await silent()
    if "outage" in only:
        rows += await outage(args.outage, args.runs, args.model)
    if "load" in only:
        rows += await load()
    width = max(len(r[0]) for r in rows)
    print(f"{'drill'.ljust(width)}  figure")
    for name, figure in rows:
        print(f"{name.ljust(width)}  {figure}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="silent,outage,load")
    ap.add_argument("--outage", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--model", type=int, default=10000)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(ap.parse_args()))
