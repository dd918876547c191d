"""IB's socket framing, pure: 4-byte big-endian length, then ASCII fields each ending in NUL.

No I/O here, so the framing is tested without sockets and shared by the server and the raw test client.
"""

from __future__ import annotations

import math
import struct
from typing import Iterable, Sequence

HEADER = struct.Struct("!I")
MAX_MSG_LEN = 0xFFFFFF  # what ibapi accepts (MAX_MSG_LEN in ibapi.common): larger means a broken peer


class WireError(Exception):
    """The peer sent something that is not IB framing."""


def fmt(value: object) -> str:
    """One field as TWS writes it: bools as 0/1, whole floats without '.0', None as empty.

    Numeric fields are never empty (a client that decodes int("") would fail), so callers pass 0,
    not None, for numbers; None is only for the "unset" fields IB itself sends empty.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError("NaN/Inf never goes on the wire")
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(round(value, 8))
    return str(value)


def encode(fields: Iterable[object]) -> bytes:
    """A whole message: length prefix + NUL-terminated fields."""
    body = "".join(fmt(f) + "\0" for f in fields).encode("ascii", "backslashreplace")
    return HEADER.pack(len(body)) + body


def frame(text: str) -> bytes:
    """A length-prefixed payload without field terminators (the handshake version string)."""
    body = text.encode("ascii")
    return HEADER.pack(len(body)) + body


def split_fields(body: bytes) -> list[str]:
    """The fields of one message body (the final NUL terminates, it does not separate)."""
    parts = body.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("latin-1") for p in parts]


class FrameBuffer:
    """Accumulates bytes from a stream and yields complete message bodies."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 4:
            (size,) = HEADER.unpack_from(self._buf, 0)
            if size > MAX_MSG_LEN:
                raise WireError(f"message length {size} exceeds {MAX_MSG_LEN}")
            if len(self._buf) < 4 + size:
                break
            out.append(bytes(self._buf[4:4 + size]))
            del self._buf[:4 + size]
        return out


def parse_version_range(text: str) -> tuple[int, int]:
    """'v100..157' (optionally followed by ' options') -> (100, 157); 'v157' -> (157, 157)."""
    spec = text.strip().split(" ", 1)[0]
    if not spec.startswith("v"):
        raise WireError(f"bad version string {text!r}")
    spec = spec[1:]
    try:
        if ".." in spec:
            lo, hi = spec.split("..", 1)
            return int(lo), int(hi)
        v = int(spec)
        return v, v
    except ValueError as exc:
        raise WireError(f"bad version string {text!r}") from exc


class Fields:
    """A cursor over a request's fields with typed reads; running out raises WireError."""

    def __init__(self, fields: Sequence[str], start: int = 0) -> None:
        self._f = fields
        self._i = start

    def str(self) -> str:
        if self._i >= len(self._f):
            raise WireError(f"message ended after {len(self._f)} fields")
        v = self._f[self._i]
        self._i += 1
        return v

    def int(self, default: int = 0) -> int:
        s = self.str()
        if s == "":
            return default
        try:
            return int(float(s)) if "." in s or "e" in s.lower() else int(s)
        except ValueError as exc:
            raise WireError(f"field {self._i - 1}: {s!r} is not an integer") from exc

    def float(self, default: float = 0.0) -> float:
        s = self.str()
        if s == "":
            return default
        try:
            return float(s)
        except ValueError as exc:
            raise WireError(f"field {self._i - 1}: {s!r} is not a number") from exc

    def bool(self) -> bool:
        return self.int() != 0

    def skip(self, n: int = 1) -> None:
        for _ in range(n):
            self.str()

    @property
    def remaining(self) -> int:
        return len(self._f) - self._i
