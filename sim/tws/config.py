"""The simulator's settings (one frozen object)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    accounts: tuple[str, ...] = ("DU1234567",)
    read_only: bool = False
    max_lines: int = 100               # market data lines shared by all clients (TWS default 100)
    latency: str = "fast"              # "fast" | "realistic"
    seed: int = 7
    pacing: str = "reject"             # "reject" (error 100) | "delay" (TWS's "apply pacing" setting)
    max_rate: int = 50                 # messages per client in any 1-second window
    max_violations: int = 3            # the Nth pacing violation disconnects the client
    max_clients: int = 32
    partial_fills: bool = False        # fill at most the size shown at the touch per quote (off: whole fills)
    step: float = 0.5                  # seconds per market random-walk step
    today: dt.date | None = None       # listings are built from this date (default: today, UTC)
    handshake_timeout: float = 30.0    # a client that never sends its version/startApi is dropped

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK:
            raise ValueError(f"the simulator listens on loopback only, not {self.host!r}")
        if self.pacing not in ("reject", "delay"):
            raise ValueError(f"pacing must be 'reject' or 'delay', not {self.pacing!r}")
        if self.latency not in ("fast", "realistic"):
            raise ValueError(f"latency must be 'fast' or 'realistic', not {self.latency!r}")
        if not self.accounts:
            raise ValueError("at least one account is needed")
        object.__setattr__(self, "accounts", tuple(self.accounts))
