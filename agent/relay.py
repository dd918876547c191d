"""The agent's side of the relay WebSocket: auth, heartbeat + agent_state, pushes, requests, reconnects.

One session = one WebSocket: send ``auth`` first (the relay allows 10 s), wait for ``auth_response``, then
run three tasks until the socket ends: the reader (requests become tracked tasks, answered in any order), the
heartbeat (every 10 s a ``heartbeat`` then a fresh ``agent_state``) and the sender (queued pushes). When the
session ends, in-flight requests are cancelled (the scanner frees their market-data lines in ``finally``).

Between sessions: exponential backoff with jitter and a cap, reset after a good connection, retrying only
the faults we expect (the websockets way). A rejected key is not a network fault: the user is told once what
to do (naming where the key came from) and the agent waits minutes, not seconds, before trying again.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import random
import ssl
import threading
import time
from typing import Any, Awaitable, Callable, Union

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from agent import VERSION, console
from agent.errors import RelayAuthFailed
from agent.protocol import (_clean, account_event_frame, accounts_frame, auth_frame, boot_phase_frame,
                            heartbeat_frame)
from agent.settings import is_loopback

log = logging.getLogger("agent.relay")
_CONNECT_PARAMS = set(inspect.signature(connect.__init__).parameters)

AUTH_FAILED_GUIDANCE = ("Authentication failed — the relay rejected the API key from {source} ({error}). "
                        "Your API key may have been regenerated: download a fresh copy of the agent from the "
                        "MA Tracker web app.{env_hint} Retrying in {retry:.0f} min.")
ENV_HINT = (" Note: IB_PROVIDER_KEY is set in your environment and overrides config.env — if config.env has the "
            "fresh key, remove the environment variable (unset IB_PROVIDER_KEY) and restart the agent.")

# What a session may end with and still deserve a quiet retry. Anything else is a bug and propagates.
EXPECTED = (OSError, asyncio.TimeoutError, WebSocketException, EOFError)

# The network being what it is (refused, reset, DNS, TLS, HTTP status, timeout, closed): one log line each,
# no traceback (the file log got one on every retry). Other expected faults keep their traceback at DEBUG.
NETWORK_FAULTS = (OSError, asyncio.TimeoutError, TimeoutError, InvalidStatus, ConnectionClosed)

Frame = Union[dict, Callable[[], dict]]


class RelayProtocolError(WebSocketException):
    """The relay answered something other than the protocol's auth_response."""


class Backoff:
    """Delays between reconnects: a random first delay, then exponential growth to a cap; reset after success.

    The sequence never shrinks (a retry that waits less than the one before reads as a bug): the random first
    delay is at most the smallest second step, and each jittered step is at least the one before it.
    """

    def __init__(self, initial: float = 1.0, factor: float = 1.618, cap: float = 60.0, first: float = 3.0,
                 rng: Callable[[], float] = random.random):
        self.initial, self.factor, self.cap, self.first, self.rng = initial, factor, cap, first, rng
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._last = 0.0

    def next(self) -> float:
        self._n += 1
        if self._n == 1:
            # Many agents restart together after a relay deploy: spread their first retries, over at most the
            # second step's lowest value, and not down to 0 (a tenth of it at least).
            span = min(self.first, 0.75 * self.initial, self.cap)
            delay = span * max(0.1, self.rng())
        else:
            base = self.initial * self.factor ** (self._n - 2)
            delay = min(self.cap, base * (0.75 + 0.5 * self.rng()))     # ±25 % jitter, within the cap
        self._last = max(self._last, delay)
        return self._last


def describe_fault(exc: BaseException) -> str:
    """A connection fault in words for the console."""
    if isinstance(exc, RelayAuthFailed):
        return f"authentication failed: {exc}"
    if isinstance(exc, InvalidStatus):
        return f"the relay answered HTTP {exc.response.status_code}"
    if isinstance(exc, ConnectionClosed):
        rc = exc.rcvd
        if rc is None:
            return "connection dropped"
        return f"closed by the relay with code {rc.code}" + (f": {rc.reason}" if rc.reason else "")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate check failed ({exc.verify_message})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RelayClient:
    """Keeps one authenticated WebSocket to the relay up, forever (until cancelled)."""

    def __init__(self, settings: Any, handle: Callable[[Any], Awaitable[dict | None]],
                 agent_state: Callable[[], dict], *, accounts: Callable[[], list[str]] = lambda: [],
                 version: str = VERSION, heartbeat_interval: float = 10.0, backoff: Backoff | None = None,
                 auth_fail_delay: float = 300.0, auth_timeout: float = 10.0, open_timeout: float = 10.0,
                 ping_interval: float | None = 30.0, ping_timeout: float | None = 60.0,
                 close_timeout: float = 1.0, drain_timeout: float = 1.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, max_queued: int = 1000):
        self.settings = settings
        self.url: str = settings.relay_url
        self.handle = handle
        self.agent_state = agent_state
        self.accounts = accounts
        self.version = version
        self.heartbeat_interval = heartbeat_interval
        self.backoff = backoff or Backoff()
        self.auth_fail_delay = auth_fail_delay
        self.auth_timeout = auth_timeout
        self.open_timeout = open_timeout
        self.ping_interval, self.ping_timeout, self.close_timeout = ping_interval, ping_timeout, close_timeout
        self.drain_timeout = drain_timeout
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._guidance_shown = False
        self._session_was_up = False
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
        """Connect, serve, reconnect with backoff, forever. Cancel to stop."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        while True:
            fault: BaseException | None = None
            try:
                await self._session()
            except RelayAuthFailed as e:
                self.auth_failures += 1
                self.last_fault = describe_fault(e)
                self._auth_guidance(e)
                await self._sleep(self.auth_fail_delay)
                continue
            except EXPECTED as e:
                fault = e
            reason = describe_fault(fault) if fault is not None else self._close_reason
            self.last_fault = reason
            delay = self.backoff.next()
            if self._session_was_up:
                log.warning(console.relay_lost(reason, delay))
            else:
                log.warning("Relay not reachable at %s (%s), retrying in %s", self.url, reason,
                            console.seconds(delay))
            if fault is not None and not isinstance(fault, NETWORK_FAULTS):
                log.debug("relay session ended", exc_info=fault)    # not the network: keep the traceback
            elif fault is not None:
                log.debug("relay session ended: %s: %s", type(fault).__name__, reason)
            await self._sleep(delay)

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
        """One connection, from open to close. Returns normally when the relay closes it."""
        self._session_was_up = False
        async with connect(self.url, open_timeout=self.open_timeout, ping_interval=self.ping_interval,
                           ping_timeout=self.ping_timeout, close_timeout=self.close_timeout,
                           **_connect_extras(self.url, self.version)) as ws:
            await self._authenticate(ws)
            self._session_was_up = True
            self.connected = True
            self.connected_event.set()
            self.sessions += 1
            self.backoff.reset()
            self._guidance_shown = False
            log.info(console.relay_connected(self.url, self.provider_id))
            tasks = [asyncio.ensure_future(self._reader(ws)), asyncio.ensure_future(self._heartbeat(ws)),
                     asyncio.ensure_future(self._sender(ws))]
            for t, name in zip(tasks, ("relay-reader", "relay-heartbeat", "relay-sender")):
                t.set_name(name)
            try:
                await self._send(ws, boot_phase_frame("relay_connected", "authenticated with the relay", 0.5,
                                                      time.time()))
                accounts = self.accounts()
                if accounts:
                    await self._send(ws, accounts_frame(accounts))
                await self._send(ws, self._state())
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()          # re-raise the fault that ended the session
            finally:
                self.connected = False
                self.connected_event.clear()
                rcvd = getattr(getattr(ws, "protocol", None), "close_rcvd", None)    # the relay's Close frame
                code, why = getattr(rcvd, "code", None), getattr(rcvd, "reason", "")
                self._close_reason = ("closed by the relay" + (f" with code {code}" if code is not None else "")
                                      + (f": {why}" if why else ""))
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
            raw = await asyncio.wait_for(ws.recv(), remaining)
            try:
                frame = json.loads(raw)
            except ValueError:
                raise RelayProtocolError("the relay sent a frame that is not JSON during authentication") from None
            if not isinstance(frame, dict) or frame.get("type") != "auth_response":
                log.debug("frame before auth_response ignored: %.200r", raw)
                continue
            if frame.get("success") is True:
                pid = frame.get("provider_id")
                self.provider_id = pid if isinstance(pid, str) else None
                return
            raise RelayAuthFailed(str(frame.get("error") or "rejected"))

    # --- session tasks ----------------------------------------------------------------------------

    async def _reader(self, ws) -> None:
        async for raw in ws:
            try:
                frame = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                log.warning("Ignored a relay frame that is not JSON: %.200r", raw)
                continue
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "request":
                task = asyncio.ensure_future(self._serve(ws, frame))
                task.set_name(f"request-{str(frame.get('request_id'))[:40]}")
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            elif kind in ("heartbeat_ack", "auth_response", "pong"):
                continue
            else:
                log.debug("relay frame of type %r ignored", kind)
        # the iterator ends on a normal close: the session is over

    async def _serve(self, ws, frame: dict) -> None:
        try:
            response = await self.handle(frame)
        except Exception:  # noqa: BLE001 - the dispatcher never raises; if it ever does, keep the session
            log.exception("request %s could not be handled", frame.get("request_id"))
            return
        if response is not None:
            try:
                await self._send(ws, response)
            except ConnectionClosed:
                log.info("answer to %s lost: the relay connection closed", response.get("request_id"))

    async def _heartbeat(self, ws) -> None:
        # The relay drops a provider silent for > 90 s; it serves ib-status from the agent_state we send.
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self._send(ws, heartbeat_frame())
            await self._send(ws, self._state())

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
    if "proxy" in _CONNECT_PARAMS and is_loopback(_host_of(url)):
        # Never route a loopback URL through a proxy from the environment; real URLs keep websockets' default.
        extras["proxy"] = None
    return extras


def _host_of(url: str) -> str:
    from urllib.parse import urlsplit
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""
