"""The cloud's HTTP face, as pure data and arithmetic (no I/O): which route sends which request type, how long
the relay waits for each, and how ``ib-status`` is answered from the agent's cached ``agent_state``.

Mirrors the MA Tracker cloud's ``options_routes.py`` as described in /work/shared/relay-protocol.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

PREFIX = "/options/relay"

# The relay's own waits (relay-protocol.md "Requests"). An agent answer later than these is lost.
BASE_TIMEOUTS: dict[str, float] = {
    "fetch_chain": 180.0,
    "sell_scan": 120.0,
    "fetch_prices": 60.0,
    "get_positions": 20.0,
    "get_open_orders": 20.0,
    "fetch_underlying": 15.0,
    "cancel_order": 10.0,
    "ib_status": 15.0,
    "check_availability": 15.0,
    "ib_reconnect": 30.0,
}
DEFAULT_TIMEOUT = 30.0
ORDER_TIMEOUT_SLACK = 10.0  # place/modify: payload timeout_sec + 10 s
ORDER_DEFAULT_TIMEOUT_SEC = 30.0

# What the relay stamps on payloads as _priority (the agent ignores it; interactive first, scans last).
PRIORITY: dict[str, int] = {
    "ib_status": 0, "cancel_order": 0, "place_order": 0, "modify_order": 0,
    "get_positions": 1, "get_open_orders": 1, "fetch_underlying": 1, "fetch_prices": 1,
    "check_availability": 2, "fetch_chain": 2, "sell_scan": 2,
}


@dataclass(frozen=True)
class Route:
    method: str  # "GET" | "POST"
    path: str
    request_type: str


ROUTES: tuple[Route, ...] = (
    Route("POST", f"{PREFIX}/fetch-chain", "fetch_chain"),
    Route("POST", f"{PREFIX}/fetch-prices", "fetch_prices"),
    Route("POST", f"{PREFIX}/sell-scan", "sell_scan"),
    Route("POST", f"{PREFIX}/stock-quote", "fetch_underlying"),
    Route("GET", f"{PREFIX}/positions", "get_positions"),
    Route("GET", f"{PREFIX}/open-orders", "get_open_orders"),
    Route("POST", f"{PREFIX}/place-order", "place_order"),
    Route("POST", f"{PREFIX}/modify-order", "modify_order"),
    Route("POST", f"{PREFIX}/cancel-order", "cancel_order"),
)
IB_STATUS_PATH = f"{PREFIX}/ib-status"
# The web app's "Reconnect IB" button: POST {force} here; the answer is {success, connected, message}, read from
# the agent's data (an agent answering {ok, message} reads as failed and IB shows as disconnected).
IB_RECONNECT_PATH = f"{PREFIX}/ib-reconnect"


def outranks(newer: Any, older: Any) -> bool:
    """Whether an agent that connected later takes routing from one that connected before, as the cloud decides:
    versions compared as dotted integers, the later one winning a tie; when either version is not dotted
    integers, the two tie (so the later one wins)."""
    try:
        new = tuple(int(x) for x in str(newer).split("."))
        old = tuple(int(x) for x in str(older).split("."))
    except (TypeError, ValueError):
        return True
    return new >= old


def reconnect_answer(frame: Mapping[str, Any]) -> dict:
    """The ib-reconnect route's body from the agent's response frame (success true or false)."""
    if frame.get("success") is not True:
        return {"success": False, "connected": False,
                "message": str(frame.get("error") or "Unknown error from data provider")}
    data = frame.get("data") if isinstance(frame.get("data"), Mapping) else {}
    return {"success": bool(data.get("success", False)), "connected": bool(data.get("connected", False)),
            "message": str(data.get("message") or "")}


def canonical(request_type: str) -> str:
    """fetch-chain and fetch_chain name the same flow."""
    return request_type.strip().lower().replace("-", "_")


def request_timeout(request_type: str, payload: Mapping[str, Any] | None, scale: float = 1.0) -> float:
    """Seconds the relay waits for the agent's answer to one request, times ``scale`` (tests shrink it)."""
    rt = canonical(request_type)
    if rt in ("place_order", "modify_order"):
        raw = (payload or {}).get("timeout_sec", ORDER_DEFAULT_TIMEOUT_SEC)
        try:
            sec = float(raw)
        except (TypeError, ValueError):
            sec = ORDER_DEFAULT_TIMEOUT_SEC
        if not (sec > 0) or sec != sec:  # negative, zero or NaN: the agent will use its default
            sec = ORDER_DEFAULT_TIMEOUT_SEC
        base = sec + ORDER_TIMEOUT_SLACK
    else:
        base = BASE_TIMEOUTS.get(rt, DEFAULT_TIMEOUT)
    return base * scale


def query_to_payload(query: Mapping[str, str]) -> dict[str, Any]:
    """GET routes carry their options in the query string (timeout_sec=15&force_refresh=true): type them."""
    out: dict[str, Any] = {}
    for key, value in query.items():
        low = value.strip().lower()
        if low in ("true", "false"):
            out[key] = low == "true"
            continue
        try:
            out[key] = int(value)
            continue
        except ValueError:
            pass
        try:
            out[key] = float(value)
            continue
        except ValueError:
            pass
        out[key] = value
    return out


def ib_status_from_state(state: Mapping[str, Any] | None, *, provider_connected: bool, provider_id: str | None,
                         agent_version: str | None, state_ts: float | None, now: float | None = None,
                         boot_phase: str | None = None) -> dict:
    """The ``ib-status`` page load, answered without a round trip from the agent's last ``agent_state``.
    ``boot_phase``: the agent's last phase before boot_complete (the web app shows "agent starting…"), else None."""
    if not provider_connected:
        return {"connected": False, "provider_connected": False, "message": "No data provider connected",
                "farm_status": {}, "data_available": False}
    state = dict(state or {})
    now = time.time() if now is None else now
    ib_connected = bool(state.get("ib_connected", False))
    farms = state.get("ib_farms") or {}
    return {
        "connected": ib_connected,
        "provider_connected": True,
        "provider_id": provider_id,
        "agent_version": agent_version,
        "boot_phase": boot_phase,
        # the same fields an ib_status request answers with, where the agent's state carries them
        "reconnecting": bool(state.get("reconnecting", False)),
        "message": state.get("status_message") or ("Connected to IB" if ib_connected
                                                   else "Data provider connected; IB not connected"),
        "farm_status": dict(farms) if isinstance(farms, Mapping) else {},
        "data_available": bool(state.get("ib_data_available", False)),
        "read_only_session": state.get("read_only_session"),
        "last_connected": state.get("last_connected"),
        "available_scan_lines": state.get("available_scan_lines"),
        "scan_batch_size": state.get("scan_batch_size"),
        "max_lines": state.get("max_lines"),
        "state_age_sec": None if state_ts is None else round(max(0.0, now - state_ts), 3),
        "agent_state": state,
    }
