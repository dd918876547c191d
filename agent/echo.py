"""Input shown back to a person (log lines, console lines, error answers): escaped and bounded.

Anything a relay frame carries may be hostile: a megabyte-long ticker, a lone surrogate (valid JSON that no
UTF-8 encoder can write), a newline that would forge a log line. Shown back whole, it grew every console line,
answer and the console's repeat filter without bound, and a lone surrogate broke the log handlers. Every value
taken from input goes through ``echo`` (or ``clip`` for text already built around it) on its way out.
"""

from __future__ import annotations

import reprlib
from typing import Any

ECHO_LIMIT = 40          # characters of an input value shown in a sentence
CLIP_LIMIT = 300         # characters of a longer text taken from input (an error sent by the relay, ...)

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 2, 4, 4, 4, 4
_repr.maxstring, _repr.maxlong, _repr.maxother = ECHO_LIMIT, ECHO_LIMIT, ECHO_LIMIT


def _escaped(text: str) -> str:
    """Every character that is not printable (controls, newlines, lone surrogates) as its escape: \\n, \\ud800."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def clip(text: str, limit: int = CLIP_LIMIT) -> str:
    """``text`` escaped and cut to ``limit`` characters; a cut text says how long it was."""
    text = text if isinstance(text, str) else str(text)
    n = len(text)
    if n <= limit:
        return _escaped(text)
    return f"{_escaped(text[:limit])}… ({n:,} characters)"


def echo(value: Any, limit: int = ECHO_LIMIT) -> str:
    """An input value for a sentence: a string in quotes (escaped, cut with its length: 'AAAA…' (1,000,000
    characters)), anything else as a short repr (nested values and long lists abbreviated)."""
    if isinstance(value, str):
        return f"'{clip(value, limit)}'"
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value):,} bytes"
    try:
        return clip(_repr.repr(value), limit * 2)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still shown as something
        return f"<{type(value).__name__}>"
