"""/notify/*: the caller's notifications, how many are unread, marking them read."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from socialhub.api.http.codec import json_response, page_request, read_json
from socialhub.api.http.openapi import PAGE_QUERY
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.api.http.security import Authenticator
from socialhub.domain.notifications import Notification
from socialhub.domain.pages import Page
from socialhub.errors import ValidationFailed
from socialhub.ids import WireId
from socialhub.services.notifications import MAX_MARK_READ, NotificationService, UnreadCount


class ReadBody(msgspec.Struct, frozen=True):
    ids: Annotated[list[WireId], msgspec.Meta(max_length=MAX_MARK_READ)] | None = None
    all: bool = False

    def selection(self) -> list[int] | None:
        """The ids to mark read, or None for all of them; ValidationFailed when the body
        names neither (READ_RULE, which the Struct cannot say)."""
        if self.all:
            return None
        if self.ids is None:
            raise ValidationFailed("give ids or all: true", fields={"ids": "required unless all is true"})
        return [int(i) for i in self.ids]  # WireId: already checked


# What the Struct cannot say: `ids` (a list) or `all: true` must be there.
READ_RULE = {
    "anyOf": [
        {"required": ["ids"], "properties": {"ids": {"type": "array"}}},
        {"required": ["all"], "properties": {"all": {"const": True}}},
    ]
}


class NotificationRoutes(RouteGroup):
    def __init__(self, notifications: NotificationService, auth: Authenticator, max_body: int) -> None:
        self.notifications = notifications
        self.auth = auth
        self.max_body = max_body

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.list_notifications, Operation(
                method="GET", path="/notify/notifications", summary="Notifications, newest first", tag="notify",
                response=Page[Notification], query=PAGE_QUERY,
                description="The returned notifications become read; each shows `read` as it was before.",
            )),
            Endpoint(self.unread_count, Operation(
                method="GET", path="/notify/unread-count", summary="How many are unread", tag="notify",
                response=UnreadCount,
            )),
            Endpoint(self.mark_read, Operation(
                method="POST", path="/notify/read", summary="Mark notifications read", tag="notify",
                body=Annotated[ReadBody, msgspec.Meta(extra_json_schema=READ_RULE)], status=204,
                description="`{ids: [...]}` or `{all: true}`.",
            )),
        ]  # fmt: skip

    async def list_notifications(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.notifications.page(viewer, page_request(request)))

    async def unread_count(self, request: Request) -> Response:
        return json_response(await self.notifications.unread_count(await self.auth(request)))

    async def mark_read(self, request: Request) -> Response:
        viewer = await self.auth(request)
        body = await read_json(request, ReadBody, self.max_body)
        await self.notifications.mark_read(viewer, body.selection())
        return Response(status_code=204)
