"""`python -m bench asgi-cpu`'s pure parts: the scopes it hands the app and the timed caller
(the scenario itself needs PostgreSQL and is never run by the suite)."""

from __future__ import annotations

import argparse
import random

import pytest
from starlette.types import Message, Receive, Scope, Send

from bench.asgi_cpu import Caller, plain_app, run, scope_of
from bench.progress import Progress
from bench.target import TargetError


def test_a_scope_is_what_uvicorn_gives_a_request_from_localhost() -> None:
    scope = scope_of("GET", "/posts/42", "tok")
    assert scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/posts/42"
    assert scope["raw_path"] == b"/posts/42" and scope["query_string"] == b""
    assert (b"authorization", b"Bearer tok") in scope["headers"]
    assert all(name != b"authorization" for name, _ in scope_of("GET", "/feed", None)["headers"])


async def test_the_caller_times_each_request_and_counts_answers_other_than_200() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        scope["state"]["touched"] = True  # a request's state must not leak into the next
        status = 404 if scope["path"] == "/missing" else 200
        start: Message = {"type": "http.response.start", "status": status, "headers": []}
        await send(start)
        await send({"type": "http.response.body", "body": b"page"})

    caller = Caller(app, {"shared": 1})
    await caller.call(scope_of("GET", "/feed", "t"))
    assert caller.status == 200 and caller.body == b"page" and caller.errors == 0
    samples = await caller.timed([scope_of("GET", "/feed", "t"), scope_of("GET", "/missing", "t")], 200, 3,
                                 random.Random(1))  # fmt: skip
    assert len(samples) == 3 and all(s > 0 for s in samples)
    assert 0 < caller.errors < 600  # the picks are random: some of each path
    assert all(s["state"] == {"shared": 1, "touched": True} for s in seen)
    assert caller.state == {"shared": 1}


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"url": "http://x", "database_url": "postgresql://h/db", "phases": "feed"}, "--url does not apply"),
        ({"url": None, "database_url": None, "phases": "feed"}, "needs --database-url"),
        ({"url": None, "database_url": "postgresql://h/db", "phases": "feed,nope"}, "unknown nope"),
    ],
)
def test_what_the_scenario_refuses_before_it_starts(options: dict[str, object], refusal: str) -> None:
    with pytest.raises(TargetError, match=refusal):
        run("asgi-cpu", argparse.Namespace(**options), Progress())


async def test_the_floor_answers_the_bytes_it_was_given() -> None:
    caller = Caller(plain_app(b'{"a":1}'), {})
    await caller.call(scope_of("GET", "/feed", None))
    assert (caller.status, caller.body, caller.errors) == (200, b'{"a":1}', 0)
