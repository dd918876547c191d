"""The option-data path against the TWS simulator's realistic latency: the issue's target table, each figure
beside its floor and the original fixed design measured in the same run.

    python -m bench.run            # the full table (about 3 minutes)
    python -m bench.run --quick    # a quick look (under 30 s): fewer runs, a 120-contract chain under the
                                   # Monitor refreshes only, and the fixed design's waits instead of running it

In-process and loopback only: the simulator (latency="realistic": first quote 50-300 ms, greeks 100-500 ms later,
about 3 % of contracts 1-2 s slow), the real ibapi bridge, the pacer and the OptionScanner. Every scenario runs on
its own simulator and reports, besides its times, what TWS saw: pacing violations, errors 100/101/102, the peak
message rate and lines, and the lines still open once its cancels are out and its warm lines given back.

The machine's load moves the figures: take them when it is low (``uptime``), and compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import time

from bench import scenarios as S

HEADS = ("scenario", "runs", "median", "p95", "floor", "/floor", "fixed design", "/fixed", "target", "met")


def _s(x: float | None, unit: str = " s") -> str:
    if x is None:
        return "—"
    return f"{x * 1000:.1f} ms" if x < 0.1 else f"{x:.2f}{unit}"


def cells(r: S.Row) -> list[str]:
    med, hi = S.median(r.times), S.p95(r.times)
    ratio_floor = f"{med / r.floor:.2f}x" if r.floor else "—"
    ratio_fixed = f"{med / r.fixed:.2f}x" if r.fixed else "—"
    fixed = f"{_s(r.fixed)} ({r.fixed_how})" if r.fixed else "—"
    met = "—" if r.met is None else ("yes" if r.met else "NO")
    return [r.name, str(len(r.times)), _s(med), _s(hi) if len(r.times) > 1 else "—", _s(r.floor), ratio_floor,
            fixed, ratio_fixed, r.target or "—", met]


def limit_cells(r: S.Row) -> list[str]:
    lim = r.limits
    return [r.name, str(lim.get("violations", "—")), str(lim.get("errors_100_101_102", "—")),
            f"{lim.get('peak_rate', '—')}/s", str(lim.get("peak_lines", "—")), str(lim.get("warm_at_end", "—")),
            str(lim.get("left_open", "—"))]


def table(heads, rows: list[list[str]]) -> str:
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = lambda cs: "  ".join(c.ljust(w[i]) for i, c in enumerate(cs)).rstrip()  # noqa: E731
    return "\n".join([line(heads), line(["-" * x for x in w]), *(line(r) for r in rows)])


async def run(quick: bool, runs: int | None, seed: int, big: int) -> list[S.Row]:
    measure = not quick
    n_runs = runs or (2 if quick else 7)
    rows: list[S.Row] = []
    rows.append(await S.chain_cold(seed, 96, 1 if quick else n_runs, measure))
    if not quick:           # --quick: the big chain runs only under the Monitor refreshes below
        rows.append(await S.chain_cold(seed, big, 1, measure))
    rows += await S.prices(seed, n_runs, measure)
    rows += await S.prices_during_chain(seed, big, n_runs, measure)
    rows.append(await S.sell_scan(seed, 2 if quick else max(n_runs, 8), measure))
    if not quick:
        rows.append(await S.concurrent(seed))
    return rows


def sim_bench_rows() -> list[str]:
    """The simulator's own benchmark (bench/sim_bench.py): can it keep up with many clients?"""
    try:
        mod = importlib.import_module("bench.sim_bench")
        out = mod.run()
    except Exception as e:  # noqa: BLE001 - their benchmark failing must not hide ours
        return [f"bench/sim_bench.py failed: {type(e).__name__}: {e}"]
    lines = []
    for r in out:
        if "p50_ms" in r:
            lines.append(f"  {r['name']}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, n={r['count']}")
        else:
            lines.append(f"  throughput: {r['sent_per_s']} msg/s from {r['clients']} clients, "
                         f"{r['answered']}/{r['answers_expected']} answered, violations {r['violations']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a quick look, under 30 s")
    ap.add_argument("--runs", type=int, default=None, help="runs per scenario (default 7; 2 with --quick)")
    ap.add_argument("--contracts", type=int, default=None, help="the big chain (default 500; 120 with --quick)")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    big = a.contracts or (120 if a.quick else 500)
    t0 = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = asyncio.run(run(a.quick, a.runs, a.seed, big))
    print(table(HEADS, [cells(r) for r in rows]))
    print()
    print(table(("limits, per scenario", "violations", "100/101/102", "peak rate", "peak lines", "warm at end",
                 "left open"), [limit_cells(r) for r in rows]))
    notes = [f"- {r.name}: {r.notes}" for r in rows if r.notes]
    if notes:
        print("\n" + "\n".join(notes))
    if not a.quick:
        print("\nThe simulator itself (bench/sim_bench.py):")
        print("\n".join(sim_bench_rows()))
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n(total {time.perf_counter() - t0:.1f} s; simulator latency 'realistic', seed {a.seed}; load average "
          f"{load:.2f} before, {load_after:.2f} after; Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
