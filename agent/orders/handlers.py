"""The relay's order requests: place_order, modify_order, cancel_order, get_open_orders (on the desk).

Deadlines sit inside the relay's own waits (relay-protocol.md): place/modify ``timeout_sec`` + 8 (the relay waits
+ 10), open orders 18 (20), cancel 9 (10). The desk answers within ``timeout_sec`` (an unconfirmed order is
"Unknown", never a failure), so the dispatcher's deadline is only a backstop.
"""

from __future__ import annotations

import dataclasses
from agent.dispatch import AgentContext, Dispatcher
from agent.errors import IBDisconnected, OrderRefused
from agent.orders.desk import OrderDesk, Placement
from agent.orders.refs import request_ref
from agent.orders.validation import OrderCheck, relay_order_fields, shown, unsupported_relay_fields
from agent.pacer import current_flow
from agent.protocol import CancelOrderPayload, ModifyOrderPayload, OpenOrdersPayload, PlaceOrderPayload

OPEN_ORDERS_WAIT = 16.0      # inside the dispatcher's 18 s (the relay waits 20 s)


def _desk(ctx: AgentContext) -> OrderDesk:
    if ctx.orders is None:
        raise IBDisconnected("IB not connected")
    return ctx.orders


def _checked(desk: OrderDesk, p: PlaceOrderPayload, verb: str) -> OrderCheck:
    contract, order = relay_order_fields(p.contract, p.order)
    chk = desk.check(contract, order)
    problems = unsupported_relay_fields(p.contract, p.order) + chk.problems
    if problems:
        what = f"{verb} {shown(order.get('action'))} {shown(order.get('quantity'))} {shown(contract.get('symbol'))}"
        raise desk._refuse(what, "Order refused: " + "; ".join(problems) + ". Nothing was sent to TWS.")
    return chk


async def place_order(ctx: AgentContext, p: PlaceOrderPayload) -> dict:
    desk = _desk(ctx)
    chk = _checked(desk, p, "place")
    ticket = chk.ticket
    if not ticket.order_ref and not ticket.what_if:
        # What asked for it names it: a re-delivered request (same request_id) finds this order, never a new one.
        ticket = dataclasses.replace(ticket, order_ref=request_ref(current_flow.get()))
    result = await desk.place(chk.contract, ticket, timeout=float(p.timeout_sec))
    return result.answer() if isinstance(result, Placement) else result


async def modify_order(ctx: AgentContext, p: ModifyOrderPayload) -> dict:
    desk = _desk(ctx)
    chk = _checked(desk, p, "change")
    if chk.ticket.what_if:
        raise OrderRefused("order.whatIf is for new orders: a change cannot be previewed. Nothing was sent to TWS.")
    return await desk.modify(p.orderId, chk.contract, chk.ticket, timeout=float(p.timeout_sec))


async def cancel_order(ctx: AgentContext, p: CancelOrderPayload) -> dict:
    return await _desk(ctx).cancel(p.orderId)


async def get_open_orders(ctx: AgentContext, p: OpenOrdersPayload) -> dict:
    return await _desk(ctx).open_orders(min(float(p.timeout_sec), OPEN_ORDERS_WAIT), p.force_refresh)


def register(d: Dispatcher) -> None:
    d.add("place_order", PlaceOrderPayload, place_order, deadline=lambda p: p.timeout_sec + 8)
    d.add("modify_order", ModifyOrderPayload, modify_order, deadline=lambda p: p.timeout_sec + 8)
    d.add("cancel_order", CancelOrderPayload, cancel_order, deadline=9.0)
    d.add("get_open_orders", OpenOrdersPayload, get_open_orders, deadline=18.0)


__all__ = ["register"]
