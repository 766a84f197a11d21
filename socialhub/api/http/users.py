"""/users/*: profiles, follows, follower lists, and the original clients' aliases."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from socialhub.api.http.codec import is_form, json_response, page_request, read_json, validate
from socialhub.api.http.security import Authenticator
from socialhub.errors import NotFound, UnsupportedMediaType
from socialhub.ids import parse_id
from socialhub.services.users import UserService


class ProfilePatch(msgspec.Struct, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"\S")] | None = None
    bio: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class UserRoutes:
    def __init__(self, users: UserService, auth: Authenticator, max_body: int) -> None:
        self.users = users
        self.auth = auth
        self.max_body = max_body

    def routes(self) -> list[Route]:
        # The fixed paths come before /users/{ref} so "counts" is never taken for a user.
        return [
            Route("/users/me", self.update_me, methods=["PATCH"]),
            Route("/users/counts", self.counts, methods=["GET"]),
            Route("/users/followers/list", self.my_followers, methods=["GET"]),
            Route("/users/following/list", self.my_following, methods=["GET"]),
            Route("/users/follow/{id}", self.follow, methods=["POST"]),
            Route("/users/follow/{id}", self.unfollow, methods=["DELETE"]),
            Route("/users/unfollow/{id}", self.unfollow, methods=["POST"]),
            Route("/users/{ref}/followers", self.followers, methods=["GET"]),
            Route("/users/{ref}/following", self.following, methods=["GET"]),
            Route("/users/{ref}", self.profile, methods=["GET"]),
        ]

    async def profile(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.users.profile(viewer, request.path_params["ref"]))

    async def update_me(self, request: Request) -> Response:
        viewer = await self.auth(request)
        if is_form(request):
            async with request.form(max_files=1, max_fields=10) as form:
                if form.get("avatar") is not None:
                    # Avatars are stored through the media port, which comes with posts and media.
                    raise UnsupportedMediaType("avatar upload is not available yet")
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
            patch = validate(fields, ProfilePatch)
        else:
            patch = await read_json(request, ProfilePatch, self.max_body)
        return json_response(await self.users.update_me(viewer, name=patch.name, bio=patch.bio))

    def _target(self, request: Request) -> int:
        target = parse_id(request.path_params["id"])
        if target is None:
            raise NotFound("no such user")
        return target

    async def follow(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.users.follow(viewer, self._target(request)))

    async def unfollow(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.users.unfollow(viewer, self._target(request)))

    async def _list(self, request: Request, ref: str, *, followers: bool) -> Response:
        viewer = await self.auth(request)
        page = page_request(request)
        user_id = await self.users.resolve(viewer, ref)
        return json_response(await self.users.follow_list(viewer, user_id, followers=followers, page=page))

    async def followers(self, request: Request) -> Response:
        return await self._list(request, request.path_params["ref"], followers=True)

    async def following(self, request: Request) -> Response:
        return await self._list(request, request.path_params["ref"], followers=False)

    async def my_followers(self, request: Request) -> Response:
        return await self._list(request, "me", followers=True)

    async def my_following(self, request: Request) -> Response:
        return await self._list(request, "me", followers=False)

    async def counts(self, request: Request) -> Response:
        return json_response(await self.users.counts(await self.auth(request)))
