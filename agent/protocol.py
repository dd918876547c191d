"""Pydantic models of every relay frame and request payload (see ../shared/relay-protocol.md).

The dispatcher parses a raw frame into these; nothing past it sees a raw dict. Payload models are strict
about what the web app's code depends on (types, dates, rights) and lenient about what it does not send
(extra keys are ignored, so a newer relay that adds fields does not break an older agent).
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# --- frames ------------------------------------------------------------------------------------


class Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    type: str


class RequestFrame(BaseModel):
    """relay → agent: {"type":"request","request_id","request_type","payload"}."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["request"]
    request_id: str = Field(min_length=1, max_length=200)
    request_type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)

    @field_validator("payload", mode="before")
    @classmethod
    def _payload_none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @property
    def canonical_type(self) -> str:
        """The seed README spells flows with hyphens (fetch-chain): accept either spelling."""
        return self.request_type.strip().lower().replace("-", "_")


class AuthResponse(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["auth_response"]
    success: bool
    provider_id: str | None = None
    error: str | None = None


def _clean(value: Any) -> Any:
    """NaN/Inf never go on the wire: JSON has no such numbers and the web app would choke. Send null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def response_ok(request_id: str, data: Any) -> dict:
    return {"type": "response", "request_id": request_id, "success": True, "data": _clean(data), "error": None}


def response_error(request_id: str, error: str, code: int | None = None) -> dict:
    """success:false answer. ``code`` (an IB error code or similar) rides beside ``error``; the relay ignores it."""
    frame = {"type": "response", "request_id": request_id, "success": False, "data": None, "error": error}
    if code is not None:
        frame["code"] = code
    return frame


def contract_dict(c: Any) -> dict:
    """An ``agent.types.Contract`` in the relay's contract shape (positions, orders)."""
    return {
        "conId": c.con_id, "symbol": c.symbol, "secType": c.sec_type, "exchange": c.exchange,
        "currency": c.currency, "lastTradeDateOrContractMonth": c.expiry, "strike": c.strike, "right": c.right,
        "multiplier": c.multiplier, "localSymbol": c.local_symbol, "tradingClass": c.trading_class,
        "primaryExchange": c.primary_exchange,
    }


def auth_frame(api_key: str, version: str) -> dict:
    return {"type": "auth", "api_key": api_key, "version": version}


def heartbeat_frame() -> dict:
    return {"type": "heartbeat"}


def accounts_frame(accounts: list[str]) -> dict:
    return {"type": "ib_accounts", "accounts": list(accounts)}


def account_event_frame(event: dict) -> dict:
    return {"type": "account_event", "event": _clean(event)}


def boot_phase_frame(phase: str, detail: str, progress: float, timestamp: float) -> dict:
    return {"type": "boot_phase", "phase": phase, "detail": detail, "progress": progress, "timestamp": timestamp}


# --- payload helpers ---------------------------------------------------------------------------

class Payload(BaseModel):
    """Base of every request payload. The relay's own keys (_priority, _max_batch_size) are read here."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    max_batch_size: int | None = Field(default=None, alias="_max_batch_size", ge=1, le=10_000)


def _ticker(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("ticker must be a non-empty symbol such as 'AAPL'")
    t = v.strip().upper()
    if len(t) > 12 or not all(c.isalnum() or c in ".-/ " for c in t):
        raise ValueError(f"ticker {v!r} is not a valid symbol")
    return t


def _right(v: Any) -> str:
    if isinstance(v, str) and v.strip().upper() in ("C", "P", "CALL", "PUT"):
        return v.strip().upper()[0]
    raise ValueError(f"right must be 'C' or 'P' (got {v!r})")


def parse_expiry(v: Any) -> str:
    """An expiry on the way in may be YYYYMMDD or YYYY-MM-DD; on the way out it is always YYYYMMDD."""
    s = str(v).strip() if v is not None else ""
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return _dt.datetime.strptime(s, fmt).strftime("%Y%m%d")
        except ValueError:
            pass
    raise ValueError(f"expiry {v!r} is not a date in YYYYMMDD or YYYY-MM-DD form")


# --- request payloads --------------------------------------------------------------------------

class EmptyPayload(Payload):
    pass


class TickerPayload(Payload):
    ticker: str

    _t = field_validator("ticker", mode="before")(classmethod(lambda cls, v: _ticker(v)))


class FetchUnderlyingPayload(TickerPayload):
    secType: str = "STK"
    conId: int | None = None
    exchange: str | None = None
    currency: str | None = None
    lastTradeDateOrContractMonth: str | None = None
    multiplier: str | None = None

    @field_validator("secType", mode="before")
    @classmethod
    def _sec_type(cls, v: Any) -> str:
        s = str(v or "STK").strip().upper()
        if s not in ("STK", "OPT", "FOP", "FUT", "CASH", "BOND", "WAR", "IND", "CFD"):
            raise ValueError(f"secType {v!r} is not one of STK, FUT, IND, CASH, ...")
        return s


class ScanParams(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    daysBeforeClose: int = Field(default=60, ge=0, le=3650)


class FetchChainPayload(TickerPayload):
    dealPrice: float = Field(default=0.0, ge=0, le=1_000_000)
    expectedCloseDate: _dt.date
    scanParams: ScanParams = Field(default_factory=ScanParams)

    @field_validator("expectedCloseDate", mode="before")
    @classmethod
    def _date(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return _dt.date.fromisoformat(v.strip()[:10])
            except ValueError:
                raise ValueError(f"expectedCloseDate {v!r} is not a date in YYYY-MM-DD form") from None
        return v

    @field_validator("dealPrice", mode="before")
    @classmethod
    def _deal(cls, v: Any) -> Any:
        return 0.0 if v is None else v

    @field_validator("scanParams", mode="before")
    @classmethod
    def _params(cls, v: Any) -> Any:
        return {} if v is None else v


class PriceLeg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    ticker: str
    strike: float = Field(gt=0, le=1_000_000)
    expiry: str
    right: str = "C"

    _t = field_validator("ticker", mode="before")(classmethod(lambda cls, v: _ticker(v)))
    _r = field_validator("right", mode="before")(classmethod(lambda cls, v: _right(v)))
    _e = field_validator("expiry", mode="before")(classmethod(lambda cls, v: parse_expiry(v)))


class FetchPricesPayload(Payload):
    contracts: list[PriceLeg]

    @field_validator("contracts")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("No contracts specified")
        return v


class SellScanPayload(TickerPayload):
    right: str = "C"
    ntm_pct: float = Field(default=0.05, gt=0, le=1.0)
    business_days: int = Field(default=15, ge=0, le=400)

    _r = field_validator("right", mode="before")(classmethod(lambda cls, v: _right(v)))


class TimeoutPayload(Payload):
    timeout_sec: float = Field(default=15, gt=0, le=120)


class OpenOrdersPayload(Payload):
    timeout_sec: float = Field(default=10, gt=0, le=120)
    force_refresh: bool = False


class ReconnectPayload(Payload):
    force: bool = False


class PlaceOrderPayload(Payload):
    """place_order: ``contract`` and ``order`` as the relay sends them (relay-protocol.md). Their fields are checked
    by agent/orders/validation.py, which names every problem at once; here only their shape (objects)."""

    contract: dict[str, Any]
    order: dict[str, Any]
    timeout_sec: float = Field(default=30, gt=0, le=300)


class ModifyOrderPayload(PlaceOrderPayload):
    orderId: int

    @field_validator("orderId")
    @classmethod
    def _order_id(cls, v: int) -> int:
        if v == 0:
            raise ValueError("orderId 0 names no order (orders typed into TWS have id 0 until bound to client 0)")
        return v


class CancelOrderPayload(Payload):
    orderId: int

    _o = field_validator("orderId")(classmethod(lambda cls, v: ModifyOrderPayload._order_id(v)))


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic error as one sentence a person can act on: 'payload.contracts[0].right: right must be ...'."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = err.get("msg", "invalid")
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
