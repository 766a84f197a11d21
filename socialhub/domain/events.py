"""Durable events (SPEC, Events): what is written to the outbox and sent on Kafka.

Value on the wire: {"id", "type", "occurred_at", "actor_id", "data"}; key: the post id
(posts topic) or the follower id (users topic). Ids are strings, as everywhere.

Each event type is a frozen Struct, and `Event` is their union, told apart by `type`:
producers build them through the functions at the end (`post_created(...)`, ...),
readers turn what they read into them with `read_event`, and consumers `match` on the
class. `type` is an ordinary field (a `Literal`, one per class) rather than msgspec's
`tag=`, which would encode it first: this way the bytes are those the SPEC shows, and
those every earlier version sent (tests/unit/test_events.py pins them).

An event this version cannot read (a type it does not know, data that does not fit)
becomes an `Unreadable`: the readers hand it to the dead-letter machinery, which keeps
it as it was sent, so a later version can replay it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

POSTS: Final = "posts"  # logical topic names; Kafka topic names come from config
USERS: Final = "users"

POST_CREATED: Final = "post.created"
POST_DELETED: Final = "post.deleted"
COMMENT_CREATED: Final = "comment.created"
LIKE_CREATED: Final = "like.created"
FOLLOW_CREATED: Final = "follow.created"
UNFOLLOW_CREATED: Final = "unfollow.created"

EventType = Literal[
    "post.created", "post.deleted", "comment.created", "like.created", "follow.created", "unfollow.created"
]

# A snowflake id as a JSON string: decimal, no sign, no leading zero, at most 19 digits
# (ids are PostgreSQL bigints). Checked when an event is read, so `int()` of it is safe.
Id = Annotated[str, msgspec.Meta(pattern=r"^(0|[1-9][0-9]{0,18})$")]


# -- data: the "data" object of each type ---------------------------------------------


class PostData(msgspec.Struct, frozen=True):
    """Data of post.created and post.deleted."""

    post_id: Id
    author_id: Id


class CommentData(msgspec.Struct, frozen=True):
    """Data of comment.created."""

    post_id: Id
    comment_id: Id
    post_author_id: Id


class LikeData(msgspec.Struct, frozen=True):
    """Data of like.created."""

    post_id: Id
    post_author_id: Id


class FollowData(msgspec.Struct, frozen=True):
    """Data of follow.created and unfollow.created."""

    follower_id: Id
    followee_id: Id


EventData = PostData | CommentData | LikeData | FollowData


# -- events: the whole value ----------------------------------------------------------


class _Event(msgspec.Struct, frozen=True, kw_only=True):
    """The fields every event has, in wire order (`type` is narrowed by each class)."""

    id: Id
    type: str
    occurred_at: str
    actor_id: Id

    @property
    def event_id(self) -> int:
        return int(self.id)


class PostCreated(_Event, frozen=True, kw_only=True):
    """A post was created (actor: its author). Feed fan-out adds it to the followers'
    timelines; the author is notified that it is out (`post`)."""

    type: Literal["post.created"] = "post.created"
    data: PostData


class PostDeleted(_Event, frozen=True, kw_only=True):
    """A post was deleted (actor: its author). Feed fan-out takes it out of the timelines."""

    type: Literal["post.deleted"] = "post.deleted"
    data: PostData


class CommentCreated(_Event, frozen=True, kw_only=True):
    """A comment was made on a post (actor: the commenter). The post's author is
    notified (`comment`), unless they commented themselves."""

    type: Literal["comment.created"] = "comment.created"
    data: CommentData


class LikeCreated(_Event, frozen=True, kw_only=True):
    """A post was liked (actor: the liker). The post's author is notified (`like`),
    unless they liked their own post."""

    type: Literal["like.created"] = "like.created"
    data: LikeData


class FollowCreated(_Event, frozen=True, kw_only=True):
    """A user followed another (actor: the follower). The followee is notified (`follow`);
    the followee's recent posts enter the follower's timeline."""

    type: Literal["follow.created"] = "follow.created"
    data: FollowData


class UnfollowCreated(_Event, frozen=True, kw_only=True):
    """A user stopped following another (actor: the follower). The followee's posts leave
    the follower's timeline."""

    type: Literal["unfollow.created"] = "unfollow.created"
    data: FollowData


Event = PostCreated | PostDeleted | CommentCreated | LikeCreated | FollowCreated | UnfollowCreated

EVENT_CLASS: dict[str, type[Event]] = {
    POST_CREATED: PostCreated,
    POST_DELETED: PostDeleted,
    COMMENT_CREATED: CommentCreated,
    LIKE_CREATED: LikeCreated,
    FOLLOW_CREATED: FollowCreated,
    UNFOLLOW_CREATED: UnfollowCreated,
}

TOPIC_OF: dict[str, str] = {
    POST_CREATED: POSTS,
    POST_DELETED: POSTS,
    COMMENT_CREATED: POSTS,
    LIKE_CREATED: POSTS,
    FOLLOW_CREATED: USERS,
    UNFOLLOW_CREATED: USERS,
}

_DATA_OF: dict[str, type[EventData]] = {
    POST_CREATED: PostData,
    POST_DELETED: PostData,
    COMMENT_CREATED: CommentData,
    LIKE_CREATED: LikeData,
    FOLLOW_CREATED: FollowData,
    UNFOLLOW_CREATED: FollowData,
}


class NewEvent(msgspec.Struct, frozen=True):
    """An event to write to the outbox (id and time are given by the database)."""

    type: EventType
    key: str
    actor_id: int
    data: EventData

    def __post_init__(self) -> None:
        if not isinstance(self.data, _DATA_OF[self.type]):
            raise TypeError(f"{self.type} carries {_DATA_OF[self.type].__name__}, not {type(self.data).__name__}")

    @property
    def topic(self) -> str:
        return TOPIC_OF[self.type]


class Envelope(msgspec.Struct, frozen=True):
    """An event with where it goes."""

    topic: str
    key: str
    event: Event

    @property
    def event_id(self) -> int:
        return self.event.event_id

    @property
    def event_type(self) -> str:
        return self.event.type


class Unreadable(msgspec.Struct, frozen=True):
    """What a reader found where an event should be, but could not read as one: poison
    for the dead-letter machinery, never handed to a consumer."""

    topic: str
    key: str
    event_id: int
    event_type: str  # as given; "" when there is none
    value: bytes  # the JSON value as sent (or as the relay would send it)
    error: str  # why it is not an event


# -- reading --------------------------------------------------------------------------


def event_id_of(value: Any) -> int | None:
    """The event id of a decoded JSON value, if it has a valid one (without it a value
    is not an event at all: nothing can even name it)."""
    if not isinstance(value, dict):
        return None
    raw = value.get("id")
    if not isinstance(raw, str):
        return None
    try:
        return int(msgspec.convert(raw, Id))
    except msgspec.ValidationError:
        return None


def read_event(topic: str, key: str, event_id: int, value: Any) -> Envelope | Unreadable:
    """The event in a decoded JSON value (`{"id", "type", ...}`), or why it is not one."""
    kind = value.get("type") if isinstance(value, dict) else None
    cls = EVENT_CLASS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        error = f"unknown event type {kind!r}"
    else:
        try:
            return Envelope(topic=topic, key=key, event=msgspec.convert(value, cls))
        except msgspec.ValidationError as exc:
            error = f"invalid {kind} event: {exc}"
    return Unreadable(
        topic=topic,
        key=key,
        event_id=event_id,
        event_type=kind if isinstance(kind, str) else "",
        value=msgspec.json.encode(value),
        error=error,
    )


# -- building (the producers) ---------------------------------------------------------


def post_created(author_id: int, post_id: int) -> NewEvent:
    return NewEvent(POST_CREATED, str(post_id), author_id, PostData(post_id=str(post_id), author_id=str(author_id)))


def post_deleted(author_id: int, post_id: int) -> NewEvent:
    return NewEvent(POST_DELETED, str(post_id), author_id, PostData(post_id=str(post_id), author_id=str(author_id)))


def comment_created(author_id: int, post_id: int, post_author_id: int, comment_id: int) -> NewEvent:
    data = CommentData(post_id=str(post_id), comment_id=str(comment_id), post_author_id=str(post_author_id))
    return NewEvent(COMMENT_CREATED, str(post_id), author_id, data)


def like_created(user_id: int, post_id: int, post_author_id: int) -> NewEvent:
    data = LikeData(post_id=str(post_id), post_author_id=str(post_author_id))
    return NewEvent(LIKE_CREATED, str(post_id), user_id, data)


def follow_created(follower_id: int, followee_id: int) -> NewEvent:
    data = FollowData(follower_id=str(follower_id), followee_id=str(followee_id))
    return NewEvent(FOLLOW_CREATED, str(follower_id), follower_id, data)


def unfollow_created(follower_id: int, followee_id: int) -> NewEvent:
    data = FollowData(follower_id=str(follower_id), followee_id=str(followee_id))
    return NewEvent(UNFOLLOW_CREATED, str(follower_id), follower_id, data)


# -- the wire --------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    """The Kafka value of `event` (and what a dead letter keeps)."""
    return _encoder.encode(event)
