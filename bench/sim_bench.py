"""Does the TWS simulator keep up? Several ibapi probe clients, each under IB's 50 msg/s, together
sending ~500 messages per second for a few seconds (loopback only, bounded in count and time).

Measures, per request kind, the answer latency as the client sees it (send → callback in ibapi's reader
thread) and, overall, messages sent vs received by the simulator vs answered.

    python -m bench.sim_bench [--clients 11] [--rate 48] [--seconds 3]

Note: five clients under 50 msg/s each can send at most 250 msg/s in total, so the default uses eleven
clients at 48 msg/s (~528 msg/s) to pass the 500 msg/s target; `--clients 5` runs the five-client case.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from sim.tws import SimConfig, TwsSimulator
from sim.tws.probe import Probe, option, stock

MAX_SECONDS = 10.0            # hard bounds, whatever the arguments say
MAX_RATE_PER_CLIENT = 49.0
MAX_CLIENTS = 20
OPEN_LINES_PER_CLIENT = 6     # well under the shared 100-line limit


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


class _Client:
    """One probe sending a fixed mix on a fixed schedule and pairing answers with requests."""

    def __init__(self, port: int, client_id: int, rate: float, seconds: float, contracts: list,
                 nodelay: bool = False) -> None:
        self.probe = Probe(port, client_id, nodelay=nodelay)
        self.rate, self.seconds, self.contracts = rate, seconds, contracts
        self.sent = 0
        self.expected = 0
        self.lat: dict[str, list[float]] = {"currentTime": [], "contractDetails": [], "firstQuote": []}
        self.errors: list = []

    def _cancel(self, rid: int, pending: dict) -> None:
        self.probe.client.cancelMktData(rid)
        if rid in pending:              # cancelled before its first quote: no answer is due
            del pending[rid]
            self.expected -= 1

    def run(self) -> None:
        p = self.probe
        p.connect(5.0)
        time_q: deque[float] = deque()
        pending: dict[int, tuple[str, float]] = {}
        open_lines: deque[int] = deque()
        lock = threading.Lock()

        def on_event(ev) -> None:
            with lock:
                if ev.name == "currentTime" and time_q:
                    self.lat["currentTime"].append(ev.ts - time_q.popleft())
                elif ev.name == "contractDetailsEnd" and ev[0] in pending:
                    kind, t0 = pending.pop(ev[0])
                    self.lat["contractDetails"].append(ev.ts - t0)
                elif ev.name == "tickPrice" and ev[0] in pending and pending[ev[0]][0] == "mkt":
                    _, t0 = pending.pop(ev[0])
                    self.lat["firstQuote"].append(ev.ts - t0)
                elif ev.name == "error" and ev[1] not in (2104, 2106, 2158):
                    self.errors.append(ev.args)

        original = p._push

        def push(ev) -> None:
            original(ev)
            on_event(ev)
        p._push = push            # observe callbacks as they arrive (ts is set in the reader thread)

        interval = 1.0 / self.rate
        start = time.monotonic()
        next_at = start
        req_id = 1000
        i = 0
        while time.monotonic() - start < self.seconds:
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            i += 1
            with lock:
                if i % 10 == 0:
                    req_id += 1
                    pending[req_id] = ("details", time.monotonic())
                    p.client.reqContractDetails(req_id, self.contracts[i % len(self.contracts)])
                    self.expected += 1
                elif i % 10 == 5 and len(open_lines) < OPEN_LINES_PER_CLIENT:
                    req_id += 1
                    pending[req_id] = ("mkt", time.monotonic())
                    p.client.reqMktData(req_id, self.contracts[i % len(self.contracts)], "", False, False, [])
                    open_lines.append(req_id)
                    self.expected += 1
                elif i % 10 == 7 and open_lines and open_lines[0] not in pending:
                    self._cancel(open_lines.popleft(), pending)      # only lines that have quoted
                else:
                    time_q.append(time.monotonic())
                    p.client.reqCurrentTime()
                    self.expected += 1
                self.sent += 1
        with lock:
            while open_lines:
                self._cancel(open_lines.popleft(), pending)
                self.sent += 1
            # a last round trip: TWS answers in order, so once it is back every cancel has been read
            # (closing a socket with unread ticks resets it and could lose the last requests)
            time_q.append(time.monotonic())
            p.client.reqCurrentTime()
            self.sent += 1
            self.expected += 1
        # wait (bounded) for the last answers
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with lock:
                answered = sum(len(v) for v in self.lat.values())
            if answered >= self.expected:
                break
            time.sleep(0.01)
        p.disconnect()


async def run_async(clients: int = 11, rate: float = 48.0, seconds: float = 3.0, latency: str = "fast",
                    nodelay: bool = False) -> list[dict]:
    clients = max(1, min(clients, MAX_CLIENTS))
    rate = max(1.0, min(rate, MAX_RATE_PER_CLIENT))
    seconds = max(0.5, min(seconds, MAX_SECONDS))
    sim = TwsSimulator(SimConfig(port=0, latency=latency, seed=7))
    await sim.start()
    try:
        m = sim.market
        contracts = [stock(s) for s in ("SPY", "AAPL", "MSFT", "JNPR")]
        for sym in ("SPY", "AAPL", "MSFT"):
            exp = m.expirations(sym)[1]
            ks = m.strikes(sym, exp)
            mid = len(ks) // 2
            contracts += [option(sym, exp, k, r) for k in ks[mid - 2: mid + 2] for r in "CP"]
        workers = [_Client(sim.port, 100 + n, rate, seconds, contracts, nodelay) for n in range(clients)]
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="bench-client") as pool:
            # one thread per client (the default executor may have fewer threads than clients)
            results = await asyncio.gather(*(loop.run_in_executor(pool, w.run) for w in workers),
                                           return_exceptions=True)
        wall = time.monotonic() - t0
        for _ in range(200):                 # let the simulator read the last bytes of each connection
            if not sim.stats()["clients"]:
                break
            await asyncio.sleep(0.01)
        failures = [r for r in results if isinstance(r, BaseException)]
        st = sim.stats()
    finally:
        await sim.stop()
    rows: list[dict] = []
    for kind in ("currentTime", "contractDetails", "firstQuote"):
        xs = [x * 1000 for w in workers for x in w.lat[kind]]
        rows.append({"bench": "sim_tws", "name": f"answer latency: {kind}", "count": len(xs),
                     "p50_ms": round(_percentile(xs, 0.5), 2), "p95_ms": round(_percentile(xs, 0.95), 2),
                     "max_ms": round(max(xs), 2) if xs else float("nan")})
    sent = sum(w.sent for w in workers)
    answered = sum(len(v) for w in workers for v in w.lat.values())
    expected = sum(w.expected for w in workers)
    rows.append({"bench": "sim_tws", "name": "throughput", "clients": clients, "rate_per_client": rate,
                 "tcp_nodelay": nodelay,
                 "seconds": seconds, "sent": sent, "sent_per_s": round(sent / seconds, 1),
                 "received_by_sim": st["messages_received"] - clients,     # minus each client's startApi
                 "answers_expected": expected, "answered": answered,
                 "violations": len(st["violations"]), "peak_msg_rate_1s": st["peak_msg_rate"],
                 "lines_left": st["active_lines"], "client_errors": sum(len(w.errors) for w in workers),
                 "client_failures": len(failures), "wall_s": round(wall, 2)})
    return rows


def run(clients: int = 11, rate: float = 48.0, seconds: float = 3.0, latency: str = "fast",
        nodelay: bool = False) -> list[dict]:
    """Synchronous entry for bench/run.py (from inside a running loop, await run_async instead)."""
    return asyncio.run(run_async(clients, rate, seconds, latency, nodelay))


def _print(rows: list[dict]) -> None:
    print(f"{'measure':32} {'count':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for r in rows:
        if "p50_ms" in r:
            print(f"{r['name']:32} {r['count']:>7} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['max_ms']:>8}")
    t = rows[-1]
    print()
    for k in ("clients", "rate_per_client", "tcp_nodelay", "seconds", "sent", "sent_per_s", "received_by_sim", "answers_expected",
              "answered", "violations", "peak_msg_rate_1s", "lines_left", "client_errors", "client_failures",
              "wall_s"):
        print(f"{k:32} {t[k]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sim_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=11)
    ap.add_argument("--rate", type=float, default=48.0, help="messages per second per client (max 49)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--latency", choices=("fast", "realistic"), default="fast")
    ap.add_argument("--nodelay", action="store_true",
                    help="set TCP_NODELAY on the ibapi sockets (ibapi leaves Nagle's algorithm on)")
    a = ap.parse_args(argv)
    _print(run(a.clients, a.rate, a.seconds, a.latency, a.nodelay))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
