"""A short-lived IB API session for the check: asyncio I/O with every wait bounded, ibapi's own codec.

``ibapi.EClient.connect()`` has no handshake timeout, so the doctor does its own I/O: TCP probing of the usual
ports, the handshake, startApi, and an event queue the steps wait on with a timeout each.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Callable, Sequence

# --- TCP probing -----------------------------------------------------------------------------

async def port_open(host: str, port: int, timeout: float) -> bool:
    """True when something accepts a TCP connection on host:port within ``timeout``."""
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    w.close()
    try:
        await asyncio.wait_for(w.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError):
        pass
    return True


async def probe_ports(host: str, ports: Sequence[int], timeout: float) -> list[int]:
    """The ports (in the given order) that accept TCP; probed in parallel."""
    ports = list(dict.fromkeys(ports))
    found = await asyncio.gather(*(port_open(host, p, timeout) for p in ports))
    return [p for p, ok in zip(ports, found) if ok]


# --- a short-lived IB connection: asyncio I/O, ibapi codec -----------------------------------

class HandshakeSilent(Exception):
    """TCP accepted, but no answer to the API handshake."""


class ClosedByTWS(Exception):
    """TWS closed the connection."""


class NotIB(Exception):
    """The peer answered, but not in IB's API protocol (e.g. a web server on that port)."""


MAX_MESSAGE = 16 * 1024 * 1024      # a length prefix beyond this is not IB talking (b"HTTP" reads as 1.2 GB)


class _Collector:
    """An ibapi EWrapper stand-in: the decoder calls these; each call becomes an event tuple on a queue."""

    def __init__(self, queue: asyncio.Queue):
        self.q = queue

    def __getattr__(self, name: str) -> Callable[..., None]:
        # every other EWrapper callback (farm status, openOrderEnd, …) is of no interest here
        return lambda *a, **k: None

    def error(self, reqId: int, errorCode: int, errorString: str, *rest: Any) -> None:
        self.q.put_nowait(("error", int(reqId), int(errorCode), str(errorString)))

    def managedAccounts(self, accountsList: str) -> None:
        self.q.put_nowait(("accounts", [a for a in accountsList.split(",") if a.strip()]))

    def nextValidId(self, orderId: int) -> None:
        self.q.put_nowait(("next_id", int(orderId)))

    def openOrder(self, orderId: int, contract: Any, order: Any, orderState: Any) -> None:
        self.q.put_nowait(("open_order", int(orderId), getattr(orderState, "status", ""),
                           getattr(orderState, "initMarginChange", "")))

    def orderStatus(self, orderId: int, status: str, *rest: Any) -> None:
        self.q.put_nowait(("order_status", int(orderId), status))

    def tickPrice(self, reqId: int, tickType: int, price: float, attrib: Any) -> None:
        self.q.put_nowait(("tick_price", int(reqId), int(tickType), float(price)))

    def marketDataType(self, reqId: int, marketDataType: int) -> None:
        self.q.put_nowait(("md_type", int(reqId), int(marketDataType)))

    def currentTime(self, time: int) -> None:
        self.q.put_nowait(("current_time", int(time)))

    def connectionClosed(self) -> None:
        pass


class _Sink:
    """Stands in for ibapi's Connection so EClient's encoders write straight to our asyncio stream."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer

    def isConnected(self) -> bool:
        return not self.writer.is_closing()

    def sendMsg(self, msg: bytes) -> int:
        self.writer.write(msg)
        return len(msg)

    def disconnect(self) -> None:
        self.writer.close()


class IbProbe:
    """One short-lived API session: handshake, startApi, then a few requests, each awaited with a timeout."""

    def __init__(self, host: str, port: int, client_id: int):
        self.host, self.port, self.client_id = host, port, client_id
        self.events: asyncio.Queue = asyncio.Queue()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.server_version = 0
        self.client: Any = None
        self._pump: asyncio.Task | None = None
        self.closed = False

    async def open(self, tcp_timeout: float, handshake_timeout: float) -> int:
        from ibapi import comm
        from ibapi.server_versions import MAX_CLIENT_VER, MIN_CLIENT_VER

        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), tcp_timeout)
        self.writer.write(b"API\0" + comm.make_msg(f"v{MIN_CLIENT_VER}..{MAX_CLIENT_VER}"))
        try:
            fields = await asyncio.wait_for(self._read_fields(), handshake_timeout)
        except asyncio.TimeoutError:
            raise HandshakeSilent() from None
        # the answer is two fields, no message id: server version, connection time
        try:
            self.server_version = int(fields[0])
        except (ValueError, IndexError):
            raise NotIB(f"the first answer was {fields[:2]!r}, not a server version") from None
        return self.server_version

    async def start(self, client_id: int, timeout: float) -> tuple[list[str], int]:
        """startApi; returns (accounts, next order id). Raises IBErrorSeen(326) etc. or ClosedByTWS / TimeoutError."""
        from ibapi.client import EClient
        from ibapi.decoder import Decoder

        self.client_id = client_id
        wrapper = _Collector(self.events)
        client = EClient(wrapper)
        client.conn = _Sink(self.writer)
        client.serverVersion_ = self.server_version
        client.clientId = client_id
        client.setConnState(EClient.CONNECTED)
        self.client = client
        self._decoder = Decoder(wrapper, self.server_version)
        self._pump = asyncio.ensure_future(self._pump_messages())
        client.startApi()
        accounts: list[str] | None = None
        next_id: int | None = None

        def seen(ev: tuple) -> bool:
            nonlocal accounts, next_id
            if ev[0] == "accounts":
                accounts = ev[1]
            elif ev[0] == "next_id":
                next_id = ev[1]
            elif ev[0] == "error" and ev[2] in (326, 502, 504, 507):   # 326 clientId in use
                raise IBErrorSeen(ev[2], ev[3])
            return accounts is not None and next_id is not None

        await self.expect(seen, timeout)
        return accounts or [], next_id or 1

    async def expect(self, predicate: Callable[[tuple], bool], timeout: float) -> tuple:
        """Consume events until predicate(event) is true; raises asyncio.TimeoutError or ClosedByTWS."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError()
            ev = await asyncio.wait_for(self.events.get(), left)
            if ev[0] == "closed":
                self.events.put_nowait(ev)      # later waits see it too
                raise ClosedByTWS()
            if predicate(ev):
                return ev

    async def _read_fields(self) -> tuple:
        from ibapi import comm
        assert self.reader is not None
        head = await self.reader.readexactly(4)
        size = struct.unpack("!I", head)[0]
        if size > MAX_MESSAGE:
            raise NotIB(f"it sent {head!r}, which is not an IB API message")
        body = await self.reader.readexactly(size)
        return comm.read_fields(body)

    async def _pump_messages(self) -> None:
        try:
            while True:
                fields = await self._read_fields()
                try:
                    self._decoder.interpret(fields)
                except Exception as exc:  # one bad message must not end the check
                    self.events.put_nowait(("bad_message", repr(exc)))
        except (asyncio.IncompleteReadError, OSError, NotIB):
            pass
        finally:
            self.events.put_nowait(("closed",))

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            try:
                await asyncio.wait_for(self._pump, 1.0)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass
        if self.writer is not None:
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)
            except (OSError, asyncio.TimeoutError):
                pass
        self.closed = True


class IBErrorSeen(Exception):
    def __init__(self, code: int, message: str):
        self.code, self.message = code, message
        super().__init__(f"IB error {code}: {message}")
