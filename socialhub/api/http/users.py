"""/users/*: profiles, follows, follower lists, and the original clients' aliases."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from socialhub.api.http.codec import is_form, json_response, media_type, page_request, read_json, validate
from socialhub.api.http.openapi import PAGE_QUERY
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.api.http.security import Authenticator
from socialhub.api.http.uploads import AVATAR_FIELDS, read_upload
from socialhub.domain.filetypes import IMAGE_ONLY
from socialhub.domain.pages import Page
from socialhub.domain.protocol import PresenceView
from socialhub.domain.users import BIO_MAX_LENGTH, DisplayName, User
from socialhub.infra.media.base import MediaStore
from socialhub.services.users import Counts, FollowState, UserService

REF = "`ref` is a user id, `@username` or `me`."

Bio = Annotated[str, msgspec.Meta(max_length=BIO_MAX_LENGTH)]


class ProfilePatch(msgspec.Struct, frozen=True):
    name: DisplayName | None = None
    bio: Bio | None = None


class ProfileForm(msgspec.Struct, frozen=True):
    """The same fields as form fields, which are text or absent (never null)."""

    name: DisplayName | UnsetType = UNSET
    bio: Bio | UnsetType = UNSET

    def patch(self) -> ProfilePatch:
        return ProfilePatch(name=None if self.name is UNSET else self.name, bio=None if self.bio is UNSET else self.bio)


class UserRoutes(RouteGroup):
    def __init__(
        self, users: UserService, auth: Authenticator, media: MediaStore, max_avatar_bytes: int, max_body: int
    ) -> None:
        self.users = users
        self.auth = auth
        self.media = media
        self.max_avatar_bytes = max_avatar_bytes
        self.max_body = max_body

    def endpoints(self) -> list[Endpoint]:
        # The fixed paths come before /users/{ref} so "counts" is never taken for a user.
        return [
            Endpoint(self.profile, Operation(
                method="GET", path="/users/me", summary="The caller's profile", tag="users", response=User,
                errors=(404,),
            )),
            Endpoint(self.update_me, Operation(
                method="PATCH", path="/users/me", summary="Edit the caller's profile", tag="users",
                body=ProfilePatch, form=ProfileForm, response=User, multipart=True, errors=(404, 415),
                description="JSON, or the same fields as multipart/form-data with an optional `avatar` image "
                "(PNG, JPEG, GIF, WebP, AVIF, HEIC; recognised by its bytes; 415 for anything else).",
            )),
            Endpoint(self.counts, Operation(
                method="GET", path="/users/counts", summary="The caller's counts", tag="users", response=Counts,
                errors=(404,),
            )),
            Endpoint(self.my_followers, Operation(
                method="GET", path="/users/followers/list", summary="The caller's followers", tag="users",
                response=Page[User], query=PAGE_QUERY, errors=(404,),
            )),
            Endpoint(self.my_following, Operation(
                method="GET", path="/users/following/list", summary="Whom the caller follows", tag="users",
                response=Page[User], query=PAGE_QUERY, errors=(404,),
            )),
            Endpoint(self.follow, Operation(
                method="POST", path="/users/follow/{ref}", summary="Follow a user (idempotent)", tag="users",
                response=FollowState, errors=(404, 422), description=REF + " 422 when it is the caller.",
            )),
            Endpoint(self.unfollow, Operation(
                method="DELETE", path="/users/follow/{ref}", summary="Unfollow a user (idempotent)", tag="users",
                response=FollowState, errors=(404, 422), description=REF,
            )),
            Endpoint(self.unfollow, Operation(
                method="POST", path="/users/unfollow/{ref}", summary="Alias of DELETE /users/follow/{ref}",
                tag="users", response=FollowState, errors=(404, 422),
                description=REF + " Kept for the original clients.",
            )),
            Endpoint(self.followers, Operation(
                method="GET", path="/users/{ref}/followers", summary="A user's followers", tag="users",
                response=Page[User], query=PAGE_QUERY, errors=(404,), description=REF,
            )),
            Endpoint(self.following, Operation(
                method="GET", path="/users/{ref}/following", summary="Whom a user follows", tag="users",
                response=Page[User], query=PAGE_QUERY, errors=(404,), description=REF,
            )),
            Endpoint(self.presence, Operation(
                method="GET", path="/users/{ref}/presence", summary="Whether a user is online", tag="users",
                response=PresenceView, errors=(404,),
                description="Online while any socket of theirs is open on any instance.",
            )),
            Endpoint(self.profile, Operation(
                method="GET", path="/users/{ref}", summary="A profile", tag="users", response=User, errors=(404,),
                description=REF + " `following`/`followed_by` are there for another user.",
            )),
        ]  # fmt: skip

    async def profile(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.users.profile(viewer, request.path_params.get("ref", "me")))

    async def update_me(self, request: Request) -> Response:
        viewer = await self.auth(request)
        if media_type(request) == "multipart/form-data":
            upload = await read_upload(
                request,
                self.media,
                file_fields=AVATAR_FIELDS,
                max_files=1,
                max_file_bytes=self.max_avatar_bytes,
                kinds=IMAGE_ONLY,
            )
            try:
                patch = validate(upload.fields, ProfileForm).patch()
                avatar = upload.files[0] if upload.files else None
                user = await self.users.update_me(viewer, name=patch.name, bio=patch.bio, avatar=avatar)
            finally:
                await upload.discard()  # a no-op for a committed avatar
            return json_response(user)
        if is_form(request):
            async with request.form(max_files=0, max_fields=10) as form:
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
            patch = validate(fields, ProfileForm).patch()
        else:
            patch = await read_json(request, ProfilePatch, self.max_body)
        return json_response(await self.users.update_me(viewer, name=patch.name, bio=patch.bio))

    async def follow(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.users.follow(viewer, request.path_params["ref"]))

    async def unfollow(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.users.unfollow(viewer, request.path_params["ref"]))

    async def _list(self, request: Request, ref: str, *, followers: bool) -> Response:
        viewer = await self.auth(request)
        page = page_request(request)
        return json_response(await self.users.follow_list(viewer, ref, followers=followers, page=page))

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

    async def presence(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.users.presence(viewer, request.path_params["ref"]))
