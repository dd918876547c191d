"""``python -m sim.tws``: run the TWS simulator by itself until SIGINT/SIGTERM.

The first line of output is ``listening on 127.0.0.1:<port>`` (flushed), so a script can start it with
``--port 0`` and read the port. Fault commands can be typed on stdin while it runs (``help`` lists them).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import sys
import threading

from .config import SimConfig
from .console import CommandError, apply
from .server import TwsSimulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sim.tws", description="IB TWS simulator (loopback only)")
    p.add_argument("--port", type=int, default=7497, help="port to listen on (0 = any free port)")
    p.add_argument("--account", action="append", default=None,
                   help="account id (repeat for several); default DU1234567, or U1234567 with --live")
    p.add_argument("--live", action="store_true", help="a live account (U...) instead of paper (DU...)")
    p.add_argument("--read-only", action="store_true", help="the Read-Only API setting is ticked")
    p.add_argument("--max-lines", type=int, default=100, help="market data lines shared by all clients")
    p.add_argument("--latency", choices=("fast", "realistic"), default="realistic")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pacing", choices=("reject", "delay"), default="reject",
                   help="over 50 msg/s: error 100 (reject) or TWS's 'apply pacing' mode (delay)")
    p.add_argument("--partial-fills", action="store_true",
                   help="fill at most the size quoted at the touch per quote (default: whole fills)")
    p.add_argument("--today", type=dt.date.fromisoformat, default=None,
                   help="build the listings as of this date (YYYY-MM-DD; default: today, UTC)")
    p.add_argument("--no-commands", action="store_true", help="do not read fault commands from stdin")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> SimConfig:
    accounts = tuple(args.account) if args.account else (("U1234567",) if args.live else ("DU1234567",))
    return SimConfig(host="127.0.0.1", port=args.port, accounts=accounts, read_only=args.read_only,
                     max_lines=args.max_lines, latency=args.latency, seed=args.seed, pacing=args.pacing,
                     today=args.today, partial_fills=args.partial_fills)


def _stdin_is_ours() -> bool:
    """Read commands from a pipe or a terminal we own; never from a terminal while in the background
    (``python -m sim.tws &`` would be stopped by SIGTTIN)."""
    try:
        if not os.isatty(0):
            return True
        return os.tcgetpgrp(0) == os.getpgrp()
    except (OSError, AttributeError):
        return False


def _read_commands(sim: TwsSimulator, loop: asyncio.AbstractEventLoop) -> None:
    """Fault commands from stdin (see sim/tws/console.py), read in a daemon thread and run on the loop."""

    def out(text: str) -> None:
        print(text, flush=True)

    async def one(line: str) -> None:
        try:
            await apply(sim, line, out)
        except CommandError as exc:
            out(f"error: {exc}")
        except Exception as exc:  # noqa: BLE001 - a command must never stop the simulator
            out(f"error: {exc!r}")

    def reader() -> None:
        for line in sys.stdin:
            asyncio.run_coroutine_threadsafe(one(line), loop)

    threading.Thread(target=reader, name="sim-commands", daemon=True).start()


async def serve(config: SimConfig, commands: bool = True) -> None:
    sim = TwsSimulator(config)
    await sim.start()
    print(f"listening on 127.0.0.1:{sim.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):   # Windows: Ctrl+C raises KeyboardInterrupt instead
            pass
    if commands and _stdin_is_ours():
        _read_commands(sim, loop)
    try:
        await stop.wait()
    finally:
        await sim.stop()
        print("stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config_from(args), commands=not args.no_commands))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
