"""The TWS simulator's faults, seen through the real ibapi client, plus a raw-socket client and the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sim.tws import SimConfig
from sim.tws.probe import Probe, ProbeTimeout, stock
from sim.tws.wire import FrameBuffer, encode, frame, split_fields

from sim_probe import connect, connected, is_tick, run, until

ROOT = Path(__file__).resolve().parents[1]


async def test_drop_clients_closes_every_connection(sim):
    """TWS crash: every client sees its connection closed and the simulator holds no client or line."""
    a, b = await connect(sim, 1), await connect(sim, 2)
    a.client.reqMktData(1, stock("SPY"), "", False, False, [])
    await run(a.wait, "tickPrice", is_tick(1, 1))
    await sim.drop_clients()
    await run(a.wait, "connectionClosed")
    await run(b.wait, "connectionClosed")
    st = sim.stats()
    assert st["clients"] == [] and st["active_lines"] == 0


async def test_refuse_connections_then_listen_again_on_the_same_port(sim):
    """Daily restart: connecting fails while the port is closed and works again afterwards, same port."""
    p = await connect(sim, 1)
    port = sim.port
    # Closed until the test says so: with a short window the refused attempt raced the reopening (ibapi's
    # reader takes up to 0.2 s to report connectionClosed, which left 0.1 s of a 0.3 s window under load).
    sim.refuse_connections(60.0)
    await run(p.wait, "connectionClosed")
    assert not sim.accepting
    with pytest.raises(ConnectionError):
        await run(Probe(port, 2).connect, 2.0)
    sim.refuse_connections(0.0, drop_existing=False)     # the restart is over now: the port listens again
    await sim.wait_listening(5.0)
    q = await run(Probe(port, 2).connect, 5.0)
    try:
        assert sim.port == port and sim.stats()["clients"] == [2]
    finally:
        q.disconnect()


async def test_nightly_reset_with_data_lost_drops_lines(sim):
    """1100 then 1101: every market data line is gone and must be re-requested."""
    async with connected(sim) as p:
        p.client.reqMktData(1, stock("SPY"), "", False, False, [])
        await run(p.wait, "tickPrice", is_tick(1, 1))
        await sim.nightly_reset(data_lost=True, outage=0.05)
        codes = [(await run(p.wait, "error", lambda e: e[1] in (1100, 1101, 1102)))[1] for _ in range(2)]
        assert codes == [1100, 1101]
        assert sim.stats()["active_lines"] == 0
        p.client.reqMktData(1, stock("SPY"), "", False, False, [])      # the same id is free again
        p.drain()
        await run(p.wait, "tickPrice", is_tick(1, 1))


async def test_nightly_reset_with_data_kept_resumes_feeds(sim):
    """1100 then 1102: lines stay and quotes resume after the outage; none arrive during it."""
    async with connected(sim) as p:
        p.client.reqMktData(1, stock("SPY"), "", False, False, [])
        await run(p.wait, "tickPrice", is_tick(1, 1))
        await sim.nightly_reset(data_lost=False, outage=0.2)
        await run(p.wait, "error", lambda e: e[1] == 1102)
        assert sim.stats()["active_lines"] == 1
        await run(p.wait, "tickPrice", lambda e: e[0] == 1 and e.ts > 0 and
                  p.history.index(e) > next(i for i, x in enumerate(p.history) if x.name == "error" and x[1] == 1102),
                  5.0)
        names = [(e.name, e.args[1] if e.name == "error" else None) for e in p.history]
        lost, back = names.index(("error", 1100)), names.index(("error", 1102))
        assert not [n for n in names[lost:back] if n[0] in ("tickPrice", "tickSize")]


async def test_data_farm_down_and_up(sim):
    """2103 'Market data farm connection is broken:usfarm' pauses quotes; 2104 brings them back."""
    async with connected(sim) as p:
        p.client.reqMktData(1, stock("SPY"), "", False, False, [])
        await run(p.wait, "tickPrice", is_tick(1, 1))
        await sim.set_farm("usfarm", up=False)
        down = await run(p.wait, "error", lambda e: e[1] == 2103)
        assert down[0] == -1 and down[2] == "Market data farm connection is broken:usfarm"
        await sim.set_farm("usfarm", up=True)
        await run(p.wait, "error", lambda e: e[1] == 2104 and e.ts >= down.ts)
        idx_down = p.history.index(down)
        idx_up = max(i for i, e in enumerate(p.history) if e.name == "error" and e[1] == 2104)
        assert not [e for e in p.history[idx_down:idx_up] if e.name in ("tickPrice", "tickSize")]
        await run(p.wait, "tickSize", lambda e: e[0] == 1 and p.history.index(e) > idx_up)


async def test_stall_holds_answers_until_it_ends_while_streams_go_on(sim):
    """A request made during a stall is not answered while quotes keep streaming; it is answered once the stall
    ends, after those quotes."""
    async with connected(sim) as p:
        p.client.reqMktData(1, stock("SPY"), "", False, False, [])
        await run(p.wait, "tickPrice", is_tick(1, 1))
        sim.stall(3600)                 # ended below by the test, not by a clock
        received = sim.stats()["messages_received"]
        p.client.reqCurrentTime()
        await until(lambda: sim.stats()["messages_received"] > received)     # the simulator has the request
        p.drain()
        for _ in range(3):              # quotes stream on meanwhile: three more price ticks of the stock
            await run(p.wait, "tickPrice", lambda e: e[0] == 1)
        assert p.count("currentTime") == 0 and sim.stalled
        last_tick = len(p.history) - 1
        sim.stall(0)
        answer = await run(p.wait, "currentTime")
        assert p.history.index(answer) > last_tick and not sim.stalled


async def test_a_timed_stall_ends_by_itself_and_answers_in_order(sim):
    """stall(seconds) ends without help; the requests it held are answered in the order they were made."""
    async with connected(sim) as p:
        sim.stall(0.2)
        p.client.reqCurrentTime()
        p.client.reqContractDetails(5, stock("AAPL"))
        end = await run(p.wait, "contractDetailsEnd", lambda e: e[0] == 5)
        first = p.wait("currentTime", timeout=0)
        assert p.history.index(first) < p.history.index(end) and not sim.stalled


async def test_short_malformed_message_is_dropped_and_session_survives(sim):
    """A message with a wrong field count is dropped by ibapi; the session still answers."""
    async with connected(sim) as p:
        await sim.send_malformed(client_id=1, kind="short")
        p.client.reqCurrentTime()
        await run(p.wait, "currentTime")
        assert p.count("tickSize", lambda e: e[0] == 999_999) == 0
        assert p.client.isConnected()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_garbage_message_ends_the_ibapi_reader(sim):
    """Text where numbers belong kills ibapi 9.81's reader loop: the client sees its connection closed."""
    async with connected(sim) as p:
        await sim.send_malformed(client_id=1, kind="garbage")
        await run(p.wait, "connectionClosed")


async def test_silent_handshake_never_answers(sim):
    """silent_handshake: TCP is accepted, the version message never comes."""
    sim.silent_handshake = True
    with pytest.raises(ProbeTimeout):
        await run(Probe(sim.port, 4).connect, 0.3)
    sim.silent_handshake = False
    p = await connect(sim, 5)
    p.disconnect()


# ---- a client that is not ibapi ----------------------------------------------------------------------------

class RawClient:
    """The handshake by hand over a plain socket: no ibapi anywhere."""

    def __init__(self, port: int, versions: str = "v157..178") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = FrameBuffer()
        self.pending: list[list[str]] = []
        self.sock.sendall(b"API\0" + frame(versions))

    def read(self) -> list[str]:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.pending += [split_fields(b) for b in self.buf.feed(data)]
        return self.pending.pop(0)

    def until(self, msg_id: int) -> list[str]:
        while True:
            m = self.read()
            if m[0] == str(msg_id):
                return m

    def send(self, *fields) -> None:
        self.sock.sendall(encode(fields))

    def close(self) -> None:
        self.sock.close()


def raw_session(port: int) -> dict:
    c = RawClient(port)
    try:
        out = {"version": c.read()}
        c.send(71, 2, 9, "")                                  # startApi
        out["accounts"] = c.until(15)
        out["next_id"] = c.until(9)
        c.send(49, 1)                                         # reqCurrentTime
        out["time"] = c.until(49)
        # reqMktData by conId only (v157 layout, no ibapi)
        c.send(1, 11, 5, 756733, "", "", "", 0, "", "", "SMART", "", "", "", "", 0, "", 0, 0, "")
        out["tick"] = c.until(1)
        c.send(2, 2, 5)                                       # cancelMktData
        c.send(9, 8, 6, 0, "MSFT", "STK", "", 0, "", "", "SMART", "", "USD", "", "", 0, "", "")
        out["details"] = c.until(10)
        out["details_end"] = c.until(52)
        return out
    finally:
        c.close()


async def test_raw_socket_client_without_ibapi(sim):
    """A hand-written client (ib_async's version range) negotiates v157 and gets well-formed answers."""
    out = await run(raw_session, sim.port)
    assert out["version"][0] == "157" and len(out["version"]) == 2
    assert out["accounts"] == ["15", "1", "DU1234567"]
    assert out["next_id"][:2] == ["9", "1"] and int(out["next_id"][2]) >= 1
    assert abs(int(out["time"][2]) - __import__("time").time()) < 5
    tick = out["tick"]
    assert tick[:3] == ["1", "6", "5"] and float(tick[4]) > 0
    assert len(out["details"]) == 39 and out["details"][13] == "272093" and out["details"][5] == ""
    assert out["details_end"] == ["52", "1", "6"]


def too_old_client(port: int) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"API\0" + frame("v100..150"))
        return s.recv(100)
    finally:
        s.close()


async def test_client_without_v157_is_closed(sim):
    """A client that cannot speak v157 is disconnected without an answer (layouts are v157 only)."""
    assert await run(too_old_client, sim.port) == b""


# ---- CLI --------------------------------------------------------------------------------------------------

def cli_session() -> tuple[str, dict, int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "sim.tws", "--port", "0", "--latency", "fast", "--live",
                             "--account", "U1111111", "--account", "U2222222"], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().strip()
        port = int(first.rsplit(":", 1)[1])
        c = RawClient(port)
        c.read()
        c.send(71, 2, 1, "")
        accounts = c.until(15)
        proc.stdin.write("farm usfarm down\nstats\nbogus\n")       # fault commands on stdin
        proc.stdin.flush()
        farm = c.until(4)
        while farm[3] != "2103":
            farm = c.until(4)
        replies = [proc.stdout.readline().strip() for _ in range(3)]
        c.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        return first, {"accounts": accounts, "farm": farm, "replies": replies}, proc.returncode, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_cli_prints_port_first_serves_and_stops_on_sigterm():
    """The CLI prints 'listening on 127.0.0.1:<port>' first, takes fault commands on stdin, exits 0 on SIGTERM."""
    first, got, rc, rest = await run(cli_session)
    assert first.startswith("listening on 127.0.0.1:")
    assert got["accounts"] == ["15", "1", "U1111111,U2222222"]
    assert got["farm"][2:] == ["-1", "2103", "Market data farm connection is broken:usfarm"]
    farm_reply, stats_reply, bogus_reply = got["replies"]
    assert farm_reply == "farm usfarm down" and json.loads(stats_reply)["clients"] == [1]
    assert bogus_reply.startswith("error: unknown command")
    assert rc == 0 and "stopped" in rest


async def test_cli_stall_command_starts_and_ends_a_stall(sim):
    """'stall 30' stalls requests; 'stall 0' ends the stall at once; each says so."""
    from sim.tws.console import apply
    said: list[str] = []
    await apply(sim, "stall 30", said.append)
    assert sim.stalled
    await apply(sim, "stall 0", said.append)
    assert not sim.stalled
    assert said == ["stalling requests for 30 s", "stall ended: queued requests are answered"]


def test_config_refuses_non_loopback_host():
    """The simulator never listens anywhere but loopback."""
    with pytest.raises(ValueError):
        SimConfig(host="0.0.0.0")


def fuzz_session(port: int) -> list[list[str]]:
    """Every implemented message id, short of fields or with text in number fields, then a round trip."""
    from sim.tws.session import HANDLERS
    c = RawClient(port)
    try:
        c.read()
        c.send(71, 2, 11, "")
        c.until(9)
        for msg_id in sorted(HANDLERS):
            if msg_id == 71:
                continue
            c.send(msg_id)                                   # nothing but the id
            c.send(msg_id, "x", "y", "z")                    # text where numbers belong
            c.send(msg_id, 1, 1, "AAPL", "OPT", "2", "abc")  # a contract cut short
        c.send(49, 1)
        return [c.until(49)] + [m for m in c.pending if m[0] == "4"]
    finally:
        c.close()


async def test_malformed_requests_never_end_the_session(sim):
    """Truncated or non-numeric requests get error 320 (or a request error); the session keeps answering."""
    out = await run(fuzz_session, sim.port)
    assert out[0][:2] == ["49", "1"]                 # answered after all of them: the session lived on
    codes = {e["code"] for e in sim.stats()["errors_sent"] if e["client_id"] == 11}
    assert 320 in codes
