"""``python -m sim.relay --port 0 --key KEY``: run the reference relay until SIGINT/SIGTERM.

The first stdout line is ``listening on 127.0.0.1:<port>`` (flushed), so a parent process can read the port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .server import ReferenceRelay


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sim.relay", description="Reference MA Tracker relay (127.0.0.1 only)")
    ap.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port; default 0)")
    ap.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "localhost", "::1"])
    ap.add_argument("--key", default="KEY", help="the provider API key the relay accepts")
    ap.add_argument("--heartbeat-timeout", type=float, default=90.0)
    ap.add_argument("--auth-timeout", type=float, default=10.0)
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--max-batch-size", type=int, default=None)
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    relay = ReferenceRelay(api_key=args.key, host=args.host, port=args.port,
                           heartbeat_timeout=args.heartbeat_timeout, auth_timeout=args.auth_timeout,
                           timeout_scale=args.timeout_scale, max_batch_size=args.max_batch_size)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt ends asyncio.run instead
            pass
    print(f"listening on {relay.host}:{relay.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await relay.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
