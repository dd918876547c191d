"""Step 7: the relay is reachable and accepts the key (connect, auth, read the answer, close). The key is never
printed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent.doctor.report import FAIL, OK, TITLES, CheckResult

# --- relay ------------------------------------------------------------------------------------

# The relay routes a user's requests to the connected agent with the highest version (dotted integers; anything else
# ties, and the later login wins). The check logs in as version 0, below every agent, so a running agent keeps
# receiving the web app's requests while the check is connected.
CHECK_VERSION = "0"


async def check_relay(settings: Any, timeout: float, version: str = CHECK_VERSION) -> CheckResult:
    """Step 7: connect, send auth, read auth_response, close (code 1000)."""
    from websockets.asyncio.client import connect

    from agent.protocol import auth_frame
    from agent.relay import loopback_proxy_off

    r = CheckResult(7, TITLES[7])
    url = settings.relay_url
    key = settings.provider_key.get_secret_value()
    extra = loopback_proxy_off(url)         # the agent's own rule: a local relay never through a proxy

    async def exchange() -> str:
        ws = await connect(url, open_timeout=timeout, close_timeout=1.0, max_size=2 ** 20, **extra)
        try:
            await ws.send(json.dumps(auth_frame(key, version)))
            return await ws.recv()
        finally:
            await ws.close()

    try:
        raw = await asyncio.wait_for(exchange(), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        r.status = FAIL
        r.detail = f"WebSocket connection failed: no answer from {url} within {timeout:g} s"
        r.fix = "check your internet connection and RELAY_URL; a firewall or proxy may block WebSockets"
        return r
    except Exception as exc:        # websockets' InvalidURI / InvalidHandshake / ConnectionClosed, OSError
        r.status = FAIL
        r.detail = f"WebSocket connection failed: {type(exc).__name__}: {_redact(str(exc), key)}"
        r.fix = ("check your internet connection and RELAY_URL (default wss://dr3-dashboard.com/ws/data-provider); "
                 "the cloud may be briefly unavailable: the agent itself retries")
        return r
    try:
        msg = json.loads(raw)
    except (TypeError, ValueError):
        msg = {}
    if not isinstance(msg, dict):
        msg = {}        # JSON, but not the auth_response object: "did not answer as expected" below
    if msg.get("type") == "auth_response" and msg.get("success") is True:
        r.status = OK
        r.detail = f"authenticated at {url} (provider id {msg.get('provider_id') or '?'})"
        r.note = ("the relay keeps one connection per key: if the agent is running, it may have been switched "
                  "to this check for a moment; it reconnects by itself")
        return r
    r.status = FAIL
    if msg.get("type") == "auth_response":
        r.detail = f"Authentication failed: the relay answered {msg.get('error') or 'no reason'!r}"
        r.fix = ("your API key may have been regenerated: download a fresh copy of the agent from the MA Tracker "
                 "web app (or set IB_PROVIDER_KEY to the new key)")
    else:
        r.detail = f"the relay at {url} did not answer the auth message as expected"
        r.fix = "check RELAY_URL: it must be the relay's /ws/data-provider address"
    return r


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text
