"""The TWS bridge against the TWS simulator, through the real ibapi client on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from agent.errors import ClientIdInUse, HandshakeTimeout, IBDisconnected, IBError
from agent.pacer import Pacer, current_flow
from agent.settings import Settings
from agent.retry import reconnect_wait
from agent.tws import TwsBridge
from agent.types import Contract
from sim.tws import SimConfig, TwsSimulator

from ports import closed_port

FAST = dict(first=0.01, factor=2.0, cap=0.05)


def settings(port: int | None, **kw) -> Settings:
    kw.setdefault("connect_timeout", 2.0)
    return Settings(provider_key="k" * 24, ib_port=port, **kw)


class Events:
    """Collects on_event calls; lets a test await the next one of a name."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []
        self._waiters: dict[str, asyncio.Event] = {}

    def __call__(self, name: str, data: dict) -> None:
        self.seen.append((name, data))
        self._evt(name).set()

    def _evt(self, name: str) -> asyncio.Event:
        return self._waiters.setdefault(name, asyncio.Event())

    def names(self) -> list[str]:
        return [n for n, _ in self.seen]

    async def next(self, name: str, timeout: float = 5.0) -> dict:
        ev = self._evt(name)
        ev.clear()
        await asyncio.wait_for(ev.wait(), timeout)
        return [d for n, d in self.seen if n == name][-1]


@contextlib.asynccontextmanager
async def simulator(**kw):
    sim = TwsSimulator(SimConfig(port=0, **kw))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def bridge_for(port: int | None, *, pacer: Pacer | None = None, events: Events | None = None,
                     supervised: bool = False, ports: list[int] | None = None, **kw):
    b = TwsBridge(settings(port, **kw), pacer or Pacer(), on_event=events, backoff=reconnect_wait(**FAST), ports=ports)
    task = None
    try:
        if supervised:
            task = asyncio.create_task(b.run())
            await b.wait_connected(5.0)
        else:
            await b.connect()
        yield b
    finally:
        await b.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task




AAPL = Contract.stock("AAPL")


async def eventually(predicate, timeout: float = 5.0) -> bool:
    """For state with no event to await (another process-like peer's bookkeeping): poll, bounded."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True


async def sync(bridge: TwsBridge) -> None:
    """A round trip: everything TWS sent before its answer has reached the loop by the time it returns."""
    await bridge.current_time()


# --- connecting --------------------------------------------------------------------------------

async def test_connect_reports_accounts_farms_and_event():
    """Connecting gives the managed accounts, paper mode, farm status from 2104/2106/2158 and tws_connected."""
    ev = Events()
    async with simulator() as sim, bridge_for(sim.port, events=ev) as b:
        await sync(b)
        assert b.connected and b.port == sim.port and b.accounts == ["DU1234567"] and b.is_paper is True
        assert b.data_available and b.last_connected is not None
        assert b.farm_status and all(b.farm_status.values())
        assert ("tws_connected", {"accounts": ["DU1234567"]}) in ev.seen
        assert "tws_reconnected" not in ev.names()
        assert "paper account DU1234567" in b.status_message


async def test_the_tws_socket_sends_small_requests_at_once():
    """The bridge turns Nagle's algorithm off on the TWS socket (ibapi leaves it on)."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        sock = b._session.client.conn.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_silent_handshake_raises_handshake_timeout():
    """A port that accepts TCP but never answers the API handshake raises HandshakeTimeout, not a hang."""
    async with simulator() as sim:
        sim.silent_handshake = True
        b = TwsBridge(settings(sim.port, connect_timeout=0.3), Pacer())
        with pytest.raises(HandshakeTimeout):
            await b.connect()
        assert not b.connected and "handshake" in b.status_message
        await b.close()


async def test_closed_port_raises_ib_disconnected_with_advice():
    """Nothing listening: IBDisconnected whose message says to start TWS and enable the API."""
    port = closed_port()
    b = TwsBridge(settings(port), Pacer())
    with pytest.raises(IBDisconnected) as ei:
        await b.connect()
    assert not isinstance(ei.value, HandshakeTimeout)
    assert str(port) in b.status_message and "TWS" in b.status_message
    await b.close()


@pytest.mark.parametrize("mode", ["paper", "live"])
async def test_port_selection_keeps_the_first_port_matching_the_mode(mode):
    """Without IB_PORT the candidates are tried in order and the first whose account matches IB_MODE is kept."""
    async with simulator(accounts=("U7654321",)) as live, simulator(accounts=("DU1234567",)) as paper:
        ports = [closed_port(), live.port, paper.port] if mode == "paper" else [paper.port, live.port]
        async with bridge_for(None, ports=ports, ib_mode=mode) as b:
            want = paper if mode == "paper" else live
            assert b.port == want.port and b.is_paper is (mode == "paper")
            other = live if mode == "paper" else paper
            assert await eventually(lambda: not other.stats()["clients"])    # the mismatched one was let go


async def test_account_mismatch_is_said_in_plain_words():
    """Only a live TWS while IB_MODE=paper: not connected, and the status names port, account and the fixes."""
    async with simulator(accounts=("U1234567",)) as live:
        b = TwsBridge(settings(None, ib_mode="paper"), Pacer(), ports=[live.port])
        with pytest.raises(IBDisconnected):
            await b.connect()
        assert b.status_message == (f"TWS on port {live.port} is logged in to live account U1234567 but "
                                    f"IB_MODE=paper — log in to your paper account or set IB_MODE=live")
        assert not b.connected
        await b.close()


async def test_explicit_ib_port_wins_but_mismatch_is_still_said():
    """IB_PORT set: the bridge connects there even on a live account, and the status says the mode is wrong."""
    async with simulator(accounts=("U1234567",)) as live, bridge_for(live.port, ib_mode="paper") as b:
        assert b.connected and b.is_paper is False
        assert "IB_MODE=paper" in b.status_message and "U1234567" in b.status_message


async def test_client_id_in_use_tries_the_next_one():
    """TWS error 326 (clientId held by another client): the bridge connects with the next clientId."""
    async with simulator() as sim, bridge_for(sim.port) as first, bridge_for(sim.port) as second:
        assert first.client_id == 17 and second.client_id == 18
        assert second.connected and 326 in second.errors_seen


async def test_client_ids_all_in_use_raise_client_id_in_use():
    """When every clientId tried is held, ClientIdInUse says so."""
    async with simulator() as sim:
        holders = [TwsBridge(settings(sim.port), Pacer()) for _ in range(4)]
        try:
            for h in holders:
                await h.connect()
            b = TwsBridge(settings(sim.port), Pacer())
            with pytest.raises(ClientIdInUse):
                await b.connect()
            assert "in use" in b.status_message
            await b.close()
        finally:
            for h in holders:
                await h.close()


# --- staying connected -------------------------------------------------------------------------

async def test_reconnects_after_tws_drops_the_socket():
    """After the socket dies: tws_lost, then the supervisor reconnects and emits tws_connected + tws_reconnected."""
    ev = Events()
    async with simulator() as sim, bridge_for(sim.port, events=ev, supervised=True) as b:
        lost = asyncio.create_task(ev.next("tws_lost"))
        back = asyncio.create_task(ev.next("tws_reconnected"))
        await asyncio.sleep(0)
        await sim.drop_clients()
        await lost
        await back
        await b.wait_connected(5.0)
        assert b.connected and not b.reconnecting
        assert ev.names().count("tws_connected") == 2
        assert await b.current_time() > 0


async def test_reconnects_after_connections_are_refused_for_a_while():
    """A daily restart (connection refused for a while) is ridden out by retrying with backoff."""
    ev = Events()
    async with simulator() as sim, bridge_for(sim.port, events=ev, supervised=True) as b:
        back = asyncio.create_task(ev.next("tws_reconnected"))
        sim.refuse_connections(0.3)
        await sim.drop_clients()
        await back
        assert b.connected
        assert await b.current_time() > 0


async def test_forced_reconnect():
    """reconnect(force=True) drops the link and comes back connected."""
    ev = Events()
    async with simulator() as sim, bridge_for(sim.port, events=ev, supervised=True) as b:
        msg = await b.reconnect(force=True)
        assert b.connected and "Connected" in msg
        assert "tws_lost" in ev.names() and "tws_reconnected" in ev.names()


async def test_dropped_connection_fails_pending_request_at_once():
    """A request pending when the socket dies raises IBDisconnected (not a timeout)."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        sim.stall(10)
        pending = asyncio.create_task(b.contract_details(AAPL, timeout=30))
        await sync_until_sent(b)
        await sim.drop_clients()
        with pytest.raises(IBDisconnected):
            await asyncio.wait_for(pending, 5)
        assert b.stats()["pending_requests"] == 0 and not b.connected


async def test_dropped_connection_fails_queued_requests_without_waiting_for_pacer_tokens():
    """Requests still queued in the pacer fail with IBDisconnected when the link drops; they never go out."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        sim.stall(10)
        sent_before = b.pacer.messages_sent
        tasks = [asyncio.create_task(b.contract_details(AAPL, timeout=30)) for _ in range(200)]
        await sync_until_sent(b)
        await sim.drop_clients()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        assert all(isinstance(r, IBDisconnected) for r in results)
        assert b.pacer.messages_sent - sent_before < 100      # most never took a token
        assert b.stats()["pending_requests"] == 0


async def test_order_callbacks_from_another_thread_reach_the_order_listener_and_a_bad_one_is_contained():
    """orderStatus/execDetails from ibapi's thread reach order_listener as typed values; a callback that fails on
    the loop is only logged."""
    from ibapi.contract import Contract as IBContract
    from ibapi.execution import Execution
    import threading

    async with simulator() as sim, bridge_for(sim.port) as b:
        heard: list[tuple[str, object]] = []
        got_execution = asyncio.Event()

        def listener(kind: str, obj: object) -> None:
            heard.append((kind, obj))
            if kind == "execution":
                got_execution.set()
        b.order_listener = listener
        session = b._session
        c = IBContract()
        c.symbol = "AAPL"
        ex = Execution()
        ex.orderId, ex.side, ex.shares, ex.price, ex.execId, ex.orderRef = 7, "BOT", 100.0, 190.5, "e.1", "r7"

        def from_ibapi_thread() -> None:
            session.wrapper.execDetails(-1, None, None)            # fails on the loop: must be contained
            session.wrapper.orderStatus(7, "Filled", 100.0, 0.0, 190.5, 1, 0, 190.5, 17, "", 0.0)
            session.wrapper.execDetails(-1, c, ex)

        th = threading.Thread(target=from_ibapi_thread)
        th.start()
        await asyncio.wait_for(got_execution.wait(), 5.0)
        th.join(1)
        (k1, status), (k2, execution) = heard
        assert (k1, k2) == ("status", "execution")
        assert (status.order_id, status.status, status.filled, status.remaining, status.avg_fill_price,
                status.perm_id, status.client_id) == (7, "Filled", 100.0, 0.0, 190.5, 1, 17)
        assert (execution.order_id, execution.contract.symbol, execution.side, execution.shares, execution.price,
                execution.exec_id, execution.order_ref) == (7, "AAPL", "BOT", 100.0, 190.5, "e.1", "r7")
        assert await b.current_time() > 0 and b.connected


async def test_read_only_error_sets_read_only_session_and_1100_2110_mark_data_unavailable():
    """321 'Read-Only' marks the session read-only; 1100/2110 mark data unavailable and a farm OK restores it."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        await sync(b)           # the farm-OK messages TWS sends after the handshake are in: they come before 2110
        assert b.read_only_session is None and b.data_available
        w = b._session.wrapper
        w.error(-1, 321, "Error validating request.-'bN' : cause - The API interface is currently in Read-Only mode.")
        w.error(-1, 2110, "Connectivity between Trader Workstation and server is broken. It will be restored "
                          "automatically.")
        await sync(b)
        assert b.read_only_session is True and not b.data_available and b.connected
        assert "IB's servers" in b.status_message
        w.error(-1, 2104, "Market data farm connection is OK:usfarm")
        await sync(b)
        assert b.data_available and b.status_message.startswith("Connected")


async def test_reconnect_without_supervisor_connects_and_reports():
    """reconnect() on a bridge that is not running its supervisor makes one attempt and returns the status."""
    async with simulator() as sim:
        b = TwsBridge(settings(sim.port), Pacer())
        try:
            msg = await b.reconnect()
            assert b.connected and msg.startswith("Connected to TWS on port")
            assert (await b.reconnect()).startswith("Already connected")
        finally:
            await b.close()


async def sync_until_sent(b: TwsBridge) -> None:
    """Yield until the pending request has been registered and sent (it is sent right after its pacer token)."""
    for _ in range(100):
        if b.stats()["pending_requests"]:
            return
        await asyncio.sleep(0)
    raise AssertionError("request was never registered")


@pytest.mark.parametrize("kind", ["short", "truncated", "garbage"])
async def test_malformed_message_does_not_kill_the_reader(kind):
    """After TWS sends a message ibapi cannot decode (ibapi's own loop dies on two kinds), the session still works."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        await sim.send_malformed(kind=kind)
        assert await b.current_time() > 0
        assert b.connected


async def test_farm_status_follows_farm_down_and_ok_messages():
    """2103 marks the named farm down, 2104 marks it OK again; neither fails anything."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        await sim.set_farm("usfarm", up=False)
        await sync(b)
        assert b.farm_status["usfarm"] is False and b.farm_status["ushmds"] is True and b.connected
        await sim.set_farm("usfarm", up=True)
        await sync(b)
        assert b.farm_status["usfarm"] is True


async def test_hung_tws_is_detected_by_the_health_check():
    """A TWS that keeps its socket but stops answering is dropped and reconnected by the supervisor."""
    ev = Events()
    async with simulator() as sim:
        b = TwsBridge(settings(sim.port), Pacer(), on_event=ev, backoff=reconnect_wait(**FAST), health_interval=0.05,
                      health_timeout=0.2)
        b_task = asyncio.create_task(b.run())
        try:
            await b.wait_connected(5.0)
            sim.stall(3600)     # ended below, once the supervisor has given up on this connection
            await ev.next("tws_lost")
            sim.stall(0)
            await ev.next("tws_reconnected")
            assert b.connected
        finally:
            await b.close()
            b_task.cancel()
            await asyncio.gather(b_task, return_exceptions=True)


# --- requests ----------------------------------------------------------------------------------

async def test_contract_details_and_option_params():
    """Contract details resolve a stock to its conId; option params list expirations and strikes."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        infos = await b.contract_details(AAPL)
        assert len(infos) == 1 and infos[0].contract.con_id > 0 and infos[0].contract.symbol == "AAPL"
        params = await b.option_params("AAPL", infos[0].contract.con_id)
        assert params and params[0].expirations and params[0].strikes
        assert list(params[0].strikes) == sorted(params[0].strikes)


async def test_unknown_contract_raises_ib_error_200():
    """No such contract: IBError with TWS's code 200, carrying the reqId."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        with pytest.raises(IBError) as ei:
            await b.contract_details(Contract.stock("NOSUCHSYM"))
        assert ei.value.code == 200 and ei.value.req_id > 0
        assert b.stats()["pending_requests"] == 0


async def test_positions_are_the_accounts_rows_and_current_time():
    """positions() answers the simulator's seeded rows (AAPL 100 @ 210, JNPR 300 @ 38.90), with their conIds;
    current_time is epoch seconds."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        rows = sorted((p.account, p.contract.symbol, p.contract.sec_type, p.contract.con_id, p.position, p.avg_cost)
                      for p in await b.positions())
        ids = {s: sim.market.underlyings[s].con_id for s in ("AAPL", "JNPR")}
        assert rows == [("DU1234567", "AAPL", "STK", ids["AAPL"], 100.0, 210.0),
                        ("DU1234567", "JNPR", "STK", ids["JNPR"], 300.0, 38.9)]
        assert await b.current_time() > 1_600_000_000


async def test_positions_of_an_account_without_any_is_an_empty_list():
    """An account that holds nothing: positions() ends at positionEnd with [] (an empty list is a real answer)."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        sim.broker.accounts["DU1234567"].positions.clear()
        assert await b.positions() == []


async def test_not_connected_raises_ib_disconnected():
    """A request while not connected raises IBDisconnected at once."""
    b = TwsBridge(settings(closed_port()), Pacer())
    with pytest.raises(IBDisconnected):
        await b.contract_details(AAPL)


# --- market data -------------------------------------------------------------------------------

async def open_line(b: TwsBridge, contract: Contract, ticks: str = ""):
    assert await b.pacer.acquire_lines(1) == 1
    try:
        return await b.open_market_data(contract, generic_ticks=ticks)
    except BaseException:
        b.pacer.release_lines(1)
        raise


async def test_market_data_line_quotes_and_close_returns_line():
    """A stock line fills bid/ask; closing cancels it at TWS and returns the line to the pacer."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        line = await open_line(b, AAPL)
        assert await line.wait(lambda q: q.bid is not None and q.ask is not None, 5.0)
        assert line.quote.bid <= line.quote.ask and line.quote.error_code is None
        assert b.pacer.lines_in_use == 1
        await b.close_market_data(line)
        await b.close_market_data(line)          # idempotent
        assert line.closed and b.pacer.lines_in_use == 0
        await sync(b)
        assert sim.stats()["active_lines"] == 0


async def test_option_line_gets_greeks_and_failed_line_wakes_waiter():
    """An option line gets greeks from option computations; an unknown contract's line fails with 200."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        info = (await b.contract_details(AAPL))[0]
        p = (await b.option_params("AAPL", info.contract.con_id))[0]
        strike = p.strikes[len(p.strikes) // 2]
        opt = Contract.option("AAPL", p.expirations[0], strike, "C")
        line = await open_line(b, opt, "100,101,106")
        assert await line.wait(lambda q: q.delta is not None, 5.0)
        assert 0 <= line.quote.delta <= 1 and line.quote.implied_vol and line.quote.implied_vol > 0
        bad = await open_line(b, Contract.option("AAPL", p.expirations[0], strike + 0.123, "C"))
        assert await bad.wait(lambda q: False, 5.0)          # True because the line failed
        assert bad.quote.error_code == 200 and bad.quote.failed
        await b.close_market_data(line)
        await b.close_market_data(bad)
        assert b.pacer.lines_in_use == 0


async def test_no_live_permission_gives_delayed_quotes_not_a_failure():
    """Without live permission (reqMarketDataType 3 sent on connect) TWS sends 10167 and delayed ticks: the
    quote is marked delayed, carries prices and is not failed."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        line = await open_line(b, Contract.stock("TSLA"))
        assert await line.wait(lambda q: q.bid is not None and q.ask is not None, 5.0)
        assert line.quote.delayed and line.quote.error_code is None and not line.quote.failed
        assert b.errors_seen.get(10167) == 1
        await b.close_market_data(line)


async def test_wait_times_out_false():
    """wait() returns False when the predicate never holds and the line does not fail."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        line = await open_line(b, AAPL)
        assert not await line.wait(lambda q: False, 0.05)
        await b.close_market_data(line)


async def test_close_from_cancelled_task_still_cancels_line():
    """A task cancelled while waiting on its line still cancels it at TWS and returns the line (no leak)."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        opened = asyncio.Event()

        async def user() -> None:
            line = await open_line(b, AAPL)
            try:
                opened.set()
                await line.wait(lambda q: False, 30)
            finally:
                await b.close_market_data(line)

        t = asyncio.create_task(user())
        await opened.wait()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await sync(b)
        assert b.pacer.lines_in_use == 0 and b.open_lines == 0
        assert sim.stats()["active_lines"] == 0


async def test_many_concurrent_lines_stay_within_budget_and_do_not_leak():
    """60 concurrent users sharing a budget of 15 never exceed it, never get error 101, and leave no line open."""
    pacer = Pacer(max_lines=20, line_margin=5)
    async with simulator(max_lines=20) as sim, bridge_for(sim.port, pacer=pacer) as b:
        peak = 0

        async def user(i: int) -> None:
            nonlocal peak
            current_flow.set(f"req{i % 6}")
            await b.pacer.acquire_lines(1)
            try:
                line = await b.open_market_data(AAPL if i % 2 else Contract.stock("MSFT"))
            except BaseException:
                b.pacer.release_lines(1)
                raise
            try:
                peak = max(peak, b.pacer.lines_in_use, sim.stats()["active_lines"])
                await line.wait(lambda q: q.bid is not None, 5.0)
            finally:
                await b.close_market_data(line)

        users = [asyncio.create_task(user(i)) for i in range(60)]
        await asyncio.gather(*users[:50])
        for t in users[50:]:
            t.cancel()                           # some owners are cancelled mid-way
        await asyncio.gather(*users[50:], return_exceptions=True)
        assert await b.wait_lines_closed(5.0)    # cancels whose callers were cancelled still go out
        await sync(b)
        st = sim.stats()
        assert peak <= 15
        assert st["active_lines"] == 0 and b.pacer.lines_in_use == 0 and b.open_lines == 0
        assert 101 not in b.errors_seen and not st["violations"]


async def test_pacer_keeps_a_300_request_burst_under_the_limit():
    """300 concurrent requests go out at <= 45 messages/s: no pacing violation (error 100) at the simulator.

    The 45 is the agent's own count when it sends (deterministic); the simulator counts on arrival, where a
    loaded machine's scheduling jitter can add one or two, so there the bound is IB's real one (50).
    """
    async with simulator() as sim, bridge_for(sim.port) as b:
        results = await asyncio.gather(*(b.contract_details(AAPL, timeout=30) for _ in range(300)))
        assert all(r and r[0].contract.symbol == "AAPL" for r in results)
        st = sim.stats()
        assert b.pacer.messages_sent >= 300 and b.pacer.peak_rate_1s <= 45
        assert not st["violations"] and st["peak_msg_rate"] <= 50
        assert 100 not in b.errors_seen


async def test_nightly_reset_data_lost_resubscribes_open_lines():
    """1100 marks data unavailable; 1101 re-requests open lines (quotes flow again) and emits a resync."""
    ev = Events()
    async with simulator() as sim, bridge_for(sim.port, events=ev) as b:
        line = await open_line(b, AAPL)
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        resync = asyncio.create_task(ev.next("tws_reconnected"))
        await sim.nightly_reset(data_lost=True)
        await resync
        assert b.errors_seen.get(1100) == 1 and b.errors_seen.get(1101) == 1
        line.quote.bid = None                    # forget the old quote: only a re-subscribed line refills it
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        assert b.data_available and line.quote.error_code is None
        await sync(b)
        assert sim.stats()["active_lines"] == 1
        await b.close_market_data(line)


async def test_nightly_reset_data_kept_keeps_lines():
    """1102 keeps the subscriptions: no re-request (no duplicate ticker id 102) and quotes keep coming."""
    ev = Events()
    async with simulator() as sim, bridge_for(sim.port, events=ev) as b:
        line = await open_line(b, AAPL)
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        resync = asyncio.create_task(ev.next("tws_reconnected"))
        await sim.nightly_reset(data_lost=False)
        await resync
        line.quote.bid = None
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        await sync(b)
        assert 102 not in b.errors_seen and sim.stats()["active_lines"] == 1
        await b.close_market_data(line)


async def test_close_disconnects_and_ends_the_thread():
    """close() cancels lines, disconnects and ends the session thread; state says disconnected."""
    async with simulator() as sim:
        b = TwsBridge(settings(sim.port), Pacer())
        await b.connect()
        line = await open_line(b, AAPL)
        session = b._session
        await b.close()
        assert not b.connected and line.closed and b.pacer.lines_in_use == 0
        # The thread's last act is to post "_ended" to the loop, so close() can return while the thread is still
        # returning from its function (seen under load): join it (bounded) rather than sample is_alive().
        assert session.thread is not None
        await asyncio.to_thread(session.thread.join, 5.0)
        assert not session.thread.is_alive()


# --- what the loss looks like from outside -------------------------------------------------------

class StateAtLoss(Events):
    """Events that also note the bridge's reconnecting flag and message when tws_lost is emitted."""

    def __init__(self) -> None:
        super().__init__()
        self.bridge: TwsBridge | None = None
        self.at_loss: list[tuple[bool, str]] = []

    def __call__(self, name: str, data: dict) -> None:
        if name == "tws_lost" and self.bridge is not None:
            self.at_loss.append((self.bridge.reconnecting, self.bridge.status_message))
        super().__call__(name, data)


async def test_supervised_loss_says_reconnecting_in_flag_and_message_at_once():
    """When TWS drops a supervised bridge, tws_lost already sees reconnecting=True next to '...; reconnecting'."""
    ev = StateAtLoss()
    async with simulator() as sim, bridge_for(sim.port, events=ev, supervised=True) as b:
        ev.bridge = b
        lost = asyncio.create_task(ev.next("tws_lost"))
        await asyncio.sleep(0)
        await sim.drop_clients()
        await lost
        assert ev.at_loss == [(True, f"Lost the connection to TWS on port {sim.port}; reconnecting")]


async def test_unsupervised_loss_does_not_claim_to_reconnect():
    """Without the supervisor nobody reconnects: the flag stays False and the message does not say so."""
    ev = StateAtLoss()
    async with simulator() as sim, bridge_for(sim.port, events=ev) as b:
        ev.bridge = b
        lost = asyncio.create_task(ev.next("tws_lost"))
        await asyncio.sleep(0)
        await sim.drop_clients()
        await lost
        assert ev.at_loss == [(False, f"Lost the connection to TWS on port {sim.port}")]


class CountingBackoff:
    """A tenacity wait (reconnect_wait) that lets a test await the n-th retry."""

    def __init__(self, **kw) -> None:
        self.wait = reconnect_wait(**kw)
        self.calls = 0
        self.reached = asyncio.Event()
        self.wanted = 1 << 30

    def __call__(self, state) -> float:
        self.calls += 1
        if self.calls >= self.wanted:
            self.reached.set()
        return self.wait(state)


async def test_outage_logs_one_line_per_state_change(caplog):
    """While TWS refuses connections, retries log at DEBUG: one loss warning, one 'not available' warning,
    then one 'Connected ... after N s' line on recovery — however many retries there were."""
    import logging
    caplog.set_level(logging.DEBUG, logger="agent.tws")
    ev = Events()
    backoff = CountingBackoff(**FAST)
    async with simulator() as sim:
        b = TwsBridge(settings(sim.port), Pacer(), on_event=ev, backoff=backoff)
        task = asyncio.create_task(b.run())
        try:
            await b.wait_connected(5.0)
            caplog.clear()
            backoff.wanted = backoff.calls + 6
            back = asyncio.create_task(ev.next("tws_reconnected"))
            sim.refuse_connections(60.0)
            await asyncio.wait_for(backoff.reached.wait(), 10)
            sim.refuse_connections(0.0)         # listen again now
            await back
        finally:
            await b.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    shown = [r for r in caplog.records if r.name == "agent.tws" and r.levelno >= logging.INFO]
    texts = [r.getMessage() for r in shown]
    assert sum("Lost the connection" in t for t in texts) == 1, texts
    assert sum("TWS not available" in t for t in texts) == 1, texts
    assert "retrying in" in next(t for t in texts if "TWS not available" in t)
    assert not any(t.startswith("port ") or t.startswith("reconnecting to TWS") for t in texts), texts
    recovered = [t for t in texts if t.startswith("Connected to TWS") and " after " in t]
    assert len(recovered) == 1, texts
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG and "still not available" in r.getMessage()]
    assert len(retries) >= 3


async def test_client_ids_in_use_warn_on_the_first_attempt_only(caplog):
    """Every clientId held: the per-clientId 326 warnings show on the first attempt, retries log them at DEBUG."""
    import logging
    caplog.set_level(logging.DEBUG, logger="agent.tws")
    async with simulator() as sim:
        holders = [TwsBridge(settings(sim.port), Pacer()) for _ in range(4)]
        backoff = CountingBackoff(**FAST)
        backoff.wanted = 4
        b = TwsBridge(settings(sim.port), Pacer(), backoff=backoff)
        task = None
        try:
            for h in holders:
                await h.connect()
            caplog.clear()
            task = asyncio.create_task(b.run())
            await asyncio.wait_for(backoff.reached.wait(), 20)
        finally:
            await b.close()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for h in holders:
                await h.close()
    warned = [r.getMessage() for r in caplog.records if r.name == "agent.tws" and r.levelno >= logging.WARNING]
    in_use = [r for r in caplog.records if "is in use on port" in r.getMessage()]
    assert sum("is in use on port" in t for t in warned) == 4, warned        # clientIds 17..20, once
    assert len(in_use) >= 12        # at least three more attempts, at DEBUG
    assert sum("TWS not available" in t for t in warned) == 1, warned


# --- _within: the bridge's bounded wait on shared futures ---------------------------------------

async def test_within_ends_on_the_first_error_without_waiting_for_the_others():
    """One future fails while another never completes: the wait ends with that error at once (its own timeout is an
    hour, so only the error can end it; waiting for every future would hang here), and the other is not cancelled."""
    from agent.tws.bridge import _within
    loop = asyncio.get_running_loop()
    a, b = loop.create_future(), loop.create_future()
    waiting = asyncio.create_task(_within(3600.0, a, b))
    await asyncio.sleep(0)
    b.set_exception(IBDisconnected("gone"))
    done, _ = await asyncio.wait({waiting}, timeout=30.0)      # a guard against that hang only
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting in done and isinstance(waiting.exception(), IBDisconnected)
    assert not a.done()


async def test_within_keeps_a_cancellation_that_lands_with_the_answer():
    """The answer and a cancellation of the waiting request in the same loop iteration: the request is cancelled
    (wait_for(shield(...)) returned the answer on Python <= 3.11, so a torn-down request carried on)."""
    from agent.tws.bridge import _within
    fut = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_within(5.0, fut))
    await asyncio.sleep(0)
    fut.set_result("answer")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fut.result() == "answer"          # the shared future itself is untouched


async def test_within_times_out_raises_the_first_error_and_never_cancels_the_futures():
    """_within raises TimeoutError when its futures are not done, the first error among them, else the first
    future's result; it never cancels the (shared) futures."""
    from agent.tws.bridge import _within
    loop = asyncio.get_running_loop()
    a, b = loop.create_future(), loop.create_future()
    with pytest.raises(asyncio.TimeoutError):
        await _within(0.01, a, b)
    assert not a.cancelled() and not b.cancelled()
    loop.call_soon(b.set_exception, IBDisconnected("gone"))
    with pytest.raises(IBDisconnected):
        await _within(5.0, a, b)
    a.set_result(1)
    c = loop.create_future()
    c.set_result(2)
    assert await _within(5.0, a, c) == 1


async def test_quiesce_sends_nothing_more():
    """After quiesce() (the agent stopping) no message reaches TWS: requests fail at once, a line's end frees it
    without a cancel, and the socket count stays where it was."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        pacer = b.pacer
        await pacer.acquire_lines(1)
        line = await b.open_market_data(AAPL)
        await sync(b)
        written, received = b.messages_written, sim.stats()["messages_received"]
        b.quiesce()
        with pytest.raises(IBDisconnected, match="stopping"):
            await b.contract_details(AAPL)
        await b.close_market_data(line)
        assert line.closed and pacer.lines_in_use == 0
        assert b.messages_written == written == b.sent_at_quiesce
        assert sim.stats()["messages_received"] == received
