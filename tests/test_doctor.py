"""`--check` (agent/doctor.py) against the TWS simulator and the reference relay, one broken setting at a time."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from agent import doctor
from agent.doctor import FAIL, OK, SKIP, Timeouts
from sim.relay import ReferenceRelay

KEY = "doctor-test-key-0123456789"
FAST = Timeouts(tcp=1.0, handshake=0.5, start_api=2.0, what_if=2.0, quote=2.0, relay=3.0)


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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


async def test_relay_unreachable(tmp_path):
    """No relay at RELAY_URL: step 7 says the WebSocket connection failed."""
    settings = settings_for(tmp_path, IB_PORT=closed_port(),
                            RELAY_URL=f"ws://127.0.0.1:{closed_port()}/ws/data-provider")
    r = await doctor.check_relay(settings, FAST.relay)
    assert r.status == FAIL and "WebSocket connection failed" in r.detail
