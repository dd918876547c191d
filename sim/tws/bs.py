"""Black-Scholes prices, greeks and implied volatility (pure math, no I/O).

Greeks are quoted the way TWS quotes them: vega per 1 volatility point (per 0.01), theta per calendar day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SQRT2 = math.sqrt(2.0)


def norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / SQRT2))


def norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Greeks:
    price: float
    delta: float
    gamma: float
    vega: float
    theta: float


def price_greeks(spot: float, strike: float, t: float, vol: float, rate: float, right: str) -> Greeks:
    """Black-Scholes (no dividends) for a call ("C") or put ("P"); t in years."""
    is_call = right.upper().startswith("C")
    t = max(t, 1e-6)
    vol = max(vol, 1e-4)
    sq = vol * math.sqrt(t)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * t) / sq
    d2 = d1 - sq
    disc = math.exp(-rate * t)
    if is_call:
        price = spot * norm_cdf(d1) - strike * disc * norm_cdf(d2)
        delta = norm_cdf(d1)
        theta_y = -spot * norm_pdf(d1) * vol / (2 * math.sqrt(t)) - rate * strike * disc * norm_cdf(d2)
    else:
        price = strike * disc * norm_cdf(-d2) - spot * norm_cdf(-d1)
        delta = norm_cdf(d1) - 1.0
        theta_y = -spot * norm_pdf(d1) * vol / (2 * math.sqrt(t)) + rate * strike * disc * norm_cdf(-d2)
    gamma = norm_pdf(d1) / (spot * sq)
    vega = spot * norm_pdf(d1) * math.sqrt(t) / 100.0
    return Greeks(price=max(price, 0.0), delta=delta, gamma=gamma, vega=vega, theta=theta_y / 365.0)


def implied_vol(price: float, spot: float, strike: float, t: float, rate: float, right: str) -> float | None:
    """The volatility that reproduces ``price`` (bisection), or None when no volatility can."""
    lo, hi = 1e-4, 5.0
    if price <= price_greeks(spot, strike, t, lo, rate, right).price or \
            price >= price_greeks(spot, strike, t, hi, rate, right).price:
        return None
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if price_greeks(spot, strike, t, mid, rate, right).price < price:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6:
            break
    return 0.5 * (lo + hi)
