"""/chat/*: rooms and history (the live part is the WebSocket)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from socialhub.api.http.codec import json_response, page_request, path_id, read_json
from socialhub.api.http.openapi import PAGE_QUERY
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.api.http.security import Authenticator
from socialhub.domain.chat import ROOM_NAME_MAX_LENGTH, Message, Room
from socialhub.domain.pages import Page
from socialhub.ids import WireId
from socialhub.services.chat import MAX_ROOM_MEMBERS, ChatService


class RoomBody(msgspec.Struct, frozen=True):
    members: Annotated[list[WireId], msgspec.Meta(min_length=1, max_length=MAX_ROOM_MEMBERS)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=ROOM_NAME_MAX_LENGTH)] | None = None


class ChatRoutes(RouteGroup):
    def __init__(self, chat: ChatService, auth: Authenticator, max_body: int) -> None:
        self.chat = chat
        self.auth = auth
        self.max_body = max_body

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.create_room, Operation(
                method="POST", path="/chat/rooms", summary="Create a room", tag="chat", body=RoomBody, response=Room,
                status=201, also=(200,), errors=(404,),
                description="The caller is a member. One other member and no name make a direct room, unique "
                "per pair: asking again answers 200 with the existing room.",
            )),
            Endpoint(self.rooms, Operation(
                method="GET", path="/chat/rooms", summary="The caller's rooms, most recent activity first",
                tag="chat", response=Page[Room], query=PAGE_QUERY,
            )),
            Endpoint(self.history, Operation(
                method="GET", path="/chat/{room_id}/history", summary="A room's messages, newest first", tag="chat",
                response=Page[Message], query=PAGE_QUERY, errors=(403, 404),
                description="Members only. `before` is a message id.",
            )),
        ]  # fmt: skip

    async def create_room(self, request: Request) -> Response:
        viewer = await self.auth(request)
        body = await read_json(request, RoomBody, self.max_body)
        members = [int(m) for m in body.members]  # WireId: already checked
        room, created = await self.chat.create_room(viewer, members, body.name)
        return json_response(room, 201 if created else 200)

    async def rooms(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.chat.rooms(viewer, page_request(request)))

    async def history(self, request: Request) -> Response:
        viewer = await self.auth(request)
        room_id = path_id(request, "room_id", "room")
        return json_response(await self.chat.history(viewer, room_id, page_request(request)))
