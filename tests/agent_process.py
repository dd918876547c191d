"""The agent as a trader runs it: ``ib_data_agent.py`` in its own process, configured for a simulator and a
reference relay on 127.0.0.1 (shared by the tests that send it real signals)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import AsyncIterator

import ib_data_agent

ROOT = Path(ib_data_agent.__file__).resolve().parent


@contextlib.asynccontextmanager
async def agent_process(tmp_path: Path, sim, relay, key: str, *, capture: bool = False
                        ) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start the agent with a config.env for ``sim`` and ``relay`` (none of the caller's IB_/RELAY_/LOG_ settings
    leak in); on the way out a process still running is killed."""
    cfg = tmp_path / "config.env"
    cfg.write_text(f"IB_PROVIDER_KEY={key}\nRELAY_URL={relay.ws_url}\nIB_PORT={sim.port}\n"
                   f"LOG_DIR={tmp_path / 'logs'}\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IB_", "RELAY_", "LOG_")) and k != "ALLOW_LIVE_ORDERS"}
    out = asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "ib_data_agent.py"), "--config", str(cfg), cwd=str(ROOT), env=env,
        stdout=out, stderr=asyncio.subprocess.STDOUT if capture else asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
