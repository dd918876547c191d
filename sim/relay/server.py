"""The reference relay: one aiohttp server on 127.0.0.1 with the provider WebSocket and the cloud's HTTP routes.

It plays the MA Tracker cloud for tests and the demo, speaking /work/shared/relay-protocol.md: auth as the first
message, heartbeat bookkeeping, requests matched to responses by request_id in any order, a provider dropped
(and its pending requests failed) after ``heartbeat_timeout`` without a heartbeat. As the cloud, it keeps every
agent a user connects (one key = one user here) and routes to the connected one with the highest ``version``,
the most recently connected on a tie; it shows an agent's last ``boot_phase`` until that agent sends
``boot_complete``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import WSMsgType, web

from . import routes
from .errors import NoProvider, ProviderDisconnected, RequestTimeout
from .http import HttpSide

log = logging.getLogger("sim.relay")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
WS_PATH = "/ws/data-provider"


# --- provider state ------------------------------------------------------------------------------

@dataclass(eq=False)
class _Provider:
    ws: web.WebSocketResponse
    provider_id: str
    version: str | None
    connected_at: float
    last_heartbeat: float  # loop.time(); auth counts as the first sign of life
    pending: dict[str, asyncio.Future] = field(default_factory=dict)
    agent_state: dict | None = None      # this provider's latest agent_state (ib-status answers from it)
    agent_state_ts: float | None = None
    boot_phase: str | None = None        # the last boot_phase until boot_complete clears it (the web app's
                                         # "agent starting…" indicator)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gone: bool = False
    silenced: asyncio.Event | None = None    # set by silence(): the relay stops reading and answering it

    async def send(self, frame: dict | str | bytes) -> None:
        """A frame (a dict, sent as JSON; text or bytes, sent as given), one at a time."""
        async with self.send_lock:
            if isinstance(frame, dict):
                await self.ws.send_str(json.dumps(frame))
            elif isinstance(frame, str):
                await self.ws.send_str(frame)
            else:
                await self.ws.send_bytes(bytes(frame))


class ReferenceRelay(HttpSide):
    """See the package docstring (sim/relay/__init__.py) for the in-process API tests code against."""

    def __init__(self, api_key: str = "KEY", host: str = "127.0.0.1", port: int = 0, *,
                 heartbeat_timeout: float = 90.0, auth_timeout: float = 10.0, timeout_scale: float = 1.0,
                 max_batch_size: int | None = None, ping_interval: float = 30.0) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"the reference relay listens on loopback only, not {host!r}")
        self.api_key = api_key
        self.host = host
        self._want_port = port
        self.heartbeat_timeout = heartbeat_timeout
        self.auth_timeout = auth_timeout
        self.timeout_scale = timeout_scale
        self.max_batch_size = max_batch_size
        self.ping_interval = ping_interval
        self.reject_all_keys = False

        # inspection
        self.agent_state: dict | None = None
        self.agent_state_ts: float | None = None  # epoch of the latest agent_state
        self.accounts: list[str] = []
        self.events: list[dict] = []          # the "event" dict of every account_event, in arrival order
        self.boot_phases: list[dict] = []     # every boot_phase frame
        self.frames: list[dict] = []          # every JSON frame received from any client, auth included
        self.requests_sent: list[dict] = []   # every request frame sent to a provider
        self.auth_attempts: list[dict] = []   # {key_ok, version, ts} per auth message
        self.heartbeats = 0
        self.unknown_responses: list[str] = []  # request_ids of responses nobody was waiting for
        self.providers_seen = 0
        self.close_codes: list[int | None] = []  # the close code of every authenticated agent's socket, in order

        self._providers: list[_Provider] = []     # every authenticated agent, oldest first
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._changed: asyncio.Condition | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_get(WS_PATH, self._ws_handler)
        for r in routes.ROUTES:
            app.router.add_route(r.method, r.path, self._make_route_handler(r))
        app.router.add_get(routes.IB_STATUS_PATH, self._ib_status_handler)
        app.router.add_post(routes.IB_RECONNECT_PATH, self._ib_reconnect_handler)
        # access_log=None: the relay logs what matters itself; shutdown_timeout keeps stop() quick.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._want_port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        log.info("reference relay listening on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Close every connection, fail pending requests, stop listening. Idempotent."""
        for provider in list(self._providers):
            await self._drop(provider, "Provider disconnected", code=1001, reason="Relay shutting down")
        for ws in list(self._sockets):
            await self._close_ws(ws, 1001, "Relay shutting down")
        for t in list(self._tasks):
            t.cancel()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "ReferenceRelay":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("relay not started")
        return self._port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{WS_PATH}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- inspection helpers ----------------------------------------------------------------------

    @property
    def _provider(self) -> _Provider | None:
        """The agent requests go to: the highest version, the most recently connected on a tie (the cloud's
        rule, routes.outranks)."""
        best = None
        for p in self._providers:              # in the order they connected
            if not p.gone and (best is None or routes.outranks(p.version, best.version)):
                best = p
        return best

    @property
    def providers(self) -> list[dict]:
        """Every connected agent: provider_id, version, connected_at, routed (bool), boot_phase."""
        routed = self._provider
        return [{"provider_id": p.provider_id, "version": p.version, "connected_at": p.connected_at,
                 "routed": p is routed, "boot_phase": p.boot_phase} for p in self._providers if not p.gone]

    @property
    def provider_connected(self) -> bool:
        return self._provider is not None

    @property
    def provider_id(self) -> str | None:
        return self._provider.provider_id if self.provider_connected else None

    @property
    def provider_version(self) -> str | None:
        return self._provider.version if self.provider_connected else None

    @property
    def pending_count(self) -> int:
        return sum(len(p.pending) for p in self._providers)

    async def wait_provider(self, timeout: float) -> str:
        """Wait until a provider has authenticated; returns its provider_id. asyncio.TimeoutError otherwise."""
        await self._wait_until(lambda: self.provider_connected, timeout)
        return self.provider_id  # type: ignore[return-value]

    async def wait_no_provider(self, timeout: float) -> None:
        """Wait until no provider is connected (dropped, kicked or gone). asyncio.TimeoutError otherwise."""
        await self._wait_until(lambda: not self.provider_connected, timeout)

    async def wait_frame(self, predicate: Callable[[dict], bool], timeout: float, *, start: int = 0) -> dict:
        """Wait for a received frame (index >= start in ``frames``) matching predicate; returns it."""
        found: list[dict] = []

        def check() -> bool:
            for f in self.frames[start:]:
                if predicate(f):
                    found.append(f)
                    return True
            return False

        await self._wait_until(check, timeout)
        return found[0]

    async def _wait_until(self, cond: Callable[[], bool], timeout: float) -> None:
        assert self._changed is not None, "relay not started"

        async def waiter() -> None:
            async with self._changed:  # type: ignore[union-attr]
                await self._changed.wait_for(cond)  # type: ignore[union-attr]

        await asyncio.wait_for(waiter(), timeout)

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    # --- faults ------------------------------------------------------------------------------------

    async def kick_provider(self, code: int = 1001, reason: str = "Relay restarting") -> bool:
        """Close every agent's connection as a relay restart would; their pending requests fail. False if none."""
        live = [p for p in self._providers if not p.gone]
        for provider in live:
            await self._drop(provider, "Provider disconnected", code=code, reason=reason)
        return bool(live)

    def silence(self) -> str | None:
        """Make the routed agent's connection silent, as a dead NAT entry or a sleeping laptop would: the relay
        stops reading it and answering it (no heartbeat_ack, no pong) but keeps the socket open, until the
        heartbeat watchdog drops it. Returns that agent's provider_id (None when none is connected)."""
        provider = self._provider
        if provider is None:
            return None
        provider.silenced = asyncio.Event()
        return provider.provider_id

    # --- requests ------------------------------------------------------------------------------

    async def request(self, request_type: str, payload: dict | None = None, timeout: float | None = None, *,
                      request_id: str | None = None) -> dict:
        """Send one request to the provider and return its response frame (success true or false).

        Raises NoProvider, RequestTimeout (after ``timeout`` or the relay's own wait × timeout_scale) or
        ProviderDisconnected. Adds ``_max_batch_size`` when the relay has one set.
        """
        body = dict(payload or {})
        if self.max_batch_size is not None:
            body.setdefault("_max_batch_size", self.max_batch_size)
        rid = request_id or str(uuid.uuid4())
        wait = routes.request_timeout(request_type, body, self.timeout_scale) if timeout is None else timeout
        frame = {"type": "request", "request_id": rid, "request_type": request_type, "payload": body}
        return await self._exchange(frame, rid, wait, request_type,
                                    sent=lambda: self.requests_sent.append(frame))

    async def request_raw(self, data: str | bytes, request_id: str | None = None,
                          timeout: float = 15.0) -> dict | None:
        """Send ``data`` to the routed agent exactly as given (any text or bytes: a fuzzer's or an attacker's
        frame) and, when ``request_id`` is given, return the agent's response to that id (RequestTimeout when
        none comes within ``timeout``). Without request_id, returns None once sent."""
        return await self._exchange(data, request_id, timeout, "raw frame")

    async def _exchange(self, data: dict | str | bytes, rid: str | None, wait: float, label: str,
                        sent: Callable[[], None] | None = None) -> dict | None:
        """Send ``data`` to the routed agent and wait up to ``wait`` s for its response to ``rid`` (none waited
        for without one). NoProvider, ProviderDisconnected, RequestTimeout (naming ``label``)."""
        provider = self._provider
        if provider is None:
            raise NoProvider()
        fut: asyncio.Future | None = None
        if rid is not None:
            fut = asyncio.get_running_loop().create_future()
            provider.pending[rid] = fut  # register before sending: a fast answer must find its waiter
        try:
            try:
                await provider.send(data)
            except (ConnectionError, RuntimeError) as exc:
                raise ProviderDisconnected(f"Provider disconnected ({exc})") from exc
            if sent is not None:
                sent()
            if fut is None:
                return None
            try:
                return await asyncio.wait_for(fut, wait)
            except asyncio.TimeoutError:
                raise RequestTimeout(label, rid or "", wait) from None
        finally:
            if rid is not None:
                provider.pending.pop(rid, None)

    # --- WebSocket side ----------------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        # 32 MiB: a several-hundred-contract chain answer must fit in one frame.
        ws = web.WebSocketResponse(heartbeat=self.ping_interval, timeout=2.0, max_msg_size=32 * 1024 * 1024)
        await ws.prepare(request)
        self._sockets.add(ws)
        provider: _Provider | None = None
        try:
            provider = await self._authenticate(ws)
            if provider is not None:
                await self._serve(provider)
        finally:
            self._sockets.discard(ws)
            if provider is not None:
                await self._drop(provider, "Provider disconnected")
                self.close_codes.append(ws.close_code)
                await self._notify()
        return ws

    async def _authenticate(self, ws: web.WebSocketResponse) -> _Provider | None:
        try:
            msg = await ws.receive(timeout=self.auth_timeout)
        except asyncio.TimeoutError:
            log.info("no auth message within %.1fs", self.auth_timeout)
            await self._reject(ws, "Expected auth message")
            return None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        frame = self._parse(msg.data) if msg.type == WSMsgType.TEXT else None
        if frame is not None:
            self.frames.append(frame)
            await self._notify()
        if frame is None or frame.get("type") != "auth":
            await self._reject(ws, "Expected auth message")
            return None
        key = frame.get("api_key")
        version = frame.get("version") if isinstance(frame.get("version"), str) else None
        key_ok = (isinstance(key, str) and hmac.compare_digest(key.encode(), self.api_key.encode())
                  and not self.reject_all_keys)
        self.auth_attempts.append({"key_ok": key_ok, "version": version, "ts": time.time()})
        if not key_ok:
            await self._reject(ws, "Invalid API key")
            return None
        provider = _Provider(ws=ws, provider_id=secrets.token_hex(4), version=version, connected_at=time.time(),
                             last_heartbeat=asyncio.get_running_loop().time())
        # Several agents per user, as the cloud: the newcomer joins; routing picks by version (see _provider).
        self._providers.append(provider)
        self.providers_seen += 1
        await provider.send({"type": "auth_response", "success": True, "provider_id": provider.provider_id})
        log.info("provider %s authenticated (agent %s)", provider.provider_id, version)
        await self._notify()
        return provider

    async def _reject(self, ws: web.WebSocketResponse, error: str) -> None:
        try:
            await ws.send_str(json.dumps({"type": "auth_response", "success": False, "error": error}))
        except (ConnectionError, RuntimeError):
            pass
        await self._close_ws(ws, 1000, error)  # a normal close: the protocol has no special code

    async def _serve(self, provider: _Provider) -> None:
        watchdog = asyncio.ensure_future(self._heartbeat_watchdog(provider))
        self._tasks.add(watchdog)
        try:
            async for msg in provider.ws:
                if provider.silenced is not None:
                    await provider.silenced.wait()      # set only when it is dropped: silent until then
                if msg.type == WSMsgType.TEXT:
                    frame = self._parse(msg.data)
                    if frame is None:
                        log.warning("provider %s sent a non-JSON-object frame: %.200r", provider.provider_id,
                                    msg.data)
                        continue
                    self.frames.append(frame)
                    await self._on_frame(provider, frame)
                    await self._notify()
                elif msg.type == WSMsgType.BINARY:
                    log.warning("provider %s sent a binary frame; ignored", provider.provider_id)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            watchdog.cancel()
            self._tasks.discard(watchdog)

    async def _on_frame(self, provider: _Provider, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "heartbeat":
            provider.last_heartbeat = asyncio.get_running_loop().time()
            self.heartbeats += 1
            try:
                await provider.send({"type": "heartbeat_ack"})
            except (ConnectionError, RuntimeError):
                pass
        elif kind == "agent_state":
            state = {k: v for k, v in frame.items() if k != "type"}
            provider.agent_state, provider.agent_state_ts = state, time.time()
            self.agent_state, self.agent_state_ts = state, provider.agent_state_ts
        elif kind == "ib_accounts":
            accounts = frame.get("accounts")
            self.accounts = [str(a) for a in accounts] if isinstance(accounts, list) else []
        elif kind == "boot_phase":
            self.boot_phases.append(frame)
            phase = frame.get("phase")
            # Shown until boot_complete (the cloud's rule): any other phase replaces the one shown.
            provider.boot_phase = None if phase == "boot_complete" else str(phase)
        elif kind == "account_event":
            event = frame.get("event")
            if isinstance(event, dict):
                self.events.append(event)
            else:
                log.warning("account_event without an event object: %.200r", frame)
        elif kind == "response":
            rid = frame.get("request_id")
            fut = provider.pending.get(rid) if isinstance(rid, str) else None
            if fut is None or fut.done():
                # The cloud logs and ignores these (e.g. answers that arrive after the relay gave up).
                log.warning("response for unknown request_id %r ignored", rid)
                self.unknown_responses.append(str(rid))
            else:
                fut.set_result(frame)
        else:
            log.info("provider %s sent unknown frame type %r", provider.provider_id, kind)

    async def _heartbeat_watchdog(self, provider: _Provider) -> None:
        """Drop a provider silent for more than heartbeat_timeout (the cloud's 90 s); sleep to the exact deadline."""
        loop = asyncio.get_running_loop()
        while not provider.gone:
            remaining = provider.last_heartbeat + self.heartbeat_timeout - loop.time()
            if remaining <= 0:
                log.warning("provider %s sent no heartbeat for %.1fs: dropping it", provider.provider_id,
                            self.heartbeat_timeout)
                await self._drop(provider, "Provider disconnected", code=1000, reason="Heartbeat timeout")
                return
            await asyncio.sleep(remaining + 0.001)

    async def _drop(self, provider: _Provider, error: str, *, code: int = 1000, reason: str = "") -> None:
        """Forget a provider: fail its pending requests, close its socket. Idempotent."""
        if provider.gone:
            return
        provider.gone = True
        if provider.silenced is not None:
            provider.silenced.set()             # its handler may now see the close and end
        if provider in self._providers:
            self._providers.remove(provider)
        for fut in list(provider.pending.values()):
            if not fut.done():
                fut.set_exception(ProviderDisconnected(error))
        provider.pending.clear()
        await self._notify()
        await self._close_ws(provider.ws, code, reason or error)

    @staticmethod
    async def _close_ws(ws: web.WebSocketResponse, code: int, reason: str) -> None:
        if ws.closed:
            return
        try:
            await ws.close(code=code, message=reason.encode()[:120])
        except (ConnectionError, RuntimeError, asyncio.TimeoutError):
            pass

    @staticmethod
    def _parse(data: Any) -> dict | None:
        try:
            frame = json.loads(data)
        except (TypeError, ValueError):
            return None
        return frame if isinstance(frame, dict) else None
