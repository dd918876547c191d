"""Pydantic models of every relay frame and request payload (see ../shared/relay-protocol.md).

The dispatcher parses a raw frame into these; nothing past it sees a raw dict. Payload models are strict
about what the web app's code depends on (types, dates, rights) and lenient about what it does not send
(extra keys are ignored, so a newer relay that adds fields does not break an older agent).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.echo import clip, echo

# --- frame bounds: checked before anything parses a frame ------------------------------------------

# What the WebSocket accepts (websockets' max_size): a larger frame closes the connection with 1009, as the
# standard says. Requests are a few kilobytes (the largest the scanner will serve is ~50 KB), so frames between
# MAX_REQUEST_CHARS and MAX_FRAME_BYTES are read, refused with an answer, and the connection stays up.
MAX_FRAME_BYTES = 8 * 1024 * 1024
MAX_REQUEST_CHARS = 1024 * 1024
# JSON nesting a frame may have: a request is 4-5 levels deep. Python's json module recurses once per level
# and a frame of 1,000 brackets raised RecursionError (the agent exited); the scan below runs first.
MAX_DEPTH = 32
MAX_REQUEST_ID = 200
MAX_ERROR_CHARS = 2000          # an error answer's text (ours; bounded all the same)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_REQUEST_ID = re.compile(r'"request_id"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){1,%d}")' % (6 * MAX_REQUEST_ID))


class FrameRejected(ValueError):
    """A relay frame the agent does not parse, with the reason in words and the request_id when one could be
    read without parsing (so the relay still gets an answer)."""

    def __init__(self, reason: str, request_id: str | None = None):
        super().__init__(reason)
        self.reason, self.request_id = reason, request_id


def nesting_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON ``text`` opens more than ``limit`` arrays/objects inside each other (brackets in strings do
    not count; an unclosed opener counts as open). Cheap: counts first, scans only the brackets if need be."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for ch in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if ch in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
            if depth < 0:
                return False        # a closer before its opener: not JSON, and json stops there without recursing
    return False


def sniff_request_id(text: str) -> str | None:
    """The request_id of a frame the agent will not parse, found by a bounded pattern (None when there is none
    or it is not a string of 1..200 characters)."""
    m = _REQUEST_ID.search(text)
    if m is None:
        return None
    try:
        rid = json.loads(m.group(1))
    except ValueError:
        return None
    return rid if isinstance(rid, str) and 0 < len(rid) <= MAX_REQUEST_ID and rid.strip() else None


def answerable_id(rid: Any, secrets: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether a request may be answered under ``rid``: a non-blank string of at most 200 characters that carries
    no secret (an answer echoes its id, and the key never goes out, even to the relay that sent it)."""
    if not isinstance(rid, str) or not rid.strip() or len(rid) > MAX_REQUEST_ID:
        return False
    return not any(s and len(s) >= 4 and s in rid for s in secrets)


def refusal(e: FrameRejected, secrets: list[str] | tuple[str, ...], log: logging.Logger) -> dict | None:
    """The answer to a frame refused before parsing, and its log line on ``log``: success:false under its
    request_id when one could be read and may be answered (``answerable_id``), else None (nobody to answer)."""
    if not answerable_id(e.request_id, secrets):
        log.warning("Ignored a relay frame: %s", e.reason)
        return None
    log.warning("Malformed request %s: %s", echo(e.request_id), e.reason)
    return response_error(e.request_id, f"Malformed request: {e.reason}")


def decode_frame(raw: str | bytes) -> Any:
    """One relay frame as JSON, within bounds: size first, then nesting depth, then the parser. Raises
    FrameRejected naming the problem (and the request_id, when one can be read)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise FrameRejected(f"a binary frame of {len(raw):,} bytes that is not UTF-8 text") from None
    text = raw
    if len(text) > MAX_REQUEST_CHARS:
        raise FrameRejected(f"the frame is {len(text):,} characters long; the agent reads at most "
                            f"{MAX_REQUEST_CHARS:,}", sniff_request_id(text))
    if nesting_exceeds(text):
        raise FrameRejected(f"the frame nests JSON deeper than {MAX_DEPTH} levels", sniff_request_id(text))
    try:
        return json.loads(text)
    except ValueError as e:
        where = f" ({clip(e.msg, 80)} at character {e.pos:,})" if isinstance(e, json.JSONDecodeError) else ""
        raise FrameRejected(f"the frame is not JSON{where}", sniff_request_id(text)) from None

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
    """success:false answer. ``code`` (an IB error code or similar) rides beside ``error``; the relay ignores it.
    The text is bounded (MAX_ERROR_CHARS) whatever built it."""
    if len(error) > MAX_ERROR_CHARS:
        error = f"{error[:MAX_ERROR_CHARS]}… ({len(error):,} characters)"
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
        raise ValueError(f"ticker {echo(v)} is not a valid symbol")
    return t


def _right(v: Any) -> str:
    if isinstance(v, str) and v.strip().upper() in ("C", "P", "CALL", "PUT"):
        return v.strip().upper()[0]
    raise ValueError(f"right must be 'C' or 'P' (got {echo(v)})")


def parse_expiry(v: Any) -> str:
    """An expiry on the way in may be YYYYMMDD or YYYY-MM-DD; on the way out it is always YYYYMMDD."""
    s = str(v).strip() if v is not None else ""
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return _dt.datetime.strptime(s, fmt).strftime("%Y%m%d")
        except ValueError:
            pass
    raise ValueError(f"expiry {echo(v)} is not a date in YYYYMMDD or YYYY-MM-DD form")


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
            raise ValueError(f"secType {echo(v)} is not one of STK, FUT, IND, CASH, ...")
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
                raise ValueError(f"expectedCloseDate {echo(v)} is not a date in YYYY-MM-DD form") from None
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
        # A location may hold keys of the input (payload.<key>): escaped and cut like any input.
        loc = ".".join(clip(str(p), 40) for p in err.get("loc", ()) if p != "__root__")
        msg = clip(str(err.get("msg", "invalid")).removeprefix("Value error, "), 300)
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
