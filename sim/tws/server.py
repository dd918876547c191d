"""The simulated TWS: the listening socket, shared state (lines, orders, farms), faults and inspection.

Runs inside the caller's asyncio loop: `await sim.start()` ... `await sim.stop()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from . import messages as M
from .config import SimConfig
from .contracts import stock_instrument
from .latency import Latency
from .market import Market
from .orders import MANUAL_CLIENT, Broker, SimOrder
from .session import Session

log = logging.getLogger("sim.tws")

FARM_CODES = {  # (code when OK, code when broken, text) per kind of farm
    "market": (2104, 2103, "Market data farm connection is {state}:{name}"),
    "hmds": (2106, 2105, "HMDS data farm connection is {state}:{name}"),
    "secdef": (2158, 2157, "Sec-def data farm connection is {state}:{name}"),
}
MAX_RECORDED = 10_000


def farm_kind(name: str) -> str:
    if "hmds" in name:
        return "hmds"
    if "secdef" in name:
        return "secdef"
    return "market"


class TwsSimulator:
    """An IB TWS/Gateway stand-in speaking the API socket protocol (server version 157) on loopback."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.market = Market(seed=self.config.seed, today=self.config.today, step=self.config.step)
        self.latency = Latency(self.config.latency, self.config.seed)
        self.accounts: list[str] = list(self.config.accounts)
        self.broker = Broker(self.market, tuple(self.accounts))
        self.read_only = self.config.read_only
        self.silent_handshake = False
        self.withhold_order_status = False     # fault: orders work, but TWS sends nothing about them
        self.farms: dict[str, bool] = {"usfarm": True, "ushmds": True, "secdefnyc": True}
        self.port: int = self.config.port
        self.unhandled: dict[int, int] = {}
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[Session] = set()
        self._by_client: dict[int, Session] = {}
        self._conn_no = 0
        self._listening = asyncio.Event()
        self._feeds_ok = asyncio.Event()
        self._feeds_ok.set()
        self._resetting = False
        self._unstalled = asyncio.Event()      # cleared while requests are stalled (stall())
        self._unstalled.set()
        self._stall_end: asyncio.TimerHandle | None = None
        self._next_ids: dict[int, int] = {}
        self._manual_ids = 0                   # orders typed into TWS by hand: -1, -2, ...
        self._tasks: set[asyncio.Task] = set()
        self._reopen_handle: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task | None = None
        # inspection
        self._peak_rate = 0
        self._peak_rate_by_client: dict[int, int] = {}
        self._peak_lines = 0
        self._messages = 0
        # the most recent MAX_RECORDED of each (a CLI left running overnight must not grow without bound)
        self._violations: deque[dict] = deque(maxlen=MAX_RECORDED)
        self._errors: deque[dict] = deque(maxlen=MAX_RECORDED)
        self._orders: deque[SimOrder | dict] = deque(maxlen=MAX_RECORDED)
        self.connections = 0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> "TwsSimulator":
        await self._listen(self.config.port)
        self._watcher = asyncio.get_running_loop().create_task(self._watch_orders(), name="sim-order-watch")
        log.info("TWS simulator listening on %s:%d", self.config.host, self.port)
        return self

    async def _listen(self, port: int) -> None:
        self._server = await asyncio.start_server(self._on_connect, self.config.host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._listening.set()

    async def wait_listening(self, timeout: float = 10.0) -> None:
        """Until the port accepts connections again (after refuse_connections); TimeoutError after ``timeout``."""
        await asyncio.wait_for(self._listening.wait(), timeout)

    async def stop(self) -> None:
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
            self._reopen_handle = None
        self.stall(0)
        if self._watcher is not None:
            self._watcher.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        self._listening.clear()
        await self.drop_clients()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *( [self._watcher] if self._watcher else []), return_exceptions=True)

    async def __aenter__(self) -> "TwsSimulator":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def _spawn(self, coro, name: str | None = None) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn_no += 1
        self.connections += 1
        session = Session(self, reader, writer, self._conn_no)
        self._sessions.add(session)
        task = asyncio.current_task()
        if task is not None:
            session.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await session.run()

    def _register(self, session: Session, client_id: int) -> bool:
        other = self._by_client.get(client_id)
        if other is not None and not other.closed:
            session.error(-1, 326, "Unable to connect as the client id is already in use. "
                                   "Retry with a unique client id.")
            return False
        if len(self._by_client) >= self.config.max_clients:
            session.error(-1, 502, f"Couldn't connect to TWS: the maximum of {self.config.max_clients} "
                                   f"API clients is connected.")
            return False
        self._by_client[client_id] = session
        return True

    def _unregister(self, session: Session) -> None:
        self._sessions.discard(session)
        if session.client_id is not None and self._by_client.get(session.client_id) is session:
            del self._by_client[session.client_id]
        self._note_lines()

    def _started_sessions(self) -> list[Session]:
        return [s for s in self._sessions if s.started and not s.closed]

    # ---- shared state ---------------------------------------------------------------------------

    def total_lines(self) -> int:
        return sum(len(s.lines) for s in self._sessions)

    def _note_lines(self) -> None:
        self._peak_lines = max(self._peak_lines, self.total_lines())

    def next_order_id(self, client_id: int | None) -> int:
        return self._next_ids.get(client_id or 0, 1)

    def note_order_id(self, client_id: int | None, order_id: int) -> None:
        cid = client_id or 0
        self._next_ids[cid] = max(self._next_ids.get(cid, 1), order_id + 1)

    def set_read_only(self, read_only: bool) -> None:
        """The Read-Only API switch: orders refused (321), order information hidden; data still flows."""
        self.read_only = read_only

    def farm_message(self, name: str, up: bool) -> tuple[int, str]:
        ok, broken, text = FARM_CODES[farm_kind(name)]
        return (ok if up else broken), text.format(state="OK" if up else "broken", name=name)

    def _update_feeds(self) -> None:
        market_farms_up = all(up for n, up in self.farms.items() if farm_kind(n) == "market")
        if market_farms_up and not self._resetting:
            self._feeds_ok.set()
        else:
            self._feeds_ok.clear()

    async def _wait_feeds(self) -> None:
        # a line waits as long as its farm is down: TWS sends nothing meanwhile (no timeout by design)
        await self._feeds_ok.wait()

    async def _wait_unstalled(self) -> None:
        # an event, not a clock: ending a stall early (stall(0)) releases the waiting requests at once, in order
        await self._unstalled.wait()

    def broadcast(self, fields: list) -> None:
        for s in self._started_sessions():
            s.send(fields)

    # ---- orders ---------------------------------------------------------------------------------

    def _order_sessions(self, order: SimOrder) -> list[Session]:
        if self.withhold_order_status:
            return []                 # the order lives on (order lists show it); nobody is told
        out = []
        owner = self._by_client.get(order.client_id)
        if owner is not None and not owner.closed:
            out.append(owner)
        master = self._by_client.get(0)
        if master is not None and master is not owner and master.auto_bind and not master.closed:
            out.append(master)
        return out

    def ids_for(self, session: Session, order: SimOrder | None) -> tuple[int, int] | None:
        """(orderId, clientId) of ``order`` as ``session`` sees them: an order typed into TWS shows 0, 0 except to
        client 0 after reqAutoOpenOrders(true), which sees its negative id (and may modify or cancel it)."""
        if order is None or not order.manual:
            return None
        if session.client_id == 0 and session.auto_bind:
            return order.order_id, 0
        return 0, 0

    def _publish_order(self, order: SimOrder) -> None:
        for s in self._order_sessions(order):
            ids = self.ids_for(s, order)
            s.send(M.open_order(order, ids=ids))
            s.send(M.order_status(order, ids=ids))

    def place_manual_order(self, symbol: str, action: str, quantity: float, order_type: str = "LMT",
                           lmt_price: float | None = None, account: str | None = None, order_ref: str = "") -> SimOrder:
        """An order typed into TWS by hand (not through the API): listed by reqAllOpenOrders with id 0, bound to
        client 0 (negative id) by reqAutoOpenOrders(true)."""
        self._manual_ids -= 1
        ins = stock_instrument(self.market.underlyings[symbol.upper()])
        order = self.broker.new_order(order_id=self._manual_ids, client_id=MANUAL_CLIENT,
                                      account=account or self.accounts[0], instrument=ins, action=action.upper(),
                                      quantity=float(quantity), order_type=order_type.upper(), lmt_price=lmt_price,
                                      aux_price=None, order_ref=order_ref, manual=True)
        self._record_order(order)
        order.status = "PreSubmitted"
        self._publish_order(order)
        self._spawn(self._submit(order), name=f"sim-submit-{order.perm_id}")
        return order

    async def _submit(self, order: SimOrder) -> None:
        await asyncio.sleep(self.latency.order_step())
        if not order.is_open:
            return
        order.status = "Submitted"
        self._publish_order(order)
        self.try_fill(order)

    def try_fill(self, order: SimOrder) -> bool:
        if not order.is_open or order.status == "PreSubmitted":
            return False
        if order.order_type not in ("MKT", "LMT"):
            return False
        price = self.broker.fill_price(order)
        if price is None:
            return False
        qty = None
        if self.config.partial_fills:
            step = self.market.step_index()
            if order.last_fill_step == step:
                return False                 # the size shown at this quote is taken: wait for the next one
            order.last_fill_step = step
            qty = min(order.remaining, max(self.broker.size_at_touch(order), 1.0))
        execution = self.broker.fill(order, price, qty)
        for s in self._order_sessions(order):
            ids = self.ids_for(s, order)
            s.send(M.execution_data(-1, execution, ids=ids))
            s.send(M.commission_report(execution))
            s.send(M.open_order(order, ids=ids))
            s.send(M.order_status(order, ids=ids))
        pos = self.broker.accounts[order.account].positions[order.instrument.con_id]
        for s in self._started_sessions():
            if s.positions_sub:
                s.send(M.position(order.account, pos.instrument, pos.qty, round(pos.avg_cost, 4)))
            if s.account_sub == order.account:
                s.send_account_update(order.account, full=False, con_id=order.instrument.con_id)
        return True

    def cancel(self, order: SimOrder) -> None:
        self.broker.cancel(order)
        for s in self._order_sessions(order):
            ids = self.ids_for(s, order)
            s.send(M.order_status(order, ids=ids))
            s.error((ids or (order.order_id,))[0], 202, "Order Canceled - reason:")

    async def _watch_orders(self) -> None:
        """Resting orders fill when the market reaches them."""
        while True:
            await asyncio.sleep(max(self.latency.update_interval(), 0.05))
            if not self._feeds_ok.is_set():
                continue
            for order in list(self.broker.orders.values()):
                try:
                    if order.is_open and order.status == "Submitted":
                        self.try_fill(order)
                except Exception:  # noqa: BLE001 - one bad order must not stop the others
                    log.exception("order %s: fill check failed", order.order_id)

    # ---- faults ---------------------------------------------------------------------------------

    async def drop_clients(self) -> None:
        """TWS crash: every connection is cut at once."""
        sessions = list(self._sessions)
        for s in sessions:
            s.abort()
        tasks = [s.task for s in sessions if s.task is not None and s.task is not asyncio.current_task()]
        if tasks:                            # let each session's run() finish its cleanup (bounded)
            await asyncio.wait(tasks, timeout=2.0)

    def refuse_connections(self, seconds: float, drop_existing: bool = True) -> None:
        """Daily restart: the port is closed (connection refused) for ``seconds``, then listens again on
        the same port. Existing clients are dropped too unless ``drop_existing`` is False."""
        loop = asyncio.get_running_loop()
        self._listening.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        if drop_existing:
            self._spawn(self.drop_clients(), name="sim-drop")
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()

        def reopen() -> None:
            self._reopen_handle = None
            self._spawn(self._listen(self.port), name="sim-reopen")

        self._reopen_handle = loop.call_later(seconds, reopen)

    @property
    def accepting(self) -> bool:
        return self._server is not None

    async def nightly_reset(self, data_lost: bool = True, outage: float = 0.5) -> None:
        """The nightly server reset: 1100 to everyone, feeds stop for ``outage`` s, then 1101 (lines gone:
        clients must re-subscribe) or 1102 (lines kept, feeds resume)."""
        self._resetting = True
        self._update_feeds()
        self.broadcast(M.error(-1, 1100, "Connectivity between IB and Trader Workstation has been lost."))
        try:
            await asyncio.sleep(outage)
        finally:
            if data_lost:
                for s in list(self._sessions):
                    for line in list(s.lines.values()):
                        s._drop_line(line)
                self.broadcast(M.error(-1, 1101, "Connectivity between IB and Trader Workstation has been "
                                                 "restored - data lost."))
            else:
                self.broadcast(M.error(-1, 1102, "Connectivity between IB and Trader Workstation has been "
                                                 "restored - data maintained."))
            for name, up in self.farms.items():
                if up:
                    self.broadcast(M.error(-1, *self.farm_message(name, up)))
            self._resetting = False
            self._update_feeds()

    async def set_farm(self, name: str, up: bool) -> None:
        """A data farm goes down (2103/2105/2157) or comes back (2104/2106/2158); market data pauses while
        a market data farm is down."""
        self.farms[name] = up
        self._update_feeds()
        self.broadcast(M.error(-1, *self.farm_message(name, up)))

    def stall(self, seconds: float) -> None:
        """Stop answering requests for ``seconds`` from now (they are queued, then answered in order); streams go
        on. A later call replaces the end; ``stall(0)`` ends a stall at once."""
        if self._stall_end is not None:
            self._stall_end.cancel()
            self._stall_end = None
        if seconds <= 0:
            self._unstalled.set()
            return
        self._unstalled.clear()
        self._stall_end = asyncio.get_running_loop().call_later(seconds, self.stall, 0)

    @property
    def stalled(self) -> bool:
        return not self._unstalled.is_set()

    async def send_malformed(self, client_id: int | None = None, kind: str = "short") -> None:
        """Send one malformed message to one client (or all).

        kind="short": a tickSize one field short. ibapi logs and drops it; every client must survive it.
        kind="truncated": a tickPrice that stops after its ticker id. ibapi 9.81 fails inside its own
        bad-message handler and its reader loop ends: the client is disconnected (client-side).
        kind="garbage": a tickPrice with text where numbers belong; ibapi's reader dies the same way.
        """
        fields: list = {"short": [M.TICK_SIZE, 6, 999_999, 0],
                        "truncated": [M.TICK_PRICE, 6, 999_999],
                        "garbage": [M.TICK_PRICE, 6, "x", "y", "z", "w", "v"]}[kind]
        for s in self._started_sessions():
            if client_id is None or s.client_id == client_id:
                s.send(fields)

    # ---- inspection -----------------------------------------------------------------------------

    def _count_message(self, session: Session, window_count: int = 0, accepted: bool = True) -> None:
        self._messages += 1
        self._peak_rate = max(self._peak_rate, window_count)
        if session.client_id is not None:
            cid = session.client_id
            self._peak_rate_by_client[cid] = max(self._peak_rate_by_client.get(cid, 0), window_count)

    def _record_violation(self, client_id: int | None, code: int) -> None:
        self._violations.append({"client_id": client_id, "code": code, "ts": time.time()})

    def _record_error(self, client_id: int | None, req_id: int, code: int, message: str) -> None:
        self._errors.append({"client_id": client_id, "req_id": req_id, "code": code, "message": message})

    def _record_order(self, order: SimOrder | dict) -> None:
        self._orders.append(order)

    def reset_stats(self) -> None:
        """Forget peaks, violations, errors, orders and counters (not the state: lines and orders stay)."""
        self._peak_rate = 0
        self._peak_rate_by_client.clear()
        self._peak_lines = self.total_lines()
        self._messages = 0
        self._violations.clear()
        self._errors.clear()
        self._orders.clear()
        self.unhandled.clear()

    def stats(self) -> dict:
        """What a test asserts on: lines (no leak), rates (no limit tripped), errors, orders, clients."""
        by_client: dict[int, int] = {}
        for s in self._sessions:
            if s.client_id is not None and s.started:
                by_client[s.client_id] = by_client.get(s.client_id, 0) + len(s.lines)
        return {
            "active_lines": self.total_lines(),
            "lines_by_client": by_client,
            "peak_lines": self._peak_lines,
            "peak_msg_rate": self._peak_rate,
            "peak_msg_rate_by_client": dict(self._peak_rate_by_client),
            "violations": list(self._violations),
            "errors_sent": list(self._errors),
            "orders": [o.summary() if isinstance(o, SimOrder) else dict(o) for o in self._orders],
            "clients": sorted(s.client_id for s in self._started_sessions() if s.client_id is not None),
            "messages_received": self._messages,
            "connections": self.connections,
            "unhandled": dict(self.unhandled),
        }
