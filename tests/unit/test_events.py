"""The event types on the wire (socialhub/domain/events.py).

The Kafka value of each type is pinned byte for byte: the SPEC's shape, in the order
every version so far has sent it, ids as strings. Reading that value gives the typed
event back; a value that is not one comes out as an `Unreadable`, never an exception.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from socialhub.domain import events
from socialhub.domain.events import (
    CommentCreated,
    CommentData,
    Envelope,
    Event,
    FollowCreated,
    FollowData,
    LikeCreated,
    LikeData,
    NewEvent,
    PostCreated,
    PostData,
    PostDeleted,
    UnfollowCreated,
    Unreadable,
    encode_event,
    event_id_of,
    read_event,
)

WHEN = "2025-01-02T03:04:05.006Z"
HEAD = '{"id":"7001","type":"%s","occurred_at":"2025-01-02T03:04:05.006Z","actor_id":"11",'

# (the event as built, its topic and key, the exact Kafka value)
WIRE: list[tuple[Event, str, str, bytes]] = [
    (
        PostCreated(id="7001", occurred_at=WHEN, actor_id="11", data=PostData(post_id="21", author_id="11")),
        "posts",
        "21",
        (HEAD % "post.created" + '"data":{"post_id":"21","author_id":"11"}}').encode(),
    ),
    (
        PostDeleted(id="7001", occurred_at=WHEN, actor_id="11", data=PostData(post_id="21", author_id="11")),
        "posts",
        "21",
        (HEAD % "post.deleted" + '"data":{"post_id":"21","author_id":"11"}}').encode(),
    ),
    (
        CommentCreated(
            id="7001",
            occurred_at=WHEN,
            actor_id="11",
            data=CommentData(post_id="21", comment_id="31", post_author_id="12"),
        ),
        "posts",
        "21",
        (HEAD % "comment.created" + '"data":{"post_id":"21","comment_id":"31","post_author_id":"12"}}').encode(),
    ),
    (
        LikeCreated(id="7001", occurred_at=WHEN, actor_id="11", data=LikeData(post_id="21", post_author_id="12")),
        "posts",
        "21",
        (HEAD % "like.created" + '"data":{"post_id":"21","post_author_id":"12"}}').encode(),
    ),
    (
        FollowCreated(id="7001", occurred_at=WHEN, actor_id="11", data=FollowData(follower_id="11", followee_id="12")),
        "users",
        "11",
        (HEAD % "follow.created" + '"data":{"follower_id":"11","followee_id":"12"}}').encode(),
    ),
    (
        UnfollowCreated(
            id="7001", occurred_at=WHEN, actor_id="11", data=FollowData(follower_id="11", followee_id="12")
        ),
        "users",
        "11",
        (HEAD % "unfollow.created" + '"data":{"follower_id":"11","followee_id":"12"}}').encode(),
    ),
]

# What each producer function builds, for the same ids: (type, key, actor, data as stored).
BUILT: list[tuple[NewEvent, str, str, int, dict[str, str]]] = [
    (events.post_created(11, 21), "post.created", "21", 11, {"post_id": "21", "author_id": "11"}),
    (events.post_deleted(11, 21), "post.deleted", "21", 11, {"post_id": "21", "author_id": "11"}),
    (
        events.comment_created(11, 21, 12, 31),
        "comment.created",
        "21",
        11,
        {"post_id": "21", "comment_id": "31", "post_author_id": "12"},
    ),
    (events.like_created(11, 21, 12), "like.created", "21", 11, {"post_id": "21", "post_author_id": "12"}),
    (events.follow_created(11, 12), "follow.created", "11", 11, {"follower_id": "11", "followee_id": "12"}),
    (events.unfollow_created(11, 12), "unfollow.created", "11", 11, {"follower_id": "11", "followee_id": "12"}),
]


@pytest.mark.parametrize(("event", "topic", "key", "wire"), WIRE, ids=lambda x: getattr(x, "type", None))
def test_each_type_encodes_to_the_spec_value_and_reads_back(event: Event, topic: str, key: str, wire: bytes) -> None:
    assert encode_event(event) == wire
    value = json.loads(wire)
    assert list(value) == ["id", "type", "occurred_at", "actor_id", "data"]
    assert read_event(topic, key, 7001, value) == Envelope(topic=topic, key=key, event=event)
    assert events.TOPIC_OF[event.type] == topic


def test_every_type_is_pinned() -> None:
    assert {e.type for e, *_ in WIRE} == set(events.EVENT_CLASS) == set(events.TOPIC_OF)
    assert {b[1] for b in BUILT} == set(events.EVENT_CLASS)


@pytest.mark.parametrize(("new", "kind", "key", "actor", "data"), BUILT, ids=lambda x: getattr(x, "type", None))
def test_producers_build_the_stored_parts_as_before(
    new: NewEvent, kind: str, key: str, actor: int, data: dict[str, str]
) -> None:
    """What goes into the outbox row (type, key, actor_id, data JSON) is what the previous
    version wrote, and a row of either version reads back as the typed event."""
    assert (new.type, new.key, new.actor_id, new.topic) == (kind, key, actor, events.TOPIC_OF[kind])
    assert msgspec.to_builtins(new.data) == data
    value = {"id": "7001", "type": kind, "occurred_at": WHEN, "actor_id": str(actor), "data": data}
    read = read_event(new.topic, key, 7001, value)
    assert isinstance(read, Envelope) and type(read.event) is events.EVENT_CLASS[kind]
    assert msgspec.to_builtins(read.event) == value  # what a dead letter keeps, as before


def test_an_event_cannot_carry_another_types_data() -> None:
    with pytest.raises(TypeError, match=r"like\.created carries LikeData"):
        NewEvent("like.created", "21", 11, PostData(post_id="21", author_id="11"))


GOOD: dict[str, Any] = json.loads(WIRE[0][3])


def _with(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (_with(type="post.exploded"), "unknown event type 'post.exploded'"),
        ({k: v for k, v in GOOD.items() if k != "type"}, "unknown event type None"),
        (_with(type=5), "unknown event type 5"),
        (_with(data={"post_id": "21"}), "missing required field `author_id`"),
        (_with(data={"post_id": 21, "author_id": "11"}), "Expected `str`, got `int` - at `$.data.post_id`"),
        (_with(data={"post_id": "x21", "author_id": "11"}), "at `$.data.post_id`"),
        (_with(data={"post_id": "-1", "author_id": "11"}), "at `$.data.post_id`"),
        (_with(data={"post_id": "1" * 20, "author_id": "11"}), "at `$.data.post_id`"),
        (_with(data=["21", "11"]), "Expected `object`, got `array` - at `$.data`"),
        (_with(actor_id="eleven"), "at `$.actor_id`"),
        (_with(occurred_at=None), "at `$.occurred_at`"),
    ],
)
def test_a_value_that_is_not_a_valid_event_is_unreadable(value: dict[str, Any], error: str) -> None:
    read = read_event("posts", "21", 7001, value)
    assert isinstance(read, Unreadable), read
    assert error in read.error
    assert (read.topic, read.key, read.event_id) == ("posts", "21", 7001)
    assert read.event_type == (value["type"] if isinstance(value.get("type"), str) else "")
    assert json.loads(read.value) == value  # kept as it was sent


def test_unknown_fields_are_ignored_so_a_newer_producer_may_add_some() -> None:
    value = _with(trace="abc", data={**GOOD["data"], "visibility": "public"})
    read = read_event("posts", "21", 7001, value)
    assert isinstance(read, Envelope) and read.event == WIRE[0][0]


@pytest.mark.parametrize(
    ("value", "event_id"),
    [
        (GOOD, 7001),
        ({"id": "1"}, 1),
        ({"id": 7001}, None),
        ({"id": "07001"}, None),
        ({"id": ""}, None),
        ({}, None),
        (["7001"], None),
        ("7001", None),
    ],
)
def test_only_a_value_with_a_valid_id_names_an_event(value: Any, event_id: int | None) -> None:
    assert event_id_of(value) == event_id
