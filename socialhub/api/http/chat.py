"""/chat/*: rooms and history (the live part is the WebSocket)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from socialhub.api.http.codec import json_response, page_request, read_json
from socialhub.api.http.openapi import Operation
from socialhub.api.http.security import Authenticator
from socialhub.domain.chat import Message, Room
from socialhub.domain.pages import Page
from socialhub.errors import NotFound
from socialhub.ids import WireId, parse_id
from socialhub.services.chat import MAX_ROOM_MEMBERS, ChatService
from socialhub.services.presence import PresenceService, PresenceView
from socialhub.services.users import UserService

PAGE = ("limit", "before")


class RoomBody(msgspec.Struct, frozen=True):
    members: Annotated[list[WireId], msgspec.Meta(min_length=1, max_length=MAX_ROOM_MEMBERS)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None


class ChatRoutes:
    def __init__(
        self, chat: ChatService, users: UserService, presence: PresenceService, auth: Authenticator, max_body: int
    ) -> None:
        self.chat = chat
        self.users = users
        self.presence = presence
        self.auth = auth
        self.max_body = max_body

    def routes(self) -> list[Route]:
        return [
            Route("/chat/rooms", self.create_room, methods=["POST"]),
            Route("/chat/rooms", self.rooms, methods=["GET"]),
            Route("/chat/{room_id}/history", self.history, methods=["GET"]),
            Route("/users/{ref}/presence", self.user_presence, methods=["GET"]),
        ]

    def operations(self) -> list[Operation]:
        return [
            Operation(
                method="POST", path="/chat/rooms", summary="Create a room", tag="chat", body=RoomBody, response=Room,
                status=201, also=(200,), errors=(404,),
                description="The caller is a member. One other member and no name make a direct room, unique "
                "per pair: asking again answers 200 with the existing room.",
            ),
            Operation(method="GET", path="/chat/rooms", summary="The caller's rooms, most recent activity first",
                      tag="chat", response=Page[Room], query=PAGE),
            Operation(method="GET", path="/chat/{room_id}/history", summary="A room's messages, newest first",
                      tag="chat", response=Page[Message], query=PAGE, errors=(403, 404),
                      description="Members only. `before` is a message id."),
            Operation(method="GET", path="/users/{ref}/presence", summary="Whether a user is online", tag="users",
                      response=PresenceView, errors=(404,),
                      description="Online while any socket of theirs is open on any instance."),
        ]

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
        room_id = parse_id(request.path_params["room_id"])
        if room_id is None:
            raise NotFound("no such room")
        return json_response(await self.chat.history(viewer, room_id, page_request(request)))

    async def user_presence(self, request: Request) -> Response:
        viewer = await self.auth(request)
        user_id = await self.users.resolve(viewer, request.path_params["ref"])
        if not await self.users.exists(user_id):
            raise NotFound("no such user")
        views = await self.presence.status([user_id])
        return json_response(views[0])
