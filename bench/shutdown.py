"""How long Ctrl+C takes: ib_data_agent.py as a real process against the TWS simulator and the reference relay.

    python -m bench.shutdown [--runs 5]

The agent promises to exit within 2 s of Ctrl+C (agent/daemon.py: the relay drains requests for up to 1 s, then
TWS gets CLOSE_TIMEOUT). The tests check that it exits cleanly and frees every line, not how fast: a busy machine
would miss any bound there. This measures the seconds. Scenarios, each run on a fresh process:

  idle   connected to TWS and the relay, nothing in flight
  busy   a fetch_chain in flight with its market data lines open (the data farm is down, so they stay open)

Each run: start the process, wait until the relay sees it connected to TWS, send SIGINT, time until it exits.
Prints the median and the slowest run against the 2.0 s target, the exit codes and the lines TWS still held.
Loopback only; POSIX only (SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.console import table
from sim.relay import ReferenceRelay
from sim.tws import SimConfig, TwsSimulator

KEY = "bench-shutdown-key-0123456789"
TARGET = 2.0            # seconds from Ctrl+C to exit
GUARD = 60.0            # a run that takes longer than this is a hang: killed and reported
ROOT = Path(__file__).resolve().parents[1]


async def one_run(busy: bool) -> tuple[float, int | None, int]:
    """(seconds from SIGINT to exit, exit code or None when killed, lines TWS held after the exit)."""
    async with TwsSimulator(SimConfig(port=0, latency="fast")) as sim, \
            ReferenceRelay(api_key=KEY, port=0) as relay:
        with tempfile.TemporaryDirectory(prefix="bench-shutdown-") as tmp:
            cfg = Path(tmp) / "config.env"
            cfg.write_text(f"IB_PROVIDER_KEY={KEY}\nRELAY_URL={relay.ws_url}\nIB_PORT={sim.port}\nLOG_DIR={tmp}\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "RELAY_", "LOG_"))}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "ib_data_agent.py"), "--config", str(cfg), cwd=str(ROOT), env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            fetch = None
            try:
                await relay.wait_frame(lambda f: f["type"] == "agent_state" and f["ib_connected"], GUARD)
                if busy:
                    await sim.set_farm("usfarm", up=False)
                    close = (sim.market.today + dt.timedelta(days=30)).isoformat()
                    fetch = asyncio.ensure_future(relay.request("fetch_chain", {
                        "ticker": "AAPL", "dealPrice": 230.0, "expectedCloseDate": close}, timeout=GUARD))
                    while sim.stats()["active_lines"] == 0:
                        await asyncio.sleep(0.01)
                t0 = time.perf_counter()
                proc.send_signal(signal.SIGINT)
                try:
                    rc: int | None = await asyncio.wait_for(proc.wait(), GUARD)
                except asyncio.TimeoutError:
                    rc = None
                seconds = time.perf_counter() - t0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                if fetch is not None:
                    await asyncio.gather(fetch, return_exceptions=True)
            return seconds, rc, sim.stats()["active_lines"]


async def run(runs: int) -> list[tuple[str, ...]]:
    rows = []
    for name, busy in (("idle", False), ("busy (fetch_chain in flight)", True)):
        results = [await one_run(busy) for _ in range(runs)]
        secs = [s for s, _, _ in results]
        worst = max(secs)
        rows.append((name, f"{statistics.median(secs):.2f} s", f"{worst:.2f} s", f"{worst / TARGET:.2f}",
                     ",".join("hung" if rc is None else str(rc) for _, rc, _ in results),
                     str(max(lines for _, _, lines in results))))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shutdown", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args(argv)
    if sys.platform == "win32":
        print("bench.shutdown sends SIGINT: POSIX only")
        return 2
    rows = asyncio.run(run(max(1, a.runs)))
    print(table(("Ctrl+C while", "median", "slowest", f"slowest / {TARGET:g} s", "exit codes", "lines left"), rows))
    print(f"\n({a.runs} runs each; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
