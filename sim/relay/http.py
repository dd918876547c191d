"""The reference relay's HTTP side (a mixin of ``ReferenceRelay``): the web app's routes under /options/relay/,
each turned into one request to the routed agent, its answer into the cloud's status codes and shapes."""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from . import routes
from .errors import NoProvider, ProviderDisconnected, RequestTimeout

STATUS = {NoProvider: 503, RequestTimeout: 504, ProviderDisconnected: 500}


class HttpSide:
    def _make_route_handler(self, route: routes.Route) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            if route.method == "POST":
                payload = await self._json_body(request)
                if payload is None:
                    return web.json_response({"detail": "Request body must be a JSON object"}, status=400)
            else:
                payload = routes.query_to_payload(request.query)
            payload.setdefault("_priority", routes.PRIORITY.get(route.request_type, 1))
            return await self._relay_http(route.request_type, payload)

        return handler

    @staticmethod
    async def _json_body(request: web.Request) -> dict | None:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    async def _ask(self, request_type: str, payload: dict) -> dict | web.Response:
        """The agent's answer frame, or the cloud's error response when there was none (503 / 504 / 500)."""
        try:
            return await self.request(request_type, payload)
        except (NoProvider, RequestTimeout, ProviderDisconnected) as exc:
            return web.json_response({"detail": str(exc)}, status=STATUS[type(exc)])

    async def _relay_http(self, request_type: str, payload: dict) -> web.Response:
        frame = await self._ask(request_type, payload)
        if isinstance(frame, web.Response):
            return frame
        if frame.get("success") is True:
            return web.json_response(frame.get("data"), status=200)
        return web.json_response({"detail": frame.get("error") or "Unknown error from data provider"}, status=500)

    async def _ib_status_handler(self, request: web.Request) -> web.Response:
        provider = self._provider
        if provider is None:
            return web.json_response(routes.ib_status_from_state(None, provider_connected=False, provider_id=None,
                                                                 agent_version=None, state_ts=None))
        if provider.agent_state is None:
            # No agent_state yet (an agent that never sends one): ask it directly.
            return await self._relay_http("ib_status", {"_priority": routes.PRIORITY["ib_status"]})
        return web.json_response(routes.ib_status_from_state(
            provider.agent_state, provider_connected=True, provider_id=provider.provider_id,
            agent_version=provider.version, state_ts=provider.agent_state_ts, boot_phase=provider.boot_phase))

    async def _ib_reconnect_handler(self, request: web.Request) -> web.Response:
        """The web app's "Reconnect IB": {force} in, {success, connected, message} out (from the agent's data)."""
        body = await self._json_body(request)
        if body is None:
            return web.json_response({"detail": "Request body must be a JSON object"}, status=400)
        frame = await self._ask("ib_reconnect", {"force": body.get("force") is True,
                                                 "_priority": routes.PRIORITY.get("ib_reconnect", 0)})
        if isinstance(frame, web.Response):
            return frame
        return web.json_response(routes.reconnect_answer(frame), status=200)
