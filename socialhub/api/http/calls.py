"""/calls/*: ICE servers and call history (signaling is on the WebSocket)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from socialhub.api.http.codec import json_response, page_request
from socialhub.api.http.openapi import PAGE_QUERY
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.api.http.security import Authenticator
from socialhub.domain.calls import Call
from socialhub.domain.pages import Page
from socialhub.services.calls import CallService, IceServers


class CallRoutes(RouteGroup):
    def __init__(self, calls: CallService, auth: Authenticator) -> None:
        self.calls = calls
        self.auth = auth

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.ice_servers, Operation(
                method="GET", path="/calls/ice-servers", summary="STUN and TURN servers for WebRTC", tag="calls",
                response=IceServers,
                description="TURN credentials follow the TURN REST scheme (coturn's use-auth-secret): username "
                "`<expiry>:<user id>`, credential base64(HMAC-SHA1(secret, username)), valid for `ttl` seconds.",
            )),
            Endpoint(self.history, Operation(
                method="GET", path="/calls/history", summary="The caller's calls, newest first", tag="calls",
                response=Page[Call], query=PAGE_QUERY,
            )),
        ]  # fmt: skip

    async def ice_servers(self, request: Request) -> Response:
        return json_response(self.calls.ice_servers(await self.auth(request)))

    async def history(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.calls.history(viewer, page_request(request)))
