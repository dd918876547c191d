"""How long the simulated TWS takes to answer (seeded, pure).

"realistic": first quote 50-300 ms after reqMktData, option greeks 100-500 ms after that, about 3% of
contracts slow (first quote after 1-2 s), snapshots end ~2-3 s after the request, quotes refresh every
0.25-1 s. "fast" (unit tests): a few milliseconds for everything. A contract's delays depend only on the
seed and the contract, so a run is reproducible.
"""

from __future__ import annotations

import random
import zlib


class Latency:
    def __init__(self, mode: str = "fast", seed: int = 7) -> None:
        if mode not in ("fast", "realistic"):
            raise ValueError(f"latency must be 'fast' or 'realistic', not {mode!r}")
        self.mode = mode
        self.seed = seed
        self._rng = random.Random(f"latency:{seed}")

    @property
    def realistic(self) -> bool:
        return self.mode == "realistic"

    def _r(self, key: object, tag: str) -> random.Random:
        return random.Random(zlib.crc32(f"{self.seed}|{key}|{tag}".encode()))

    def is_slow(self, key: object) -> bool:
        return self.realistic and self._r(key, "slow").random() < 0.03

    def first_quote(self, key: object, nonce: int = 0) -> float:
        r = self._r(key, f"first{nonce}")
        if not self.realistic:
            return r.uniform(0.001, 0.005)
        if self.is_slow(key):
            return r.uniform(1.0, 2.0)
        return r.uniform(0.05, 0.30)

    def greeks_after(self, key: object, nonce: int = 0) -> float:
        r = self._r(key, f"greeks{nonce}")
        return r.uniform(0.001, 0.005) if not self.realistic else r.uniform(0.10, 0.50)

    def update_interval(self) -> float:
        return self._rng.uniform(0.04, 0.06) if not self.realistic else self._rng.uniform(0.25, 1.0)

    def snapshot_end(self) -> float:
        return self._rng.uniform(0.02, 0.04) if not self.realistic else self._rng.uniform(2.0, 3.0)

    def answer(self, n_items: int = 1) -> float:
        """Delay before answering a reference-data request (partly specified option lists are slow)."""
        if not self.realistic:
            return 0.0
        return self._rng.uniform(0.01, 0.05) + min(0.002 * n_items, 2.0)

    def order_step(self) -> float:
        return 0.002 if not self.realistic else self._rng.uniform(0.05, 0.2)
