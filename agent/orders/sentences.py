"""What IB's order errors mean, in sentences a trader can act on (pure). IB's code rides beside, in ``code``."""

from __future__ import annotations

from agent.errors import ReadOnlyAPI
from agent.types import Contract, OrderTicket

IB_TEXT_LIMIT = 300


def _ib_text(text: str) -> str:
    t = " ".join(str(text or "").split())
    return t if len(t) <= IB_TEXT_LIMIT else t[:IB_TEXT_LIMIT] + "…"


def read_only_sentence() -> str:
    return ReadOnlyAPI(0, "").user_message


def rejection_sentence(code: int, ib_text: str, ticket: OrderTicket | None = None,
                       contract: Contract | None = None) -> str:
    """Why TWS refused an order it never accepted. Always ends saying nothing was placed."""
    text = _ib_text(ib_text)
    what = contract.describe() if contract is not None else "this contract"
    if code == 321 and "read-only" in text.lower():
        return read_only_sentence() + " Nothing was placed."
    if code == 110:
        price = f" {ticket.lmt_price:g}" if ticket is not None and ticket.lmt_price is not None else ""
        return (f"IB refused the limit price{price} for {what}: it is not a multiple of the contract's minimum price "
                f"increment (IB error 110). Round it to a valid tick (options: $0.05 at $3 and over on most "
                f"classes, $0.01 below; stocks $0.01) and place it again. Nothing was placed.")
    if code == 201:
        reason = text.split("reason:", 1)[1].strip() if "reason:" in text else text
        return f"IB rejected the order for {what}: {reason or 'no reason given'} (IB error 201). Nothing was placed."
    if code == 200:
        return (f"IB has no contract matching {what} (IB error 200): check the symbol, expiry, strike and right. "
                f"Nothing was placed.")
    if code == 435:
        return ("TWS needs an account on this order: the login manages several accounts. Set order.account "
                "(IB error 435). Nothing was placed.")
    if code in (10268, 10269):
        return (f"TWS refused an order attribute it no longer supports ({text}, IB error {code}). The agent clears "
                f"these attributes on every order: please report this with the agent's log file. Nothing was placed.")
    if code == 103:
        return ("TWS says this order id is already in use (IB error 103). Nothing was placed: place the order again "
                "and the agent takes a fresh id.")
    if code in (502, 504):
        return f"TWS was not connected when the order was sent (IB error {code}): nothing was placed."
    if code == 321:
        return f"TWS refused the order as invalid: {text} (IB error 321). Nothing was placed."
    return f"TWS refused the order: {text} (IB error {code}). Nothing was placed."


def modify_refusal_sentence(code: int, ib_text: str, order_id: int) -> str:
    text = _ib_text(ib_text)
    if code == 104:
        return f"Order {order_id} has filled: TWS does not change a filled order (IB error 104)."
    if code == 105:
        return (f"TWS refused the change to order {order_id}: it does not match the original order (IB error 105). "
                f"Only the price, quantity, order type and time in force can change; cancel and place anew otherwise.")
    if code == 110:
        return (f"IB refused the new limit price for order {order_id}: not a multiple of the contract's minimum price "
                f"increment (IB error 110). The order stands unchanged.")
    return f"TWS refused the change to order {order_id}: {text} (IB error {code}). The order stands unchanged."


def cancel_refusal_sentence(code: int, ib_text: str, order_id: int) -> str:
    text = _ib_text(ib_text)
    if code == 10147:
        return (f"TWS has no order {order_id} from this agent to cancel (IB error 10147): it may have been placed by "
                f"another program or by hand, or under another client id.")
    return f"TWS did not cancel order {order_id}: {text} (IB error {code})."
