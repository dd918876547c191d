"""The market-data line budget: how many lines each waiting request gets, and when warm lines are given up (pure).

TWS allows 100 market-data lines by default, shared with the trader's own windows (error 101 for one more). The
pacer (agent/pacer.py) holds one ``LineBudget`` for the whole agent and adds the asyncio waiting around it; this
module is arithmetic only, tested without sockets or clocks.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Requests wanting at most this many lines may use the reserve that big requests must leave free.
SMALL_REQUEST_LINES = 10


@dataclass(eq=False)
class LineDemand:
    """One request's standing in the line budget, kept current by the request (the batched path).

    ``size``: contracts it asks for in all (a small request, at most SMALL_REQUEST_LINES, may use the reserve);
    ``held``: lines it streams on now (lines whose cancel is queued are no longer its own).
    """

    size: int = 1
    held: int = 0

    @property
    def small(self) -> bool:
        return self.size <= SMALL_REQUEST_LINES

    @property
    def stuck(self) -> bool:
        """Cannot go on without another line: it streams on none of its own, or it is small (a Monitor refresh
        must not wait for a chain's lines). Warm lines yield to such a request (``reclaim``, ``Pacer.may_warm``)."""
        return self.held == 0 or self.small


class LineBudget:
    """The market-data line budget and the rule for granting lines to waiting requests (pure).

    ``budget`` lines in all; ``reserve`` of them may only go to small requests (want <= SMALL_REQUEST_LINES),
    so a request asking for many lines never takes the last few that a 4-leg request needs. Waiters are served
    fewest-held first (then in arrival order), so two big requests share the lines; each gets what it may have
    (1..want). ``warm`` of the lines in use are Monitor's warm lines: idle, and given up first (``reclaim``) when a
    waiting request cannot get a line any other way.
    """

    def __init__(self, budget: int, reserve: int | None = None):
        if budget < 1:
            raise ValueError(f"line budget must be >= 1, got {budget}")
        self.budget = budget
        # Default reserve: 10 lines, but never more than a quarter of a small budget.
        self.reserve = min(SMALL_REQUEST_LINES, budget // 4) if reserve is None else max(0, min(reserve, budget - 1))
        self.in_use = 0
        self.warm = 0
        self.peak = 0

    @property
    def free(self) -> int:
        return self.budget - self.in_use

    def available_to(self, want: int, size: int | None = None) -> int:
        """How many lines a request of ``size`` contracts (default: ``want``) wanting ``want`` could have now."""
        small = (want if size is None else size) <= SMALL_REQUEST_LINES
        usable = self.free if small else self.free - self.reserve
        return max(0, min(want, usable))

    def take(self, n: int) -> None:
        if n < 0 or n > self.free:
            raise RuntimeError(f"cannot take {n} lines with {self.free} free")
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    def give_back(self, n: int) -> int:
        """Return ``n`` lines; returns how many were really outstanding (a larger n is a caller bug)."""
        n = max(0, n)
        real = min(n, self.in_use)
        self.in_use -= real
        self.warm = min(self.warm, self.in_use)
        return real

    def grant(self, wants: list[int], demands: list[LineDemand] | None = None) -> list[int]:
        """For waiters (in arrival order) wanting ``wants``, how many lines each gets now (0 = keeps waiting).

        Served fewest lines held first (``demands``; without them, in arrival order). Takes the granted lines.
        """
        demands = demands if demands is not None else [LineDemand(size=w) for w in wants]
        out = [0] * len(wants)
        for i in sorted(range(len(wants)), key=lambda i: (demands[i].held, i)):
            n = self.available_to(wants[i], demands[i].size)
            if n:
                self.take(n)
            out[i] = n
        return out

    def warm_up(self, n: int) -> None:
        """``n`` lines already in use become warm (idle, kept streaming for a later refresh)."""
        if n < 0 or self.warm + n > self.in_use:
            raise RuntimeError(f"cannot mark {n} more lines warm: {self.warm} warm of {self.in_use} in use")
        self.warm += n

    def cool(self, n: int) -> None:
        """``n`` warm lines stop being warm (being cancelled, reused, or lost with the connection)."""
        self.warm = max(0, self.warm - max(0, n))

    def reclaim(self, wants: list[int], demands: list[LineDemand], closing: int) -> int:
        """How many warm lines to give up now for waiters still waiting after ``grant``.

        Only for a waiter that cannot go on otherwise (``LineDemand.stuck``). A big request that already streams
        goes on at the message rate with the lines it has, and leaves the warm ones alone. Lines whose cancel is
        already queued (``closing``) are on their way back and count against the need.
        """
        need = sum(w for w, d in zip(wants, demands) if d.stuck)
        return max(0, min(self.warm, need - max(0, closing)))
