"""GET /asyncapi.json: the AsyncAPI 3.0 document of the socket and the Kafka topics, made
from the code.

As the OpenAPI document is made from the routes, this one is made from the very types
the server speaks: every frame of `GET /ws` from `socialhub.domain.protocol`
(CLIENT_FRAMES, SERVER_FRAMES), the close codes and limits from that module's constants
and the notes written under them, and every event of the Kafka topics from
`socialhub.domain.events`. The schemas are msgspec's, so the document cannot describe a
field the code does not have; tests/unit/test_asyncapi.py validates it against the
official AsyncAPI 3.0 JSON Schema and holds it against the protocol module.

The server is the application this document describes: it *receives* the frames a
client sends and *sends* the server's frames; it both publishes (the outbox relay) and
consumes (feed fan-out, notifications) the topics.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from socialhub import __version__
from socialhub.api.http.codec import JSON_MEDIA_TYPE
from socialhub.api.http.routing import Endpoint, Operation, RouteGroup
from socialhub.config import DEFAULT_RATES, parse_rate
from socialhub.domain import events, protocol

REF = "#/components/schemas/{name}"
DEFAULT_HOST = "127.0.0.1:8000"
DEFAULT_BOOTSTRAP = "localhost:9092"
WS_BINDING = "0.1.0"
KAFKA_BINDING = "0.5.0"

# What each topic's key is (SPEC, Events): the same for every event of the topic.
TOPIC_KEYS: dict[str, str] = {
    events.POSTS: "the post id (every event of one post goes to one partition, in order)",
    events.USERS: "the follower id (one user's follows and unfollows stay in order)",
}

SOCKET_DESCRIPTION = """\
One socket per client carries everything live: chat, typing, read receipts, presence,
notifications and call signaling. Every frame is a JSON object with a `type`.

- **Handshake**: the first frame is `authenticate` with an access token, within
  {auth_timeout:g} s. A good token is answered `authenticated`; a bad one `error
  unauthenticated`, then close {close_unauthenticated}.
- **refs**: a client may add `ref` (a string of at most {max_ref} characters) to any frame;
  the direct reply to it (`ack`, `joined`, `pong` or `error`) carries it back.
- **Rate**: {rate.limit} frames {per}, bursts of {rate.burst} (the `ws_frames`
  limit, by default): a frame over it is answered `error rate_limited` and dropped.
- **Resume**: after a reconnect, `join_room` with the last `seq` seen as `since_seq`
  replays exactly what was missed, then the live stream.
- While an instance has lost its broker it refuses new sockets: the upgrade is answered
  HTTP 503 `unavailable` with `Retry-After` (treat a close {close_later}, which a proxy
  in front may send, the same way).

Close codes (also under `x-close-codes`, with the error that precedes each under
`x-close-after-error`):

{close_table}"""

EVENTS_DESCRIPTION = """\
Writes that others react to are stored with an event in an outbox table, in the same
database transaction, and a relay publishes them to Kafka: nothing rolled back is
published, nothing committed is lost. Delivery is at least once; socialhub's consumers
are idempotent, and so should be any other. Value: `{"id", "type", "occurred_at",
"actor_id", "data"}` (ids are decimal strings, times RFC 3339 UTC with milliseconds)."""


def constant_notes(module: ModuleType) -> dict[str, str]:
    """The note written as a string right under each module-level constant (the
    convention Sphinx reads as an attribute docstring), by constant name."""
    tree = ast.parse(inspect.getsource(module))
    notes: dict[str, str] = {}
    for stmt, after in zip(tree.body, tree.body[1:], strict=False):
        target: ast.expr | None = stmt.target if isinstance(stmt, ast.AnnAssign) else None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        if not isinstance(target, ast.Name):
            continue
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            notes[target.id] = _public(inspect.cleandoc(after.value.value))
    return notes


def _public(note: str) -> str:
    """A note as a reader of the document sees it: without the "SPEC:" mark the code uses
    for a number the contract fixes (the reader has no such file)."""
    if note.startswith("SPEC: "):
        note = note[len("SPEC: ") :]
        return note[:1].upper() + note[1:]
    return note


def close_codes() -> dict[str, int]:
    """Every close code the socket uses: the CLOSE_* integers of the protocol module."""
    return {
        name: value
        for name, value in vars(protocol).items()
        if name.startswith("CLOSE_") and isinstance(value, int) and not isinstance(value, bool)
    }


def limits() -> dict[str, int | float]:
    """The protocol's limits and timings: its MAX_* and *_SECONDS constants."""
    return {
        name: value
        for name, value in vars(protocol).items()
        if (name.startswith("MAX_") or name.endswith("_SECONDS")) and isinstance(value, int | float)
    }


def frame_type(struct: type[msgspec.Struct]) -> str:
    """The `type` a frame struct is told apart by (its msgspec tag)."""
    tag = struct.__struct_config__.tag
    if not isinstance(tag, str):
        raise ValueError(f"{struct.__name__} has no string tag")
    return tag


def _doc(struct: type) -> tuple[str, str]:
    """(summary, description) from a struct's docstring."""
    text = inspect.cleandoc(struct.__doc__ or "")
    first = text.split("\n\n", 1)[0].replace("\n", " ")
    summary = first.split(". ", 1)[0].rstrip(".")
    return summary, text


def always_sent(struct: type[msgspec.Struct]) -> list[str]:
    """The fields socialhub always writes when it encodes `struct`: every field but those
    that may be left out (UNSET, or equal to their default with omit_defaults); a tagged
    struct's tag first."""
    config = struct.__struct_config__
    omit = config.omit_defaults
    out: list[str] = [config.tag_field] if config.tag_field else []
    for f in msgspec.structs.fields(struct):
        if f.required or (not omit and f.default is not msgspec.UNSET):
            out.append(f.encode_name)
    return out


def _close_table(notes: Mapping[str, str]) -> str:
    rows = ["| code | meaning |", "|---|---|"]
    for name, code in sorted(close_codes().items(), key=lambda item: item[1]):
        rows.append(f"| {code} | {notes.get(name, '').replace(chr(10), ' ')} |")
    return "\n".join(rows)


def _message(struct: type[msgspec.Struct], name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    summary, description = _doc(struct)
    out: dict[str, Any] = {
        "name": name,
        "title": struct.__name__,
        "payload": {"$ref": REF.format(name=struct.__name__)},
    }
    if summary:
        out["summary"] = summary
    if description:
        out["description"] = description
    if extra:
        out.update(extra)
    return out


def build_asyncapi(
    topics: Mapping[str, str],
    *,
    title: str = "socialhub",
    version: str = __version__,
    host: str = DEFAULT_HOST,
    secure: bool = False,
    bootstrap_servers: str = "",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document. `topics` maps each logical topic (events.POSTS,
    events.USERS) to its Kafka topic name, as the Kafka adapter is given them."""
    missing = set(TOPIC_KEYS) - set(topics)
    if missing:
        raise ValueError(f"no Kafka topic name for {', '.join(sorted(missing))}")
    client, server = list(protocol.CLIENT_FRAMES), list(protocol.SERVER_FRAMES)
    event_classes = list(events.EVENT_CLASS.values())
    structs: list[type[msgspec.Struct]] = [*client, *server, *event_classes]
    names = [s.__name__ for s in structs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"two structs are named {', '.join(sorted(duplicates))}")
    _, schemas = msgspec.json.schema_components(structs, ref_template=REF)
    for struct in (*server, *event_classes):
        schemas[struct.__name__]["required"] = always_sent(struct)

    notes = constant_notes(protocol)
    codes = close_codes()
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    socket_messages: dict[str, Any] = {}
    replies = {frame.__name__: [r.__name__ for r in answers] for frame, answers in protocol.REPLIES.items()}
    for direction, action, frames in (("client", "receive", client), ("server", "send", server)):
        for struct in frames:
            kind = frame_type(struct)
            key = struct.__name__
            messages[key] = _message(struct, kind, {"tags": [{"name": f"{direction} frame"}]})
            socket_messages[key] = {"$ref": f"#/components/messages/{key}"}
            summary, _ = _doc(struct)
            operation: dict[str, Any] = {
                "action": action,
                "channel": {"$ref": "#/channels/socket"},
                "title": f"{'Client sends' if direction == 'client' else 'Server sends'} {kind}",
                "summary": summary or kind,
                "messages": [{"$ref": f"#/channels/socket/messages/{key}"}],
                "tags": [{"name": f"{direction} frame"}],
            }
            if direction == "client" and key in replies:
                # AsyncAPI's request/reply: the frames that answer this one, with its ref.
                operation["reply"] = {
                    "channel": {"$ref": "#/channels/socket"},
                    "messages": [{"$ref": f"#/channels/socket/messages/{name}"} for name in replies[key]],
                }
            operations[f"{direction}_{kind}"] = operation

    rate = parse_rate(DEFAULT_RATES["ws_frames"], "ratelimit.ws_frames")
    if rate is None:
        raise ValueError("the ws_frames limit has no default rate")
    socket_description = SOCKET_DESCRIPTION.format(
        auth_timeout=protocol.AUTH_TIMEOUT_SECONDS,
        close_unauthenticated=protocol.CLOSE_UNAUTHENTICATED,
        close_later=protocol.CLOSE_TRY_AGAIN_LATER,
        max_ref=protocol.MAX_REF_CHARS,
        rate=rate,
        per="a second" if rate.period == 1 else f"per {rate.period:g} s",
        close_table=_close_table(notes),
    )
    channels: dict[str, Any] = {
        "socket": {
            "address": "/ws",
            "title": "The socket",
            "description": socket_description,
            "servers": [{"$ref": "#/servers/socialhub"}],
            "messages": socket_messages,
            "bindings": {"ws": {"method": "GET", "bindingVersion": WS_BINDING}},
            "x-close-codes": [
                {"code": code, "name": name, "description": notes.get(name, "")}
                for name, code in sorted(codes.items(), key=lambda item: item[1])
            ],
            "x-close-after-error": dict(protocol.CLOSE_CODES),
            "x-limits": [
                {"name": name, "value": value, "description": notes.get(name, "")} for name, value in limits().items()
            ],
        }
    }
    for logical, key_text in TOPIC_KEYS.items():
        kafka_topic = topics[logical]
        topic_messages: dict[str, Any] = {}
        for event_type, cls in events.EVENT_CLASS.items():
            if events.TOPIC_OF[event_type] != logical:
                continue
            binding = {"kafka": {"key": {"type": "string", "description": key_text}, "bindingVersion": KAFKA_BINDING}}
            messages[cls.__name__] = _message(cls, event_type, {"bindings": binding, "tags": [{"name": "event"}]})
            topic_messages[cls.__name__] = {"$ref": f"#/components/messages/{cls.__name__}"}
        channels[logical] = {
            "address": kafka_topic,
            "title": f"Kafka topic {kafka_topic}",
            "description": f"The `{logical}` topic (named by `kafka.{logical}_topic`); key: {key_text}.",
            "servers": [{"$ref": "#/servers/kafka"}],
            "messages": topic_messages,
            "bindings": {"kafka": {"topic": kafka_topic, "bindingVersion": KAFKA_BINDING}},
        }
        refs = [{"$ref": f"#/channels/{logical}/messages/{name}"} for name in topic_messages]
        operations[f"publish_{logical}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{logical}"},
            "title": f"The outbox relay publishes to {kafka_topic}",
            "summary": "Events from the outbox, after their transaction committed (at least once)",
            "messages": refs,
            "tags": [{"name": "event"}],
        }
        operations[f"consume_{logical}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{logical}"},
            "title": f"socialhub's consumer groups read {kafka_topic}",
            "summary": "Feed fan-out and notifications, idempotent; a failing event is retried, then dead-lettered",
            "messages": refs,
            "tags": [{"name": "event"}],
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": version,
            "description": "The socket `GET /ws` and the Kafka topics of socialhub. "
            "The REST API is in the OpenAPI document at /openapi.json.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "socialhub": {
                "host": host,
                "protocol": "wss" if secure else "ws",
                "description": "socialhub itself: one socket per client at /ws",
            },
            "kafka": {
                "host": bootstrap_servers or DEFAULT_BOOTSTRAP,
                "protocol": "kafka",
                "description": "The brokers of `kafka.bootstrap_servers`; without them the consumers "
                "read the outbox directly and nothing is on Kafka",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


class AsyncApiRoutes(RouteGroup):
    """/asyncapi.json, public; the document is built once, at construction."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.json = msgspec.json.encode(document)

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(self.asyncapi_json, Operation(
                method="GET", path="/asyncapi.json", summary="The AsyncAPI 3.0 document of /ws and the Kafka topics",
                tag="docs", auth=False, static=True,
            )),
        ]  # fmt: skip

    async def asyncapi_json(self, request: Request) -> Response:
        return Response(self.json, media_type=JSON_MEDIA_TYPE)
