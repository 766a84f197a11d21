"""Users, sessions and the social graph: stored records and their public views."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

from socialhub.domain.time import rfc3339
from socialhub.ids import ID_REGEX

USERNAME_REGEX = "[A-Za-z0-9_]{3,30}"  # SPEC
# `$(?!\n)`: a bare `$` also matches before a final newline in Python's re (msgspec's).
USERNAME_PATTERN = f"^{USERNAME_REGEX}$(?!\n)"
# A user in a path: an id, `@username` or `me` (the caller).
USER_REF_PATTERN = f"^(?:{ID_REGEX}|@{USERNAME_REGEX}|me)$"
_AT_USERNAME = re.compile(f"@({USERNAME_REGEX})")
# SPEC: a password has 8..128 characters. 8 is NIST SP 800-63B's minimum; the maximum
# bounds the work of hashing one (argon2 takes any length).
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128
# Display names and bios, our choice where SPEC is silent: a bio as long as Mastodon's
# (500); a name longer than Mastodon's 30, for full names in any script.
NAME_MAX_LENGTH = 100
BIO_MAX_LENGTH = 500
# A display name: not blank, at most NAME_MAX_LENGTH characters.
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX_LENGTH, pattern=r"\S")]


def at_username(ref: str) -> str | None:
    """The username of an `@username` reference; None when `ref` is not one."""
    m = _AT_USERNAME.fullmatch(ref)
    return m.group(1) if m else None


class UserRecord(msgspec.Struct, frozen=True):
    """A users row."""

    id: int
    username: str
    email: str
    name: str
    bio: str
    avatar_url: str | None
    password_hash: str
    followers_count: int
    following_count: int
    posts_count: int
    created_at: datetime


class Relation(msgspec.Struct, frozen=True):
    """How the viewer relates to a user."""

    following: bool
    followed_by: bool


class UserSummary(msgspec.Struct, frozen=True):
    """The short form embedded in posts, comments, messages and notifications."""

    id: str
    username: str
    name: str
    avatar_url: str | None

    @classmethod
    def of(cls, u: UserRecord) -> UserSummary:
        return cls(id=str(u.id), username=u.username, name=u.name, avatar_url=u.avatar_url)


class User(msgspec.Struct, frozen=True):
    """The User object of SPEC: `following`/`followed_by` only for another signed-in
    user, `email` only on /auth/me."""

    id: str
    username: str
    name: str
    bio: str
    avatar_url: str | None
    created_at: str
    followers_count: int
    following_count: int
    posts_count: int
    following: bool | UnsetType = UNSET
    followed_by: bool | UnsetType = UNSET
    email: str | UnsetType = UNSET

    @classmethod
    def of(cls, u: UserRecord, relation: Relation | None = None, *, with_email: bool = False) -> User:
        return cls(
            id=str(u.id),
            username=u.username,
            name=u.name,
            bio=u.bio,
            avatar_url=u.avatar_url,
            created_at=rfc3339(u.created_at),
            followers_count=u.followers_count,
            following_count=u.following_count,
            posts_count=u.posts_count,
            following=relation.following if relation else UNSET,
            followed_by=relation.followed_by if relation else UNSET,
            email=u.email if with_email else UNSET,
        )


class SessionRecord(msgspec.Struct, frozen=True):
    """A sessions row: one signed-in device."""

    id: int
    user_id: int
    expires_at: datetime
    revoked_at: datetime | None


class Principal(msgspec.Struct, frozen=True):
    """Who is making a request: the authenticated user and session."""

    user_id: int
    session_id: int


class PasswordReset(msgspec.Struct, frozen=True):
    """A password_resets row."""

    user_id: int
    otp_hash: bytes
    expires_at: datetime
    attempts: int
    spent_at: datetime | None


class FollowEntry(msgspec.Struct, frozen=True):
    """One row of a followers/following list: the follow's id is the page cursor."""

    follow_id: int
    user: UserRecord
    relation: Relation
