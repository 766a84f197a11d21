"""Posts, comments and likes. Every change that others react to writes its event to
the outbox in the same transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec

from socialhub.domain import events
from socialhub.domain.pages import Page, PageRequest, page_of
from socialhub.domain.posts import Comment, LikeState, NewMedia, Post
from socialhub.domain.users import Principal
from socialhub.errors import Forbidden, NotFound, ValidationFailed
from socialhub.infra.media.base import MediaStore, UploadedFile, new_media_key
from socialhub.services.previews import PreviewService
from socialhub.services.readcache import Invalidation, ReadCache
from socialhub.storage.outbox import insert_event
from socialhub.storage.posts import PostStore
from socialhub.storage.units import Units
from socialhub.storage.users import UserStore

logger = logging.getLogger(__name__)


class PostService:
    def __init__(
        self,
        *,
        units: Units,
        posts: PostStore,
        users: UserStore,
        media: MediaStore,
        cache: ReadCache,
        previews: PreviewService,
        fanout_threshold: int,
    ) -> None:
        self.units = units
        self.posts = posts
        self.users = users
        self.media = media
        self.cache = cache
        self.previews = previews
        # Authors with at least this many followers are not fanned out on write.
        self.fanout_threshold = fanout_threshold

    async def _views(self, post_ids: list[int], viewer_id: int) -> list[Post]:
        """The posts that exist among `post_ids`, in that order, as the viewer sees them."""
        found = await self.cache.posts(post_ids, await self.cache.viewer(viewer_id))
        return [found[i] for i in post_ids if i in found]

    async def _view(self, post_id: int, viewer_id: int) -> Post:
        views = await self._views([post_id], viewer_id)
        if not views:
            raise NotFound("no such post")
        return views[0]

    async def create(
        self, viewer: Principal, content: str, files: Sequence[UploadedFile] = (), idempotency_key: str | None = None
    ) -> tuple[Post, bool]:
        """(post, created). Files (and the previews of small images) are committed to the
        media store, then the post, its media rows, its event and the idempotency key in
        one transaction; if that fails the files are deleted again, and a retry with a
        used key gets the first post. Large images' previews are left to the preview
        worker (services/previews.py), woken once the post is committed.
        The text is stored stripped; a post needs text or at least one file (Mastodon's
        rule), else ValidationFailed."""
        content = content.strip()
        if not content and not files:
            raise ValidationFailed(
                "a post needs text or media", fields={"content": "required unless media is attached"}
            )
        if idempotency_key is not None:
            existing = await self.posts.get_post_by_key(viewer.user_id, idempotency_key)
            if existing is not None:
                await self._discard(files)
                return await self._view(existing, viewer.user_id), False
        stored: list[NewMedia] = []
        try:
            for f in files:
                key = new_media_key()
                await self.media.commit(f.staged, key, f.content_type)
                # Committed at once, so that a failure below deletes it with the rest.
                stored.append(NewMedia(key, f.content_type, f.size, f.width, f.height))
                stored[-1] = await self._with_previews(f, stored[-1])
            async with self.units.begin() as uow:
                post = await self.posts.insert_post(
                    uow, viewer.user_id, content, idempotency_key, self.fanout_threshold
                )
                if post.created:
                    if stored:
                        await self.posts.insert_media(uow, post.id, viewer.user_id, stored)
                    await insert_event(uow, events.post_created(viewer.user_id, post.id))
        except BaseException:
            await self._discard(files)
            await self._delete_keys([k for m in stored for k in m.keys])
            raise
        if not post.created:
            await self._delete_keys([k for m in stored for k in m.keys])
        else:
            if not post.fanned_out:
                await self.cache.changed(Invalidation(big_authors=[viewer.user_id]))
            if any(m.previews_pending for m in stored):
                self.previews.wake()
        return await self._view(post.id, viewer.user_id), post.created

    async def _with_previews(self, f: UploadedFile, media: NewMedia) -> NewMedia:
        """`media` with the previews of `f` made now (a small image), or marked for the
        preview worker (a large one), or as it is (not an image Pillow reads)."""
        if not self.previews.wants(f):
            return media
        if not self.previews.inline(f):
            return msgspec.structs.replace(media, previews_pending=True)
        assert f.source is not None
        made = await self.previews.make(f.source, f.content_type)
        if made is None:
            return media
        previews, blurhash = made
        return msgspec.structs.replace(media, previews=previews, blurhash=blurhash)

    async def _discard(self, files: Sequence[UploadedFile]) -> None:
        for f in files:
            try:
                await f.staged.discard()
            except Exception:
                logger.warning("could not discard a staged upload", exc_info=True)

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                await self.media.delete(key)
            except Exception:
                # The orphan sweep removes it later.
                logger.warning("could not delete media %s", key, exc_info=True)

    async def get(self, viewer: Principal, post_id: int) -> Post:
        return await self._view(post_id, viewer.user_id)

    async def user_posts(self, viewer: Principal, author_id: int, page: PageRequest) -> Page[Post]:
        ids = await self.posts.get_user_post_ids(author_id, page.before, page.limit)
        if not ids and author_id not in await self.users.get_existing_user_ids([author_id]):
            raise NotFound("no such user")
        # A post deleted since the ids were read drops out without ending the pages early.
        return Page(items=await self._views(ids, viewer.user_id), next=page_of(ids, ids, page.limit).next)

    async def update(self, viewer: Principal, post_id: int, content: str) -> Post:
        """The post with its text replaced (stripped); only its author may."""
        content = content.strip()
        if not await self.posts.update_post(post_id, viewer.user_id, content):
            author = await self.posts.get_post_author(post_id)
            if author is None:
                raise NotFound("no such post")
            raise Forbidden("only the author may edit a post")
        await self.cache.changed(Invalidation(posts=[post_id]))
        return await self._view(post_id, viewer.user_id)

    async def delete(self, viewer: Principal, post_id: int) -> None:
        async with self.units.begin() as uow:
            keys = await self.posts.delete_post(uow, post_id, viewer.user_id)
            if keys is not None:
                await insert_event(uow, events.post_deleted(viewer.user_id, post_id))
        if keys is None:
            if await self.posts.get_post_author(post_id) is None:
                raise NotFound("no such post")
            raise Forbidden("only the author may delete a post")
        await self.cache.changed(Invalidation(posts=[post_id]))
        await self._delete_keys(keys)

    # -- comments -----------------------------------------------------------------

    async def comment(self, viewer: Principal, post_id: int, content: str) -> Comment:
        """A new comment (its text stripped) on the post."""
        content = content.strip()
        async with self.units.begin() as uow:
            inserted = await self.posts.insert_comment(uow, post_id, viewer.user_id, content)
            await insert_event(
                uow, events.comment_created(viewer.user_id, post_id, inserted.post_author_id, inserted.comment.id)
            )
        await self.cache.changed(Invalidation(posts=[post_id]))
        return Comment.of(inserted.comment)

    async def comments(self, viewer: Principal, post_id: int, after: int | None, limit: int) -> Page[Comment]:
        """Oldest first; `next` is passed back as `after`."""
        records = await self.posts.get_comments(post_id, after, limit)
        if not records and await self.posts.get_post_author(post_id) is None:
            raise NotFound("no such post")
        return page_of([Comment.of(r) for r in records], [r.id for r in records], limit)

    async def edit_comment(self, viewer: Principal, comment_id: int, content: str) -> Comment:
        """The comment with its text replaced (stripped); only its author may."""
        content = content.strip()
        record = await self.posts.update_comment(comment_id, viewer.user_id, content)
        if record is None:
            if await self.posts.get_comment_owners(comment_id) is None:
                raise NotFound("no such comment")
            raise Forbidden("only the comment's author may edit it")
        return Comment.of(record)

    async def delete_comment(self, viewer: Principal, comment_id: int) -> None:
        owners = await self.posts.get_comment_owners(comment_id)
        if owners is None:
            raise NotFound("no such comment")
        if viewer.user_id not in (owners.author_id, owners.post_author_id):
            raise Forbidden("only the comment's author or the post's author may delete it")
        if await self.posts.delete_comment(comment_id):
            await self.cache.changed(Invalidation(posts=[owners.post_id]))

    # -- likes ----------------------------------------------------------------------

    async def like(self, viewer: Principal, post_id: int) -> LikeState:
        """Idempotent; the event is written only when the like is new."""
        async with self.units.begin() as uow:
            like = await self.posts.insert_like(uow, post_id, viewer.user_id)
            if like.changed:
                await insert_event(uow, events.like_created(viewer.user_id, post_id, like.post_author_id))
        if like.changed:
            await self.cache.changed(Invalidation(posts=[post_id], viewers=[viewer.user_id]))
        return LikeState(liked=True, likes_count=like.likes_count)

    async def unlike(self, viewer: Principal, post_id: int) -> LikeState:
        like = await self.posts.delete_like(post_id, viewer.user_id)
        if like.changed:
            await self.cache.changed(Invalidation(posts=[post_id], viewers=[viewer.user_id]))
        return LikeState(liked=False, likes_count=like.likes_count)
