"""The TWS bridge: the ibapi client in its own thread, a request registry on the event loop, market-data
lines (agent/tws/marketdata.py), and a supervisor that keeps the connection up (agent/tws/supervisor.py).

Threads: each connection (``Session``, agent/tws/wrapper.py) has one thread that runs ibapi's connect and then
its message loop. Callbacks cross into asyncio in one place (``Session.post`` → ``loop.call_soon_threadsafe``)
and land in ``TwsBridge._deliver``; every future, registry entry and state attribute changes only on the loop.

Requests: each has a registry entry keyed by reqId (registered before sending, removed in ``finally``), a finite
timeout (``RequestTimeout``) and a typed error (``IBError``). A dropped connection fails everything pending at
once with ``IBDisconnected``. Every message sent to TWS first awaits ``pacer.message()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from agent.errors import ClientIdInUse, HandshakeTimeout, IBDisconnected, IBError, RequestTimeout
from agent.pacer import Pacer, Ticket
from agent.tws.callbacks import CURRENT_TIME_KEY, POSITIONS_KEY, TwsCallbacks
from agent.retry import Wait
from agent.tws.connect import TWS_WAIT, accounts_are_paper, mismatch_message
from agent.tws.lines import MarketDataLine
from agent.tws.marketdata import MarketData
from agent.tws.supervisor import Supervisor
from agent.tws.trading import Trading
from agent.tws.wrapper import Session, to_ib_contract
from agent.types import AccountPosition, Contract, ContractInfo, OptionParams

log = logging.getLogger("agent.tws")

CLIENT_ID_TRIES = 4          # 326: try clientId, clientId+1, ... this many in all
MARKET_DATA_TYPE = 3         # delayed where there is no live permission, live where there is


async def _within(timeout: float, *futs: asyncio.Future) -> Any:
    """The first future's result once every one of ``futs`` is done (or the first exception among them);
    ``asyncio.TimeoutError`` when they are not done within ``timeout``. The futures are not cancelled (they are
    shared with the session).

    asyncio.wait, not wait_for(shield(...)): on Python <= 3.11 wait_for returns the result when it and a
    cancellation land in the same loop iteration, swallowing the cancellation of a request being torn down.
    """
    done, pending = await asyncio.wait(set(futs), timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
    for f in futs:
        if f in done and not f.cancelled() and f.exception() is not None:
            raise f.exception()
    if pending:
        raise asyncio.TimeoutError
    return futs[0].result()


@dataclass
class _Pending:
    kind: str
    future: asyncio.Future
    items: list = field(default_factory=list)


class TwsBridge(Supervisor, MarketData, Trading, TwsCallbacks):
    """See docs/design.md "TWS bridge". Additions: ``ports`` (candidate ports for tests), ``health_interval`` /
    ``health_timeout`` (hung-TWS check), ``connect()`` (one attempt without the supervisor),
    ``wait_lines_closed()``, ``client_id`` (the clientId in use), ``open_lines``, ``stats()``."""

    def __init__(self, settings: Any, pacer: Pacer, on_event: Callable[[str, dict], None] | None = None,
                 backoff: Wait | None = None, *, ports: list[int] | None = None,
                 health_interval: float = 30.0, health_timeout: float = 10.0):
        self.settings = settings
        self.pacer = pacer
        self.on_event = on_event
        self.backoff: Wait = backoff or TWS_WAIT      # a tenacity wait (agent/retry.py reconnect_wait)
        self._ports = list(ports) if ports else None
        self.health_interval = health_interval
        self._health_timeout = health_timeout
        # state read by ib_status / agent_state
        self.connected = False
        self.reconnecting = False
        self.status_message = "Not connected to TWS yet"
        self.host: str = getattr(settings, "ib_host", "127.0.0.1")
        self.port: int | None = None
        self.accounts: list[str] = []
        self.is_paper: bool | None = None
        self.farm_status: dict[str, bool] = {}
        self.data_available = False
        self.read_only_session: bool | None = None
        self.last_connected: float | None = None
        self.client_id: int | None = None
        # one console line per TWS state change: when the outage began (monotonic) and what was last said of it
        self._down_since: float | None = None
        self._down_said: str | None = None
        # loop-side machinery
        self._session: Session | None = None
        self._requests: dict[int, _Pending] = {}
        self._lines: dict[int, MarketDataLine] = {}
        self._next_req_id = 1
        self._connected_evt: asyncio.Event | None = None
        self._kick_evt: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._connect_lock: asyncio.Lock | None = None
        self._singleton_locks: dict[str, asyncio.Lock] = {}
        self._ever_connected = False
        self._supervised = False
        self._closing = False
        self._stopped = False
        self._skip_backoff = False
        self._run_task: asyncio.Task | None = None
        self.messages_written = 0          # messages handed to the socket (every one went through the pacer)
        self._quiesced = False
        self.sent_at_quiesce: int | None = None
        self.errors_seen: dict[int, int] = {}

    # ------------------------------------------------------------------ helpers
    def _evt(self, name: str) -> asyncio.Event:
        ev = getattr(self, name)
        if ev is None:
            ev = asyncio.Event()
            setattr(self, name, ev)
        return ev

    def _lock(self, name: str) -> asyncio.Lock:
        lk = self._singleton_locks.get(name)
        if lk is None:
            lk = self._singleton_locks[name] = asyncio.Lock()
        return lk

    def _emit(self, name: str, data: dict) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(name, data)
        except Exception:       # noqa: BLE001 - a listener's bug must not break the bridge
            log.exception("on_event(%s) failed", name)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _new_req_id(self) -> int:
        """The next id for a request or an order: one sequence, never below TWS's nextValidId, so that an error
        TWS sends with an id points at one thing only (an order id is also the reqId of its errors)."""
        session = self._session
        floor = session.next_order_id if session is not None and session.next_order_id else 1
        rid = max(self._next_req_id, int(floor))
        self._next_req_id = rid + 1
        return rid

    def _require(self) -> Session:
        s = self._session
        if s is None or not self.connected or s.lost:
            raise IBDisconnected(f"Not connected to TWS: {self.status_message}")
        return s

    def quiesce(self) -> None:
        """Send nothing more: the agent is stopping, and TWS drops a closed client's lines with its socket (cancels
        one by one, at IB's pace, would take seconds). Every later send fails with IBDisconnected."""
        if not self._quiesced:
            self._quiesced = True
            self.sent_at_quiesce = self.messages_written

    async def _token(self, session: Session, ticket: Ticket | None = None) -> None:
        """The pacer's token for one message on ``session``; IBDisconnected at once if the session is lost
        while waiting (a long pacer queue must not delay the failure)."""
        if self._quiesced:
            if ticket is not None:
                self.pacer.drop_ticket(ticket)
            raise IBDisconnected("The agent is stopping: nothing more is sent to TWS")
        if session.lost:
            if ticket is not None:
                self.pacer.drop_ticket(ticket)
            raise IBDisconnected(f"Not connected to TWS: {self.status_message}")
        ticket = ticket or self.pacer.ticket()
        if ticket.future.done():
            return
        try:
            await asyncio.wait({ticket.future, session.lost_fut}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.pacer.drop_ticket(ticket)
            raise
        if ticket.future.done():
            return
        self.pacer.drop_ticket(ticket)
        raise IBDisconnected(f"Connection to TWS lost ({session.lost_fut.result()})")

    def _send(self, session: Session, what: str, fn: Callable, *args) -> None:
        """Send one message now (the caller has its pacer token). Socket errors mean the link is gone."""
        if self._quiesced:
            raise IBDisconnected(f"The agent is stopping: {what} not sent")
        if session is not self._session or session.lost or not session.client.connected_now():
            if session is self._session and not session.lost:
                self._on_lost(session, "socket closed")     # ibapi saw it first; its callback is still queued
            raise IBDisconnected(f"Connection to TWS lost before {what} could be sent")
        try:
            fn(*args)
        except OSError as e:
            self._on_lost(session, f"send failed: {e}")
            raise IBDisconnected(f"Connection to TWS lost while sending {what}") from e
        self.messages_written += 1

    def stats(self) -> dict:
        return {"pending_requests": len(self._requests), "open_lines": len(self._lines),
                "client_id": self.client_id, "errors_seen": dict(self.errors_seen)}

    # ------------------------------------------------------------------ connecting
    def _connected_message(self) -> str:
        kind = {True: "paper", False: "live", None: "unknown"}[self.is_paper]
        return f"Connected to TWS on port {self.port} ({kind} account {', '.join(self.accounts)})"

    async def _open_session(self, host: str, port: int, client_id: int) -> Session:
        """Handshake + managedAccounts (15) + nextValidId (9), each within connect_timeout."""
        timeout = float(getattr(self.settings, "connect_timeout", 5.0))
        loop = asyncio.get_running_loop()
        # The API prefix + version and startApi go out inside ibapi's connect: count them with the pacer.
        await self.pacer.message()
        await self.pacer.message()
        session = Session(loop, self._deliver, host, port, client_id)
        self._session = session
        session.start()
        try:
            try:
                ok = await _within(timeout, session.handshake)
            except asyncio.TimeoutError:
                raise HandshakeTimeout(
                    f"Port {port} on {host} accepted the connection but never completed IB's API handshake within "
                    f"{timeout:g} s — is something other than TWS/IB Gateway listening there, or is TWS stuck "
                    f"on a dialog?") from None
            if not ok:
                raise IBDisconnected(f"Could not connect to TWS at {host}:{port} (connection refused or closed) — "
                                     f"is TWS/IB Gateway running with the API enabled on that port?")
            try:
                await _within(timeout, session.accounts_fut, session.next_id_fut)
            except asyncio.TimeoutError:
                raise HandshakeTimeout(f"TWS on port {port} completed the handshake but did not send the account list "
                                       f"and next order id within {timeout:g} s") from None
            return session
        except BaseException:
            self._abandon(session)
            raise

    def _abandon(self, session: Session) -> None:
        """Give up on a session without treating it as the loss of an established connection."""
        was_current = session is self._session
        if was_current:
            self._session = None
        if not session.lost:
            session.lost = True
            session.disconnect()
        if not session.lost_fut.done():
            session.lost_fut.set_result("given up")
        for fut in (session.accounts_fut, session.next_id_fut):
            if fut.done() and not fut.cancelled():
                fut.exception()         # mark retrieved: no "exception never retrieved" noise
            elif not fut.done():
                fut.cancel()

    async def _open_with_client_ids(self, host: str, port: int) -> Session:
        base = int(getattr(self.settings, "ib_client_id", 17))
        last: ClientIdInUse | None = None
        for i in range(CLIENT_ID_TRIES):
            cid = base + i
            try:
                session = await self._open_session(host, port, cid)
            except ClientIdInUse as e:
                last = e
                nxt = f"trying clientId {cid + 1}" if i + 1 < CLIENT_ID_TRIES else "giving up for now"
                self.status_message = (f"clientId {cid} is in use on port {port} (TWS error 326: another program, "
                                       f"or our previous session that TWS has not released yet) — {nxt}")
                log.log(self._retry_level(), self.status_message)
                continue
            if i:
                log.warning("Connected with clientId %d because clientId %d was in use (TWS error 326)", cid, base)
            return session
        raise ClientIdInUse(f"clientIds {base}..{base + CLIENT_ID_TRIES - 1} are all in use on port {port} "
                            f"(TWS error 326) — close other API programs or set IB_CLIENT_ID") from last

    async def connect(self) -> None:
        """One attempt over the candidate ports. Raises IBDisconnected (or a subclass) when none will do."""
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self.connected and self._session is not None and not self._session.lost:
                return
            await self._connect_unlocked()

    async def _connect_unlocked(self) -> None:
        host = getattr(self.settings, "ib_host", "127.0.0.1")
        mode = getattr(self.settings, "ib_mode", "paper")
        explicit = getattr(self.settings, "ib_port", None) is not None
        ports = self._ports or list(self.settings.candidate_ports())
        problems: list[IBDisconnected] = []
        mismatches: list[str] = []
        for port in ports:
            try:
                session = await self._open_with_client_ids(host, port)
            except IBDisconnected as e:
                log.debug("port %d: %s", port, e)      # said once, in the summary the supervisor logs
                problems.append(e)
                continue
            paper = accounts_are_paper(session.accounts)
            matches = paper is None or paper == (mode == "paper")
            if not matches:
                msg = mismatch_message(port, session.accounts, mode)
                log.log(self._retry_level(), msg)
                if not explicit:
                    mismatches.append(msg)
                    self._abandon(session)
                    continue
                # IB_PORT was set: the user chose this TWS. Connect, but keep saying what is wrong.
            await self._established(session, host, port, paper, None if matches else msg)
            return
        if mismatches:
            self.status_message = mismatches[0]
            raise IBDisconnected(mismatches[0])
        if len(problems) == 1:
            self.status_message = str(problems[0])
        else:
            self.status_message = (f"Could not connect to TWS/IB Gateway at {host} on ports "
                                   f"{', '.join(map(str, ports))} — start TWS (or IB Gateway), enable the API "
                                   f"(Global Configuration → API → Settings) and check the port")
            odd = [str(p) for p in problems if isinstance(p, (HandshakeTimeout, ClientIdInUse))]
            if odd:
                self.status_message += ". Also: " + " ".join(odd)
        for kind in (HandshakeTimeout, ClientIdInUse):
            if problems and all(isinstance(p, kind) for p in problems):
                raise kind(self.status_message)
        raise IBDisconnected(self.status_message)

    async def _established(self, session: Session, host: str, port: int, paper: bool | None,
                           warning: str | None) -> None:
        # Ask for delayed data where there is no live permission before anyone may use the connection.
        await self._token(session)
        self._send(session, "reqMarketDataType", session.client.reqMarketDataType, MARKET_DATA_TYPE)
        self.host, self.port, self.client_id = host, port, session.client_id
        self.accounts = list(session.accounts)
        self.is_paper = paper
        self.read_only_session = None
        self.data_available = True
        session.established = True
        self.connected = True
        reconnect = self._ever_connected
        self._ever_connected = True
        self.last_connected = time.time()
        self.status_message = self._connected_message() + (f" — {warning}" if warning else "")
        down_since, self._down_since, self._down_said = self._down_since, None, None
        after = f" after {time.monotonic() - down_since:.0f} s" if down_since is not None else ""
        log.info(self._connected_message() + after + (f" — {warning}" if warning else ""))
        self._evt("_connected_evt").set()
        self._emit("tws_connected", {"accounts": list(self.accounts)})
        if reconnect:
            self._emit("tws_reconnected", {"ts": time.time()})

    # ------------------------------------------------------------------ requests
    async def _request(self, key: int, kind: str, send: Callable[[Session, int], None], timeout: float,
                       what: str) -> Any:
        session = self._require()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        if key in self._requests:
            raise RuntimeError(f"request key {key} already in flight")
        self._requests[key] = _Pending(kind, fut)
        try:
            await self._token(session)
            if fut.done():
                fut.result()        # failed while waiting for the token (connection lost): raise that
            send(session, key)
            try:
                return await _within(timeout, fut)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"TWS did not answer the {what} within {timeout:g} s") from None
        finally:
            self._requests.pop(key, None)
            if fut.done() and not fut.cancelled():
                fut.exception()
            else:
                fut.cancel()

    async def contract_details(self, contract: Contract, timeout: float = 10.0) -> list[ContractInfo]:
        rid = self._new_req_id()
        what = f"contract details request for {contract.describe()}"

        def send(s: Session, key: int) -> None:
            self._send(s, "reqContractDetails", s.client.reqContractDetails, key, to_ib_contract(contract))

        out = await self._request(rid, "contract_details", send, timeout, what)
        if not out:
            raise IBError(200, rid, f"No security definition has been found for {contract.describe()}")
        return out

    async def option_params(self, symbol: str, con_id: int, sec_type: str = "STK",
                            timeout: float = 10.0) -> list[OptionParams]:
        rid = self._new_req_id()

        def send(s: Session, key: int) -> None:
            self._send(s, "reqSecDefOptParams", s.client.reqSecDefOptParams, key, symbol, "", sec_type, int(con_id))

        out = await self._request(rid, "option_params", send, timeout, f"option parameters request for {symbol}")
        if not out:
            raise IBError(200, rid, f"No option parameters for {symbol} (conId {con_id})")
        return out

    async def current_time(self, timeout: float = 5.0) -> int:
        async with self._lock("current_time"):
            def send(s: Session, key: int) -> None:
                self._send(s, "reqCurrentTime", s.client.reqCurrentTime)
            return await self._request(CURRENT_TIME_KEY, "current_time", send, timeout, "current time request")

    async def positions(self, timeout: float = 15.0) -> list[AccountPosition]:
        async with self._lock("positions"):
            def send(s: Session, key: int) -> None:
                self._send(s, "reqPositions", s.client.reqPositions)
            try:
                return await self._request(POSITIONS_KEY, "positions", send, timeout, "positions request")
            finally:
                # reqPositions keeps streaming updates until cancelled.
                session = self._session
                if session is not None and self.connected and not session.lost:
                    try:
                        await self._token(session)
                        self._send(session, "cancelPositions", session.client.cancelPositions)
                    except IBDisconnected:
                        pass        # the subscription died with the connection
