"""The bridge's supervisor (a mixin of ``TwsBridge``): connect, stay connected, reconnect (tenacity), check
that a connected TWS still answers, and shut down quickly.

Runs on the event loop; state lives in ``TwsBridge``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tenacity import RetryCallState

from agent.aio import run_within, wait_event
from agent.errors import IBDisconnected, RequestTimeout
from agent.retry import fault_of, reconnecting
from agent.tws.wrapper import Session

log = logging.getLogger("agent.tws")

CLOSE_CANCEL_BUDGET = 0.3    # close(): seconds allowed for polite cancelMktData before the socket goes
THREAD_END_WAIT = 0.5        # close(): how long to wait for the session thread to finish (it needs ~0.1 s)


class Supervisor:
    """``run()`` (the supervisor loop), ``reconnect()``, ``wait_connected()``, ``close()``."""

    async def run(self) -> None:
        """Connect, then stay connected: reconnect whenever the link goes. Cancel to stop.

        Each outage is one tenacity retrying (agent/retry.py): the first attempt at once, then the bridge's
        ``backoff`` delays (a random first one, growing to a cap); a connection that came up starts the next
        outage afresh. ``reconnect()`` skips a delay.
        """
        self._supervised = True
        self._stopped = False
        self._run_task = asyncio.current_task()
        kick = self._evt("_kick_evt")
        try:
            while not self._stopped:
                retrying = reconnecting(self.backoff, retry_on=(IBDisconnected,), sleep=self._sleep_or_kick,
                                        before_sleep=self._connect_failed)
                await retrying(self.connect)
                self.reconnecting = False
                session = self._session
                # Wait for the loss (TWS exited, restarted, socket died) or a forced reconnect, checking now
                # and then that TWS still answers: a hung TWS keeps its socket open but answers nothing.
                while session is not None and not session.lost and self._session is session:
                    kick.clear()
                    if not await wait_event(kick, self.health_interval):
                        await self._health_check(session)
                if self._stopped:
                    break
                self.reconnecting = True
                log.debug("reconnecting to TWS")      # _on_lost said the loss once
                if session is not None:
                    # Reconnect once the old socket is gone, so TWS has let go of its clientId (326 otherwise).
                    await asyncio.wait({session.ended}, timeout=THREAD_END_WAIT)
        finally:
            self._supervised = False
            self._run_task = None
            self.reconnecting = False
            # Cancelled (Ctrl+C): no polite cancels, TWS drops a closed client's lines itself. Be quick.
            await self._shutdown(polite=False)

    def _connect_failed(self, state: RetryCallState) -> None:
        """tenacity's before_sleep: a failed attempt, said once per outage (see _log_unavailable)."""
        self.reconnecting = True
        self._log_unavailable(str(fault_of(state)), state.upcoming_sleep)

    def _retry_level(self) -> int:
        """WARNING for a problem found on the first attempt; DEBUG on the retries of an outage that the
        supervisor has already reported (its one 'TWS not available' line names the same problem)."""
        return logging.DEBUG if self._down_since is not None else logging.WARNING

    def _log_unavailable(self, reason: str, delay: float) -> None:
        """A failed connect attempt: a WARNING the first time a reason is seen in this outage, DEBUG on every
        retry after that (TWS may be closed for hours: the trader needs the line once, not every few seconds)."""
        if self._down_since is None:
            self._down_since = time.monotonic()
        if reason != self._down_said:
            self._down_said = reason
            log.warning("TWS not available (%s); retrying in %.1f s", reason, delay)
        else:
            log.debug("TWS still not available; retrying in %.1f s", delay)

    async def _health_check(self, session: Session) -> None:
        try:
            await self.current_time(timeout=self._health_timeout)
        except RequestTimeout:
            if session is self._session and not session.lost:
                log.warning("TWS on port %s did not answer a time request within %g s: reconnecting", session.port,
                            self._health_timeout)
                self._on_lost(session, "TWS stopped answering")
        except IBDisconnected:
            pass

    async def _sleep_or_kick(self, delay: float) -> None:
        """Sleep ``delay`` unless reconnect() asks to go now."""
        kick = self._evt("_kick_evt")
        kick.clear()
        if self._skip_backoff:
            self._skip_backoff = False
            return
        await wait_event(kick, delay)
        self._skip_backoff = False
        kick.clear()

    async def wait_connected(self, timeout: float) -> None:
        if self.connected:
            return
        if not await wait_event(self._evt("_connected_evt"), timeout):
            raise IBDisconnected(f"Not connected to TWS: {self.status_message}")

    async def reconnect(self, force: bool = False) -> str:
        """Reconnect now (``force``: even when connected). Returns the status message."""
        if self.connected and not force:
            return f"Already connected: {self.status_message}"
        if force and self._session is not None:
            self._drop_current("reconnect requested")
        if self._supervised:
            self._skip_backoff = True
            self._evt("_kick_evt").set()      # wake the supervisor, skip the backoff wait
            per_port = float(getattr(self.settings, "connect_timeout", 5.0)) * 2 + 1
            ports = self._ports or list(self.settings.candidate_ports())
            try:
                await self.wait_connected(per_port * len(ports))
            except IBDisconnected:
                pass
            return self.status_message
        try:
            await self.connect()
        except IBDisconnected:
            pass
        return self.status_message

    def _drop_current(self, reason: str) -> None:
        session = self._session
        if session is not None:
            self._on_lost(session, reason)

    async def close(self) -> None:
        """Cancel open lines (briefly), then disconnect and stop the supervisor. Done within about a second."""
        self._stopped = True
        run_task = self._run_task
        await self._shutdown()
        if run_task is not None and run_task is not asyncio.current_task() and not run_task.done():
            run_task.cancel()
            # asyncio.wait: the supervisor ending cancelled is the expected outcome, not our own cancellation.
            done, _ = await asyncio.wait({run_task}, timeout=THREAD_END_WAIT + 0.2)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.debug("supervisor ended with an error: %r", t.exception())

    async def _shutdown(self, polite: bool = True) -> None:
        self._closing = True
        try:
            session = self._session
            if polite and session is not None and not session.lost and self._lines:
                try:
                    await run_within(self._cancel_all_lines(session), CLOSE_CANCEL_BUDGET)
                except (asyncio.TimeoutError, IBDisconnected):
                    pass    # TWS drops a client's subscriptions with its socket anyway
            if session is not None:
                self._on_lost(session, "closed by the agent")
                self._session = None
                await asyncio.wait({session.ended}, timeout=THREAD_END_WAIT)   # the session thread is gone
            self.connected = False
            self.status_message = "Disconnected from TWS (agent stopped)"
            for t in list(self._tasks):
                t.cancel()
        finally:
            self._closing = False
