"""orderRef rules (pure): what identifies an order so that the same request never places it twice.

TWS keeps an order's ``orderRef`` in the open-order list, the completed-order list and every execution, across
agent restarts and reconnects. So the agent derives the ref from what asked for the order — the relay's request id,
or an order file's content hash and line — and before placing looks the ref up in all three.
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


def file_ref(file_sha256: str, line_ref: str) -> str:
    """The ref of one order file line: the file's content hash and the line's own ref (hashed unless it is a short
    plain word), e.g. ``of-1a2b3c4d5e6f-L7``. At most 40 characters."""
    line = line_ref if _PLAIN.fullmatch(line_ref) else _digest(line_ref)[:12]
    return f"{FILE_PREFIX}{file_sha256[:12]}-{line}"
