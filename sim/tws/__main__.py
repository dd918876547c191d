"""``python -m sim.tws``: run the TWS simulator by itself until SIGINT/SIGTERM.

The first line of output is ``listening on 127.0.0.1:<port>`` (flushed), so a script can start it with
``--port 0`` and read the port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .config import SimConfig
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
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> SimConfig:
    accounts = tuple(args.account) if args.account else (("U1234567",) if args.live else ("DU1234567",))
    return SimConfig(host="127.0.0.1", port=args.port, accounts=accounts, read_only=args.read_only,
                     max_lines=args.max_lines, latency=args.latency, seed=args.seed, pacing=args.pacing)


async def serve(config: SimConfig) -> None:
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
        asyncio.run(serve(config_from(args)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
