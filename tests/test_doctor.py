"""`--check` (agent/doctor/) against the TWS simulator and the reference relay, one broken setting at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent import doctor
from agent.doctor import FAIL, OK, SKIP, Timeouts
from sim.relay import ReferenceRelay

from ports import closed_port

KEY = "doctor-test-key-0123456789"
FAST = Timeouts(tcp=1.0, handshake=0.5, start_api=2.0, what_if=2.0, quote=2.0, relay=3.0)




def write_config(tmp_path: Path, **values: object) -> Path:
    path = tmp_path / "config.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def settings_for(tmp_path: Path, **values: object):
    """Settings from a config.env of exactly these values (the real environment is ignored)."""
    from agent.settings import load_settings
    cfg = {"IB_PROVIDER_KEY": KEY, "IB_HOST": "127.0.0.1", "IB_MODE": "paper", **values}
    return load_settings(environ={}, config_path=write_config(tmp_path, **cfg))


async def run_doctor(settings, usual_ports=()) -> tuple[int, str]:
    lines: list[str] = []
    status = await doctor.run(settings=settings, out=lines.append, timeouts=FAST, usual_ports=usual_ports)
    return status, "\n".join(lines)


@pytest.fixture
async def relay():
    r = ReferenceRelay(api_key=KEY, port=0)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


# --- pure parts --------------------------------------------------------------------------------

def test_account_mode_paper_only_when_every_account_starts_with_d():
    """D… accounts are paper; any U…/F… account makes the login live; no accounts is unknown."""
    assert doctor.account_mode(["DU1234567"]) == "paper"
    assert doctor.account_mode(["DF111", "DU222"]) == "paper"
    assert doctor.account_mode(["U1234567"]) == "live"
    assert doctor.account_mode(["DU1", "U2"]) == "live"
    assert doctor.account_mode([]) is None


def test_port_advice_names_the_port_that_answers():
    """When the configured port is silent but a usual one answers, the fix says IB_PORT=<that port>."""
    detail, fix = doctor.port_advice("127.0.0.1", [7497], [4002])
    assert "nothing listens on 7497" in detail and "seems to be on 4002" in detail
    assert "IB_PORT=4002" in fix


def test_port_advice_when_nothing_answers_says_start_tws():
    """With no port answering, the fix is to start TWS and enable the API."""
    detail, fix = doctor.port_advice("127.0.0.1", [7497, 4002, 7496], [])
    assert "nothing listens" in detail
    assert "Enable ActiveX and Socket Clients" in fix


def test_report_marks_and_exit_summary():
    """The report prints ✓/✗/– per step and a fix only for failed ones."""
    rs = [doctor.CheckResult(1, "a", OK, "fine", fix="never shown"),
          doctor.CheckResult(2, "b", FAIL, "broken", fix="do this"),
          doctor.CheckResult(3, "c", SKIP, "not checked")]
    text = doctor.format_report(rs)
    assert " ✓ 1. a" in text and " ✗ 2. b" in text and " – 3. c" in text
    assert "fix: do this" in text and "never shown" not in text
    assert "failed: 2" in text


# --- against sockets ---------------------------------------------------------------------------

async def test_bad_config_is_reported_and_nothing_else_runs(tmp_path):
    """A bad setting fails step 1 with the ConfigError's fix; the other steps are not checked."""
    path = write_config(tmp_path, IB_PROVIDER_KEY=KEY, IB_PORT="notaport")
    results = await doctor.run_checks(environ={}, config_path=path, timeouts=FAST, usual_ports=())
    assert results[0].status == FAIL and "IB_PORT" in results[0].detail
    assert [r.status for r in results[1:]] == [SKIP] * 6


async def test_every_bad_setting_is_listed_with_its_fix(tmp_path):
    """Two bad settings (no key, a port that is not a number): step 1 names both, each with a fix line, and the
    TWS steps are not run with a stand-in key (the key is not the only problem)."""
    path = write_config(tmp_path, IB_PORT="notaport", IB_MODE="demo")
    results = await doctor.run_checks(environ={}, config_path=path, timeouts=FAST, usual_ports=())
    r1 = results[0]
    assert r1.status == FAIL
    assert "IB_PROVIDER_KEY" in r1.detail and "IB_PORT" in r1.detail and "IB_MODE" in r1.detail
    assert len(r1.fix.splitlines()) == 3
    text = doctor.format_report(results)
    assert text.count("      fix: ") == 3
    assert [r.status for r in results[1:]] == [SKIP] * 6


async def test_api_port_closed_reports_nothing_listening(tmp_path, relay):
    """Nothing on IB_PORT: step 2 fails saying so, and suggests the usual port that does answer."""
    dead = closed_port()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    other = server.sockets[0].getsockname()[1]
    try:
        path = write_config(tmp_path, IB_PROVIDER_KEY=KEY, IB_PORT=dead, RELAY_URL=relay.ws_url)
        results = await doctor.run_checks(environ={}, config_path=path, timeouts=FAST, usual_ports=(dead, other))
    finally:
        server.close()
        await server.wait_closed()
    r2 = results[1]
    assert r2.status == FAIL
    assert f"nothing listens on {dead}" in r2.detail and f"seems to be on {other}" in r2.detail
    assert f"IB_PORT={other}" in r2.fix
    assert [r.status for r in results[2:6]] == [SKIP] * 4
    assert results[6].status == OK          # the relay part is independent of TWS


async def test_silent_handshake_means_api_disabled_or_port_taken(tmp_path, relay):
    """A port that accepts TCP but never answers the handshake fails step 3 with the API-switch fix."""
    held: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        status, text = await run_doctor(settings_for(tmp_path, IB_PORT=port, RELAY_URL=relay.ws_url))
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert status != 0
    assert "✗ 3." in text and "never answers IB's API handshake" in text
    assert "Enable ActiveX and Socket Clients" in text


async def test_relay_rejects_key(tmp_path, relay):
    """A key the relay refuses fails step 7 with the 'Authentication failed' fix, and never prints the key."""
    relay.reject_all_keys = True
    status, text = await run_doctor(settings_for(tmp_path, RELAY_URL=relay.ws_url, IB_PORT=closed_port()))
    assert status != 0
    assert "✗ 7." in text and "Authentication failed" in text and "fresh copy" in text
    assert KEY not in text


async def test_the_relay_check_never_takes_a_running_agents_requests(tmp_path):
    """The check logs in as version 0: the relay keeps routing to a running agent (2.0.0, or the original 1.39)."""
    from sim.relay import routes
    async with ReferenceRelay(api_key=KEY, port=0) as relay:
        r = await doctor.check_relay(settings_for(tmp_path, RELAY_URL=relay.ws_url, IB_PORT=closed_port()),
                                     FAST.relay)
        assert r.status == OK and relay.auth_attempts[-1]["version"] == doctor.CHECK_VERSION
    assert not routes.outranks(doctor.CHECK_VERSION, "2.0.0") and not routes.outranks(doctor.CHECK_VERSION, "1.39.2")


async def test_a_local_relay_is_reached_past_a_proxy_in_the_environment(tmp_path, monkeypatch):
    """HTTP(S)_PROXY pointing at nothing (a corporate setting): the check reaches a loopback relay directly, as the
    agent does (agent.relay.loopback_proxy_off), instead of failing through the proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port()}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with ReferenceRelay(api_key=KEY, port=0) as relay:
        r = await doctor.check_relay(settings_for(tmp_path, RELAY_URL=relay.ws_url, IB_PORT=closed_port()),
                                     FAST.relay)
    assert r.status == OK, r.detail


async def test_relay_unreachable(tmp_path):
    """No relay at RELAY_URL: step 7 says the WebSocket connection failed."""
    settings = settings_for(tmp_path, IB_PORT=closed_port(),
                            RELAY_URL=f"ws://127.0.0.1:{closed_port()}/ws/data-provider")
    r = await doctor.check_relay(settings, FAST.relay)
    assert r.status == FAIL and "WebSocket connection failed" in r.detail


@pytest.mark.parametrize("answer", ["[1, 2]", "42", '"auth_response"', "null"])
async def test_relay_answering_json_that_is_not_an_object(tmp_path, answer):
    """Something at RELAY_URL that answers the auth message with JSON that is not an object: step 7 says the relay
    did not answer as expected (it raised AttributeError, reported as 'the check itself failed')."""
    from websockets.asyncio.server import serve

    async def answer_once(ws):
        await ws.recv()
        await ws.send(answer)

    async with serve(answer_once, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        settings = settings_for(tmp_path, IB_PORT=closed_port(), RELAY_URL=f"ws://127.0.0.1:{port}/ws/data-provider")
        r = await doctor.check_relay(settings, FAST.relay)
    assert r.status == FAIL and "did not answer the auth message as expected" in r.detail


# --- against the TWS simulator -------------------------------------------------------------------

async def test_all_pass_exits_zero(tmp_path, relay, make_sim):
    """A paper account, API on, Read-Only off, live data and a good key: every step ✓ and exit status 0."""
    sim = await make_sim()
    status, text = await run_doctor(settings_for(tmp_path, IB_PORT=sim.port, RELAY_URL=relay.ws_url))
    assert status == 0, text
    for n in range(1, 8):
        assert f"✓ {n}." in text
    assert "✗" not in text and "DU1234567" in text and "live data" in text
    assert KEY not in text
    orders = sim.stats()["orders"]
    assert orders and all(o["what_if"] for o in orders)     # only a what-if preview ever reached "TWS"


async def test_doctor_finds_tws_when_ib_port_is_unset(make_sim):
    """Without IB_PORT, when no candidate port for IB_MODE answers, the fix names the usual port that does."""
    import types
    sim = await make_sim()
    candidates = [closed_port(), closed_port()]     # stand-ins for 7497/4002/7496, so no real port is probed
    settings = types.SimpleNamespace(ib_host="127.0.0.1", ib_port=None, ib_mode="paper", ib_client_id=17,
                                     candidate_ports=lambda: candidates)
    results = await doctor.check_tws(settings, FAST, usual_ports=(candidates[0], sim.port))
    r2 = results[0]
    assert r2.status == FAIL
    assert f"seems to be on {sim.port}" in r2.detail and f"IB_PORT={sim.port}" in r2.fix


async def test_silent_handshake_on_the_simulator(tmp_path, relay, make_sim):
    """The simulator accepting TCP but never answering the handshake fails step 3 with the API-switch fix."""
    sim = await make_sim()
    sim.silent_handshake = True
    status, text = await run_doctor(settings_for(tmp_path, IB_PORT=sim.port, RELAY_URL=relay.ws_url))
    assert status != 0
    assert "✗ 3." in text and "Enable ActiveX and Socket Clients" in text
    assert "– 4." in text and "– 5." in text


async def test_read_only_api_is_reported(tmp_path, relay, make_sim):
    """Read-Only API on: the what-if order gets error 321 and step 5 says to untick it; data still ✓."""
    sim = await make_sim(read_only=True)
    status, text = await run_doctor(settings_for(tmp_path, IB_PORT=sim.port, RELAY_URL=relay.ws_url))
    assert status != 0
    assert "✗ 5." in text and "321" in text and "untick 'Read-Only API'" in text
    assert "✓ 6." in text


async def test_live_account_in_paper_mode(tmp_path, relay, make_sim):
    """IB_MODE=paper with TWS logged in to a U… account: step 4 fails naming the account and the fix."""
    sim = await make_sim(accounts=("U1234567",))
    status, text = await run_doctor(settings_for(tmp_path, IB_PORT=sim.port, RELAY_URL=relay.ws_url))
    assert status != 0
    assert "✗ 4." in text and "live account (U1234567)" in text and "IB_MODE=live" in text


async def test_delayed_only_market_data_passes_with_a_note(tmp_path, relay, make_sim):
    """A symbol without live permission (354) falls back to delayed data: ✓ with a 'delayed only' note."""
    sim = await make_sim()
    settings = settings_for(tmp_path, IB_PORT=sim.port, RELAY_URL=relay.ws_url)
    results = await doctor.run_checks(settings=settings, timeouts=FAST, usual_ports=(), probe_symbol="TSLA")
    r6 = results[5]
    assert r6.status == OK, r6
    assert "delayed data only" in r6.detail and r6.note


async def test_market_data_check_cancels_its_lines(make_sim):
    """While the doctor's session is still open, every line it opened (live try, delayed try) is cancelled."""
    sim = await make_sim()
    probe = doctor.IbProbe("127.0.0.1", sim.port, 99)
    try:
        await probe.open(1.0, 2.0)
        await probe.start(99, 2.0)
        r = await doctor.check_market_data(probe, 2.0, "TSLA")
        assert r.status == OK
        probe.client.reqCurrentTime()      # TWS handles a session's messages in order: the cancels came first
        await probe.expect(lambda ev: ev[0] == "current_time", 2.0)
        assert sim.stats()["lines_by_client"].get(99, 0) == 0
    finally:
        await probe.close()


async def test_a_web_server_on_the_port_is_not_tws(tmp_path, relay):
    """A port answering in another protocol (HTTP) fails step 3 saying something other than TWS is there."""
    async def http(reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        status, text = await run_doctor(settings_for(tmp_path, IB_PORT=port, RELAY_URL=relay.ws_url))
    finally:
        server.close()
        await server.wait_closed()
    assert status != 0
    assert "✗ 3." in text and "something other than TWS/IB Gateway" in text


async def test_missing_key_still_checks_tws(tmp_path, make_sim):
    """No API key: step 1 fails with the key's fix, TWS is still checked, and the relay step is skipped."""
    sim = await make_sim()
    path = write_config(tmp_path, IB_PORT=sim.port, IB_MODE="paper")
    results = await doctor.run_checks(environ={}, config_path=path, timeouts=FAST, usual_ports=())
    assert results[0].status == FAIL and "IB_PROVIDER_KEY" in results[0].detail and results[0].fix
    assert [r.status for r in results[1:6]] == [OK] * 5
    assert results[6].status == SKIP and "no usable API key" in results[6].detail


async def test_client_id_in_use_moves_to_the_next_id(tmp_path, relay, make_sim):
    """When the doctor's clientId is held (TWS error 326), it connects with the next one and still passes."""
    sim = await make_sim()
    settings = settings_for(tmp_path, IB_PORT=sim.port, RELAY_URL=relay.ws_url)
    held_id = settings.ib_client_id + doctor.CLIENT_ID_OFFSET
    holder = doctor.IbProbe("127.0.0.1", sim.port, held_id)
    try:
        await holder.open(1.0, 2.0)
        await holder.start(held_id, 2.0)
        results = await doctor.run_checks(settings=settings, timeouts=FAST, usual_ports=())
    finally:
        await holder.close()
    assert results[2].status == OK and f"clientId {held_id + 1}" in results[2].detail
    assert all(r.ok for r in results)
