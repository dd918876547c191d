"""Which message the pacer sends next (pure): round-robin across flows, and urgent requests, bulk requests and
line cancels in the order the line budget wants (see ``MessageQueue``). No clock and no I/O: agent/pacer.py adds
the tokens and the waiting.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, Hashable, TypeVar

T = TypeVar("T")

#: A message's class in the pacer's queue (see ``MessageQueue``).
URGENT, BULK, CANCEL = "urgent", "bulk", "cancel"


class RoundRobin(Generic[T]):
    """FIFO queues per flow, served one item per flow in turn (flows in the order they first waited)."""

    def __init__(self) -> None:
        self._queues: OrderedDict[Hashable, deque[T]] = OrderedDict()

    def push(self, flow: Hashable, item: T) -> None:
        q = self._queues.get(flow)
        if q is None:
            q = self._queues[flow] = deque()
        q.append(item)

    def pop(self) -> T:
        """The next item: the first of the flow whose turn it is; that flow then goes to the back."""
        flow, q = next(iter(self._queues.items()))
        item = q.popleft()
        del self._queues[flow]
        if q:
            self._queues[flow] = q          # re-inserted at the end: the others go first
        return item

    def remove(self, flow: Hashable, item: T) -> bool:
        q = self._queues.get(flow)
        if q is None:
            return False
        try:
            q.remove(item)
        except ValueError:
            return False
        if not q:
            del self._queues[flow]
        return True

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __bool__(self) -> bool:
        return bool(self._queues)

    def flows(self) -> list[Hashable]:
        return list(self._queues)


class MessageQueue(Generic[T]):
    """Messages waiting for a token, and which one goes next (pure).

    Three classes. Urgent requests (lookups, orders, health checks, a small request's lines: someone is waiting
    on each) always go first, round-robin across flows. Then a big request's lines ("bulk", round-robin across
    flows) and the cancels of finished lines (oldest first), in the order the line budget wants: while no request
    waits for a line, new lines before cancels (closing a finished line frees nothing anybody needs yet); when
    lines run short, the cancels first, since each one frees a line somebody waits for. A cancel never gives its
    line back before it has been sent (the bridge's rule), so letting a request pass a queued cancel can never
    put TWS over its line limit (error 101).
    """

    def __init__(self) -> None:
        self._urgent: RoundRobin[T] = RoundRobin()
        self._bulk: RoundRobin[T] = RoundRobin()
        self._cancels: deque[T] = deque()

    @staticmethod
    def order(lines_short: bool) -> tuple[str, str, str]:
        """The classes in the order they are served."""
        return (URGENT, CANCEL, BULK) if lines_short else (URGENT, BULK, CANCEL)

    def push(self, kind: str, flow: Hashable, item: T) -> None:
        if kind == CANCEL:
            self._cancels.append(item)
        elif kind == BULK:
            self._bulk.push(flow, item)
        elif kind == URGENT:
            self._urgent.push(flow, item)
        else:
            raise ValueError(f"unknown message class {kind!r}")

    def remove(self, kind: str, flow: Hashable, item: T) -> bool:
        if kind == CANCEL:
            try:
                self._cancels.remove(item)
            except ValueError:
                return False
            return True
        return (self._bulk if kind == BULK else self._urgent).remove(flow, item)

    def _has(self, kind: str) -> bool:
        return bool(self._cancels if kind == CANCEL else self._bulk if kind == BULK else self._urgent)

    def ahead_of(self, kind: str, lines_short: bool = False) -> bool:
        """Would something already queued go before a new message of ``kind``? (Same class counts: fair turns.)"""
        for k in self.order(lines_short):
            if self._has(k):
                return True
            if k == kind:
                return False
        return False

    def pop(self, lines_short: bool = False) -> T:
        """The next message to send; IndexError when empty."""
        for k in self.order(lines_short):
            if k == CANCEL and self._cancels:
                return self._cancels.popleft()
            if k == BULK and self._bulk:
                return self._bulk.pop()
            if k == URGENT and self._urgent:
                return self._urgent.pop()
        raise IndexError("pop from an empty MessageQueue")

    @property
    def cancels(self) -> int:
        return len(self._cancels)

    def __len__(self) -> int:
        return len(self._urgent) + len(self._bulk) + len(self._cancels)

    def __bool__(self) -> bool:
        return bool(self._urgent or self._bulk or self._cancels)

    def flows(self) -> list[Hashable]:
        return list(dict.fromkeys(self._urgent.flows() + self._bulk.flows()))
