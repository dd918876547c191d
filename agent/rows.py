"""The rows the web app reads, built from Quotes (pure: no I/O).

Shapes are the original agent's (shared/relay-protocol.md): prices and sizes are numbers and 0 when missing (the
web app does arithmetic on them), greeks and implied volatility are null when missing. Unlike the original, IB's
"no bid"/"no ask" (-1) and "not computed" sentinels never pass as numbers, and put open interest (tick 28) is
reported. Extra fields (``delayed``, ``error``, the sell-scan ranking) ride beside the original ones; the web app
ignores what it does not know.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Iterable

from agent.selection import expiry_date
from agent.types import Contract, Quote

_SENTINEL = 1e300            # IB sends "no value" as DBL_MAX (>= 1e300) on the wire
_GREEK_NOT_COMPUTED = -2.0   # optionComputation: greeks -2, iv / prices -1 mean "not computed"
# Decimals kept in rows: prices and money to 4 (a tenth of IB's smallest tick; (30.96 + 31.00) / 2 is
# 30.979999999999997 in binary floating point), greeks and implied volatility to 6.
PRICE_DECIMALS, GREEK_DECIMALS = 4, 6


def _finite(x) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or abs(v) >= _SENTINEL:
        return None
    return v


def clean_price(x) -> float | None:
    """A price or size, or None: negative values are IB's "no bid / no ask" (-1), never a price."""
    v = _finite(x)
    return v if v is not None and v >= 0 else None


def clean_iv(x) -> float | None:
    v = _finite(x)
    return v if v is not None and v > 0 else None


def clean_greek(name: str, x) -> float | None:
    """A greek, or None for IB's "not computed" (-2) and for values no real greek takes."""
    v = _finite(x)
    if v is None or v == _GREEK_NOT_COMPUTED:
        return None
    if name == "delta" and not -1.0 - 1e-9 <= v <= 1.0 + 1e-9:
        return None
    if name in ("gamma", "vega") and v < 0:
        return None
    return v


def _money(v: float) -> float:
    return round(v, PRICE_DECIMALS)


def _num(x) -> float:
    """Missing price/size -> 0, as the web app expects (it never gets -1)."""
    v = clean_price(x)
    return 0.0 if v is None else _money(v)


def _greek(name: str, x) -> float | None:
    v = clean_greek(name, x)
    return None if v is None else round(v, GREEK_DECIMALS)


def _iv(x) -> float | None:
    v = clean_iv(x)
    return None if v is None else round(v, GREEK_DECIMALS)


def mid_price(bid, ask, last) -> float:
    """(bid + ask) / 2 when both are > 0, else last (0 when there is none); 4 decimals."""
    b, a = clean_price(bid), clean_price(ask)
    if b is not None and a is not None and b > 0 and a > 0:
        return _money((b + a) / 2)
    return _num(last)


def _extras(q: Quote) -> dict:
    out: dict = {"delayed": bool(q.delayed)}
    if q.error_code is not None or q.error:
        out["error"] = q.error or f"IB error {q.error_code}"
        out["error_code"] = q.error_code
    return out


def chain_row(c: Contract, q: Quote) -> dict:
    """fetch_chain / sell_scan row: symbol, strike, expiry, right, bid, ask, mid, last, volume, open_interest,
    implied_vol, delta, bid_size, ask_size (+ delayed, error)."""
    volume = q.volume if clean_price(q.volume) is not None else q.option_volume
    row = {
        "symbol": c.symbol,
        "strike": c.strike,
        "expiry": c.expiry,
        "right": c.right,
        "bid": _num(q.bid),
        "ask": _num(q.ask),
        "mid": mid_price(q.bid, q.ask, q.last),
        "last": _num(q.last),
        "volume": _num(volume),
        "open_interest": _num(q.open_interest),
        "implied_vol": _iv(q.implied_vol),
        "delta": _greek("delta", q.delta),
        "bid_size": _num(q.bid_size),
        "ask_size": _num(q.ask_size),
    }
    row.update(_extras(q))
    return row


def has_two_sided_nothing(q: Quote) -> bool:
    """No bid and no ask: the leg has no market the web app can price a spread with."""
    b, a = clean_price(q.bid), clean_price(q.ask)
    return not (b is not None and b > 0) and not (a is not None and a > 0)


def price_row(c: Contract, q: Quote) -> dict | None:
    """fetch_prices row, or None (null in the list) for a leg with no bid and no ask."""
    if has_two_sided_nothing(q):
        return None
    row = {
        "ticker": c.symbol,
        "strike": c.strike,
        "expiry": c.expiry,
        "right": c.right,
        "bid": _num(q.bid),
        "ask": _num(q.ask),
        "mid": mid_price(q.bid, q.ask, q.last),
        "last": _num(q.last),
        "delta": _greek("delta", q.delta),
        "gamma": _greek("gamma", q.gamma),
        "theta": _greek("theta", q.theta),
        "vega": _greek("vega", q.vega),
        "implied_vol": _iv(q.implied_vol),
    }
    row.update(_extras(q))
    return row


def underlying_price(q: Quote) -> float | None:
    """The stock's price: last trade, else the bid/ask midpoint, else yesterday's close; None when IB sent none."""
    last = clean_price(q.last)
    if last is not None and last > 0:
        return _money(last)
    b, a = clean_price(q.bid), clean_price(q.ask)
    if b is not None and a is not None and b > 0 and a > 0:
        return _money((b + a) / 2)
    close = clean_price(q.close)
    if close is not None and close > 0:
        return _money(close)
    return None


def underlying_row(ticker: str, q: Quote) -> dict:
    """fetch_underlying data: ticker, price, bid, ask, close, volume (+ delayed)."""
    price = underlying_price(q)
    return {"ticker": ticker, "price": 0.0 if price is None else price, "bid": _num(q.bid), "ask": _num(q.ask),
            "close": _num(q.close), "volume": _num(q.volume), "delayed": bool(q.delayed)}


# --- the seller's ranking (sell_scan, beyond the original) ----------------------------------------

def days_to_expiry(expiry: str, today: _dt.date) -> int:
    return (expiry_date(expiry) - today).days


def seller_metrics(c: Contract, bid: float, spot: float, today: _dt.date) -> dict:
    """What selling one contract earns and risks.

    premium: bid x multiplier (per contract): a sell order fills at the bid, not at the mid, and a last trade
    may be hours old; with no bid (0) there is nothing to sell into: premium 0, yield None; otm_distance: how far out of the money as a fraction of spot
    (negative = in the money); capital_at_risk: the stock for a covered call (spot x multiplier), the strike for a
    cash-secured put (strike x multiplier); time_value: the premium less the option's intrinsic value, per contract;
    annual_yield: time_value / capital x 365 / days (a same-day expiry counts as one day). Yield is None when there
    is nothing to earn.

    Why time value and not the whole premium: the intrinsic part of an in-the-money option is not income to the
    seller. A covered call assigned below the spot gives that much of the stock's value back; a put assigned above
    the spot buys the stock for that much more than it is worth. Ranking by the whole premium would put deep
    in-the-money contracts first with yields in the hundreds of percent.
    """
    mult = _finite(c.multiplier) if c.multiplier else None
    mult = mult if mult and mult > 0 else 100.0
    days = days_to_expiry(c.expiry, today)
    premium = _money(bid * mult) if bid and bid > 0 else 0.0
    if c.right == "P":
        capital = c.strike * mult
        otm = (spot - c.strike) / spot if spot > 0 else None
        intrinsic = max(0.0, c.strike - spot) if spot > 0 else 0.0
    else:
        capital = spot * mult
        otm = (c.strike - spot) / spot if spot > 0 else None
        intrinsic = max(0.0, spot - c.strike) if spot > 0 else 0.0
    time_value = _money(max(0.0, premium - intrinsic * mult))
    annual = time_value / capital * 365.0 / max(days, 1) if time_value > 0 and capital > 0 else None
    return {"premium": premium, "time_value": time_value, "otm_distance": otm, "capital_at_risk": _money(capital),
            "annual_yield": annual, "days_to_expiry": days}


def sell_row(c: Contract, q: Quote, spot: float, today: _dt.date) -> dict:
    row = chain_row(c, q)
    row.update(seller_metrics(c, row["bid"], spot, today))       # the seller receives the bid (mid stays as is)
    return row


def rank_for_seller(rows: Iterable[dict]) -> list[dict]:
    """Best annualised yield first; rows with nothing to earn last (in their original order)."""
    rows = list(rows)
    return sorted(rows, key=lambda r: (r.get("annual_yield") is None, -(r.get("annual_yield") or 0.0)))
