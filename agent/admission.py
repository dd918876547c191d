"""Admission of bulk requests: decided up front whether one can be answered before the relay stops waiting, given
the work already admitted (pure: no I/O; the dispatcher calls it).

Every bulk request (chain, sell scan, price refresh) shares one message budget: IB allows 50 messages a second
and the pacer sends about 41 (45 in any 1.1 s). A request costs about two messages per contract (reqMktData and
cancelMktData), so 200 chains at once are tens of minutes of messages, and a chain queued behind them would be
answered long after the web app gave up (180 s). Requests share the pacer fairly, so a newcomer slows the ones
already running: the model is one queue of admitted work draining at the pacer's rate. A request is admitted
when that queue, with it, drains before its own budget and before the budget of every request admitted before
it; otherwise it is answered at once: "busy: N requests ahead, retry in about S s". A request with nothing
ahead is always admitted (the scanner's own size check refuses one that is too large by itself).

The cost is an estimate from the payload (the contracts are only known after asking IB): fetch_prices counts its
legs; fetch_chain the strikes 0.75-1.10 x the deal price on its grid for four expiries, calls and puts (an upper
bound: IB does not list every strike); a chain without a deal price and a sell scan, whose strikes depend on a
price not yet known, a typical size. An admitted request that finishes early gives its unused share back.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

MESSAGES_PER_CONTRACT = 2          # reqMktData + cancelMktData
LOOKUP_MESSAGES = 8                # stock, option parameters, spot quote, one listing per expiry
CHAIN_EXPIRIES, CHAIN_RIGHTS = 4, 2
CHAIN_LOW, CHAIN_HIGH = 0.75, 1.10
TYPICAL_CHAIN = 120                # contracts, when the chain is centred on a price not known yet
TYPICAL_SELL_SCAN = 40             # contracts (15 business days of weeklies, +/-5 % of spot)
SHARE = 0.6                        # of a route's deadline that admitted work may take (estimates are rough)
BULK = ("fetch_chain", "sell_scan", "fetch_prices")


def estimate_messages(request_type: str, payload: Any) -> int:
    """Messages to TWS a bulk request will likely cost (see the module docstring); 0 for other types."""
    if request_type == "fetch_prices":
        return MESSAGES_PER_CONTRACT * len(getattr(payload, "contracts", ()) or ()) + 1
    if request_type == "fetch_chain":
        ref = float(getattr(payload, "dealPrice", 0.0) or 0.0)
        if ref > 0:
            step = 5.0 if ref > 50 else 2.5
            strikes = math.floor((CHAIN_HIGH - CHAIN_LOW) * ref / step) + 1
            contracts = strikes * CHAIN_EXPIRIES * CHAIN_RIGHTS
        else:
            contracts = TYPICAL_CHAIN
        return MESSAGES_PER_CONTRACT * contracts + LOOKUP_MESSAGES
    if request_type == "sell_scan":
        return MESSAGES_PER_CONTRACT * TYPICAL_SELL_SCAN + LOOKUP_MESSAGES
    return 0


@dataclass
class _Admitted:
    at: float           # when it was admitted
    cost: float         # its estimated seconds of the shared message budget
    until: float        # its budget ends here


@dataclass
class Admission:
    """The queue of admitted bulk work. ``rate``: messages per second the pacer sustains; ``budgets``: seconds of
    queued work each request type may wait behind (SHARE of its deadline unless given)."""

    rate: float = 45.0 / 1.1
    budgets: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    peak_active: int = 0
    refused: int = 0
    _drain_at: float = 0.0
    _active: dict[int, _Admitted] = field(default_factory=dict)
    _tickets: Any = field(default_factory=itertools.count)

    def budget(self, request_type: str, deadline: float) -> float:
        return self.budgets.get(request_type, SHARE * deadline)

    def admit(self, request_type: str, payload: Any, deadline: float) -> tuple[int | None, str | None]:
        """(ticket, None) when admitted (hand the ticket back to ``done``), (None, None) for a type that is not
        bulk, or (None, refusal) with the sentence to answer at once."""
        if request_type not in BULK:
            return None, None
        now = self.clock()
        cost = estimate_messages(request_type, payload) / self.rate
        start = max(now, self._drain_at)
        finish = start + cost
        until = now + self.budget(request_type, deadline)
        if self._active and finish > min([until] + [a.until for a in self._active.values()]):
            self.refused += 1
            wait = max(1, math.ceil(start - now))
            return None, f"busy: {len(self._active)} requests ahead, retry in about {wait} s"
        ticket = next(self._tickets)
        self._active[ticket] = _Admitted(now, cost, until)
        self._drain_at = finish
        self.peak_active = max(self.peak_active, len(self._active))
        return ticket, None

    def done(self, ticket: int | None) -> None:
        """A request admitted with ``ticket`` finished (answered, failed or cancelled)."""
        item = self._active.pop(ticket, None) if ticket is not None else None
        if item is None:
            return
        now = self.clock()
        if not self._active:
            self._drain_at = now
            return
        # Give back what it did not use: at least its estimate less the time it ran (it used no more than that).
        leftover = max(0.0, item.cost - (now - item.at))
        self._drain_at = max(now, self._drain_at - leftover)

    @property
    def active(self) -> int:
        return len(self._active)
