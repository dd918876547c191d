"""Which option contracts a flow asks IB for, and whether a request fits in time (pure: no I/O).

The rules are the ones the MA Tracker web app already depends on (shared/relay-protocol.md, "How the original
selects contracts"): Curate's chain is the close-date expiry plus the next three, strikes 0.75-1.10 x the deal
price on a 5.0 grid (2.5 at or below 50); Account's sell scan is today through today + N weekdays, strikes within
spot x (1 +/- ntm_pct). Only strikes IB actually lists are kept: an off-grid or unlisted strike costs two messages
and comes back as error 200.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Iterable, Sequence

from agent.errors import RequestTooLarge
from agent.types import Contract, OptionParams

# The relay's own waits per request type (seconds): an answer later than this is lost.
RELAY_WAIT = {"fetch_chain": 180.0, "sell_scan": 120.0, "fetch_prices": 60.0, "fetch_underlying": 15.0,
              "check_availability": 15.0}
# A request must be estimated to finish within this share of the relay's wait: the estimate ignores other
# flows sharing the pacer, contract resolution and quote latency, so leave plenty of room.
TIME_SHARE = 0.5
MESSAGES_PER_CONTRACT = 2      # reqMktData + cancelMktData
IB_MESSAGE_LIMIT = 50          # IB's API limit, messages per second; the agent paces itself below it
CHAIN_EXPIRIES_AFTER_CLOSE = 3
CHAIN_LOW, CHAIN_HIGH = 0.75, 1.10
_EPS = 1e-6


def strike_step(price: float) -> float:
    """The strike grid the original used: 5.0 when the reference price is above 50, else 2.5."""
    return 5.0 if price > 50 else 2.5


def on_grid(strike: float, step: float) -> bool:
    q = strike / step
    return abs(q - round(q)) < 1e-6


def merge_option_params(params: Iterable[OptionParams]) -> tuple[list[str], list[float]]:
    """Expirations and strikes merged across every exchange / trading class IB listed, sorted, unique."""
    exps: set[str] = set()
    strikes: set[float] = set()
    for p in params:
        exps.update(e for e in p.expirations if e)
        strikes.update(round(float(s), 4) for s in p.strikes if s and s > 0 and math.isfinite(s))
    return sorted(exps), sorted(strikes)


def pick_multiplier(params: Sequence[OptionParams], symbol: str) -> str:
    """The multiplier of the symbol's own trading class (IB lists adjusted classes too), else the first, else 100."""
    for p in params:
        if p.trading_class == symbol and p.multiplier:
            return p.multiplier
    for p in params:
        if p.multiplier:
            return p.multiplier
    return "100"


def _ymd(d: _dt.date) -> str:
    return d.strftime("%Y%m%d")


def expiry_date(expiry: str) -> _dt.date:
    """YYYYMMDD (IB sometimes appends a time or zone after a space: ignore it)."""
    return _dt.datetime.strptime(expiry.strip()[:8], "%Y%m%d").date()


def chain_expirations(expirations: Iterable[str], close_date: _dt.date,
                      after: int = CHAIN_EXPIRIES_AFTER_CLOSE) -> list[str]:
    """The expiry on the expected close date if IB lists one, plus the first ``after`` expiries after it."""
    close = _ymd(close_date)
    exps = sorted(set(e[:8] for e in expirations))
    on_close = [e for e in exps if e == close]
    return on_close + [e for e in exps if e > close][:after]


def add_business_days(start: _dt.date, days: int) -> _dt.date:
    """``start`` moved forward by ``days`` weekdays (Saturday and Sunday do not count; holidays are not known)."""
    d = start
    left = days
    while left > 0:
        d += _dt.timedelta(days=1)
        if d.weekday() < 5:
            left -= 1
    return d


def sell_scan_expirations(expirations: Iterable[str], today: _dt.date, business_days: int) -> list[str]:
    """Expiries from today through today + ``business_days`` weekdays, inclusive."""
    lo, hi = _ymd(today), _ymd(add_business_days(today, business_days))
    return sorted(set(e[:8] for e in expirations if lo <= e[:8] <= hi))


def strikes_in_window(listed: Iterable[float], low: float, high: float, step: float) -> list[float]:
    """Listed strikes in [low, high] (inclusive, float-tolerant) that sit on the ``step`` grid."""
    return sorted(k for k in set(listed) if low - _EPS <= k <= high + _EPS and on_grid(k, step))


def chain_strikes(listed: Iterable[float], reference_price: float) -> list[float]:
    """Curate's strikes: 0.75 x ... 1.10 x the deal price (or spot when no deal price) on that price's grid."""
    if reference_price <= 0:
        return []
    return strikes_in_window(listed, CHAIN_LOW * reference_price, CHAIN_HIGH * reference_price,
                             strike_step(reference_price))


def sell_scan_strikes(listed: Iterable[float], spot: float, ntm_pct: float) -> list[float]:
    """Account's strikes: within spot x (1 +/- ntm_pct), on the spot price's grid."""
    if spot <= 0:
        return []
    return strikes_in_window(listed, spot * (1 - ntm_pct), spot * (1 + ntm_pct), strike_step(spot))


def option_contracts(symbol: str, expiries: Iterable[str], strikes: Iterable[float], rights: Iterable[str],
                     multiplier: str = "100") -> list[Contract]:
    """Every (expiry, strike, right) combination, ordered by expiry, then strike, then right."""
    rights = list(rights)
    strikes = list(strikes)
    return [Contract.option(symbol, e, k, r, multiplier=multiplier)
            for e in expiries for k in strikes for r in rights]


def listed_contracts(symbol: str, expiries: Iterable[str], strikes: Iterable[float], rights: Iterable[str],
                     listings: dict, multiplier: str = "100") -> tuple[list[Contract], int]:
    """Like ``option_contracts``, but per expiry only the strikes IB lists for that expiry (``listings[expiry]``,
    a set of strikes; None = unknown, keep them all). Returns the contracts and how many combinations were
    left out because IB does not list them (each would have cost two messages and an error 200)."""
    rights = list(rights)
    strikes = list(strikes)
    out: list[Contract] = []
    skipped = 0
    for e in expiries:
        have = listings.get(e)
        for k in strikes:
            if have is not None and round(k, 4) not in have:
                skipped += len(rights)
                continue
            out.extend(Contract.option(symbol, e, k, r, multiplier=multiplier) for r in rights)
    return out, skipped


def dedupe(contracts: Sequence[Contract]) -> tuple[list[Contract], list[int]]:
    """Unique contracts (first occurrence order) and, for each input, the index of its unique contract."""
    seen: dict[tuple, int] = {}
    unique: list[Contract] = []
    index: list[int] = []
    for c in contracts:
        k = c.key
        if k not in seen:
            seen[k] = len(unique)
            unique.append(c)
        index.append(seen[k])
    return unique, index


def concurrency(n: int, chunk_size: int | None = None, max_batch: int | None = None,
                free_lines: int | None = None) -> int:
    """How many lines one request streams on at once: at most ``free_lines`` (the line budget it may use), the
    relay's ``_max_batch_size`` and ``chunk_size`` (each when given), never more than there are contracts, at least
    1 when there is work."""
    if n <= 0:
        return 0
    k = n
    for cap in (chunk_size, max_batch, free_lines):
        if cap is not None:
            k = min(k, max(1, cap))
    return k


def estimate_seconds(n_contracts: int, msg_rate: float = 45.0) -> float:
    """The floor IB's message rate sets: each contract costs a reqMktData and a cancelMktData."""
    return n_contracts * MESSAGES_PER_CONTRACT / msg_rate


def max_contracts(request_type: str, msg_rate: float = 45.0, share: float = TIME_SHARE) -> int:
    """The largest request of this type that fits well inside the relay's wait."""
    return int(RELAY_WAIT[request_type] * share * msg_rate / MESSAGES_PER_CONTRACT)


def check_request_size(request_type: str, n_contracts: int, how_to_narrow: str, msg_rate: float = 45.0) -> None:
    """Refuse up front (RequestTooLarge) a request that cannot be answered before the relay gives up on it."""
    limit = max_contracts(request_type, msg_rate)
    if n_contracts > limit:
        secs = estimate_seconds(n_contracts, msg_rate)
        raise RequestTooLarge(
            f"This {request_type.replace('_', '-')} needs {n_contracts} option quotes, about {secs:.0f} s at the "
            f"agent's pace of {msg_rate:g} messages per second (IB allows at most {IB_MESSAGE_LIMIT}), but the web "
            f"app waits only {RELAY_WAIT[request_type]:.0f} s "
            f"(at most {limit} quotes per request). {how_to_narrow}")
