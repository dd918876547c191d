"""The simulated market: listings (expirations, strikes, conIds) and quotes, deterministic for a seed.

Pure model, no I/O. The clock is injected: a quote is a function of (seed, symbol, contract, step index),
where the step index counts `step` seconds of the clock since the model started. So two simulators with
the same seed that are asked at the same step give the same numbers, and tests can ask the model for
"the value now" and compare what the wire delivered.

Modelled: a seeded random walk per underlying (JNPR mean-reverts just under its 40.00 deal price), a
volatility smile and term structure, Black-Scholes prices with matching greeks, penny/nickel ticks,
spreads that widen away from the money, illiquid far-OTM far-dated contracts that never quote, and an
occasional one-sided quote. Not modelled: dividends, early exercise, the order book, exchange auctions.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import math
import random
import threading
import time
import zlib
from array import array
from dataclasses import dataclass
from typing import Callable

from . import bs

RATE = 0.045            # risk-free rate used by the model (and so by its greeks)
TIME_SCALE = 4.0        # the walk moves faster than a real market so tests see quotes change in a second


@dataclass(frozen=True)
class Underlying:
    symbol: str
    con_id: int
    spot0: float
    vol: float                  # at-the-money implied volatility (annual)
    skew: float                 # smile slope per unit of log-moneyness/sqrt(T)
    long_name: str
    primary_exchange: str
    live_permission: bool = True
    weeklies: bool = True
    months_out: int = 12
    half_spread: float = 0.01   # stock quote half spread
    deal_price: float | None = None   # merger-arbitrage target: price is pinned below the deal price
    stock_type: str = "COMMON"


DEFAULT_UNDERLYINGS: tuple[Underlying, ...] = (
    Underlying("SPY", 756733, 590.0, 0.15, -0.45, "SPDR S&P 500 ETF TRUST", "ARCA", stock_type="ETF"),
    Underlying("AAPL", 265598, 230.0, 0.25, -0.30, "APPLE INC", "NASDAQ"),
    Underlying("MSFT", 272093, 420.0, 0.22, -0.30, "MICROSOFT CORP", "NASDAQ", half_spread=0.015),
    Underlying("JNPR", 4391, 39.40, 0.06, -0.10, "JUNIPER NETWORKS INC", "NYSE", weeklies=False,
               months_out=9, deal_price=40.0),
    Underlying("TSLA", 76792991, 250.0, 0.55, -0.20, "TESLA INC", "NASDAQ", live_permission=False,
               half_spread=0.025),
)


@dataclass(frozen=True)
class OptionSpec:
    """One listed option contract."""

    symbol: str
    expiry: str          # YYYYMMDD
    strike: float
    right: str           # "C" / "P"
    con_id: int
    trading_class: str
    multiplier: str = "100"

    @property
    def local_symbol(self) -> str:
        """OCC style: 'AAPL  250117C00230000'."""
        return f"{self.symbol:<6}{self.expiry[2:]}{self.right}{int(round(self.strike * 1000)):08d}"


@dataclass(frozen=True)
class StockQuote:
    symbol: str
    bid: float
    ask: float
    last: float
    close: float
    open: float
    high: float
    low: float
    bid_size: int
    ask_size: int
    last_size: int
    volume: int
    hist_vol: float
    implied_vol: float


@dataclass(frozen=True)
class OptionQuote:
    """Model values for one option now. bid/ask -1 with size 0 means "no bid"/"no ask" (as IB sends)."""

    symbol: str
    expiry: str
    strike: float
    right: str
    bid: float
    ask: float
    last: float          # -1 when the contract has not traded
    close: float
    bid_size: int
    ask_size: int
    last_size: int
    volume: int
    open_interest: int
    iv: float
    delta: float
    gamma: float
    vega: float
    theta: float
    model_price: float
    und_price: float
    quoting: bool        # False for the illiquid contracts that never quote

    @property
    def mid(self) -> float | None:
        if self.bid > 0 and self.ask > 0:
            return (self.bid + self.ask) / 2
        return None


def _h(*parts: object) -> int:
    """A stable hash (Python's hash() is salted per process)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def _u(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1)."""
    return (_h(*parts) % 1_000_003) / 1_000_003


def third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    offset = (calendar.FRIDAY - first.weekday()) % 7
    return first + dt.timedelta(days=offset + 14)


def option_tick(symbol: str, price: float) -> float:
    """An option's price increment: nickels for JNPR options priced $3 and over, pennies otherwise."""
    return 0.05 if symbol == "JNPR" and price >= 3 else 0.01


def _round_tick(x: float, tick: float, up: bool) -> float:
    n = x / tick
    n = math.ceil(n - 1e-9) if up else math.floor(n + 1e-9)
    return round(n * tick, 2)


class _Path:
    """An underlying's walk: price, running high and running low per step, in compact arrays.

    Lookups are O(1) (a stock quote's high/low must not scan the day). After MAX_STEPS (about 11 days at
    0.5 s a step) the oldest half is dropped; a step older than what is kept answers the oldest kept one.
    """

    MAX_STEPS = 2_000_000

    def __init__(self, first: float) -> None:
        self.offset = 0
        self.price = array("d", [first])
        self.high = array("d", [first])
        self.low = array("d", [first])

    @property
    def end(self) -> int:
        return self.offset + len(self.price)

    @property
    def last(self) -> float:
        return self.price[-1]

    def append(self, x: float) -> None:
        self.price.append(x)
        self.high.append(max(self.high[-1], x))
        self.low.append(min(self.low[-1], x))
        if len(self.price) > self.MAX_STEPS:
            drop = self.MAX_STEPS // 2
            del self.price[:drop], self.high[:drop], self.low[:drop]
            self.offset += drop

    def at(self, k: int) -> tuple[float, float, float]:
        i = min(max(k - self.offset, 0), len(self.price) - 1)
        return self.price[i], self.high[i], self.low[i]


class Market:
    """Listings and quotes for the simulated underlyings."""

    def __init__(self, seed: int = 7, today: dt.date | None = None,
                 clock: Callable[[], float] = time.monotonic, step: float = 0.5,
                 underlyings: tuple[Underlying, ...] = DEFAULT_UNDERLYINGS) -> None:
        self.seed = seed
        self.today = today or dt.datetime.now(dt.timezone.utc).date()
        self.clock = clock
        self.step = step
        self._t0 = clock()
        self.underlyings: dict[str, Underlying] = {u.symbol: u for u in underlyings}
        self._paths: dict[str, _Path] = {}
        self._lock = threading.Lock()     # tests read the model from another thread
        self._rngs: dict[str, random.Random] = {}
        self._expiries: dict[str, list[str]] = {}
        self._strikes: dict[tuple[str, str], list[float]] = {}
        self._options: dict[int, OptionSpec] = {}
        self._by_key: dict[tuple[str, str, float, str], OptionSpec] = {}
        for u in underlyings:
            self._build_listings(u)

    # ---- listings -------------------------------------------------------------------------------

    def _build_listings(self, u: Underlying) -> None:
        exps: set[dt.date] = set()
        if u.weeklies:
            d = self.today + dt.timedelta(days=1)
            while len(exps) < 8:
                if d.weekday() == calendar.FRIDAY:
                    exps.add(d)
                d += dt.timedelta(days=1)
        y, m = self.today.year, self.today.month
        for i in range(u.months_out + 1):
            yy, mm = y + (m - 1 + i) // 12, (m - 1 + i) % 12 + 1
            tf = third_friday(yy, mm)
            if tf > self.today:
                exps.add(tf)
        ordered = sorted(exps)
        self._expiries[u.symbol] = [d.strftime("%Y%m%d") for d in ordered]
        for d in ordered:
            exp = d.strftime("%Y%m%d")
            days = (d - self.today).days
            strikes = self._strike_grid(u, days)
            self._strikes[(u.symbol, exp)] = strikes
            for k in strikes:
                for right in ("C", "P"):
                    con_id = 400_000_000 + _h(u.symbol, exp, k, right) % 500_000_000
                    while con_id in self._options:      # stable collision resolution (sorted build order)
                        con_id += 1
                    spec = OptionSpec(u.symbol, exp, k, right, con_id, u.symbol)
                    self._options[con_id] = spec
                    self._by_key[(u.symbol, exp, k, right)] = spec

    def _strike_grid(self, u: Underlying, days: int) -> list[float]:
        s = u.spot0
        width = 0.15 if days <= 60 else 0.40 if days <= 200 else 0.55
        lo, hi = s * (1 - width), s * (1 + width)
        strikes: set[float] = set()
        # the usual grid: 2.5 wide below 50, 5 wide above
        k = 2.5
        while k <= hi:
            if k >= lo:
                strikes.add(k)
            k += 2.5 if k < 50 else 5.0
        # finer near the money for expiries within ~4 months
        if days <= 120:
            if u.symbol == "SPY":
                fine, band = 1.0, 0.06
            elif s < 50:
                fine, band = 1.0, 0.12
            else:
                fine, band = 2.5, 0.06     # listed half-strikes such as AAPL 232.5
            k = math.floor(s * (1 - band) / fine) * fine
            while k <= s * (1 + band):
                if k > 0:
                    strikes.add(round(k, 2))
                k += fine
        return sorted(strikes)

    def symbols(self) -> list[str]:
        return list(self.underlyings)

    def expirations(self, symbol: str) -> list[str]:
        return list(self._expiries.get(symbol.upper(), []))

    def strikes(self, symbol: str, expiry: str) -> list[float]:
        return list(self._strikes.get((symbol.upper(), expiry), []))

    def option_params(self, symbol: str) -> list[tuple[str, str, str, list[str], list[float]]]:
        """reqSecDefOptParams rows: (exchange, trading class, multiplier, expirations, strikes).

        The exchanges list slightly different strikes (SMART leaves out the half-strikes that only CBOE
        lists; CBOE leaves out the far wings), so a client must merge the rows to see the whole chain.
        """
        u = self.underlyings.get(symbol.upper())
        if u is None:
            return []
        exps = self.expirations(u.symbol)
        every = sorted({k for e in exps for k in self._strikes[(u.symbol, e)]})
        smart = [k for k in every if k < 50 or k == int(k)]
        cboe = [k for k in every if abs(k / u.spot0 - 1) <= 0.30]
        return [("SMART", u.symbol, "100", exps, smart), ("CBOE", u.symbol, "100", exps, cboe)]

    def option(self, symbol: str, expiry: str, strike: float, right: str) -> OptionSpec | None:
        return self._by_key.get((symbol.upper(), expiry, round(float(strike), 2), right.upper()[:1]))

    def by_con_id(self, con_id: int) -> OptionSpec | Underlying | None:
        if con_id in self._options:
            return self._options[con_id]
        for u in self.underlyings.values():
            if u.con_id == con_id:
                return u
        return None

    def find_options(self, symbol: str, expiry: str = "", strike: float = 0.0, right: str = "",
                     trading_class: str = "", multiplier: str = "") -> list[OptionSpec]:
        """Every listed option matching the given fields; empty fields match anything.

        ``expiry`` may be YYYYMMDD or a contract month YYYYMM, as IB accepts both.
        """
        sym = symbol.upper()
        if sym not in self.underlyings:
            return []
        if trading_class and trading_class.upper() != sym:
            return []
        if multiplier and multiplier not in ("100", "100.0"):
            return []
        rights = ("C", "P") if not right else (right.upper()[:1],)
        if any(r not in ("C", "P") for r in rights):
            return []
        out: list[OptionSpec] = []
        for exp in self._expiries[sym]:
            if expiry and not exp.startswith(expiry):
                continue
            strikes = self._strikes[(sym, exp)]
            if strike:
                k = round(float(strike), 2)
                i = bisect.bisect_left(strikes, k - 1e-6)
                strikes = strikes[i:i + 1] if i < len(strikes) and abs(strikes[i] - k) < 1e-6 else []
            for k in strikes:
                for r in rights:
                    out.append(self._by_key[(sym, exp, k, r)])
        return out

    # ---- prices ---------------------------------------------------------------------------------

    def step_index(self) -> int:
        return max(0, int((self.clock() - self._t0) / self.step))

    def spot(self, symbol: str, step: int | None = None) -> float:
        u = self.underlyings[symbol.upper()]
        k = self.step_index() if step is None else step
        with self._lock:
            return self._walk(u, k)

    def _walk(self, u: Underlying, k: int) -> float:
        p = self._paths.get(u.symbol)
        if p is None:
            p = self._paths[u.symbol] = _Path(u.spot0)
        rng = self._rngs.get(u.symbol)
        if rng is None:
            rng = self._rngs[u.symbol] = random.Random(f"{self.seed}:{u.symbol}")
        # per-step volatility of a 6.5-hour trading day, sped up by TIME_SCALE
        sigma = u.vol * math.sqrt(self.step * TIME_SCALE / (252 * 6.5 * 3600))
        while p.end <= k:
            prev = p.last
            if u.deal_price is not None:
                # mean-revert toward spot0 and never trade through the deal price
                nxt = prev + 0.02 * (u.spot0 - prev) + rng.gauss(0.0, sigma * 3) * prev
                nxt = min(nxt, u.deal_price - 0.05)
            else:
                nxt = prev * math.exp(rng.gauss(0.0, sigma))
            p.append(nxt)
        return p.at(k)[0]

    def years_to(self, expiry: str) -> float:
        d = dt.datetime.strptime(expiry, "%Y%m%d").date()
        return max((d - self.today).days + 0.4, 0.4) / 365.0

    def smile_iv(self, u: Underlying, spot: float, strike: float, t: float) -> float:
        m = math.log(strike / spot) / math.sqrt(max(t, 1e-3))
        term = 1.0 + 0.08 * math.log(max(t, 1 / 365) * 12) / 3.0        # mild upward term structure
        iv = u.vol * term * (1.0 + u.skew * m + 0.35 * m * m)
        return min(max(iv, u.vol * 0.5, 0.03), 3.0)

    def stock_quote(self, symbol: str, step: int | None = None) -> StockQuote:
        u = self.underlyings[symbol.upper()]
        k = self.step_index() if step is None else step
        s = self.spot(u.symbol, k)
        bid = round(s - u.half_spread, 2)
        ask = round(max(s + u.half_spread, bid + 0.01), 2)
        with self._lock:
            _, high, low = self._paths[u.symbol].at(k)
        size = lambda tag: 1 + _h(self.seed, u.symbol, k, tag) % 30  # noqa: E731
        return StockQuote(
            symbol=u.symbol, bid=bid, ask=ask, last=round(s, 2), close=round(u.spot0, 2),
            open=round(u.spot0, 2), high=round(high, 2), low=round(low, 2),
            bid_size=size("b"), ask_size=size("a"), last_size=size("l"),
            volume=1_000_000 + 137 * k + _h(self.seed, u.symbol) % 500_000,
            hist_vol=round(u.vol * 0.9, 6), implied_vol=round(self.smile_iv(u, s, s, 30 / 365), 6),
        )

    def option_quote(self, symbol: str, expiry: str, strike: float, right: str,
                     step: int | None = None) -> OptionQuote:
        spec = self.option(symbol, expiry, strike, right)
        if spec is None:
            raise KeyError(f"no listed option {symbol} {expiry} {strike} {right}")
        return self.quote_for(spec, step)

    def quote_for(self, spec: OptionSpec, step: int | None = None) -> OptionQuote:
        u = self.underlyings[spec.symbol]
        k = self.step_index() if step is None else step
        s = self.spot(u.symbol, k)
        t = self.years_to(spec.expiry)
        iv = self.smile_iv(u, s, spec.strike, t)
        g = bs.price_greeks(s, spec.strike, t, iv, RATE, spec.right)
        theo = g.price
        days = t * 365
        far_otm = abs(g.delta) < 0.03
        quoting = not (far_otm and days > 150)
        close_g = bs.price_greeks(u.spot0, spec.strike, t + 1 / 365, self.smile_iv(u, u.spot0, spec.strike, t),
                                  RATE, spec.right)
        oi_base = 30_000 if u.symbol == "SPY" else 12_000 if u.live_permission else 6_000
        moneyness = abs(math.log(spec.strike / u.spot0))
        open_interest = int(oi_base * math.exp(-moneyness * 9) * (0.4 + _u(self.seed, spec.con_id, "oi"))
                            / (1 + days / 120))
        if not quoting:
            open_interest = int(open_interest * 0.05)
        volume = int(open_interest * 0.08 * _u(self.seed, spec.con_id, "vol")) + (k // 20 if quoting else 0)
        if not quoting:
            return OptionQuote(spec.symbol, spec.expiry, spec.strike, spec.right, -1.0, -1.0, -1.0,
                               round(close_g.price, 2), 0, 0, 0, volume, open_interest, iv, g.delta, g.gamma,
                               g.vega, g.theta, theo, s, False)
        tick = option_tick(u.symbol, theo)
        width = 0.015 + 0.05 * min(moneyness * 4, 1.0) + (0.02 if days > 120 else 0.0)
        half = max(tick, theo * width / 2)
        bid = _round_tick(theo - half, tick, up=False)
        ask = _round_tick(theo + half, tick, up=True)
        if ask <= bid:
            ask = round(bid + tick, 2)
        bid_size = 1 + _h(self.seed, spec.con_id, k, "b") % 60
        ask_size = 1 + _h(self.seed, spec.con_id, k, "a") % 60
        # an occasional one-sided quote, as on cheap out-of-the-money strikes (never deep in the money)
        one_sided = abs(g.delta) < 0.25 and _u(self.seed, spec.con_id, "one-sided") < 0.06
        if bid <= 0 or one_sided:
            bid, bid_size = -1.0, 0     # IB's "no bid"
        traded = volume > 0
        last = _round_tick(theo, tick, up=False) if traded else -1.0
        if traded and last <= 0:
            last = tick
        return OptionQuote(spec.symbol, spec.expiry, spec.strike, spec.right, bid, ask, last,
                           round(close_g.price, 2), bid_size, ask_size,
                           (1 + _h(self.seed, spec.con_id, k, "l") % 10) if traded else 0, volume, open_interest,
                           iv, g.delta, g.gamma, g.vega, g.theta, theo, s, True)

    def chain_totals(self, symbol: str) -> dict[str, int]:
        """Underlying-level option volume and open interest (generic ticks 100/101 on a stock)."""
        u = self.underlyings[symbol.upper()]
        base = _h(self.seed, u.symbol, "totals")
        return {"call_oi": 200_000 + base % 100_000, "put_oi": 180_000 + (base >> 8) % 100_000,
                "call_volume": 40_000 + base % 20_000, "put_volume": 35_000 + (base >> 4) % 20_000}
