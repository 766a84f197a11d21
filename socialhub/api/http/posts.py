"""/posts/*: posts (JSON or multipart with media), comments and likes."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from socialhub.api.http.codec import json_response, media_type, page_request, path_id, read_json, validate
from socialhub.api.http.openapi import PAGE_QUERY
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.api.http.security import Authenticator
from socialhub.api.http.uploads import MEDIA_FIELDS, read_upload
from socialhub.config import MediaSettings
from socialhub.domain.pages import Page
from socialhub.domain.posts import IDEMPOTENCY_KEY_PATTERN, MAX_COMMENT_CHARS, MAX_POST_CHARS, Comment, LikeState, Post
from socialhub.domain.users import Principal
from socialhub.infra.media.base import MediaStore
from socialhub.services.posts import PostService

PostText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_POST_CHARS, pattern=r"\S")]
CommentText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_COMMENT_CHARS, pattern=r"\S")]


class PostBody(msgspec.Struct, frozen=True):
    """A JSON post: its text is all there is, so it may not be blank."""

    content: PostText


class PostForm(msgspec.Struct, frozen=True):
    """The text of a multipart post, which may be empty when files come with it (the
    service refuses a post with neither)."""

    content: Annotated[str, msgspec.Meta(max_length=MAX_POST_CHARS)] = ""


class PostEdit(msgspec.Struct, frozen=True):
    content: PostText


class CommentBody(msgspec.Struct, frozen=True):
    content: CommentText


class IdempotencyKey(msgspec.Struct, frozen=True):
    key: Annotated[str, msgspec.Meta(pattern=IDEMPOTENCY_KEY_PATTERN)]


class PostRoutes(RouteGroup):
    def __init__(
        self, posts: PostService, auth: Authenticator, media: MediaStore, limits: MediaSettings, max_body: int
    ) -> None:
        self.posts = posts
        self.auth = auth
        self.media = media
        self.limits = limits
        self.max_body = max_body

    def endpoints(self) -> list[Endpoint]:
        create = (
            "JSON `{content}`, or multipart/form-data with `content` and up to 10 files in `media` (or `file`), "
            "10 MB each: images, video, audio, recognised by their bytes (413 for a file too big or too many, "
            "415 for another kind). The schema shows the form without files, where `content` may not be blank; "
            "with files it may be. With an `Idempotency-Key` header a retry answers 200 with the post the first "
            "request made."
        )
        # Fixed paths before /posts/{id}.
        return [
            Endpoint(self.create, Operation(
                method="POST", path="/posts/", summary="Create a post", tag="posts", body=PostBody, response=Post,
                status=201, multipart=True, also=(200,), headers=("Idempotency-Key",), description=create,
            )),
            Endpoint(self.create, Operation(
                method="POST", path="/posts", summary="Create a post (no trailing slash)", tag="posts",
                body=PostBody, response=Post, status=201, multipart=True, also=(200,), headers=("Idempotency-Key",),
            )),
            Endpoint(self.my_posts, Operation(
                method="GET", path="/posts/getall", summary="The caller's posts (original clients)", tag="posts",
                response=Page[Post], query=PAGE_QUERY,
            )),
            Endpoint(self.user_posts, Operation(
                method="GET", path="/posts/user/{user_id}", summary="A user's posts, newest first", tag="posts",
                response=Page[Post], query=PAGE_QUERY, errors=(404,),
            )),
            # One path, as the original routes had it: `id` is the post's for POST and the
            # comment's for PATCH and DELETE (OpenAPI holds paths that differ only in a
            # parameter's name to be the same path).
            Endpoint(self.comment, Operation(
                method="POST", path="/posts/comment/{id}", summary="Comment on a post", tag="posts",
                body=CommentBody, response=Comment, status=201, description="`id` is the post's.",
            )),
            Endpoint(self.edit_comment, Operation(
                method="PATCH", path="/posts/comment/{id}", summary="Edit a comment (its author)", tag="posts",
                body=CommentBody, response=Comment, errors=(403,), description="`id` is the comment's.",
            )),
            Endpoint(self.delete_comment, Operation(
                method="DELETE", path="/posts/comment/{id}", summary="Delete a comment (its author or the post's)",
                tag="posts", status=204, errors=(403,), description="`id` is the comment's.",
            )),
            Endpoint(self.like, Operation(
                method="POST", path="/posts/like/{post_id}", summary="Like (idempotent)", tag="posts",
                response=LikeState, errors=(404,),
            )),
            Endpoint(self.unlike, Operation(
                method="DELETE", path="/posts/like/{post_id}", summary="Unlike (idempotent)", tag="posts",
                response=LikeState, errors=(404,),
            )),
            Endpoint(self.unlike, Operation(
                method="PATCH", path="/posts/like/{post_id}", summary="Unlike (original clients)", tag="posts",
                response=LikeState, errors=(404,),
            )),
            Endpoint(self.comments, Operation(
                method="GET", path="/posts/{post_id}/comments", summary="A post's comments, oldest first",
                tag="posts", response=Page[Comment], query=("limit", "after"), errors=(404,),
                description="`next` is passed back as `after`.",
            )),
            Endpoint(self.get, Operation(
                method="GET", path="/posts/{id}", summary="A post", tag="posts", response=Post, errors=(404,),
            )),
            Endpoint(self.edit, Operation(
                method="PATCH", path="/posts/{id}", summary="Edit a post (its author)", tag="posts", body=PostEdit,
                response=Post, errors=(403, 404),
            )),
            Endpoint(self.delete, Operation(
                method="DELETE", path="/posts/{id}", summary="Delete a post (its author)", tag="posts", status=204,
                errors=(403, 404), description="It leaves every feed too.",
            )),
        ]  # fmt: skip

    async def create(self, request: Request) -> Response:
        viewer = await self.auth(request)
        key = request.headers.get("idempotency-key")
        if key is not None:
            key = validate({"key": key}, IdempotencyKey).key
        if media_type(request) == "multipart/form-data":
            upload = await read_upload(
                request,
                self.media,
                file_fields=MEDIA_FIELDS,
                max_files=self.limits.max_files,
                max_file_bytes=self.limits.max_file_bytes,
            )
            try:
                content = validate({"content": upload.fields.get("content", "")}, PostForm).content
                post, created = await self.posts.create(viewer, content, upload.files, key)
            finally:
                await upload.discard()  # a no-op for the files the service committed
        else:
            content = (await read_json(request, PostBody, self.max_body)).content
            post, created = await self.posts.create(viewer, content, (), key)
        return json_response(post, 201 if created else 200)

    async def get(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.posts.get(viewer, path_id(request, "id", "post")))

    async def _list(self, request: Request, viewer: Principal, author_id: int) -> Response:
        return json_response(await self.posts.user_posts(viewer, author_id, page_request(request)))

    async def user_posts(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return await self._list(request, viewer, path_id(request, "user_id", "user"))

    async def my_posts(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return await self._list(request, viewer, viewer.user_id)

    async def edit(self, request: Request) -> Response:
        viewer = await self.auth(request)
        post_id = path_id(request, "id", "post")
        body = await read_json(request, PostEdit, self.max_body)
        return json_response(await self.posts.update(viewer, post_id, body.content))

    async def delete(self, request: Request) -> Response:
        viewer = await self.auth(request)
        await self.posts.delete(viewer, path_id(request, "id", "post"))
        return Response(status_code=204)

    async def comment(self, request: Request) -> Response:
        viewer = await self.auth(request)
        post_id = path_id(request, "id", "post")
        body = await read_json(request, CommentBody, self.max_body)
        return json_response(await self.posts.comment(viewer, post_id, body.content), 201)

    async def comments(self, request: Request) -> Response:
        viewer = await self.auth(request)
        post_id = path_id(request, "post_id", "post")
        page = page_request(request, cursor="after")
        return json_response(await self.posts.comments(viewer, post_id, page.before, page.limit))

    async def edit_comment(self, request: Request) -> Response:
        viewer = await self.auth(request)
        comment_id = path_id(request, "id", "comment")
        body = await read_json(request, CommentBody, self.max_body)
        return json_response(await self.posts.edit_comment(viewer, comment_id, body.content))

    async def delete_comment(self, request: Request) -> Response:
        viewer = await self.auth(request)
        await self.posts.delete_comment(viewer, path_id(request, "id", "comment"))
        return Response(status_code=204)

    async def like(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.posts.like(viewer, path_id(request, "post_id", "post")))

    async def unlike(self, request: Request) -> Response:
        viewer = await self.auth(request)
        return json_response(await self.posts.unlike(viewer, path_id(request, "post_id", "post")))
