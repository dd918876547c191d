"""The daemon's wiring: build the parts from one Settings object and run them in one task group.

Parts: the pacer (shared by every request), the TWS bridge (its supervisor reconnects forever), the option
scanner (when ib_scanner is importable), the dispatcher and the relay client. Two long-lived tasks, named
``tws-bridge`` and ``relay-client``, live in one task group: the first failure cancels the other, and
shutdown is cancellation. Ctrl+C / SIGTERM cancel the main task: the relay socket closes with 1001 (going
away) after in-flight requests are cancelled, then the TWS socket closes. Market-data lines are not cancelled
one by one on the way out: the supervisor, cancelled, drops the socket at once (``_shutdown(polite=False)``),
and TWS frees every line of a client whose socket closed (the simulator's tests check that 0 lines stay
open). Only ``bridge.close()`` outside a shutdown (nothing cancelled) sends cancelMktData first, within 0.3 s.
The relay side stays up while TWS is down: requests that need IB are answered at once with the "IB not
connected" guidance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any, Callable, Coroutine

from agent import VERSION
from agent.aio import run_within
from agent.dispatch import AgentContext, Dispatcher, agent_state, register_core
from agent.orders import handlers as order_handlers
from agent.orders.desk import STOP_WAIT, OrderDesk
from agent.pacer import Pacer
from agent.relay import RelayClient

log = logging.getLogger("agent.daemon")

CLOSE_TIMEOUT = 0.8      # Ctrl+C must exit within 2 s: the relay drains requests <= 1 s, then this for TWS


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of an ExceptionGroup (TaskGroup, 3.11+), or the exception itself."""
    while hasattr(exc, "exceptions") and getattr(exc, "exceptions"):
        exc = exc.exceptions[0]      # type: ignore[attr-defined]
    return exc


async def run_task_group(coros: dict[str, Coroutine[Any, Any, Any]]) -> None:
    """Run named tasks together; the first failure cancels the rest and is raised (unwrapped).

    asyncio.TaskGroup on 3.11+; on 3.10 the same semantics by hand (named tasks, first failure cancels the rest,
    cancelling the caller cancels them all and waits for them).
    """
    if sys.version_info >= (3, 11):
        try:
            async with asyncio.TaskGroup() as tg:     # type: ignore[attr-defined]
                for name, coro in coros.items():
                    tg.create_task(coro, name=name)
        except BaseException as e:                     # noqa: BLE001 - unwrap the group, keep cancellation
            if isinstance(e, asyncio.CancelledError):
                raise
            err = first_error(e)
            raise err from (e if err is not e else None)
        return
    await _task_group_310(coros)


async def _task_group_310(coros: dict[str, Coroutine[Any, Any, Any]]) -> None:
    """The 3.10 fallback of run_task_group (tested on every version)."""
    tasks = [asyncio.ensure_future(coro) for coro in coros.values()]
    for t, name in zip(tasks, coros):
        t.set_name(name)
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()               # type: ignore[misc]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _load_scanner() -> tuple[Any, Callable[[Dispatcher], None] | None]:
    """ib_scanner's OptionScanner class and register(), when it is importable (it is optional to the daemon)."""
    try:
        import ib_scanner
    except ImportError as e:
        log.warning("Option scanner not available (%s): option-data requests will be refused", e)
        return None, None
    return getattr(ib_scanner, "OptionScanner", None), getattr(ib_scanner, "register", None)


class Daemon:
    """The agent, assembled. ``await Daemon(settings).run()`` until cancelled."""

    def __init__(self, settings: Any, *, bridge_factory: Callable[..., Any] | None = None,
                 relay_options: dict | None = None, scanner_options: dict | None = None):
        self.settings = settings
        self.pacer = Pacer(rate=settings.msg_rate, max_lines=settings.max_lines, line_margin=settings.line_margin)
        if bridge_factory is None:
            from agent.tws import TwsBridge
            bridge_factory = TwsBridge
        self.relay: RelayClient | None = None
        self.bridge = bridge_factory(settings, self.pacer, on_event=self._on_bridge_event)
        scanner_cls, register = _load_scanner()
        # Monitor's warm legs (IB_WARM_LINES / IB_WARM_SECONDS) live in the scanner.
        warm = {"warm_lines": settings.warm_lines, "warm_seconds": settings.warm_seconds}
        scanner = scanner_cls(self.bridge, self.pacer, **{**warm, **(scanner_options or {})}) if scanner_cls else None
        self.orders = OrderDesk(self.bridge, settings, push=self._push)
        self.ctx = AgentContext(settings, self.pacer, self.bridge, scanner, push=self._push, orders=self.orders)
        self.dispatcher = Dispatcher(self.ctx)
        register_core(self.dispatcher)
        order_handlers.register(self.dispatcher)
        if register is not None:
            register(self.dispatcher)
        self.relay = RelayClient(settings, self.dispatcher.handle, self.agent_state, accounts=self._accounts,
                                 **(relay_options or {}))

    # --- glue -------------------------------------------------------------------------------------

    def agent_state(self) -> dict:
        return agent_state(self.ctx, self.dispatcher)

    def _accounts(self) -> list[str]:
        return list(self.bridge.accounts) if self.bridge.connected else []

    def _push(self, frame: dict) -> None:
        if self.relay is not None:
            self.relay.push(frame)

    def _on_bridge_event(self, name: str, data: dict) -> None:
        """The bridge's events, on to the relay (the bridge prints its own console line per TWS state change)."""
        try:
            # boot_complete is the relay client's, after every authentication (the relay showed "starting…"
            # after any relay restart while this sent it once per process).
            self.orders.on_bridge_event(name, data)
            if self.relay is not None:
                self.relay.on_bridge_event(name, data)
        except Exception:  # noqa: BLE001 - an event must never break the bridge that reports it
            log.exception("bridge event %s could not be forwarded", name)

    def banner(self) -> list[str]:
        """Start-up lines: version, where overridden settings came from, the TWS target and relay URL, and where
        the key came from (none of its characters: not even a suffix belongs in a log line)."""
        s = self.settings
        ports = "/".join(str(p) for p in s.candidate_ports())
        how = "IB_PORT" if s.ib_port is not None else f"IB_MODE={s.ib_mode}"
        lines = [f"IB Data Agent {VERSION}"]
        lines += s.source_lines() if hasattr(s, "source_lines") else []
        lines.append(f"TWS/IB Gateway: {s.ib_host} port {ports} ({how}), client id {s.ib_client_id}")
        lines.append(f"Relay: {s.relay_url}")
        lines.append(f"API key: set, from {s.key_source}")
        lines += self.orders.order_policy_lines([])
        return lines

    # --- lifetime ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled (or until a part fails unexpectedly, which is raised)."""
        for line in self.banner():
            log.info(line)
        assert self.relay is not None
        group = asyncio.ensure_future(run_task_group({"tws-bridge": self.bridge.run(),
                                                      "relay-client": self.relay.run()}))
        try:
            # Shielded: a stop (Ctrl+C, SIGTERM) first lets orders in flight hear from TWS and answer the relay,
            # both still connected, then cancels the parts.
            await asyncio.shield(group)
        except asyncio.CancelledError:
            if self.orders.in_flight:
                await self._settle_orders()     # only then: otherwise the parts stop at once
            self.bridge.quiesce()               # nothing more goes to TWS (it frees our lines with the socket)
            group.cancel()
            await asyncio.gather(group, return_exceptions=True)
            raise
        finally:
            if not group.done():
                group.cancel()
                await asyncio.gather(group, return_exceptions=True)
            await self.close()

    async def _settle_orders(self) -> None:
        """Stopping: order requests in flight get up to STOP_WAIT s to learn their order's state and answer."""
        try:
            await self.orders.stop(STOP_WAIT)
        except asyncio.CancelledError:
            pass                # a second Ctrl+C: go now

    async def close(self) -> None:
        """Cancel market data and disconnect from TWS, within CLOSE_TIMEOUT. Safe while being cancelled."""
        try:
            await run_within(self.bridge.close(), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("TWS did not disconnect within %.1f s; exiting anyway", CLOSE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - shutting down: note it and go
            log.debug("error while closing the TWS bridge", exc_info=True)
        await self.orders.close()
        log.info("Agent stopped")


async def run(settings: Any, **options: Any) -> None:
    """The daemon (what ``ib_data_agent.py`` and ``--demo`` run): until cancelled."""
    await Daemon(settings, **options).run()


async def serve_until_signal(settings: Any, **options: Any) -> None:
    """Run the daemon; SIGINT/SIGTERM cancel it (Windows: Ctrl+C arrives as KeyboardInterrupt instead)."""
    import signal
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(run(settings, **options))
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, _stop, task, sig)
            installed.append(sig)
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _stop(task: asyncio.Task, sig: Any) -> None:
    log.info("Stopping (%s)…", getattr(sig, "name", sig))
    task.cancel()

