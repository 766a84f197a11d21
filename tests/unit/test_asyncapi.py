"""The AsyncAPI document: valid AsyncAPI 3.0 (the official JSON Schema, vendored in
tests/asyncapi/), every reference resolves, and it says exactly what the protocol module
and the event types say: every frame both ways with its fields, every close code, every
event on its topic, and nothing else."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import msgspec
import pytest

from socialhub.api.http.asyncapi import always_sent, build_asyncapi, constant_notes
from socialhub.api.ws.dispatch import Dispatcher
from socialhub.app import create_app
from socialhub.config import load_settings, with_overrides
from socialhub.domain import events, protocol
from socialhub.domain.users import UserSummary
from tests.conftest import TEST_SECRET
from tests.jsonrefs import refs, resolve

SCHEMA_FILE = Path(__file__).parent.parent / "asyncapi" / "asyncapi-3.0.0.schema.json"
TOPICS = {events.POSTS: "posts", events.USERS: "users"}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    # The official schema bundles every definition it refers to under its own $id, so
    # the validator resolves them all offline.
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_asyncapi(TOPICS)


def test_the_document_is_valid_asyncapi_3(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    validator.validate(doc)
    # The validator really looks inside: a wrong action, a bad binding, a missing address.
    for path, value in (
        (("operations", "client_ping", "action"), "publish"),
        (("channels", "socket", "bindings", "ws", "method"), "PUT"),
        (("components", "messages", "PostCreated", "bindings", "kafka", "bindingVersion"), "9.9.9"),
    ):
        broken = copy.deepcopy(doc)
        node = broken
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        assert not validator.is_valid(broken), path


def test_the_document_speaks_for_itself(doc: dict[str, Any]) -> None:
    """It is read by people without this repository's other files: no "SPEC:" marks."""
    assert "SPEC" not in json.dumps(doc)
    socket = doc["channels"]["socket"]["description"]
    assert "30 frames a second, bursts of 60" in socket


def test_every_ref_resolves_and_operations_use_their_channels_messages(doc: dict[str, Any]) -> None:
    found = refs(doc)
    assert len(found) > 50
    for ref in found:
        resolve(doc, ref)
    # AsyncAPI 3.0: an operation's messages are messages of its channel.
    for name, op in doc["operations"].items():
        channel = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), name


def fields_of(struct: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(struct)}


def payload_of(doc: dict[str, Any], message_ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    message = resolve(doc, resolve(doc, message_ref)["$ref"])
    return message, resolve(doc, message["payload"]["$ref"])


def test_every_frame_both_ways_and_nothing_else(doc: dict[str, Any]) -> None:
    socket = doc["channels"]["socket"]
    assert socket["address"] == "/ws"
    frames = {*protocol.CLIENT_FRAMES, *protocol.SERVER_FRAMES}
    assert set(socket["messages"]) == {f.__name__ for f in frames}
    for direction, action, structs in (
        ("client", "receive", protocol.CLIENT_FRAMES),
        ("server", "send", protocol.SERVER_FRAMES),
    ):
        ops = {
            name: op
            for name, op in doc["operations"].items()
            if op["channel"]["$ref"] == "#/channels/socket" and op["action"] == action
        }
        listed = {m["$ref"].rsplit("/", 1)[1] for op in ops.values() for m in op["messages"]}
        assert listed == {s.__name__ for s in structs}, direction
        for struct in structs:
            tag = struct.__struct_config__.tag
            assert f"{direction}_{tag}" in ops
            message, payload = payload_of(doc, f"#/channels/socket/messages/{struct.__name__}")
            assert message["name"] == tag
            assert set(payload["properties"]) == fields_of(struct) | {"type"}, struct.__name__
            assert payload["properties"]["type"] == {"enum": [tag]}
            assert "type" in payload["required"]
            assert message["summary"] and message["description"], struct.__name__
    # What a client may leave out stays optional; what the server always writes is required.
    _, join = payload_of(doc, "#/channels/socket/messages/JoinRoom")
    assert set(join["required"]) == {"type", "room_id"}
    _, joined = payload_of(doc, "#/channels/socket/messages/Joined")
    assert set(joined["required"]) == {"type", "room_id", "last_seq"}  # ref only when the frame had one
    _, error = payload_of(doc, "#/channels/socket/messages/Error")
    assert set(error["required"]) == {"type", "code", "message"}


def test_every_client_frame_names_its_replies(doc: dict[str, Any]) -> None:
    """protocol.REPLIES covers every client frame (those the dispatcher serves and
    `authenticate`), answers with server frames only, and the operations say the same."""
    assert set(protocol.REPLIES) == set(protocol.CLIENT_FRAMES)
    assert set(Dispatcher.HANDLERS) | {protocol.Authenticate} == set(protocol.REPLIES)
    for frame, answers in protocol.REPLIES.items():
        assert set(answers) <= set(protocol.SERVER_FRAMES) and protocol.Error in answers, frame.__name__
        reply = doc["operations"][f"client_{frame.__struct_config__.tag}"]["reply"]
        assert reply["channel"] == {"$ref": "#/channels/socket"}
        assert [m["$ref"].rsplit("/", 1)[1] for m in reply["messages"]] == [a.__name__ for a in answers]
    assert protocol.REPLIES[protocol.JoinRoom] == (protocol.Joined, protocol.Error)
    assert not any("reply" in op for name, op in doc["operations"].items() if not name.startswith("client_"))


def test_every_close_code_is_described(doc: dict[str, Any]) -> None:
    socket = doc["channels"]["socket"]
    expected = {
        name: value
        for name in dir(protocol)
        if name.startswith("CLOSE_") and isinstance(value := getattr(protocol, name), int)
    }
    assert {c["name"]: c["code"] for c in socket["x-close-codes"]} == expected
    assert {1000, 1008, 1009, 1012, 1013, 4401} <= set(expected.values())
    notes = constant_notes(protocol)
    for code in socket["x-close-codes"]:
        assert code["description"] == notes[code["name"]] and len(code["description"]) > 10, code
        assert f"| {code['code']} | " in socket["description"]
    assert socket["x-close-after-error"] == protocol.CLOSE_CODES
    limits = {limit["name"]: limit["value"] for limit in socket["x-limits"]}
    assert limits["MAX_FRAME_BYTES"] == 64 * 1024 and limits["AUTH_TIMEOUT_SECONDS"] == 10.0


def test_every_event_on_its_topic(doc: dict[str, Any]) -> None:
    named = build_asyncapi({events.POSTS: "sh.posts", events.USERS: "sh.users"}, bootstrap_servers="k1:9092,k2:9092")
    assert named["channels"]["posts"]["address"] == "sh.posts"
    assert named["channels"]["users"]["bindings"]["kafka"]["topic"] == "sh.users"
    assert named["servers"]["kafka"]["host"] == "k1:9092,k2:9092"
    for logical in (events.POSTS, events.USERS):
        channel = doc["channels"][logical]
        expected = {cls.__name__: t for t, cls in events.EVENT_CLASS.items() if events.TOPIC_OF[t] == logical}
        assert set(channel["messages"]) == set(expected)
        for name, event_type in expected.items():
            message, payload = payload_of(doc, f"#/channels/{logical}/messages/{name}")
            assert message["name"] == event_type and message["summary"] and message["description"]
            assert message["bindings"]["kafka"]["key"]["type"] == "string"
            struct = events.EVENT_CLASS[event_type]
            assert set(payload["properties"]) == fields_of(struct)
            assert set(payload["required"]) == fields_of(struct)  # the relay writes every field
            assert payload["properties"]["type"]["enum"] == [event_type]
        actions = {
            op["action"] for op in doc["operations"].values() if op["channel"]["$ref"] == f"#/channels/{logical}"
        }
        assert actions == {"send", "receive"}
    assert set(doc["channels"]) == {"socket", events.POSTS, events.USERS}
    with pytest.raises(ValueError, match="users"):
        build_asyncapi({events.POSTS: "posts"})


def _payload_validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**doc, "$ref": f"#/components/schemas/{name}"})


def test_payload_schemas_accept_what_the_code_encodes(doc: dict[str, Any]) -> None:
    ann = UserSummary(id="1", username="ann", name="Ann", avatar_url=None)
    event = msgspec.convert(
        {
            "id": "7",
            "occurred_at": "2026-01-02T03:04:05.006Z",
            "actor_id": "1",
            "data": {"post_id": "9", "author_id": "1"},
        },
        events.PostCreated,
    )
    samples: list[tuple[str, msgspec.Struct]] = [
        ("JoinRoom", protocol.JoinRoom(room_id="5", since_seq=3, ref="r1")),
        ("Authenticate", protocol.Authenticate(token="t")),
        ("Authenticated", protocol.Authenticated(user_id="1", session_id="2")),
        ("Joined", protocol.Joined(room_id="5", last_seq=0)),
        ("Error", protocol.Error(code="forbidden", message="not a member", ref="r1")),
        ("Ack", protocol.Ack(ref="r2")),
        ("PresenceView", protocol.PresenceView(user_id="1", status="offline", last_seen=None)),
        ("CallEnded", protocol.CallEnded(call_id="3", reason="busy")),
        ("PostCreated", event),
    ]
    assert ann.username == "ann"
    for name, value in samples:
        _payload_validator(doc, name).validate(json.loads(msgspec.json.encode(value)))
    for name, bad in (
        ("JoinRoom", {"type": "join_room", "room_id": "x"}),
        ("Joined", {"type": "joined", "room_id": "5"}),
        ("PostCreated", {**json.loads(msgspec.json.encode(event)), "type": "post.deleted"}),
    ):
        assert not _payload_validator(doc, name).is_valid(bad), name


def test_always_sent_follows_the_encoder() -> None:
    """`always_sent` says which fields the encoder writes; check it against real bytes."""
    for struct, value in (
        (protocol.Joined, protocol.Joined(room_id="5", last_seq=1)),
        (protocol.Ack, protocol.Ack()),
        (protocol.Error, protocol.Error(code="x", message="y")),
    ):
        written = set(json.loads(msgspec.json.encode(value)))
        assert set(always_sent(struct)) == written, struct.__name__


async def test_the_app_serves_it_with_its_topic_names_and_address(tmp_path: Path) -> None:
    settings = with_overrides(
        load_settings(env={}),
        server={"data_dir": str(tmp_path), "public_url": "https://social.example"},
        auth={"jwt_secret": TEST_SECRET},
        kafka={"posts_topic": "prod.posts"},
    )
    app = create_app(settings)  # only builds: nothing connects before the lifespan starts
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/asyncapi.json")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        served = r.json()
        page = (await client.get("/docs")).text
        listed = (await client.get("/openapi.json")).json()["paths"]["/asyncapi.json"]["get"]
    assert served == app.state.asyncapi
    assert served["channels"]["posts"]["address"] == "prod.posts"
    assert served["channels"]["users"]["address"] == "users"
    assert served["servers"]["socialhub"] == {
        **served["servers"]["socialhub"],
        "host": "social.example",
        "protocol": "wss",
    }
    assert listed["security"] == [] and "200" in listed["responses"]
    assert 'id="asyncapi"' in page and "prod.posts" in page
