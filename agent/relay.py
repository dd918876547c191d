"""The agent's side of the relay WebSocket: auth, heartbeat + agent_state, pushes, requests, reconnects.

One session = one WebSocket: send ``auth`` first (the relay allows 10 s), wait for ``auth_response``, send
``relay_connected`` then ``boot_complete`` (the web app's "starting" indicator clears only on the latter; TWS state
travels in agent_state), then run four tasks until the socket ends: the reader (frames bounded before they are
parsed; requests become tracked tasks, answered in any order), the heartbeat (every 10 s a ``heartbeat`` then a
fresh ``agent_state``), the sender (queued pushes) and the watchdog (a relay that sends nothing, not even the
``heartbeat_ack`` of two heartbeats, is dead although its socket looks open: laptop sleep, a dead NAT entry).
When the session ends, in-flight requests are cancelled (the scanner frees their market-data lines in
``finally``); on shutdown the socket closes with 1001 (going away), not 1011 (internal error).

Between sessions (agent/retry.py, tenacity): a connection that was up reconnects at once; failed attempts wait
a random first delay, then growing delays to a 10 s cap (back within seconds of a relay deploy), retrying only the
faults we expect (the websockets way). A rejected key is not a network fault: the user is told once what to do
(naming where the key came from) and the agent waits minutes, not seconds, before trying again.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import ssl
import threading
import time
from typing import Any, Awaitable, Callable, Union

from tenacity import RetryCallState
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from agent import VERSION, console
from agent.aio import run_within
from agent.echo import clip, echo
from agent.errors import RelayAuthFailed
from agent.protocol import (MAX_FRAME_BYTES, FrameRejected, _clean, account_event_frame, accounts_frame,
                            answerable_id, auth_frame, boot_phase_frame, decode_frame, heartbeat_frame,
                            refusal, response_error)
from agent.retry import Wait, fault_of, reconnect_wait, reconnecting
from agent.settings import is_loopback, secrets_of

log = logging.getLogger("agent.relay")
_CONNECT_PARAMS = set(inspect.signature(connect.__init__).parameters)

AUTH_FAILED_GUIDANCE = ("Authentication failed — the relay rejected the API key from {source} ({error}). "
                        "Your API key may have been regenerated: download a fresh copy of the agent from the "
                        "MA Tracker web app.{env_hint} Retrying in {retry:.0f} min.")
ENV_HINT = (" Note: IB_PROVIDER_KEY is set in your environment and overrides config.env — if config.env has the "
            "fresh key, remove the environment variable (unset IB_PROVIDER_KEY) and restart the agent.")

# The relay's reconnect delays: a random first one (1-1.5 s), then 2, 4, 8 s, then every 10 s. The cap is what
# bounds "back after the relay returns": at most 10 s plus the handshake (15 s is the promise).
RELAY_WAIT = reconnect_wait(first=1.0, factor=2.0, cap=10.0)
STABLE_AFTER = 10.0      # a connection up for less than this ends like a failed attempt: delays keep growing
BUSY_IN_FLIGHT = 2000    # requests in flight beyond which a new one is answered "busy" at once (bounded memory)

# What a session may end with and still deserve a quiet retry. Anything else is a bug and propagates.
EXPECTED = (OSError, asyncio.TimeoutError, WebSocketException, EOFError)

# The network being what it is (refused, reset, DNS, TLS, HTTP status, timeout, closed): one log line each,
# no traceback (the file log got one on every retry). Other expected faults keep their traceback at DEBUG.
NETWORK_FAULTS = (OSError, asyncio.TimeoutError, TimeoutError, InvalidStatus, ConnectionClosed)

Frame = Union[dict, Callable[[], dict]]


class RelayProtocolError(WebSocketException):
    """The relay answered something other than the protocol's auth_response."""


class RelaySilent(WebSocketException):
    """Nothing (not even a heartbeat_ack) came from the relay for ``seconds``: the connection is dead."""

    def __init__(self, seconds: float):
        super().__init__(f"relay silent for {seconds:.0f} s")
        self.seconds = seconds


class SessionEnded(WebSocketException):
    """A connection that came up ended too soon to count as a success (the delays keep growing)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _debug_fault(fault: BaseException | None, reason: str, quiet: type[BaseException]) -> None:
    """The file log's line for a session's end: one line for a network fault or ``quiet``, else the traceback."""
    if fault is None:
        return
    if isinstance(fault, NETWORK_FAULTS + (quiet,)):
        log.debug("relay session ended: %s: %s", type(fault).__name__, reason)
    else:
        log.debug("relay session ended", exc_info=fault)    # not the network: keep the traceback


def describe_fault(exc: BaseException) -> str:
    """A connection fault in words for the console."""
    if isinstance(exc, RelayAuthFailed):
        return f"authentication failed: {exc}"
    if isinstance(exc, (RelaySilent, SessionEnded)):
        return str(exc)
    if isinstance(exc, InvalidStatus):
        return f"the relay answered HTTP {exc.response.status_code}"
    if isinstance(exc, ConnectionClosed):
        rc = exc.rcvd
        if rc is None:
            return "connection dropped"
        return f"closed by the relay with code {rc.code}" + (f": {clip(rc.reason, 120)}" if rc.reason else "")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate check failed ({exc.verify_message})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return clip(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 200)


class RelayClient:
    """Keeps one authenticated WebSocket to the relay up, forever (until cancelled)."""

    def __init__(self, settings: Any, handle: Callable[[Any], Awaitable[dict | None]],
                 agent_state: Callable[[], dict], *, accounts: Callable[[], list[str]] = lambda: [],
                 version: str = VERSION, heartbeat_interval: float = 10.0, wait: Wait | None = None,
                 auth_fail_delay: float = 300.0, auth_timeout: float = 10.0, open_timeout: float = 10.0,
                 ping_interval: float | None = 10.0, ping_timeout: float | None = 20.0,
                 silence_timeout: float = 25.0, stable_after: float = STABLE_AFTER,
                 close_timeout: float = 1.0, drain_timeout: float = 1.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, max_queued: int = 1000,
                 max_in_flight: int = BUSY_IN_FLIGHT, max_size: int = MAX_FRAME_BYTES):
        self.settings = settings
        self.url: str = settings.relay_url
        self.handle = handle
        self.agent_state = agent_state
        self.accounts = accounts
        self.version = version
        self.heartbeat_interval = heartbeat_interval
        self.wait = wait or RELAY_WAIT
        self.auth_fail_delay = auth_fail_delay
        self.auth_timeout = auth_timeout
        self.open_timeout = open_timeout
        self.ping_interval, self.ping_timeout, self.close_timeout = ping_interval, ping_timeout, close_timeout
        # Two heartbeats without an answer (the relay acks each one): silent. Keep it above the heartbeat
        # interval, or a healthy relay would read as silent between two acks.
        self.silence_timeout = max(silence_timeout, 2 * heartbeat_interval)
        self.stable_after = stable_after
        self.drain_timeout = drain_timeout
        self.max_in_flight = max_in_flight
        self.max_size = max_size
        self._sleep = sleep
        # state others may read
        self.connected = False             # authenticated and serving
        self.provider_id: str | None = None
        self.sessions = 0                  # successful authentications so far
        self.auth_failures = 0
        self.last_fault: str | None = None
        self.connected_event = asyncio.Event()
        # internals
        self._outbox: collections.deque[Frame] = collections.deque(maxlen=max_queued)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task] = set()
        self._replies: set[asyncio.Task] = set()       # "busy" answers on their way (not requests in flight)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._guidance_shown = False
        self._session_was_up = False
        self._last_heard = 0.0
        self._close_reason = "closed by the relay"

    # --- pushes (never block; safe from any thread) -----------------------------------------------

    def push(self, frame: Frame) -> None:
        """Queue a frame (or a function making one at send time) for the relay."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._enqueue, frame)
        else:
            self._enqueue(frame)

    def _enqueue(self, frame: Frame) -> None:
        if callable(frame) and not self.connected:
            return      # state snapshots are re-sent on (re)connect anyway: do not pile up stale ones
        self._outbox.append(frame)
        self._wake.set()

    def push_state(self) -> None:
        """Send a fresh agent_state soon (the relay answers ib-status page loads from it: keep it true)."""
        self.push(self.agent_state)

    def on_bridge_event(self, name: str, data: dict) -> None:
        """The TWS bridge's on_event: turn its events into relay frames."""
        data = dict(data or {})
        if name == "tws_connected":
            accounts = list(data.get("accounts") or [])
            self.push(lambda: accounts_frame(accounts or self.accounts()))
            self.push_state()
        elif name == "tws_reconnected":
            self.push(account_event_frame({"event": "tws_reconnected", "ts": data.get("ts", time.time())}))
            self.push_state()
        elif name == "tws_lost":
            self.push_state()
        elif name in ("order_status", "execution"):
            self.push(account_event_frame({"event": name, **data}))
        else:
            log.debug("bridge event %s not forwarded", name)

    # --- the reconnect loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect, forever. Cancel to stop (the socket then closes with 1001)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        while True:
            # One tenacity retrying per outage: it returns when a connection that came up (and lasted) has
            # ended, and the next outage starts again from the random first delay.
            retrying = reconnecting(self.wait, retry_on=EXPECTED, sleep=self._sleep, before_sleep=self._retry_later)
            try:
                await retrying(self._session)
            except RelayAuthFailed as e:
                self.auth_failures += 1
                self.last_fault = describe_fault(e)
                self._auth_guidance(e)
                await self._sleep(self.auth_fail_delay)

    def _retry_later(self, state: RetryCallState) -> None:
        """tenacity's before_sleep: one line for the failed attempt, with the delay chosen."""
        fault = fault_of(state)
        delay = state.upcoming_sleep
        reason = describe_fault(fault) if fault is not None else self._close_reason
        self.last_fault = reason
        if isinstance(fault, SessionEnded):
            log.warning(console.relay_lost(reason, delay))
        else:
            log.warning("Relay not reachable at %s (%s), retrying in %s", self.url, reason, console.seconds(delay))
        _debug_fault(fault, reason, SessionEnded)

    def _auth_guidance(self, e: RelayAuthFailed) -> None:
        retry_min = self.auth_fail_delay / 60
        if self._guidance_shown:
            log.debug("relay rejected the key again (%s); next try in %.0f s", e, self.auth_fail_delay)
            return
        self._guidance_shown = True
        s = self.settings
        env_hint = ENV_HINT if "IB_PROVIDER_KEY" in getattr(s, "overridden", ()) else ""
        # The source, never any of the key's characters (not even its last four).
        log.error(AUTH_FAILED_GUIDANCE.format(source=s.key_source, error=e, env_hint=env_hint, retry=retry_min))

    async def _session(self) -> None:
        """One connection, from open to close. Returns when a connection that lasted has ended (the caller then
        reconnects at once); raises the fault when it never came up, or SessionEnded when it did not last."""
        self._session_was_up = False
        fault: BaseException | None = None
        up_at = 0.0
        try:
            async with connect(self.url, open_timeout=self.open_timeout, ping_interval=self.ping_interval,
                               ping_timeout=self.ping_timeout, close_timeout=self.close_timeout,
                               max_size=self.max_size, **_connect_extras(self.url, self.version)) as ws:
                try:
                    await self._authenticate(ws)
                    up_at = time.monotonic()
                    await self._serve_session(ws)
                except asyncio.CancelledError:
                    # Shutdown (Ctrl+C, SIGTERM): say "going away", or leaving the block closes with 1011
                    # (internal error) and the relay's monitoring sees every normal stop as a crash.
                    await ws.close(1001, "agent stopping")
                    raise
                except RelaySilent as e:
                    log.warning("Relay silent for %.0f s: reconnecting", e.seconds)
                    await ws.close(1000, str(e))
                    raise
        except EXPECTED as e:
            if not self._session_was_up:
                raise
            fault = e
        if not self._session_was_up:
            return
        reason = describe_fault(fault) if fault is not None else self._close_reason
        self.last_fault = reason
        if time.monotonic() - up_at < self.stable_after:
            raise SessionEnded(reason)      # up only briefly: wait (and grow the delay) before the next try
        if not isinstance(fault, RelaySilent):
            log.warning(console.relay_lost(reason))
        _debug_fault(fault, reason, RelaySilent)

    async def _serve_session(self, ws) -> None:
        """An authenticated connection: boot phases, accounts, state, then the session tasks until it ends."""
        self._session_was_up = True
        self.connected = True
        self.connected_event.set()
        self.sessions += 1
        self._guidance_shown = False
        log.info(console.relay_connected(self.url, self.provider_id))
        tasks = [asyncio.ensure_future(self._reader(ws)), asyncio.ensure_future(self._heartbeat(ws)),
                 asyncio.ensure_future(self._sender(ws)), asyncio.ensure_future(self._watchdog())]
        for t, name in zip(tasks, ("relay-reader", "relay-heartbeat", "relay-sender", "relay-watchdog")):
            t.set_name(name)
        try:
            now = time.time()
            await self._send(ws, boot_phase_frame("relay_connected", "authenticated with the relay", 0.5, now))
            # After every authentication, TWS or not: the relay shows the last phase as "agent starting…"
            # until it receives boot_complete (TWS state travels in agent_state).
            state = self._state()
            detail = "connected to TWS" if state.get("ib_connected") else "TWS not connected yet (the agent keeps trying)"
            await self._send(ws, boot_phase_frame("boot_complete", detail, 1.0, now))
            accounts = self.accounts()
            if accounts:
                await self._send(ws, accounts_frame(accounts))
            await self._send(ws, state)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()          # re-raise the fault that ended the session
        finally:
            self.connected = False
            self.connected_event.clear()
            rcvd = getattr(getattr(ws, "protocol", None), "close_rcvd", None)    # the relay's Close frame
            code, why = getattr(rcvd, "code", None), getattr(rcvd, "reason", "")
            self._close_reason = ("closed by the relay" + (f" with code {code}" if code is not None else "")
                                  + (f": {clip(why, 120)}" if why else ""))
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._cancel_inflight()

    async def _authenticate(self, ws) -> None:
        await ws.send(json.dumps(auth_frame(self.settings.provider_key.get_secret_value(), self.version)))
        deadline = time.monotonic() + self.auth_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError()
            raw = await run_within(ws.recv(), remaining)
            try:
                frame = decode_frame(raw)
            except FrameRejected as e:
                raise RelayProtocolError(f"the relay sent a frame that is not JSON during authentication "
                                         f"({e.reason})") from None
            if not isinstance(frame, dict) or frame.get("type") != "auth_response":
                log.debug("frame before auth_response ignored: %s", echo(raw, 200))
                continue
            if frame.get("success") is True:
                pid = frame.get("provider_id")
                self.provider_id = clip(pid, 40) if isinstance(pid, str) else None
                self._last_heard = asyncio.get_running_loop().time()
                return
            raise RelayAuthFailed(clip(str(frame.get("error") or "rejected"), 200))

    # --- session tasks ----------------------------------------------------------------------------

    async def _reader(self, ws) -> None:
        loop = asyncio.get_running_loop()
        secrets = self._secrets()
        async for raw in ws:
            self._last_heard = loop.time()      # any frame is a sign of life (acks come every heartbeat)
            raw = console.redact_frame(raw, secrets)    # the key never rides back in an echo, whole or cut
            try:
                frame = decode_frame(raw)
            except FrameRejected as e:
                # Bounded before parsing: a frame of 1,000 nested brackets no longer ends the process.
                answer = refusal(e, secrets, log)
                if answer is not None:
                    self._track(self._reply(ws, answer), "request-malformed")
                continue
            if not isinstance(frame, dict):
                log.warning("Ignored a relay frame that is not a JSON object: %s", echo(frame))
                continue
            kind = frame.get("type")
            if kind == "request":
                if len(self._inflight) >= self.max_in_flight:
                    self._busy(ws, frame)
                    continue
                self._track(self._serve(ws, frame), f"request-{echo(frame.get('request_id'))[:40]}")
                # Let it start before reading on: websockets hands over buffered frames without yielding, so
                # a burst of thousands would otherwise all be in flight before the first is answered.
                await asyncio.sleep(0)
            elif kind in ("heartbeat_ack", "auth_response", "pong"):
                continue
            elif frame.get("request_id") is not None:
                # Not served (perhaps a relay message this agent does not know), but someone may wait on that id.
                log.warning("Ignored a relay frame of type %s with request_id %s: only type 'request' is served",
                            echo(kind), echo(frame.get("request_id")))
            else:
                log.debug("relay frame of type %s ignored", echo(kind))
        # the iterator ends on a normal close: the session is over

    def _track(self, coro, name: str, tasks: set[asyncio.Task] | None = None) -> None:
        tasks = self._inflight if tasks is None else tasks
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _busy(self, ws, frame: dict) -> None:
        """Too many requests in flight: answer at once rather than queue without bound (the dispatcher and
        memory would otherwise grow with any flood the relay sends)."""
        rid = frame.get("request_id")
        if answerable_id(rid, self._secrets()):
            text = (f"busy: {len(self._inflight):,} requests ahead, retry in about 5 s (the agent answers at "
                    f"most {self.max_in_flight:,} at once)")
            self._track(self._reply(ws, response_error(rid, text)), "request-busy", self._replies)

    async def _reply(self, ws, response: dict) -> None:
        try:
            await self._send(ws, response)
        except ConnectionClosed:
            log.info("answer to %s lost: the relay connection closed", echo(response.get("request_id")))

    def _secrets(self) -> list[str]:
        return secrets_of(self.settings)

    async def _serve(self, ws, frame: dict) -> None:
        try:
            response = await self.handle(frame)
        except Exception:  # noqa: BLE001 - the dispatcher never raises; if it ever does, keep the session
            log.exception("request %s could not be handled", echo(frame.get("request_id")))
            return
        if response is not None:
            await self._reply(ws, response)

    async def _heartbeat(self, ws) -> None:
        # The relay drops a provider silent for > 90 s; it serves ib-status from the agent_state we send.
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self._send(ws, heartbeat_frame())
            await self._send(ws, self._state())

    async def _watchdog(self) -> None:
        """Raise RelaySilent once nothing has come from the relay for ``silence_timeout`` (it acks every
        heartbeat, so that is two unanswered heartbeats). WebSocket pings (ping_timeout) are the backstop."""
        loop = asyncio.get_running_loop()
        while True:
            quiet = loop.time() - self._last_heard
            if quiet >= self.silence_timeout:
                raise RelaySilent(quiet)
            await asyncio.sleep(self.silence_timeout - quiet)

    async def _sender(self, ws) -> None:
        while True:
            while self._outbox:
                item = self._outbox[0]
                frame = self._make(item)
                await self._send(ws, frame)
                if self._outbox and self._outbox[0] is item:
                    self._outbox.popleft()
            self._wake.clear()
            await self._wake.wait()

    def _state(self) -> dict:
        return self._make(self.agent_state)

    def _make(self, item: Frame) -> dict:
        """A queued frame, or one made now; a failing maker must not end the session (it is a bug: log it)."""
        if not callable(item):
            return item
        try:
            return item()
        except Exception:  # noqa: BLE001
            log.exception("could not build a frame for the relay")
            return heartbeat_frame()

    async def _send(self, ws, frame: dict) -> None:
        try:
            text = json.dumps(frame, allow_nan=False, default=str)
        except ValueError:       # NaN/Inf never go on the wire: send null
            text = json.dumps(_clean(frame), default=str)
        await ws.send(text)

    async def _cancel_inflight(self) -> None:
        """Cancel requests of a closed session and wait (bounded) for their finally blocks to free lines.

        Bounded short (drain_timeout, 1 s): Ctrl+C must exit within 2 s, and a request that is slow to honour
        its cancellation must not hold up the reconnect either. Stragglers stay tracked and finish on their own.
        """
        tasks = list(self._inflight)
        if not tasks:
            return
        log.info("Cancelling %d request(s) in flight: the relay connection closed", len(tasks))
        for t in tasks:
            t.cancel()
        done, pending = await asyncio.wait(tasks, timeout=self.drain_timeout)
        if pending:
            log.warning("%d request(s) did not finish cancelling within %.0f s", len(pending), self.drain_timeout)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)


def _connect_extras(url: str, version: str) -> dict:
    """Keyword arguments only some websockets releases accept (requirements allow 13-17; ``proxy`` is 15+)."""
    extras: dict[str, Any] = {}
    if "user_agent_header" in _CONNECT_PARAMS:
        extras["user_agent_header"] = f"ib-data-agent/{version}"
    extras.update(loopback_proxy_off(url))
    return extras


def loopback_proxy_off(url: str) -> dict:
    """``{"proxy": None}`` for a loopback URL when websockets reads HTTP(S)_PROXY by default (15+): a local relay is
    never reached through a proxy from the environment; real URLs keep websockets' default. Else nothing."""
    return {"proxy": None} if "proxy" in _CONNECT_PARAMS and is_loopback(_host_of(url)) else {}


def _host_of(url: str) -> str:
    from urllib.parse import urlsplit
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""
