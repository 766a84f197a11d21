"""GET /feed and the /notify/* routes."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from socialhub.api.http.codec import json_response, page_request, read_json
from socialhub.api.http.openapi import Operation
from socialhub.api.http.security import Authenticator
from socialhub.domain.notifications import Notification
from socialhub.domain.pages import Page
from socialhub.domain.posts import Post
from socialhub.errors import ValidationFailed
from socialhub.ids import WireId
from socialhub.services.feed import FeedService
from socialhub.services.notifications import NotificationService, UnreadCount

PAGE = ("limit", "before")


class ReadBody(msgspec.Struct, frozen=True):
    ids: Annotated[list[WireId], msgspec.Meta(max_length=1000)] | None = None
    all: bool = False


# What the Struct cannot say: `ids` (a list) or `all: true` must be there.
READ_RULE = {
    "anyOf": [
        {"required": ["ids"], "properties": {"ids": {"type": "array"}}},
        {"required": ["all"], "properties": {"all": {"const": True}}},
    ]
}


class FeedRoutes:
    def __init__(
        self, feed: FeedService, notifications: NotificationService, auth: Authenticator, max_body: int
    ) -> None:
        self.feed = feed
        self.notifications = notifications
        self.auth = auth
        self.max_body = max_body

    def routes(self) -> list[Route]:
        return [
            Route("/feed", self.home, methods=["GET"]),
            Route("/notify/notifications", self.list_notifications, methods=["GET"]),
            Route("/notify/unread-count", self.unread_count, methods=["GET"]),
            Route("/notify/read", self.mark_read, methods=["POST"]),
        ]

    def operations(self) -> list[Operation]:
        return [
            Operation(
                method="GET",
                path="/feed",
                summary="The home timeline",
                tag="feed",
                response=Page[Post],
                query=PAGE,
                description="The caller's posts and those of the users they follow, newest first.",
            ),
            Operation(
                method="GET",
                path="/notify/notifications",
                summary="Notifications, newest first",
                tag="notify",
                response=Page[Notification],
                query=PAGE,
                description="The returned notifications become read; each shows `read` as it was before.",
            ),
            Operation(
                method="GET",
                path="/notify/unread-count",
                summary="How many are unread",
                tag="notify",
                response=UnreadCount,
            ),
            Operation(
                method="POST",
                path="/notify/read",
                summary="Mark notifications read",
                tag="notify",
                body=Annotated[ReadBody, msgspec.Meta(extra_json_schema=READ_RULE)],
                status=204,
                description="`{ids: [...]}` or `{all: true}`.",
            ),
        ]

    async def home(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.feed.home(viewer, page_request(request)))

    async def list_notifications(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.notifications.page(viewer, page_request(request)))

    async def unread_count(self, request: Request) -> Response:
        return json_response(await self.notifications.unread_count(await self.auth(request)))

    async def mark_read(self, request: Request) -> Response:
        viewer = await self.auth(request)
        body = await read_json(request, ReadBody, self.max_body)
        if body.all:
            ids = None
        elif body.ids is not None:
            ids = [int(i) for i in body.ids]  # WireId: already checked
        else:
            raise ValidationFailed("give ids or all: true", fields={"ids": "required unless all is true"})
        await self.notifications.mark_read(viewer, ids)
        return Response(status_code=204)
