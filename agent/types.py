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


# --- orders ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OrderTicket:
    """What an order asks for, validated (agent/orders/validation.py). Prices are None when not given."""

    action: str                     # BUY / SELL
    quantity: float
    order_type: str                 # MKT, LMT, STP, "STP LMT", MOC, LOC, TRAIL, "TRAIL LIMIT", "MKT PRT", "LMT PRT"
    lmt_price: float | None = None
    aux_price: float | None = None          # stop price (STP, STP LMT) or trailing amount (TRAIL, TRAIL LIMIT)
    trail_stop_price: float | None = None
    trailing_percent: float | None = None
    lmt_price_offset: float | None = None   # TRAIL LIMIT
    tif: str = "DAY"
    outside_rth: bool = False
    account: str = ""
    order_ref: str = ""
    what_if: bool = False
    open_close: str = ""

    def describe(self) -> str:
        """'BUY 100 LMT 210.5 DAY' — side, size, type, price(s), time in force."""
        qty = f"{self.quantity:g}"
        parts = [self.action, qty, self.order_type]
        if self.lmt_price is not None:
            parts.append(f"{self.lmt_price:g}")
        if self.aux_price is not None:
            parts.append(f"aux {self.aux_price:g}")
        if self.trailing_percent is not None:
            parts.append(f"trail {self.trailing_percent:g}%")
        parts.append(self.tif)
        return " ".join(parts)


@dataclass(frozen=True)
class OrderInfo:
    """An order as TWS reports it: openOrder (5), or completedOrder (101) with ``completed`` set.

    ``margin`` is set only on a what-if answer: initial/maintenance margin and equity with loan, before, change
    and after, and the commission estimate (None where TWS sent nothing)."""

    order_id: int
    client_id: int
    perm_id: int
    contract: Contract
    ticket: OrderTicket
    status: str
    warning_text: str = ""
    commission: float | None = None
    completed: bool = False
    completed_time: str = ""
    completed_status: str = ""
    filled: float | None = None             # completed orders carry their filled quantity
    margin: dict | None = None


@dataclass(frozen=True)
class OrderStatusInfo:
    """orderStatus (3). TWS repeats it freely: the book keeps the last one and reports changes only."""

    order_id: int
    status: str
    filled: float
    remaining: float
    avg_fill_price: float
    perm_id: int = 0
    client_id: int = 0
    last_fill_price: float = 0.0
    why_held: str = ""


@dataclass(frozen=True)
class ExecutionInfo:
    """One fill (execDetails, 11). ``exec_id`` is unique; a correction keeps the prefix and changes the suffix."""

    exec_id: str
    order_id: int
    client_id: int
    perm_id: int
    contract: Contract
    side: str               # BOT / SLD
    shares: float
    price: float
    cum_qty: float = 0.0
    avg_price: float = 0.0
    order_ref: str = ""
    account: str = ""
    time: str = ""


@dataclass(frozen=True)
class OrderMessage:
    """An error or warning TWS sent with an order id as its reqId (e.g. 201 rejected, 110 price, 399 warning)."""

    order_id: int
    code: int
    message: str
