"""The vocabulary that crosses the TWS bridge (agent/tws.py).

Nothing above tws.py sees an ibapi object or a reqId: it sees these plain, immutable values.
Numbers that IB did not send (or sent as a "no value" sentinel: price -1, greeks -2, >= 1e300) are None.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Contract:
    """An instrument as the agent names it. ``expiry`` is YYYYMMDD; ``right`` is "C" or "P"."""

    symbol: str
    sec_type: str = "STK"
    exchange: str = "SMART"
    currency: str = "USD"
    expiry: str = ""
    strike: float = 0.0
    right: str = ""
    multiplier: str = ""
    con_id: int = 0
    primary_exchange: str = ""
    trading_class: str = ""
    local_symbol: str = ""

    @staticmethod
    def stock(symbol: str, exchange: str = "SMART", currency: str = "USD") -> "Contract":
        return Contract(symbol=symbol.upper(), sec_type="STK", exchange=exchange, currency=currency)

    @staticmethod
    def option(symbol: str, expiry: str, strike: float, right: str, exchange: str = "SMART",
               currency: str = "USD", multiplier: str = "100", trading_class: str = "") -> "Contract":
        return Contract(symbol=symbol.upper(), sec_type="OPT", exchange=exchange, currency=currency,
                        expiry=expiry, strike=float(strike), right=right.upper(), multiplier=multiplier,
                        trading_class=trading_class)

    def with_con_id(self, con_id: int) -> "Contract":
        return replace(self, con_id=con_id)

    @property
    def key(self) -> tuple:
        """Identity for caching and de-duplication (conId aside, which may be unknown)."""
        return (self.symbol, self.sec_type, self.expiry, round(self.strike, 4), self.right, self.exchange,
                self.currency)

    def describe(self) -> str:
        if self.sec_type == "OPT":
            return f"{self.symbol} {self.expiry} {self.strike:g}{self.right}"
        return self.symbol


@dataclass(frozen=True)
class ContractInfo:
    """One contractDetails answer, reduced to what the agent uses."""

    contract: Contract          # fully specified, con_id set
    long_name: str = ""
    min_tick: float = 0.0
    under_con_id: int = 0
    valid_exchanges: str = ""
    order_types: str = ""
    time_zone: str = ""


@dataclass(frozen=True)
class OptionParams:
    """One securityDefinitionOptionParameter row (one exchange / trading class)."""

    exchange: str
    underlying_con_id: int
    trading_class: str
    multiplier: str
    expirations: tuple[str, ...]
    strikes: tuple[float, ...]


@dataclass
class Quote:
    """What one market-data line has received so far. Mutated only on the event loop by the bridge."""

    bid: float | None = None
    ask: float | None = None
    last: float | None = None
    close: float | None = None
    bid_size: float | None = None
    ask_size: float | None = None
    last_size: float | None = None
    volume: float | None = None
    open_interest: float | None = None      # tick 27 for a call, 28 for a put (generic tick 101)
    option_volume: float | None = None      # ticks 29/30 (generic tick 100)
    implied_vol: float | None = None        # option computation, else tick 24 (generic tick 106)
    hist_vol: float | None = None           # tick 23 (generic tick 104)
    delta: float | None = None
    gamma: float | None = None
    theta: float | None = None
    vega: float | None = None
    model_price: float | None = None
    und_price: float | None = None
    delayed: bool = False                   # marketDataType 3/4, or delayed tick ids 66-76 / 80-83
    error_code: int | None = None           # e.g. 200 no such contract, 354 not subscribed
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def has_price(self) -> bool:
        return self.bid is not None or self.ask is not None or self.last is not None

    @property
    def has_greeks(self) -> bool:
        return self.delta is not None

    @property
    def failed(self) -> bool:
        return self.error_code is not None and not self.has_price

    @property
    def mid(self) -> float | None:
        if self.bid is not None and self.ask is not None and self.bid > 0 and self.ask > 0:
            return (self.bid + self.ask) / 2
        return self.last


@dataclass(frozen=True)
class AccountPosition:
    account: str
    contract: Contract
    position: float
    avg_cost: float
