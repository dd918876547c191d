"""Resolving the contract a client names to the simulated listings (pure).

TWS resolves a contract from its conId, or from its fields without a conId (symbol, secType, expiry,
strike, right, exchange, currency, multiplier). Market data and orders need exactly one match
(none or several → error 200); reqContractDetails returns every match of a partly specified contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from .market import Market, OptionSpec, Underlying

OPTION_EXCHANGES = ("SMART", "CBOE", "AMEX", "ISE", "PHLX", "BOX", "NASDAQOM", "BATS", "MIAX", "EDGX")
STOCK_EXCHANGES = ("SMART", "ARCA", "NASDAQ", "NYSE", "ISLAND", "BATS", "IEX", "AMEX", "EDGX")


@dataclass(frozen=True)
class RequestContract:
    """The contract fields a client sent (any may be empty)."""

    con_id: int = 0
    symbol: str = ""
    sec_type: str = ""
    expiry: str = ""
    strike: float = 0.0
    right: str = ""
    multiplier: str = ""
    exchange: str = ""
    primary_exchange: str = ""
    currency: str = ""
    local_symbol: str = ""
    trading_class: str = ""


@dataclass(frozen=True)
class Instrument:
    """A fully specified simulated contract, as TWS reports it back."""

    con_id: int
    symbol: str
    sec_type: str
    expiry: str
    strike: float
    right: str
    multiplier: str
    exchange: str
    primary_exchange: str
    currency: str
    local_symbol: str
    trading_class: str
    live_permission: bool = True

    @property
    def is_option(self) -> bool:
        return self.sec_type == "OPT"

    @property
    def mult(self) -> float:
        return float(self.multiplier) if self.multiplier else 1.0


def _normal_right(right: str) -> str | None:
    r = right.strip().upper()
    if r in ("", "?", "0"):
        return ""
    if r in ("C", "CALL"):
        return "C"
    if r in ("P", "PUT"):
        return "P"
    return None


def stock_instrument(u: Underlying, exchange: str = "SMART") -> Instrument:
    return Instrument(u.con_id, u.symbol, "STK", "", 0.0, "", "", exchange or "SMART", u.primary_exchange,
                      "USD", u.symbol, u.symbol if u.symbol != "SPY" else "SPY", u.live_permission)


def option_instrument(market: Market, spec: OptionSpec, exchange: str = "SMART") -> Instrument:
    u = market.underlyings[spec.symbol]
    return Instrument(spec.con_id, spec.symbol, "OPT", spec.expiry, spec.strike, spec.right, spec.multiplier,
                      exchange or "SMART", "", "USD", spec.local_symbol, spec.trading_class, u.live_permission)


def resolve(market: Market, c: RequestContract) -> list[Instrument]:
    """Every simulated contract the request matches (possibly none, possibly many)."""
    exchange = c.exchange.upper()
    if c.con_id:
        found = market.by_con_id(c.con_id)
        if found is None:
            return []
        if isinstance(found, OptionSpec):
            if exchange and exchange not in OPTION_EXCHANGES:
                return []
            return [option_instrument(market, found, exchange or "SMART")]
        if exchange and exchange not in STOCK_EXCHANGES:
            return []
        return [stock_instrument(found, exchange or "SMART")]
    sec_type = c.sec_type.upper()
    if c.currency and c.currency.upper() != "USD":
        return []
    symbol = c.symbol.upper()
    if not symbol and c.local_symbol:
        symbol = c.local_symbol.split()[0].upper() if sec_type == "OPT" else c.local_symbol.upper()
    if sec_type == "STK":
        u = market.underlyings.get(symbol)
        if u is None or (exchange and exchange not in STOCK_EXCHANGES):
            return []
        return [stock_instrument(u, exchange or "SMART")]
    if sec_type == "OPT":
        if exchange and exchange not in OPTION_EXCHANGES:
            return []
        right = _normal_right(c.right)
        if right is None:
            return []
        specs = market.find_options(symbol, c.expiry.strip(), c.strike, right, c.trading_class, c.multiplier)
        if c.local_symbol:
            specs = [s for s in specs if s.local_symbol.replace(" ", "") == c.local_symbol.replace(" ", "")]
        return [option_instrument(market, s, exchange or "SMART") for s in specs]
    return []
