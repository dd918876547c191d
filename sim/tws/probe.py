"""A small threaded `ibapi` client for tests and benchmarks (the real IB client against the simulator).

EClient + EWrapper in a reader thread; every callback lands in one thread-safe list as an ``Event``
(name, args, time). Helpers wait (with a timeout, always) for the first event that matches.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ibapi.client import EClient
from ibapi.contract import Contract
from ibapi.wrapper import EWrapper


@dataclass
class Event:
    name: str
    args: tuple
    ts: float = field(default_factory=time.monotonic)

    def __getitem__(self, i: int) -> Any:
        return self.args[i]


class ProbeTimeout(AssertionError):
    """The awaited callback did not come in time."""


class _Wrapper(EWrapper):
    def __init__(self, probe: "Probe") -> None:
        super().__init__()
        self._probe = probe

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name.startswith("_") or not callable(attr) or name in ("logAnswer",):
            return attr
        if not hasattr(EWrapper, name):
            return attr
        probe = object.__getattribute__(self, "_probe")

        def record(*args: Any) -> None:
            probe._push(Event(name, args))
        return record


class Probe:
    """One ibapi connection. ``with Probe(port, client_id) as p: p.client.reqCurrentTime(); p.wait("currentTime")``."""

    def __init__(self, port: int, client_id: int = 1, host: str = "127.0.0.1", nodelay: bool = False) -> None:
        self.port, self.client_id, self.host = port, client_id, host
        self.nodelay = nodelay      # ibapi leaves Nagle on; the benchmark measures both ways
        self.wrapper = _Wrapper(self)
        self.client = EClient(self.wrapper)
        self.history: list[Event] = []          # everything, in arrival order
        self._pending: list[Event] = []         # not yet taken by wait()/collect()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def _push(self, ev: Event) -> None:
        with self._cond:
            self.history.append(ev)
            self._pending.append(ev)
            self._cond.notify_all()

    # ---- connection -----------------------------------------------------------------------------

    def connect(self, timeout: float = 5.0, wait_ready: bool = True) -> "Probe":
        box: dict = {}

        def do_connect() -> None:
            try:
                self.client.connect(self.host, self.port, self.client_id)
            except Exception as exc:  # noqa: BLE001
                box["error"] = exc
        t = threading.Thread(target=do_connect, daemon=True)
        t.start()
        t.join(timeout)          # ibapi's connect() has no timeout of its own
        if t.is_alive():
            raise ProbeTimeout(f"handshake with 127.0.0.1:{self.port} did not finish in {timeout}s")
        if "error" in box:
            raise box["error"]
        if not self.client.serverVersion():
            raise ConnectionError(f"could not connect to 127.0.0.1:{self.port}")
        if self.nodelay and self.client.conn is not None and self.client.conn.socket is not None:
            self.client.conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # the handshake went through: run the decoder even if TWS already hung up (e.g. after error 326),
        # so what it sent before closing still reaches the callbacks
        self._thread = threading.Thread(target=self.client.run, daemon=True, name=f"probe-{self.client_id}")
        self._thread.start()
        if wait_ready:
            self.wait("nextValidId", timeout=timeout)
        return self

    def disconnect(self) -> None:
        try:
            self.client.disconnect()
        finally:
            if self._thread is not None:
                self._thread.join(2.0)

    def __enter__(self) -> "Probe":
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()

    # ---- waiting --------------------------------------------------------------------------------

    def wait(self, name: str | tuple[str, ...], pred: Callable[[Event], bool] | None = None,
             timeout: float = 5.0) -> Event:
        """The oldest not yet taken event named ``name`` that satisfies ``pred`` (it may already have
        arrived); it is taken, the others stay available. Raises ProbeTimeout after ``timeout`` s."""
        names = (name,) if isinstance(name, str) else name
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, ev in enumerate(self._pending):
                    if ev.name in names and (pred is None or pred(ev)):
                        del self._pending[i]
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProbeTimeout(f"no {names} within {timeout}s")
                self._cond.wait(left)

    def collect(self, end: str, pred: Callable[[Event], bool] | None = None, timeout: float = 5.0) -> list[Event]:
        """All not yet taken events up to and including the first ``end`` event matching ``pred``
        (all of them are taken)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, ev in enumerate(self._pending):
                    if ev.name == end and (pred is None or pred(ev)):
                        out = self._pending[:i + 1]
                        del self._pending[:i + 1]
                        return out
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProbeTimeout(f"no {end} within {timeout}s")
                self._cond.wait(left)

    def error_for(self, req_id: int, timeout: float = 5.0) -> Event:
        return self.wait("error", lambda e: e[0] == req_id, timeout)

    def drain(self) -> list[Event]:
        """Take every pending event (so the next collect() sees only what comes after)."""
        with self._cond:
            out, self._pending = self._pending, []
            return out

    def count(self, name: str, pred: Callable[[Event], bool] | None = None) -> int:
        with self._lock:
            return sum(1 for e in self.history if e.name == name and (pred is None or pred(e)))

    def errors(self, code: int | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self.history if e.name == "error" and (code is None or e[1] == code)]


def stock(symbol: str, exchange: str = "SMART") -> Contract:
    c = Contract()
    c.symbol, c.secType, c.exchange, c.currency = symbol, "STK", exchange, "USD"
    return c


def option(symbol: str, expiry: str = "", strike: float = 0.0, right: str = "", exchange: str = "SMART") -> Contract:
    c = Contract()
    c.symbol, c.secType, c.exchange, c.currency = symbol, "OPT", exchange, "USD"
    c.lastTradeDateOrContractMonth, c.strike, c.right, c.multiplier = expiry, strike, right, "100"
    return c
