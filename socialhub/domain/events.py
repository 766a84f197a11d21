"""Durable events (SPEC, Events): what is written to the outbox and sent on Kafka.

Value on the wire: {"id", "type", "occurred_at", "actor_id", "data"}; key: the post id
(posts topic) or the follower id (users topic). Ids are strings, as everywhere.
"""

from __future__ import annotations

from typing import Any

import msgspec

POSTS = "posts"  # logical topic names; Kafka topic names come from config
USERS = "users"

POST_CREATED = "post.created"
POST_DELETED = "post.deleted"
COMMENT_CREATED = "comment.created"
LIKE_CREATED = "like.created"
FOLLOW_CREATED = "follow.created"
UNFOLLOW_CREATED = "unfollow.created"

TOPIC_OF: dict[str, str] = {
    POST_CREATED: POSTS,
    POST_DELETED: POSTS,
    COMMENT_CREATED: POSTS,
    LIKE_CREATED: POSTS,
    FOLLOW_CREATED: USERS,
    UNFOLLOW_CREATED: USERS,
}


class NewEvent(msgspec.Struct, frozen=True):
    """An event to write to the outbox (id and time are given by the database)."""

    type: str
    key: str
    actor_id: int
    data: dict[str, Any]

    @property
    def topic(self) -> str:
        return TOPIC_OF[self.type]


class Event(msgspec.Struct, frozen=True):
    """An event as stored and as sent: the SPEC's value, plus its topic and key."""

    id: str
    type: str
    occurred_at: str
    actor_id: str
    data: dict[str, Any]

    @property
    def event_id(self) -> int:
        return int(self.id)


class Envelope(msgspec.Struct, frozen=True):
    """An event with where it goes."""

    topic: str
    key: str
    event: Event


def post_created(author_id: int, post_id: int) -> NewEvent:
    return NewEvent(POST_CREATED, str(post_id), author_id, {"post_id": str(post_id), "author_id": str(author_id)})


def post_deleted(author_id: int, post_id: int) -> NewEvent:
    return NewEvent(POST_DELETED, str(post_id), author_id, {"post_id": str(post_id), "author_id": str(author_id)})


def comment_created(author_id: int, post_id: int, post_author_id: int, comment_id: int) -> NewEvent:
    return NewEvent(
        COMMENT_CREATED,
        str(post_id),
        author_id,
        {"post_id": str(post_id), "comment_id": str(comment_id), "post_author_id": str(post_author_id)},
    )


def like_created(user_id: int, post_id: int, post_author_id: int) -> NewEvent:
    return NewEvent(
        LIKE_CREATED, str(post_id), user_id, {"post_id": str(post_id), "post_author_id": str(post_author_id)}
    )


def follow_created(follower_id: int, followee_id: int) -> NewEvent:
    return NewEvent(
        FOLLOW_CREATED,
        str(follower_id),
        follower_id,
        {"follower_id": str(follower_id), "followee_id": str(followee_id)},
    )


def unfollow_created(follower_id: int, followee_id: int) -> NewEvent:
    return NewEvent(
        UNFOLLOW_CREATED,
        str(follower_id),
        follower_id,
        {"follower_id": str(follower_id), "followee_id": str(followee_id)},
    )
