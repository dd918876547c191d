"""The TWS bridge against the TWS simulator, through the real ibapi client on 127.0.0.1, port 0:
connecting, staying connected, requests. Market data lines: test_tws_market_data.py; a loss seen from outside
and the bounded waits: test_tws_loss.py."""

from __future__ import annotations

import asyncio
import socket

import pytest

from agent.errors import ClientIdInUse, HandshakeTimeout, IBDisconnected, IBError
from agent.pacer import Pacer
from agent.retry import reconnect_wait
from agent.tws import TwsBridge
from agent.types import Contract

from bridge_harness import AAPL, FAST, Events, bridge_for, settings, simulator, supervising, sync
from ports import closed_port
from sim_probe import until


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
            await until(lambda: not other.stats()["clients"], 5.0)    # the mismatched one was let go


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


async def test_malformed_messages_amid_requests_and_a_line_lose_nothing():
    """Malformed messages of every kind arriving while requests wait for their answers and a line streams: every
    request is answered, the line keeps ticking and still counts once in the budget."""
    async with simulator() as sim, bridge_for(sim.port) as b:
        await b.pacer.acquire_lines(1)
        line = await b.open_market_data(AAPL)
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        pending = [asyncio.create_task(b.contract_details(AAPL)) for _ in range(5)]
        await sync_until_sent(b)
        for kind in ("short", "truncated", "garbage"):
            await sim.send_malformed(kind=kind)
        answers = await asyncio.wait_for(asyncio.gather(*pending), 10)
        assert all(a and a[0].contract.symbol == "AAPL" for a in answers)
        line.quote.bid = None                   # only a tick after the malformed messages refills it
        assert await line.wait(lambda q: q.bid is not None, 5.0)
        assert b.connected and b.open_lines == 1 == b.pacer.lines_in_use
        await b.close_market_data(line)
        assert b.pacer.lines_in_use == 0


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
        async with supervising(b):
            await b.wait_connected(5.0)
            sim.stall(3600)     # ended below, once the supervisor has given up on this connection
            await ev.next("tws_lost")
            sim.stall(0)
            await ev.next("tws_reconnected")
            assert b.connected


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
