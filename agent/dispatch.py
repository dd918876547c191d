"""Route relay requests to handlers: parse, validate, enforce the deadline, turn every failure into words.

``Dispatcher.handle`` never raises and never stalls: a malformed frame, an unknown type, an invalid payload,
a handler error or a deadline expiry all become a ``success:false`` response a trader can read (or, when
there is no request_id to answer, a log line). Deadlines sit inside the relay's own waits (docs/design.md),
so an answer always arrives while the relay still listens.

This module also implements the status handlers (``ib_status``, ``ib_reconnect``, ``get_positions``); the order
types live in agent/orders/handlers.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Union

from pydantic import ValidationError

from agent import VERSION
from agent import console
from agent.admission import Admission
from agent.aio import run_within
from agent.echo import echo
from agent.errors import AgentError, IBDisconnected, IBError
from agent.pacer import current_flow
from agent.protocol import (MAX_REQUEST_ID, EmptyPayload, FrameRejected, Payload, ReconnectPayload, RequestFrame,
                            TimeoutPayload, answerable_id, contract_dict, decode_frame, describe_validation_error,
                            refusal, response_error, response_ok, sniff_request_id)
from agent.settings import secrets_of

log = logging.getLogger("agent.dispatch")

IB_NOT_CONNECTED = ("IB not connected — is TWS/IB Gateway running and logged in? (the agent keeps retrying)")

# Request types polled by the web app: logged at DEBUG so the console is not a wall of status lines.
QUIET_TYPES = {"ib_status"}

# IB error codes whose meaning a trader needs in plain words (the IB text rides along after them).
IB_CODE_HINTS = {
    200: "IB has no contract matching this request (no security definition)",
    354: "your IB account has no market data subscription for this instrument",
    10089: "your IB market data subscription does not cover this data",
    10090: "your IB market data subscription does not cover part of this data",
    10168: "delayed market data is not enabled for this instrument",
    10197: "market data is blocked by a competing live session (another TWS or mobile login)",
    100: "IB's message rate limit was exceeded",
    101: "all IB market data lines are in use",
    502: "could not reach TWS/IB Gateway",
    504: "not connected to TWS/IB Gateway",
}

Deadline = Union[float, Callable[[Any], float]]
Handler = Callable[["AgentContext", Any], Awaitable[dict]]


@dataclass
class AgentContext:
    """What every handler may use. ``push`` queues a frame to the relay (events); it never blocks."""

    settings: Any            # agent.settings.Settings
    pacer: Any               # agent.pacer.Pacer
    bridge: Any              # agent.tws.TwsBridge
    scanner: Any = None      # ib_scanner.OptionScanner | None
    orders: Any = None       # agent.orders.desk.OrderDesk | None
    push: Callable[[dict], None] = field(default=lambda frame: None)


@dataclass(frozen=True)
class Route:
    name: str
    model: type
    handler: Handler
    deadline: Deadline
    needs_ib: bool


def canonical(name: str) -> str:
    """fetch-chain, Fetch_Chain and fetch_chain are one request type."""
    return name.strip().lower().replace("-", "_")


def describe_error(exc: BaseException) -> tuple[str, int | None]:
    """A typed error as (sentence for a trader, IB code or None)."""
    if isinstance(exc, IBError):
        hint = IB_CODE_HINTS.get(exc.code)
        text = exc.user_message
        if hint and type(exc).user_message is AgentError.user_message:
            text = f"{hint} (IB error {exc.code}: {exc.message})"
        return text, exc.code
    if isinstance(exc, IBDisconnected):
        msg = str(exc)
        if msg == "IB not connected":
            return IB_NOT_CONNECTED, None
        return f"{msg} — the agent reconnects to TWS by itself; retry in a moment", None
    if isinstance(exc, AgentError):
        return exc.user_message, exc.code
    return f"internal agent error ({type(exc).__name__}: {exc}); details are in the agent's log file", None


class Dispatcher:
    def __init__(self, ctx: AgentContext, admission: Admission | None = None):
        self.ctx = ctx
        # Bulk requests are admitted up front or answered "busy" at once (agent/admission.py); the pacer sends
        # about msg_rate messages per 1.1 s.
        rate = float(getattr(ctx.settings, "msg_rate", 45.0) or 45.0) / 1.1
        self.admission = admission if admission is not None else Admission(rate=rate)
        self.routes: dict[str, Route] = {}
        self.in_flight: dict[str, str] = {}        # request_id -> request type, for agent_state / shutdown
        self.served = 0
        self.failed = 0

    def add(self, name: str, model: type[Payload], handler: Handler, deadline: Deadline,
            needs_ib: bool = True) -> None:
        """Route ``name`` (either spelling). ``deadline``: seconds, or a function of the parsed payload."""
        self.routes[canonical(name)] = Route(canonical(name), model, handler, deadline, needs_ib)

    @property
    def known_types(self) -> list[str]:
        return sorted(self.routes)

    def _secrets(self) -> list[str]:
        return secrets_of(self.ctx.settings)

    def _error(self, rid: str, text: str, code: int | None = None) -> dict:
        """A success:false answer; the key never rides back, even when the input carried it."""
        return response_error(rid, console.redact(text, self._secrets()), code)

    async def handle(self, raw: str | bytes | dict) -> dict | None:
        """The response frame for one request frame (None when there is nobody to answer). Never raises."""
        try:
            return await self._handle(raw)
        except asyncio.CancelledError:
            raise                       # the relay dropped: the caller cancels in-flight requests
        except BaseException as e:      # noqa: BLE001 - last line of defence: the agent must keep running
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            log.exception("dispatcher failed on a frame")
            rid = _readable_id(raw)
            if answerable_id(rid, self._secrets()):
                return self._error(rid, describe_error(e)[0])
            return None

    async def _handle(self, raw: str | bytes | dict) -> dict | None:
        # 1. the frame: bounded (size, depth) before it is parsed; the key replaced before anything can echo a
        #    piece of it (an echo cuts long values, and a cut key would escape the redaction of whole ones)
        if isinstance(raw, (str, bytes, bytearray)):
            try:
                obj = decode_frame(console.redact_frame(raw, self._secrets()))
            except FrameRejected as e:
                return refusal(e, self._secrets(), log)
        else:
            obj = raw
        if not isinstance(obj, dict):
            log.warning("Ignored a relay frame that is not a JSON object: %s", echo(obj))
            return None
        rid = obj.get("request_id")
        if not isinstance(rid, str) or not rid.strip():
            log.warning("Ignored a relay request without a request_id (type %s, request_type %s)",
                        echo(obj.get("type")), echo(obj.get("request_type")))
            return None
        if not answerable_id(rid, self._secrets()):
            # Echoing it back would make the answer as large as the input, or carry the key: nobody to answer.
            log.warning("Ignored a relay request whose request_id (%s characters) is too long (at most %d) or "
                        "carries the API key: %s", f"{len(rid):,}", MAX_REQUEST_ID, echo(rid))
            return None
        if obj.get("type", "request") != "request":
            return None
        try:
            # pydantic refuses a string no encoder can write (a lone surrogate, which JSON allows): the id is
            # checked above and validated here in its escaped form; answers carry the relay's own id.
            safe_id = rid.encode("ascii", "backslashreplace").decode("ascii")[:MAX_REQUEST_ID]
            frame = RequestFrame.model_validate({**obj, "type": "request", "request_id": safe_id})
        except ValidationError as e:
            problem = describe_validation_error(e)
            if "payload" in problem:
                problem = f"payload must be a JSON object ({problem})"
            log.warning("Malformed request %s: %s", echo(rid), problem)
            return self._error(rid, f"Malformed request: {problem}")

        # 2. the route
        rtype = frame.canonical_type
        route = self.routes.get(rtype)
        if route is None:
            log.warning("Unknown request type %s (request %s)", echo(frame.request_type), echo(rid))
            return self._error(rid, f"Unknown request type {echo(frame.request_type, 100)}. This agent "
                                    f"(version {VERSION}) knows: {', '.join(self.known_types)}")

        # 3. the payload
        try:
            payload = route.model.model_validate(frame.payload)
        except ValidationError as e:
            problem = describe_validation_error(e)
            log.warning("Invalid %s request %s: %s", rtype, echo(rid), problem)
            return self._error(rid, f"Invalid {rtype} request: {problem}")

        # 4. IB must be there for most types: say so at once rather than wait for the deadline.
        bridge = self.ctx.bridge
        if route.needs_ib and not getattr(bridge, "connected", False):
            log.info(console.failed(rtype, 0, "IB not connected"))
            return self._error(rid, IB_NOT_CONNECTED)

        # 5. room for it before the relay stops waiting, given the bulk work already admitted
        deadline = route.deadline(payload) if callable(route.deadline) else float(route.deadline)
        ticket, busy = self.admission.admit(rtype, payload, deadline)
        if busy is not None:
            log.info(console.failed(rtype, 0, busy))
            return self._error(rid, busy)

        # 6. run it under its deadline, as its own pacing flow
        token = current_flow.set(rid)
        self.in_flight[rid] = rtype
        t0 = time.monotonic()
        try:
            data = await run_within(route.handler(self.ctx, payload), deadline)
        except asyncio.TimeoutError:
            ms = (time.monotonic() - t0) * 1000
            self.failed += 1
            msg = (f"{rtype} timed out after {deadline:.0f} s: IB did not answer in time. TWS may be busy or "
                   f"its data farms slow; try again, or ask for fewer contracts")
            log.warning(console.failed(rtype, ms, f"timed out after {deadline:.0f} s"))
            return self._error(rid, msg)
        except asyncio.CancelledError:
            log.info("request %s %s cancelled (relay connection closed or agent stopping)", rtype, echo(rid))
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer
            ms = (time.monotonic() - t0) * 1000
            self.failed += 1
            text, code = describe_error(e)
            text = console.redact(text, self._secrets())
            if isinstance(e, AgentError):
                log.warning(console.failed(rtype, ms, text))
                log.debug("request %s %s failed", rtype, echo(rid), exc_info=True)
            else:
                log.error(console.failed(rtype, ms, text), exc_info=True)
            return self._error(rid, text, code)
        finally:
            current_flow.reset(token)
            self.in_flight.pop(rid, None)
            self.admission.done(ticket)
        ms = (time.monotonic() - t0) * 1000
        self.served += 1
        (log.debug if rtype in QUIET_TYPES else log.info)(console.served(rtype, ms))
        if not isinstance(data, dict):
            data = {"result": data}
        return response_ok(rid, data)


# --- status handlers ----------------------------------------------------------------------------

async def ib_status(ctx: AgentContext, p: EmptyPayload) -> dict:
    b = ctx.bridge
    return {
        "connected": bool(b.connected),
        "reconnecting": bool(b.reconnecting),
        "message": b.status_message,
        "farm_status": dict(b.farm_status),
        "data_available": bool(b.data_available),
        "read_only_session": b.read_only_session,
        "last_connected": b.last_connected,
        "accounts": list(b.accounts),
        "paper": b.is_paper,
        "host": b.host,
        "port": b.port,
        "version": VERSION,
        **_line_fields(ctx.pacer),
    }


def _line_fields(pacer) -> dict:
    """Market-data lines: in use (warm ones included), kept warm for Monitor's legs, free, of the agent's budget."""
    return {"lines_in_use": int(pacer.lines_in_use), "lines_warm": int(getattr(pacer, "lines_warm", 0)),
            "lines_free": int(pacer.lines_free), "lines_budget": int(pacer.lines_budget)}


RECONNECT_WAIT = 20.0    # inside the dispatcher's 25 s deadline (the relay waits 30 s)


async def ib_reconnect(ctx: AgentContext, p: ReconnectPayload) -> dict:
    """Reconnect now; answer within RECONNECT_WAIT whether or not TWS came back (the supervisor keeps trying)."""
    try:
        message = await run_within(ctx.bridge.reconnect(force=p.force), RECONNECT_WAIT)
    except asyncio.TimeoutError:
        message = f"{ctx.bridge.status_message} (still trying; the agent keeps reconnecting by itself)"
    # The relay's ib-reconnect route reads success and connected (an answer with ok alone read as failed and
    # showed IB as disconnected); ok stays for agents' tools that read it.
    connected = bool(ctx.bridge.connected)
    return {"success": connected, "connected": connected, "reconnecting": bool(ctx.bridge.reconnecting),
            "message": message, "ok": connected}


def _readable_id(raw: Any) -> Any:
    """The request_id of a frame the dispatcher itself failed on, as found (the caller answers under it only when
    ``answerable_id`` agrees: a short, non-blank string without the key)."""
    if isinstance(raw, dict):
        return raw.get("request_id")
    if isinstance(raw, (str, bytes, bytearray)):
        try:
            return sniff_request_id(raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - the last line of defence must not fail itself
            return None
    return None


async def get_positions(ctx: AgentContext, p: TimeoutPayload) -> dict:
    # The relay waits 20 s; the dispatcher's deadline is 18 s: ask TWS for a little less than that.
    positions = await ctx.bridge.positions(timeout=min(float(p.timeout_sec), 16.0))
    return {
        "positions": [{"account": ap.account, "contract": contract_dict(ap.contract), "position": ap.position,
                       "avgCost": ap.avg_cost} for ap in positions],
        "accounts": list(ctx.bridge.accounts),
    }


def agent_state(ctx: AgentContext, dispatcher: Dispatcher | None = None) -> dict:
    """The relay's cached view of this agent (sent after every heartbeat): keep it true."""
    b, pacer, s = ctx.bridge, ctx.pacer, ctx.settings
    accounts = list(getattr(b, "accounts", []) or [])
    free = int(pacer.lines_free)
    state = {
        "type": "agent_state",
        "ib_connected": bool(b.connected),
        "ib_farms": dict(b.farm_status),
        "ib_data_available": bool(b.connected and b.data_available),
        "available_scan_lines": free,
        # the most lines one big request streams on at once: the budget less the reserve for small requests
        "scan_batch_size": max(1, int(pacer.lines_budget) - int(getattr(pacer, "line_reserve", 0))),
        "max_lines": int(s.max_lines),
        # extras (the relay ignores what it does not know)
        **_line_fields(pacer),
        "ib_account": accounts[0] if accounts else None,
        "ib_accounts": accounts,
        "paper": b.is_paper,
        "reconnecting": bool(b.reconnecting),
        "last_connected": getattr(b, "last_connected", None),
        "status_message": b.status_message,
        "read_only_session": b.read_only_session,
        "version": VERSION,
    }
    if dispatcher is not None:
        state["requests_in_flight"] = len(dispatcher.in_flight)
    return state


def register_core(d: Dispatcher) -> None:
    """The request types this module serves itself (the option-data types come from ib_scanner.register, the
    order types from agent.orders.handlers.register)."""
    d.add("ib_status", EmptyPayload, ib_status, deadline=10.0, needs_ib=False)
    d.add("ib_reconnect", ReconnectPayload, ib_reconnect, deadline=25.0, needs_ib=False)
    d.add("get_positions", TimeoutPayload, get_positions, deadline=18.0)

