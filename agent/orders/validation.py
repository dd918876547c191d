"""Order validation: pure rules, applied before anything reaches TWS.

``check_order(contract, order, today=..., accounts=...)`` takes the fields by their canonical names (see
``CONTRACT_KEYS`` / ``ORDER_KEYS``) as loosely typed values — a relay payload's numbers, an order file's strings —
and returns every problem at once, one sentence each, starting with the field's name as the caller knows it
(``RELAY_FIELDS``: ``order.totalQuantity``; ``FILE_FIELDS``: ``quantity``). The sentence bodies are shared, so the
relay and an order file say the same thing about the same mistake. No problems: a ``Contract`` and an
``OrderTicket`` ready for the bridge.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from agent.types import Contract, OrderTicket

ACTIONS = ("BUY", "SELL")
ORDER_TYPES = ("MKT", "LMT", "STP", "STP LMT", "MOC", "LOC", "TRAIL", "TRAIL LIMIT", "MKT PRT", "LMT PRT")
TIFS = ("DAY", "GTC", "IOC", "OPG")
SEC_TYPES = ("STK", "OPT", "FUT", "FOP", "CASH")
NEEDS_LIMIT = ("LMT", "STP LMT", "LOC", "LMT PRT")
NEEDS_STOP = ("STP", "STP LMT")
TRAILING = ("TRAIL", "TRAIL LIMIT")
MAX_QUANTITY = 1_000_000          # no single order from the web app or a file is larger: a typo guard
MAX_REF = 64
SHOWN = 40                        # how much of a bad value a sentence repeats

CONTRACT_KEYS = ("symbol", "sec_type", "exchange", "currency", "expiry", "strike", "right", "multiplier", "con_id",
                 "primary_exchange", "trading_class", "local_symbol")
ORDER_KEYS = ("action", "quantity", "order_type", "lmt_price", "aux_price", "trail_stop_price", "trailing_percent",
              "lmt_price_offset", "tif", "outside_rth", "account", "order_ref", "what_if", "transmit", "open_close")

RELAY_FIELDS: dict[str, str] = {
    "symbol": "contract.symbol", "sec_type": "contract.secType", "exchange": "contract.exchange",
    "currency": "contract.currency", "expiry": "contract.lastTradeDateOrContractMonth", "strike": "contract.strike",
    "right": "contract.right", "multiplier": "contract.multiplier", "con_id": "contract.conId",
    "primary_exchange": "contract.primaryExchange", "trading_class": "contract.tradingClass",
    "local_symbol": "contract.localSymbol",
    "action": "order.action", "quantity": "order.totalQuantity", "order_type": "order.orderType",
    "lmt_price": "order.lmtPrice", "aux_price": "order.auxPrice", "trail_stop_price": "order.trailStopPrice",
    "trailing_percent": "order.trailingPercent", "lmt_price_offset": "order.lmtPriceOffset", "tif": "order.tif",
    "outside_rth": "order.outsideRth", "account": "order.account", "order_ref": "order.orderRef",
    "what_if": "order.whatIf", "transmit": "order.transmit", "open_close": "order.openClose",
}
# An order file's columns (agent/orders/files.py); the rest keep their canonical names.
FILE_FIELDS: dict[str, str] = {**{k: k for k in CONTRACT_KEYS + ORDER_KEYS},
                               "symbol": "ticker", "lmt_price": "limit_price", "aux_price": "stop_price",
                               "order_ref": "ref"}

# relay payload key -> canonical key (relay-protocol.md "contract" and "order")
_RELAY_CONTRACT = {"symbol": "symbol", "secType": "sec_type", "exchange": "exchange", "currency": "currency",
                   "lastTradeDateOrContractMonth": "expiry", "strike": "strike", "right": "right",
                   "multiplier": "multiplier", "conId": "con_id", "primaryExchange": "primary_exchange",
                   "tradingClass": "trading_class", "localSymbol": "local_symbol"}
_RELAY_ORDER = {"action": "action", "totalQuantity": "quantity", "orderType": "order_type", "lmtPrice": "lmt_price",
                "auxPrice": "aux_price", "trailStopPrice": "trail_stop_price", "trailingPercent": "trailing_percent",
                "lmtPriceOffset": "lmt_price_offset", "tif": "tif", "outsideRth": "outside_rth", "account": "account",
                "orderRef": "order_ref", "whatIf": "what_if", "transmit": "transmit", "openClose": "open_close"}


def relay_order_fields(contract: Mapping[str, Any], order: Mapping[str, Any]) -> tuple[dict, dict]:
    """A relay payload's ``contract`` / ``order`` objects by canonical key (unknown keys are left out)."""
    c = {_RELAY_CONTRACT[k]: v for k, v in contract.items() if k in _RELAY_CONTRACT}
    o = {_RELAY_ORDER[k]: v for k, v in order.items() if k in _RELAY_ORDER}
    return c, o


def _unset(v: Any) -> bool:
    """No value: null, blank text, false, zero, an empty list or object, or IB's unset sentinels (1.8e308, 2^31-1)."""
    if v is None or v is False or v == [] or v == {}:
        return True
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, (int, float)):
        return v == 0 or abs(v) >= 1e300 or v == 2**31 - 1
    return False


def unsupported_relay_fields(contract: Mapping[str, Any], order: Mapping[str, Any]) -> list[str]:
    """A sentence for each key of a relay payload's ``contract`` / ``order`` that the agent does not place but that
    holds a value (a bracket child's ``parentId``, a ``goodTillDate``, ``TIF`` for ``tif``): left out, the order
    would not be the one asked for (a stop meant to wait for its parent would work at once)."""
    out = []
    for part, obj, known in (("contract", contract, _RELAY_CONTRACT), ("order", order, _RELAY_ORDER)):
        for k, v in obj.items():
            if k not in known and not _unset(v):
                name = k if len(k) <= SHOWN and k.isprintable() else shown(k)
                out.append(f"{part}.{name} is not a field this agent places (got {shown(v)}): it would be left out "
                           f"of the order")
    return out


@dataclass
class OrderCheck:
    problems: list[str] = field(default_factory=list)
    contract: Contract | None = None
    ticket: OrderTicket | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def shown(value: Any) -> str:
    """A bad value as a sentence repeats it: its repr, cut to SHOWN characters with its length said."""
    r = repr(value)
    if len(r) > SHOWN:
        r = f"{r[:SHOWN]}… ({len(r)} characters)"
    return r


class _Checker:
    """Collects problems while reading values; each reader returns the value or None (and notes why)."""

    def __init__(self, names: Mapping[str, str]):
        self.names = names
        self.problems: list[str] = []

    def bad(self, key: str, text: str) -> None:
        self.problems.append(f"{self.names.get(key, key)} {text}")

    @staticmethod
    def _missing(v: Any) -> bool:
        return v is None or (isinstance(v, str) and not v.strip())

    def text(self, key: str, v: Any, *, default: str = "", upper: bool = True, limit: int = 40) -> str | None:
        if self._missing(v):
            return default
        if not isinstance(v, str):
            self.bad(key, f"must be text (got {shown(v)})")
            return None
        s = v.strip()
        if len(s) > limit or not s.isprintable():
            self.bad(key, f"must be at most {limit} printable characters (got {shown(v)})")
            return None
        return s.upper() if upper else s

    def number(self, key: str, v: Any, *, required: str = "", positive: bool = True) -> float | None:
        """A finite number (a number, or text holding one). ``required``: the sentence when it is missing."""
        if self._missing(v):
            if required:
                self.bad(key, required)
            return None
        if isinstance(v, bool):
            self.bad(key, f"must be a number (got {shown(v)})")
            return None
        try:
            x = float(v.strip().replace(",", "") if isinstance(v, str) else v)
        except (TypeError, ValueError):
            self.bad(key, f"must be a number (got {shown(v)})")
            return None
        if not math.isfinite(x):
            self.bad(key, f"must be a finite number (got {shown(v)})")
            return None
        if positive and x <= 0:
            self.bad(key, f"must be more than 0 (got {x:g})")
            return None
        return x

    def flag(self, key: str, v: Any, default: bool) -> bool | None:
        if self._missing(v):
            return default
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.strip().lower() in ("true", "yes", "y", "1", "false", "no", "n", "0"):
            return v.strip().lower() in ("true", "yes", "y", "1")
        self.bad(key, f"must be true or false (got {shown(v)})")
        return None

    def choice(self, key: str, v: Any, allowed: Sequence[str], default: str | None = None) -> str | None:
        if self._missing(v):
            if default is None:
                self.bad(key, f"is missing (one of {', '.join(allowed)})")
            return default
        if not isinstance(v, str):
            self.bad(key, f"{shown(v)} is not one of {', '.join(allowed)}")
            return None
        s = " ".join(v.replace("_", " ").split()).upper()
        if s not in allowed:
            self.bad(key, f"{shown(v)} is not one of {', '.join(allowed)}")
            return None
        return s


def _parse_expiry(raw: str) -> tuple[_dt.date | None, str]:
    """(date, YYYYMMDD) for a full date; (None, YYYYMM) for a contract month; raises ValueError otherwise."""
    s = raw.strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            d = _dt.datetime.strptime(s, fmt).date()
            return d, d.strftime("%Y%m%d")
        except ValueError:
            pass
    d = _dt.datetime.strptime(s, "%Y%m").date()       # a future's contract month
    return None, d.strftime("%Y%m")


def _check_contract(c: _Checker, raw: Mapping[str, Any], today: _dt.date) -> Contract | None:
    n0 = len(c.problems)
    sec_type_raw = raw.get("sec_type")
    if isinstance(sec_type_raw, str) and sec_type_raw.strip().upper() == "BAG":
        c.bad("sec_type", "'BAG': combo (BAG) orders are not supported by this agent yet — place each leg as its "
                          "own order, or the combo in TWS")
        return None
    if isinstance(sec_type_raw, str) and sec_type_raw.strip().upper() in ("BOND", "WAR", "IND", "CFD"):
        c.bad("sec_type", f"{shown(sec_type_raw)} cannot be ordered through this agent (it places "
                          f"{', '.join(SEC_TYPES)})")
        return None
    sec_type = c.choice("sec_type", sec_type_raw, SEC_TYPES, default="STK")
    symbol = c.text("symbol", raw.get("symbol"), limit=20)
    con_id, n_before = 0, len(c.problems)
    if not c._missing(raw.get("con_id")):
        x = c.number("con_id", raw.get("con_id"), positive=False)
        if x is not None and (x < 0 or x != int(x)):
            c.bad("con_id", f"must be a whole number (got {shown(raw.get('con_id'))})")
        elif x is not None:
            con_id = int(x)
    if symbol == "" and not con_id and len(c.problems) == n_before:        # no conId, rather than a bad one
        c.bad("symbol", "is required (or a conId)")
    currency = c.text("currency", raw.get("currency"), default="USD", limit=3)
    if currency and (len(currency) != 3 or not currency.isalpha()):
        c.bad("currency", f"must be a three-letter currency such as USD (got {shown(raw.get('currency'))})")
    default_exchange = {"CASH": "IDEALPRO", "FUT": "", "FOP": ""}.get(sec_type or "", "SMART")
    exchange = c.text("exchange", raw.get("exchange"), default=default_exchange, limit=20)
    if exchange == "" and sec_type in ("FUT", "FOP"):
        c.bad("exchange", f"is required for a {'future' if sec_type == 'FUT' else 'future option'} (e.g. CME)")

    expiry, strike, right = "", 0.0, ""
    dated = sec_type in ("OPT", "FOP", "FUT")
    if dated:
        raw_exp = raw.get("expiry")
        if c._missing(raw_exp):
            c.bad("expiry", f"(the expiry) is required for {'an option' if sec_type != 'FUT' else 'a future'}")
        elif not isinstance(raw_exp, (str, int)) or isinstance(raw_exp, bool):
            c.bad("expiry", f"is not a date in YYYYMMDD form (got {shown(raw_exp)})")
        else:
            try:
                day, expiry = _parse_expiry(str(raw_exp))
            except ValueError:
                c.bad("expiry", f"is not a date in YYYYMMDD form (got {shown(raw_exp)})")
                expiry = ""
            else:
                if day is None and sec_type != "FUT":
                    c.bad("expiry", f"must be a full date (YYYYMMDD) for an option (got {shown(raw_exp)})")
                elif (day is not None and day < today) or (day is None and expiry < today.strftime("%Y%m")):
                    c.bad("expiry", f"{expiry} is in the past (today is {today.isoformat()} in New York)")
    if sec_type in ("OPT", "FOP"):
        k = c.number("strike", raw.get("strike"), required="is required for an option (more than 0)")
        strike = k or 0.0
        r = raw.get("right")
        rr = r.strip().upper() if isinstance(r, str) else None
        rr = {"CALL": "C", "PUT": "P"}.get(rr, rr)
        if rr not in ("C", "P"):
            c.bad("right", f"must be C or P for an option (got {shown(r)})")
        else:
            right = rr
    multiplier = c.text("multiplier", None if raw.get("multiplier") is None else str(raw.get("multiplier")),
                        default="100" if sec_type in ("OPT",) else "", limit=10)
    prim = c.text("primary_exchange", raw.get("primary_exchange"), limit=20)
    tclass = c.text("trading_class", raw.get("trading_class"), limit=20)
    local = c.text("local_symbol", raw.get("local_symbol"), upper=False, limit=30)
    if len(c.problems) > n0 or sec_type is None:
        return None
    return Contract(symbol=symbol or "", sec_type=sec_type, exchange=exchange or "", currency=currency or "USD",
                    expiry=expiry, strike=float(strike), right=right, multiplier=multiplier or "", con_id=con_id,
                    primary_exchange=prim or "", trading_class=tclass or "", local_symbol=local or "")


def _check_order(c: _Checker, raw: Mapping[str, Any], accounts: Sequence[str] | None) -> OrderTicket | None:
    n0 = len(c.problems)
    action_raw = raw.get("action")
    if isinstance(action_raw, str) and action_raw.strip().upper() == "SSHORT":
        c.bad("action", "SSHORT is an institutional short sale this agent does not place: send SELL")
        action = None
    else:
        action = c.choice("action", action_raw, ACTIONS)
    qty = c.number("quantity", raw.get("quantity"), required="is missing")
    if qty is not None and qty != int(qty):
        c.bad("quantity", f"must be a whole number of shares or contracts (got {qty:g})")
    elif qty is not None and qty > MAX_QUANTITY:
        c.bad("quantity", f"{qty:,.0f} is more than one order may be (at most {MAX_QUANTITY:,})")
    otype = c.choice("order_type", raw.get("order_type"), ORDER_TYPES, default="LMT")
    tif = c.choice("tif", raw.get("tif"), TIFS, default="DAY")

    lmt = aux = pct = offset = None
    if otype in NEEDS_LIMIT:
        lmt = c.number("lmt_price", raw.get("lmt_price"), required=f"is required for a {otype} order (more than 0)")
    if otype in NEEDS_STOP:
        aux = c.number("aux_price", raw.get("aux_price"),
                       required=f"(the stop price) is required for a {otype} order (more than 0)")
    if otype in TRAILING:
        aux = c.number("aux_price", raw.get("aux_price"))
        pct = c.number("trailing_percent", raw.get("trailing_percent"))
        if pct is not None and pct >= 100:
            c.bad("trailing_percent", f"must be under 100 (got {pct:g})")
            pct = None
        given = [k for k in ("aux_price", "trailing_percent") if not c._missing(raw.get(k))]
        if not given:
            c.bad("aux_price", f"(trailing amount) or {c.names.get('trailing_percent', 'trailing_percent')} is "
                               f"required for a {otype} order")
        elif len(given) == 2:
            c.bad("aux_price", f"(trailing amount) and {c.names.get('trailing_percent', 'trailing_percent')}: "
                               f"give one, not both")
        if otype == "TRAIL LIMIT":
            offset = c.number("lmt_price_offset", raw.get("lmt_price_offset"),
                              required="is required for a TRAIL LIMIT order (more than 0)")
    trail_stop = c.number("trail_stop_price", raw.get("trail_stop_price")) if otype in TRAILING else None

    outside_rth = c.flag("outside_rth", raw.get("outside_rth"), False)
    what_if = c.flag("what_if", raw.get("what_if"), False)
    transmit = c.flag("transmit", raw.get("transmit"), True)
    if transmit is False:
        c.bad("transmit", "=false is not supported: the agent places orders it transmits (stage an order in TWS "
                          "by hand instead)")
    open_close = c.choice("open_close", raw.get("open_close"), ("O", "C"), default="")

    ref_raw = raw.get("order_ref")
    ref = ""
    if not c._missing(ref_raw):
        if not isinstance(ref_raw, str) or len(ref_raw.strip()) > MAX_REF or not ref_raw.strip().isprintable():
            c.bad("order_ref", f"must be at most {MAX_REF} printable characters (got {shown(ref_raw)})")
        else:
            ref = ref_raw.strip()

    account = c.text("account", raw.get("account"), limit=32)
    managed = [a for a in accounts or () if a]
    if accounts is None:
        pass            # not known yet (an order file read before connecting): checked on the second reading
    elif account:
        if account not in {a.upper() for a in managed}:
            listing = ", ".join(managed) if managed else "none reported yet"
            c.bad("account", f"{shown(raw.get('account'))} is not an account this TWS login manages ({listing})")
    elif account == "":
        if len(managed) == 1:
            account = managed[0]
        elif managed:
            c.bad("account", f"is required: this TWS login manages several accounts ({', '.join(managed)})")
        else:
            c.bad("account", "cannot be checked: TWS has not named the accounts of this login")
    if len(c.problems) > n0 or action is None or qty is None or otype is None or tif is None:
        return None
    return OrderTicket(action=action, quantity=float(qty), order_type=otype, lmt_price=lmt, aux_price=aux,
                       trail_stop_price=trail_stop, trailing_percent=pct, lmt_price_offset=offset, tif=tif,
                       outside_rth=bool(outside_rth), account=account or "", order_ref=ref, what_if=bool(what_if),
                       open_close=open_close or "")


def check_order(contract: Mapping[str, Any], order: Mapping[str, Any], *, today: _dt.date,
                accounts: Sequence[str] | None, fields: Mapping[str, str] = RELAY_FIELDS) -> OrderCheck:
    """Every problem with this contract and order, or the validated ``Contract`` and ``OrderTicket``.
    ``accounts``: the accounts TWS manages; None = not known yet (the account is then not checked)."""
    c = _Checker(fields)
    con = _check_contract(c, contract, today)
    ticket = _check_order(c, order, accounts)
    if c.problems:
        return OrderCheck(problems=c.problems)
    return OrderCheck(contract=con, ticket=ticket)
