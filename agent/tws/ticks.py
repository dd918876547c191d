"""Pure: how TWS market-data callbacks update a ``Quote``, and which error codes mean what.

No I/O and no ibapi objects here, so every rule is tested without sockets. The bridge calls these on the
event loop, one callback at a time.
"""

from __future__ import annotations

import math

from agent.types import Quote

# --- tick ids (IB's TickTypeEnum) ------------------------------------------------------------------

PRICE_TICKS = {1: "bid", 2: "ask", 4: "last", 9: "close",
               66: "bid", 67: "ask", 68: "last", 75: "close"}          # 66-76: delayed twins
SIZE_TICKS = {0: "bid_size", 3: "ask_size", 5: "last_size", 8: "volume",
              69: "bid_size", 70: "ask_size", 71: "last_size", 74: "volume"}
CALL_OPEN_INTEREST, PUT_OPEN_INTEREST = 27, 28     # generic tick 101
CALL_OPTION_VOLUME, PUT_OPTION_VOLUME = 29, 30     # generic tick 100
HIST_VOL, IMPLIED_VOL = 23, 24                     # generic ticks 104, 106
COMPUTATION_TICKS = {10: "bid", 11: "ask", 12: "last", 13: "model",
                     80: "bid", 81: "ask", 82: "last", 83: "model"}    # 80-83: delayed twins


def is_delayed_tick(tick: int) -> bool:
    return 66 <= tick <= 76 or 80 <= tick <= 83


# --- error codes ----------------------------------------------------------------------------------

FARM_OK = frozenset({2104, 2106, 2158})            # "... data farm connection is OK:usfarm"
FARM_DOWN = frozenset({2103, 2105, 2157})          # "... data farm connection is broken:usfarm"
FARM_INACTIVE = frozenset({2107, 2108})            # inactive, available on demand
#: Informational: logged at INFO, never fail a request.
INFO_CODES = FARM_OK | FARM_INACTIVE | frozenset({2100, 2119, 2150, 2168, 2169})
#: Connectivity between TWS and IB's servers (the socket to TWS stays up).
CONNECTIVITY_LOST, RESTORED_DATA_LOST, RESTORED_DATA_KEPT, SERVER_LINK_BROKEN = 1100, 1101, 1102, 2110
#: Market-data advisories: the line goes on (10167: delayed data follows; 10090: part of the data not covered).
MARKET_DATA_ADVISORY = frozenset({10167, 10090})
DELAYED_DATA_ADVISORY = 10167
#: Never fails a request: the whole set the bridge treats as "not an error for reqId".
NON_FATAL = INFO_CODES | FARM_DOWN | frozenset({1100, 1101, 1102, 2110}) | MARKET_DATA_ADVISORY


def is_warning(code: int) -> bool:
    """Never a failure: the named non-fatal set, and IB's warning range 2100-2199."""
    return code in NON_FATAL or 2100 <= code <= 2199


#: Errors for a reqMktData that TWS refused outright: it holds no line for it, so there is nothing to cancel
#: (a cancelMktData would only earn error 300). 200 no such contract, 321 validation, 354 not subscribed,
#: 10168 delayed data not enabled, 101 no free line. Not 102 (duplicate id): the first line with that id lives.
REJECTED_LINE = frozenset({101, 200, 321, 354, 10168})

CANCELLED_UNKNOWN_ID = 300                          # "Can't find EId with tickerId" after a cancel crossed a tick
CLIENT_ID_IN_USE = 326
READ_ONLY = 321
PACING_VIOLATION = 100


def farm_name(message: str) -> str:
    """The farm a 2103-2108/2157/2158 message is about: what follows the last ':' ('usfarm', 'ushmds')."""
    name = message.rsplit(":", 1)[-1].strip() if ":" in message else message.strip()
    return name or "unknown"


# --- values --------------------------------------------------------------------------------------

def _value(v) -> float | None:
    """A number IB sent, or None for nothing, NaN/Inf and the ">= 1e300: not computed" sentinel."""
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    if math.isnan(v) or math.isinf(v) or abs(v) >= 1e300:
        return None
    return v


def clean_price(v: float | None) -> float | None:
    """IB's "no price": -1 (no bid/ask), >= 1e300 (not computed), NaN. Everything else is a price."""
    v = _value(v)
    return None if v == -1.0 else v


def clean_size(v: float | int | None) -> float | None:
    v = _value(v)
    return None if v is None or v < 0 else v


def clean_greek(v: float | None) -> float | None:
    """Greeks: -2 (and >= 1e300) mean "not computed". A delta or theta of -1 is a real value."""
    v = _value(v)
    return None if v == -2.0 else v


def clean_iv(v: float | None) -> float | None:
    v = clean_price(v)
    return None if v is None or v < 0 else v


# --- applying callbacks ---------------------------------------------------------------------------

def apply_price(q: Quote, tick: int, price: float | None) -> None:
    name = PRICE_TICKS.get(tick)
    if is_delayed_tick(tick):
        q.delayed = True
    if name is None:
        return
    # -1 is "no bid / no ask now": the field becomes None again rather than keeping a stale price.
    setattr(q, name, clean_price(price))


def apply_size(q: Quote, tick: int, size: float | int | None, right: str = "") -> None:
    if is_delayed_tick(tick):
        q.delayed = True
    value = clean_size(size)
    name = SIZE_TICKS.get(tick)
    if name is not None:
        setattr(q, name, value)
    elif tick in (CALL_OPEN_INTEREST, PUT_OPEN_INTEREST):
        # IB sends both for an option's generic tick 101; only the contract's own side is its open interest.
        q.extra["call_open_interest" if tick == CALL_OPEN_INTEREST else "put_open_interest"] = value
        if (right == "C") == (tick == CALL_OPEN_INTEREST) and right in ("C", "P"):
            q.open_interest = value
    elif tick in (CALL_OPTION_VOLUME, PUT_OPTION_VOLUME):
        q.extra["call_option_volume" if tick == CALL_OPTION_VOLUME else "put_option_volume"] = value
        if (right == "C") == (tick == CALL_OPTION_VOLUME) and right in ("C", "P"):
            q.option_volume = value


def apply_generic(q: Quote, tick: int, value: float | None) -> None:
    if tick == HIST_VOL:
        q.hist_vol = clean_iv(value)
    elif tick == IMPLIED_VOL:
        q.extra["iv_tick24"] = clean_iv(value)
        if q.extra.get("iv_source") is None:          # an option computation's IV wins over tick 24
            q.implied_vol = clean_iv(value)


_GREEK_FIELDS = ("implied_vol", "delta", "gamma", "vega", "theta", "model_price", "und_price")


def apply_option_computation(q: Quote, tick: int, iv: float | None, delta: float | None,
                             opt_price: float | None, gamma: float | None, vega: float | None,
                             theta: float | None, und_price: float | None) -> None:
    """Option computation (message 21). Model (13/83) values win; else the bid/ask average; else last."""
    kind = COMPUTATION_TICKS.get(tick)
    if kind is None:
        return
    if is_delayed_tick(tick):
        q.delayed = True
    comps: dict = q.extra.setdefault("computations", {})
    comps[kind] = {"implied_vol": clean_iv(iv), "delta": clean_greek(delta), "gamma": clean_greek(gamma),
                   "vega": clean_greek(vega), "theta": clean_greek(theta), "model_price": clean_price(opt_price),
                   "und_price": clean_price(und_price)}
    for name in _GREEK_FIELDS:
        value, source = _best(comps, name)
        if source is not None:
            setattr(q, name, value)
            if name == "implied_vol":
                q.extra["iv_source"] = source


def _best(comps: dict, name: str) -> tuple[float | None, str | None]:
    model = comps.get("model", {}).get(name)
    if model is not None:
        return model, "model"
    sides = [comps[k][name] for k in ("bid", "ask") if k in comps and comps[k].get(name) is not None]
    if sides:
        return sum(sides) / len(sides), "bid_ask"
    last = comps.get("last", {}).get(name)
    if last is not None:
        return last, "last"
    return None, None


def apply_market_data_type(q: Quote, data_type: int) -> None:
    """marketDataType (58): 1 live, 2 frozen, 3 delayed, 4 delayed-frozen."""
    q.extra["market_data_type"] = data_type
    if data_type in (3, 4):
        q.delayed = True


def apply_error(q: Quote, code: int, message: str) -> bool:
    """An error for this line's reqId. Returns True when it is a failure (waiters should wake)."""
    if code == DELAYED_DATA_ADVISORY:
        q.delayed = True
        q.extra.setdefault("advisories", []).append(code)
        return False
    if is_warning(code):
        q.extra.setdefault("advisories", []).append(code)
        return False
    q.error_code = code
    q.error = message
    return True
