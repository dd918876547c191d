"""Fault commands typed into a running ``python -m sim.tws`` (one per line on stdin).

    drop                      every client is cut (TWS crash)
    refuse SECONDS            port closed for a while, clients dropped (daily restart)
    reset [lost|kept] [SECS]  nightly reset: 1100, outage, then 1101 (lines lost) or 1102 (kept)
    farm NAME up|down         a data farm goes down (2103/2105/2157) or comes back (2104/2106/2158)
    stall SECONDS             requests are not answered for a while (streams go on); stall 0 ends it
    malformed [short|truncated|garbage]
    silent on|off             accept TCP but never answer the handshake
    readonly on|off           the Read-Only API setting
    withhold on|off           orders work but TWS sends no openOrder/orderStatus/execDetails about them
    stats                     print the inspection counters (JSON)
    help
"""

from __future__ import annotations

import json
from typing import Callable

from .server import TwsSimulator


class CommandError(ValueError):
    """A line that is not a known command with valid arguments."""


def _onoff(word: str) -> bool:
    if word in ("on", "true", "1", "yes"):
        return True
    if word in ("off", "false", "0", "no"):
        return False
    raise CommandError(f"expected on/off, got {word!r}")


def _seconds(word: str) -> float:
    try:
        v = float(word)
    except ValueError as exc:
        raise CommandError(f"expected seconds, got {word!r}") from exc
    if not 0 <= v <= 3600:
        raise CommandError("seconds must be between 0 and 3600")
    return v


async def apply(sim: TwsSimulator, line: str, out: Callable[[str], None]) -> None:
    """Run one command line against the simulator; raises CommandError for a bad line."""
    words = line.strip().split()
    if not words:
        return
    cmd, args = words[0].lower(), [w.lower() for w in words[1:]]
    if cmd == "help":
        out(__doc__.strip().split("\n\n", 1)[1])
    elif cmd == "drop":
        await sim.drop_clients()
        out("dropped every client")
    elif cmd == "refuse" and len(args) == 1:
        sim.refuse_connections(_seconds(args[0]))
        out(f"refusing connections for {args[0]} s")
    elif cmd == "reset" and len(args) <= 2:
        lost = (args[0] if args else "lost") != "kept"
        outage = _seconds(args[1]) if len(args) > 1 else 0.5
        out(f"nightly reset: 1100, {outage} s outage, then {'1101 (data lost)' if lost else '1102 (data kept)'}")
        await sim.nightly_reset(data_lost=lost, outage=outage)
    elif cmd == "farm" and len(args) == 2 and args[1] in ("up", "down"):
        await sim.set_farm(words[1], up=args[1] == "up")
        out(f"farm {words[1]} {args[1]}")
    elif cmd == "stall" and len(args) == 1:
        seconds = _seconds(args[0])
        sim.stall(seconds)
        out(f"stalling requests for {args[0]} s" if seconds else "stall ended: queued requests are answered")
    elif cmd == "malformed" and len(args) <= 1:
        kind = args[0] if args else "short"
        if kind not in ("short", "truncated", "garbage"):
            raise CommandError("malformed kind is short, truncated or garbage")
        await sim.send_malformed(kind=kind)
        out(f"sent a {kind} malformed message to every client")
    elif cmd == "silent" and len(args) == 1:
        sim.silent_handshake = _onoff(args[0])
        out(f"silent handshake {'on' if sim.silent_handshake else 'off'}")
    elif cmd == "withhold" and len(args) == 1:
        sim.withhold_order_status = _onoff(args[0])
        out(f"order status {'withheld' if sim.withhold_order_status else 'reported'}")
    elif cmd == "readonly" and len(args) == 1:
        sim.set_read_only(_onoff(args[0]))
        out(f"read-only API {'on' if sim.read_only else 'off'}")
    elif cmd == "stats":
        st = sim.stats()
        st["errors_sent"] = st["errors_sent"][-20:]
        st["orders"] = st["orders"][-20:]
        out(json.dumps(st, default=str))
    else:
        raise CommandError(f"unknown command {line.strip()!r} (try: help)")

