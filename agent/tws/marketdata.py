"""Market-data lines on the bridge (a mixin of ``TwsBridge``): open, cancel (paced, never overtaken), re-request
after 1101, and cancel them all on the way out.

Line ownership (docs/design.md): the caller reserves a line with ``pacer.acquire_lines``; ``open_market_data``
consumes it; ``end_market_data`` / ``close_market_data`` (or the loss of the connection) give it back to the pacer
only after the cancelMktData went out, so a new reqMktData can never use the line before TWS has read its cancel
(error 101). ``end_market_data`` returns at once: the cancel follows in a bridge-owned task, so an answer never
waits for its clean-up.
"""

from __future__ import annotations

import asyncio
import logging

from agent.errors import IBDisconnected
from agent.pacer import Ticket
from agent.tws import ticks
from agent.tws.lines import MarketDataLine
from agent.tws.wrapper import Session, to_ib_contract
from agent.types import Contract, Quote

log = logging.getLogger("agent.tws")


class MarketData:
    """``open_market_data``, ``close_market_data``, ``wait_lines_closed``, ``open_lines``; 1101 re-requests."""

    async def open_market_data(self, contract: Contract, generic_ticks: str = "",
                               snapshot: bool = False) -> MarketDataLine:
        """Start a line for ``contract``. The caller holds a line from pacer.acquire_lines(); this consumes it
        (close_market_data or a lost connection gives it back). If this raises, the line was never opened and
        the caller still holds the reserved line."""
        session = self._require()
        ib_contract = to_ib_contract(contract)
        await self._token(session)
        session = self._require()
        rid = self._new_req_id()
        line = MarketDataLine(self, rid, contract, generic_ticks, snapshot, session.id)
        # No await between the send and the registration, and callbacks reach the loop only through
        # call_soon_threadsafe, so no tick can arrive before the line is registered. Registering only after a
        # successful send keeps the rule simple: if this raises, the caller still holds its reserved line.
        self._send(session, "reqMktData", session.client.reqMktData, rid, ib_contract, generic_ticks, snapshot,
                   False, [])
        self._lines[rid] = line
        return line

    def end_market_data(self, line: MarketDataLine) -> asyncio.Task:
        """Start the line's cancelMktData and return at once (idempotent; never raises). The cancel is paced and
        sent by a bridge-owned task, which then gives the line back to the pacer; it completes even if the
        caller is cancelled. Returns that task (``close_market_data`` awaits it)."""
        if line._closing is None:
            # The cancel's place in the pacer queue is taken now, in call order among cancels; the send itself
            # happens in a bridge-owned task.
            session = self._session
            ticket = None
            if (line.req_id in self._lines and session is not None and session.id == line._session_id
                    and not session.lost and not line.snapshot_done and not _rejected(line)
                    and not self._quiesced):
                ticket = self.pacer.ticket(cancel=True)
            line._closing = self._spawn(self._cancel_line(line, ticket), f"cancel-mkt-{line.req_id}")
        return line._closing

    async def close_market_data(self, line: MarketDataLine) -> None:
        """cancelMktData (paced), then the line goes back to the pacer; waits for both. Idempotent; never raises
        (except the caller's own cancellation); the cancel completes even if the caller is cancelled."""
        try:
            await asyncio.shield(self.end_market_data(line))
        except asyncio.CancelledError:
            raise
        except Exception:       # noqa: BLE001
            log.exception("closing market data line %s failed", line)

    async def _cancel_line(self, line: MarketDataLine, ticket: Ticket | None) -> None:
        try:
            session = self._session
            if ticket is not None and (line.req_id not in self._lines or session is None
                                       or session.id != line._session_id or session.lost):
                self.pacer.drop_ticket(ticket)      # the link went while queued: the loss freed the line
                ticket = None
            if ticket is not None:
                try:
                    await self._token(session, ticket)
                    if line.req_id in self._lines and not session.lost:
                        self._send(session, "cancelMktData", session.client.cancelMktData, line.req_id)
                except IBDisconnected:
                    pass        # the loss freed the line with all the others
        finally:
            if ticket is not None:
                self.pacer.cancel_done(ticket)
            line.closed = True
            if self._lines.pop(line.req_id, None) is not None:
                self.pacer.release_lines(1)     # only now: a new reqMktData can't overtake the cancel (101)
            line._notify()

    async def wait_lines_closed(self, timeout: float = 5.0) -> bool:
        """Wait for the line cancels still in flight (their callers may be gone). False on timeout."""
        pending = [t for t in self._tasks if t.get_name().startswith("cancel-mkt-") and not t.done()]
        if not pending:
            return True
        _done, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    @property
    def open_lines(self) -> int:
        return len(self._lines)

    async def _resubscribe(self, session: Session) -> None:
        """After 1101 (data lost) re-request every open line with its own reqId. What a line heard before the
        loss is forgotten, so nobody answers from it as if it were live (a warm leg waits for fresh ticks)."""
        for line in list(self._lines.values()):
            if not line.closed and line._closing is None and line.quote.error_code is None:
                line.quote = Quote()
        for line in list(self._lines.values()):
            if line.closed or line._closing is not None or line.quote.error_code is not None:
                continue        # closing, or failed for good (e.g. 200): asking again would not help
            try:
                await self._token(session)
                if line.req_id not in self._lines or line._closing is not None:
                    continue
                self._send(session, "reqMktData", session.client.reqMktData, line.req_id,
                           to_ib_contract(line.contract), line.generic_ticks, line.snapshot, False, [])
            except IBDisconnected:
                return
        log.info("re-requested %d market data lines after TWS error 1101", len(self._lines))

    async def _cancel_all_lines(self, session: Session) -> None:
        for line in list(self._lines.values()):
            await self.close_market_data(line)


def _rejected(line: MarketDataLine) -> bool:
    """TWS refused the request (no line was opened there): nothing to cancel, the line comes back at once."""
    return line.quote.error_code in ticks.REJECTED_LINE and not line.quote.has_price
