"""The shapes orders take in answers to the relay (pure): a book entry as an open-order row or a placement answer.
Field names follow ../shared/relay-protocol.md; extra fields are additions the relay ignores."""

from __future__ import annotations

from agent.orders.book import BookEntry
from agent.protocol import contract_dict
from agent.types import Contract, OrderInfo


def _money(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


def order_fields(e: BookEntry) -> dict:
    t = e.ticket
    if t is None:
        return {}
    return {"action": t.action, "totalQuantity": t.quantity, "orderType": t.order_type, "lmtPrice": t.lmt_price,
            "auxPrice": t.aux_price, "trailStopPrice": t.trail_stop_price, "trailingPercent": t.trailing_percent,
            "tif": t.tif, "outsideRth": t.outside_rth, "account": t.account, "orderRef": t.order_ref,
            "openClose": t.open_close}


def open_order_row(e: BookEntry, own_client_id: int | None) -> dict:
    """One row of get_open_orders. ``changeable``: this agent may modify or cancel it (same API client id)."""
    return {
        "orderId": e.order_id, "permId": e.perm_id, "clientId": e.client_id,
        "contract": contract_dict(e.contract or Contract(symbol="")),
        "order": order_fields(e),
        "orderState": {"status": e.status, "warningText": e.warning_text, "commission": _money(e.commission),
                       "filled": e.filled, "remaining": e.remaining, "avgFillPrice": _money(e.avg_fill_price)},
        "changeable": own_client_id is not None and e.client_id == own_client_id and e.order_id != 0,
    }


def state_phrase(e: BookEntry) -> str:
    """'Filled (100 of 100 at 210.4)', 'Submitted (0 of 100 filled)', 'Cancelled'."""
    total = e.ticket.quantity if e.ticket is not None else e.filled + (e.remaining or 0)
    status = e.status or "not confirmed by TWS"
    if e.filled:
        return f"{status} ({e.filled:g} of {total:g} at {e.avg_fill_price:g})"
    if e.status in ("Submitted", "PreSubmitted"):
        return f"{status} (0 of {total:g} filled)"
    return status


def placement_answer(e: BookEntry, *, already_placed: bool = False, message: str = "") -> dict:
    """place_order / modify_order's data: orderId, status, filled, remaining, avgFillPrice, permId, warningText."""
    t = e.ticket
    return {"orderId": e.order_id, "status": e.status or "Unknown", "filled": e.filled,
            "remaining": e.remaining if e.remaining is not None else (t.quantity if t else None),
            "avgFillPrice": _money(e.avg_fill_price), "permId": e.perm_id, "warningText": e.warning_text,
            "orderRef": e.order_ref, "account": t.account if t else "", "alreadyPlaced": already_placed,
            "message": message}


def what_if_answer(info: OrderInfo) -> dict:
    """A what-if preview: nothing was placed; margin and commission as TWS estimates them."""
    m = dict(info.margin or {})
    return {"orderId": info.order_id, "status": "WhatIf", "whatIf": True, "filled": 0.0,
            "remaining": info.ticket.quantity, "avgFillPrice": None, "permId": 0, "warningText": info.warning_text,
            "preview": m, "initMarginChange": m.get("initMarginChange"),
            "maintMarginChange": m.get("maintMarginChange"), "commission": m.get("commission"),
            "message": "What-if preview only: nothing was placed."}
