"""Pure connection policy for the bridge: reconnect delays and telling paper from live accounts."""

from __future__ import annotations

import random
from typing import Callable


class Backoff:
    """Reconnect delays the websockets way: random first delay, then growing by ``factor`` up to ``cap``."""

    def __init__(self, initial: float = 1.0, factor: float = 1.6, cap: float = 30.0,
                 rng: Callable[[], float] = random.random):
        self.initial, self.factor, self.cap, self._rng = initial, factor, cap, rng
        self._delay: float | None = None

    def next(self) -> float:
        if self._delay is None:
            self._delay = self.initial
            return self.initial * self._rng()       # spread the first retry of many agents
        delay = self._delay
        self._delay = min(self._delay * self.factor, self.cap)
        return min(delay, self.cap)

    def reset(self) -> None:
        self._delay = None


def accounts_are_paper(accounts: list[str]) -> bool | None:
    """Paper accounts start with D (DU…, DF…); live ones with U or F. None when there is nothing to tell by."""
    if not accounts:
        return None
    return all(a.upper().startswith("D") for a in accounts)


def mismatch_message(port: int, accounts: list[str], mode: str) -> str:
    kind = "paper" if accounts_are_paper(accounts) else "live"
    acct = ", ".join(accounts)
    return (f"TWS on port {port} is logged in to {kind} account {acct} but IB_MODE={mode} — "
            f"log in to your {mode} account or set IB_MODE={kind}")

