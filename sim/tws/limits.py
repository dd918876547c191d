"""IB's message-rate window (pure arithmetic, clock passed in).

TWS accepts at most 50 messages from one client in any 1-second window; the 51st is a violation
(error 100). The window slides: it counts the messages of the last second, not of a calendar second.
"""

from __future__ import annotations

from collections import deque


class RateWindow:
    """Timestamps of the messages accepted in the last ``window`` seconds."""

    def __init__(self, limit: int = 50, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()

    def count(self, now: float) -> int:
        self._prune(now)
        return len(self._times)

    def has_room(self, now: float) -> bool:
        return self.count(now) < self.limit

    def record(self, now: float) -> int:
        """Count one message; returns how many the window now holds."""
        self._prune(now)
        self._times.append(now)
        return len(self._times)

    def wait_time(self, now: float) -> float:
        """Seconds until one more message fits (0 if it fits now)."""
        self._prune(now)
        if len(self._times) < self.limit:
            return 0.0
        return max(self._times[0] + self.window - now, 0.0) + 1e-4
