"""Port helpers shared by the tests (imported as ``ports``: pytest puts this folder on sys.path)."""
from __future__ import annotations

import atexit
import socket

_HELD_PORTS: list[socket.socket] = []
atexit.register(lambda: [s.close() for s in _HELD_PORTS])


def closed_port() -> int:
    """A loopback port that nothing listens on. The socket stays bound (not listening) until the process exits:
    a released port could meanwhile become a parallel run's server, or the kernel's pick for a client's own source
    port (a TCP self-connect then looks like a listener). Bound and not listening, it refuses connections."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD_PORTS.append(s)
    return s.getsockname()[1]
