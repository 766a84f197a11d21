"""Profiles and the social graph."""

from __future__ import annotations

import logging

import msgspec

from socialhub.domain import events
from socialhub.domain.pages import Page, PageRequest, page_of
from socialhub.domain.protocol import PresenceView
from socialhub.domain.users import Principal, User, at_username
from socialhub.errors import NotFound, ValidationFailed
from socialhub.ids import parse_id
from socialhub.infra.media.base import MediaStore, UploadedFile, new_media_key
from socialhub.services.presence import PresenceService
from socialhub.services.readcache import Invalidation, ReadCache
from socialhub.storage.outbox import insert_event
from socialhub.storage.units import UnitOfWork, Units
from socialhub.storage.users import NewAvatar, Profile, UserStore

logger = logging.getLogger(__name__)


class FollowState(msgspec.Struct, frozen=True):
    following: bool


class Counts(msgspec.Struct, frozen=True):
    followers: int
    following: int


class UserService:
    """Profiles, follows and follower lists."""

    def __init__(
        self,
        *,
        units: Units,
        users: UserStore,
        media: MediaStore,
        media_base: str,
        cache: ReadCache,
        presence: PresenceService,
    ) -> None:
        self.units = units
        self.users = users
        self.media = media
        self.media_base = media_base
        self.cache = cache
        self.presence_service = presence

    async def _resolve(self, viewer: Principal, ref: str) -> int:
        """A user id from a path segment: an id, `@username` or `me`; NotFound otherwise."""
        if ref == "me":
            return viewer.user_id
        if ref.startswith("@"):
            found = await self._by_username(viewer, ref)
            if found is None:
                raise NotFound("no such user")
            return found.user.id
        user_id = parse_id(ref)
        if user_id is None:
            raise NotFound("no such user")
        return user_id

    async def profile(self, viewer: Principal, ref: str) -> User:
        """A User; `following`/`followed_by` when it is someone else."""
        if ref.startswith("@"):
            found = await self._by_username(viewer, ref)
        else:
            found = await self.users.get_profile(viewer.user_id, user_id=await self._resolve(viewer, ref))
        if found is None:
            raise NotFound("no such user")
        return User.of(found.user, None if found.user.id == viewer.user_id else found.relation)

    async def _by_username(self, viewer: Principal, ref: str) -> Profile | None:
        # What cannot be a username (too long, a NUL PostgreSQL refuses) is nobody, unasked.
        username = at_username(ref)
        return None if username is None else await self.users.get_profile(viewer.user_id, username=username)

    async def update_me(
        self, viewer: Principal, *, name: str | None, bio: str | None, avatar: UploadedFile | None = None
    ) -> User:
        """Edit the profile; a new avatar is stored first and the old file deleted after
        the row points at the new one (a crash in between leaves an orphan the janitor
        removes, never a profile pointing at nothing)."""
        new: NewAvatar | None = None
        if avatar is not None:
            key = new_media_key()
            await self.media.commit(avatar.staged, key, avatar.content_type)
            new = NewAvatar(url=f"{self.media_base}/media/{key}", media_key=key)
        try:
            result = await self.users.update_profile(viewer.user_id, name=name, bio=bio, avatar=new)
        except BaseException:
            if new is not None:
                await self.media.delete(new.media_key)
            raise
        if result is None:
            if new is not None:
                await self.media.delete(new.media_key)
            raise NotFound("no such user")
        replaced = result.replaced_avatar_key
        await self.cache.changed(Invalidation(authors=[viewer.user_id]))
        if replaced is not None and replaced != (new.media_key if new else None):
            try:
                await self.media.delete(replaced)
            except Exception:
                logger.warning("could not delete the old avatar %s", replaced, exc_info=True)
        return User.of(result.user)

    async def follow(self, viewer: Principal, ref: str) -> FollowState:
        """Follow the user `ref` names (see `profile`). Idempotent: following twice is one follow."""
        target_id = await self._resolve(viewer, ref)
        if target_id == viewer.user_id:
            raise ValidationFailed("you cannot follow yourself", fields={"id": "cannot follow yourself"})

        async def follow(uow: UnitOfWork) -> None:
            if await self.users.insert_follow(uow, viewer.user_id, target_id):
                await insert_event(uow, events.follow_created(viewer.user_id, target_id))

        await self.units.retrying(follow)
        await self.cache.changed(Invalidation(viewers=[viewer.user_id]))
        return FollowState(following=True)

    async def unfollow(self, viewer: Principal, ref: str) -> FollowState:
        """Unfollow the user `ref` names. Idempotent (a soft delete)."""
        target_id = await self._resolve(viewer, ref)
        if target_id == viewer.user_id:
            raise ValidationFailed("you cannot unfollow yourself", fields={"id": "cannot unfollow yourself"})
        if await self.users.get_user(target_id) is None:
            raise NotFound("no such user")

        async def unfollow(uow: UnitOfWork) -> None:
            if await self.users.delete_follow(uow, viewer.user_id, target_id):
                await insert_event(uow, events.unfollow_created(viewer.user_id, target_id))

        await self.units.retrying(unfollow)
        await self.cache.changed(Invalidation(viewers=[viewer.user_id]))
        return FollowState(following=False)

    async def follow_list(self, viewer: Principal, ref: str, *, followers: bool, page: PageRequest) -> Page[User]:
        """The followers of the user `ref` names, or whom they follow; newest follow first."""
        user_id = await self._resolve(viewer, ref)
        if await self.users.get_user(user_id) is None:
            raise NotFound("no such user")
        entries = await self.users.get_follow_list(
            user_id, viewer.user_id, followers=followers, before=page.before, limit=page.limit
        )
        items = [User.of(e.user, None if e.user.id == viewer.user_id else e.relation) for e in entries]
        return page_of(items, [e.follow_id for e in entries], page.limit)

    async def presence(self, viewer: Principal, ref: str) -> PresenceView:
        """Whether the user `ref` names is online (PresenceService.status); NotFound for nobody."""
        user_id = await self._resolve(viewer, ref)
        if user_id not in await self.users.get_existing_user_ids([user_id]):
            raise NotFound("no such user")
        return (await self.presence_service.status([user_id]))[0]

    async def counts(self, viewer: Principal) -> Counts:
        user = await self.users.get_user(viewer.user_id)
        if user is None:
            raise NotFound("no such user")
        return Counts(followers=user.followers_count, following=user.following_count)
