"""orderRef rules (pure): what identifies an order so that the same request never places it twice.

TWS keeps an order's ``orderRef`` in the open-order list, the completed-order list and every execution, across
agent restarts and reconnects. So the agent derives the ref from what asked for the order — the relay's request id,
or what an order file's line asks for — and before placing looks the ref up in all three.
"""

from __future__ import annotations

import hashlib
import re

REQUEST_PREFIX = "mat-"       # MA Tracker, through the relay
FILE_PREFIX = "of-"           # an order file
_PLAIN = re.compile(r"[A-Za-z0-9_.-]{1,16}")


def _digest(text: str) -> str:
    # surrogatepass: a request id is any JSON string, including a lone surrogate no encoder can write
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def request_ref(request_id: str) -> str:
    """The ref of an order asked for by relay request ``request_id`` (when the caller gave none)."""
    return REQUEST_PREFIX + _digest(request_id)[:24]


def file_ref(order: str, own_ref: str | None) -> str:
    """The ref of one order-file line: a hash of what the order asks for (``order``, its canonical text: see
    agent/orders/files.py) and of the line's own ref when it has one, which also ends the ref (hashed unless it is a
    short plain word), e.g. ``of-1a2b3c4d5e6f7a8b`` or ``of-1a2b3c4d5e6f7a8b-a1``. At most 36 characters.

    Neither the file nor the line's place in it enter: an edited file keeps the refs of the orders it did not
    change, so a re-run finds those placed and places only what is new.
    """
    digest = _digest(order if own_ref is None else f"{order}\x00{own_ref}")[:16]
    return f"{FILE_PREFIX}{digest}" if own_ref is None else f"{FILE_PREFIX}{digest}-{ref_tail(own_ref)}"


def ref_tail(own_ref: str) -> str:
    """How a line's own ref ends its orderRef: itself when it is a short plain word, else 12 hex of its hash."""
    return own_ref if _PLAIN.fullmatch(own_ref) else _digest(own_ref)[:12]


def own_ref_of(order_ref: str) -> str | None:
    """The own-ref part of an order-file orderRef (as ``ref_tail`` wrote it, dashes and all), else None."""
    if not order_ref.startswith(FILE_PREFIX):
        return None
    parts = order_ref[len(FILE_PREFIX):].split("-", 1)       # the digest holds no dash
    return parts[1] if len(parts) == 2 and parts[1] else None
