"""The reference relay: a stand-in for the MA Tracker cloud (``ws_relay.py`` + ``options_routes.py``) that
tests and the demo run on 127.0.0.1. It speaks /work/shared/relay-protocol.md exactly as the cloud does.

In-process API (what tests code against)::

    from sim.relay import ReferenceRelay, NoProvider, RequestTimeout, ProviderDisconnected

    relay = ReferenceRelay(api_key="KEY", host="127.0.0.1", port=0, heartbeat_timeout=90.0, auth_timeout=10.0,
                           timeout_scale=1.0, max_batch_size=None, ping_interval=30.0)
    await relay.start()                      # or: async with ReferenceRelay(...) as relay:
    relay.port; relay.ws_url                 # "ws://127.0.0.1:<port>/ws/data-provider"
    relay.http_url                           # "http://127.0.0.1:<port>" (routes under /options/relay/...)

    # one request straight to the provider, no HTTP; returns the agent's response frame as a dict
    # ({"type":"response","request_id",...,"success",...,"data",...,"error",...}), success true or false.
    # timeout=None: the cloud's wait for that type × timeout_scale (fetch_chain 180 s, sell_scan 120 s,
    # fetch_prices 60 s, positions/open orders 20 s, fetch_underlying 15 s, cancel_order 10 s,
    # place/modify timeout_sec + 10 s, anything else 15-30 s). Adds payload["_max_batch_size"] when set.
    # Raises NoProvider (none connected), RequestTimeout (.request_type, .request_id, .timeout) or
    # ProviderDisconnected (provider closed / went silent / was replaced / was kicked while it was pending);
    # all three subclass RelayError.
    frame = await relay.request("fetch_chain", {...}, timeout=None, request_id=None)

    # any text or bytes to the routed agent as given (a fuzzer's frame); with request_id, its answer
    frame = await relay.request_raw('{"type":"request","request_id":"x",...}', request_id="x", timeout=15.0)

    relay.provider_connected (bool); relay.provider_id; relay.provider_version   # of the agent requests go to
    relay.providers         # every connected agent: [{provider_id, version, connected_at, routed, boot_phase}]
    relay.pending_count     # requests waiting for any agent
    await relay.wait_provider(timeout) -> provider_id      # asyncio.TimeoutError if none authenticates in time
    await relay.wait_no_provider(timeout)                  # until the provider is gone
    await relay.wait_frame(lambda f: f["type"] == "agent_state", timeout, start=0) -> the first matching frame
                                                           # among relay.frames[start:]
    relay.agent_state       # the latest agent_state frame minus "type" (None until one arrives)
    relay.agent_state_ts    # its arrival time (epoch)
    relay.accounts          # the latest ib_accounts list
    relay.events            # the "event" dict of every account_event, in arrival order
    relay.boot_phases       # every boot_phase frame
    relay.frames            # every JSON frame received from any client (auth included), for assertions
    relay.requests_sent     # every request frame sent to a provider
    relay.auth_attempts     # [{key_ok: bool, version: str | None, ts: float}] per auth message
    relay.heartbeats        # count of heartbeat frames (each answered with heartbeat_ack)
    relay.unknown_responses # request_ids of responses nobody waited for (logged and ignored)
    relay.providers_seen    # how many providers have authenticated
    relay.close_codes       # the close code of each authenticated agent's socket once it closed (1001 = going away)

    # faults
    relay.reject_all_keys = True             # every auth gets {"success":false,"error":"Invalid API key"}
    await relay.kick_provider(code=1001)     # close every agent's socket (a relay restart); pending requests fail
    relay.silence()                          # the routed agent's socket stays open but the relay stops reading and
                                             # answering it (no heartbeat_ack, no pong): a dead NAT entry
    relay.max_batch_size = 10                # stamp _max_batch_size on every request from now on
    relay.timeout_scale = 0.01               # shrink the relay's waits (HTTP 504 sooner)
    await relay.stop()                       # closes everything; idempotent

Behaviour (as the cloud): the first message must be ``{"type":"auth","api_key","version"}`` within
``auth_timeout``; otherwise ``auth_response`` success:false "Expected auth message" (also on a timeout), or
"Invalid API key", then a normal close (1000). ``heartbeat`` is answered with ``heartbeat_ack``; a provider that
sends no heartbeat for more than ``heartbeat_timeout`` is closed (1000) and its pending requests fail with
"Provider disconnected". WebSocket pings every ``ping_interval`` s. Several agents may be connected for the key
(one user): requests go to the one with the highest ``version`` (dotted integers), the most recently connected on
a tie (a version that is not dotted integers ties with any other); the others stay connected and take over when it leaves. Each agent's last
``boot_phase`` is shown in ib-status (``boot_phase``) until that agent sends ``boot_complete``.

HTTP (JSON body → payload; GET query string → payload; the relay adds ``_priority``):
POST /options/relay/fetch-chain · fetch-prices · sell-scan · stock-quote (fetch_underlying) · place-order ·
modify-order · cancel-order; GET /options/relay/positions (get_positions) · open-orders (get_open_orders) ·
ib-status (from the cached agent_state; {"connected": false, "provider_connected": false, ...} with no provider;
``boot_phase``: the routed agent's phase until its boot_complete, else null) · POST /options/relay/ib-reconnect
({"force": bool} → ib_reconnect; 200 {"success", "connected", "message"} read from the agent's data, success and
connected false when the agent answered success:false).
200 = the agent's ``data``; 500 {"detail": agent's error} on success:false (or "Provider disconnected");
503 {"detail": "No data provider connected"}; 504 {"detail": "... timed out ..."}; 400 on a non-object body.

CLI: ``python -m sim.relay --port 0 --key KEY`` prints ``listening on 127.0.0.1:<port>`` first, serves until
SIGINT/SIGTERM. aiohttp is a dev dependency (requirements-dev.txt): the agent itself never imports this package.
"""

from .errors import NoProvider, ProviderDisconnected, RelayError, RequestTimeout
from .server import ReferenceRelay

__all__ = ["ReferenceRelay", "RelayError", "NoProvider", "RequestTimeout", "ProviderDisconnected"]
