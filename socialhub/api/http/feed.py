"""GET /feed: the home timeline."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from socialhub.api.http.codec import json_response, page_request
from socialhub.api.http.openapi import PAGE_QUERY
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.api.http.security import Authenticator
from socialhub.domain.pages import Page
from socialhub.domain.posts import Post
from socialhub.services.feed import FeedService


class FeedRoutes(RouteGroup):
    def __init__(self, feed: FeedService, auth: Authenticator) -> None:
        self.feed = feed
        self.auth = auth

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.home, Operation(
                method="GET", path="/feed", summary="The home timeline", tag="feed", response=Page[Post],
                query=PAGE_QUERY,
                description="The caller's posts and those of the users they follow, newest first.",
            )),
        ]  # fmt: skip

    async def home(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.feed.home(viewer, page_request(request)))
