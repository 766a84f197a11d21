"""Hostile input over HTTP, through the in-process ASGI app and a real PostgreSQL: each
class is refused at its root (the codec, the path and query guard) with a 4xx in SPEC's
error format, never a 500. The header limit and the socket's rules need a real server:
tests/e2e/test_input.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from socialhub.config import Settings
from tests.conftest import error_code, running_app, signup
from tests.integration.test_posts import form

NUL = "\x00"
DEEP = 2000  # far past msgspec's depth (Python's recursion limit, 1,000)


def assert_nul_refused(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    assert error_code(r) == "validation_error"
    assert field in r.json()["error"]["fields"], r.text


# -- U+0000 -------------------------------------------------------------------------------


async def test_nul_in_any_body_field_is_422_for_that_field(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    body = {"name": "N", "email": "nul@example.test", "username": "nul_user", "password": "long enough"}
    for field, value in (("name", "a\x00b"), ("password", "long\x00enough"), ("email", "a\x00@example.test")):
        r = await client.post("/auth/signup", json={**body, field: value})
        assert_nul_refused(r, field)
    r = await client.post("/auth/login", json={"identifier": "a\x00b", "password": "whatever1"})
    assert_nul_refused(r, "identifier")
    r = await client.post("/auth/refresh", json={"refresh_token": "x\x00"})
    assert_nul_refused(r, "refresh_token")
    r = await a.patch("/users/me", json={"bio": "hi\x00there"})
    assert_nul_refused(r, "bio")
    r = await a.post("/posts/", json={"content": "hello\x00"})
    assert_nul_refused(r, "content")
    post = (await a.post("/posts/", json={"content": "a post"})).json()
    r = await a.patch(f"/posts/{post['id']}", json={"content": "\x00"})
    assert_nul_refused(r, "content")
    r = await a.post(f"/posts/comment/{post['id']}", json={"content": "c\x00"})
    assert_nul_refused(r, "content")
    r = await a.post("/chat/rooms", json={"members": [a.id], "name": "room\x00"})
    assert_nul_refused(r, "name")
    # Inside a list, too.
    r = await a.post("/chat/rooms", json={"members": ["1\x00"]})
    assert_nul_refused(r, "members")
    # Nothing was stored: the bio and the post are as they were, no comment exists.
    assert (await a.get("/auth/me")).json()["bio"] == ""
    assert (await a.get(f"/posts/{post['id']}")).json()["content"] == "a post"
    assert (await a.get(f"/posts/{post['id']}/comments")).json()["items"] == []


async def test_an_escaped_backslash_before_u0000_is_plain_text(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    text = "C:\\u0000 is a path, not a NUL"
    assert "\\u0000" in json.dumps(text)  # the body holds the six bytes `\u0000`, escaped
    r = await a.post("/posts/", json={"content": text})
    assert r.status_code == 201, r.text
    assert r.json()["content"] == text


async def test_nul_in_form_fields_is_422(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    body, headers = form({"content": "x\x00y"})
    r = await a.client.post("/posts/", content=body, headers={**a.headers, **headers})
    assert_nul_refused(r, "content")
    body, headers = form({"bio": "x\x00y"})
    r = await a.client.patch("/users/me", content=body, headers={**a.headers, **headers})
    assert_nul_refused(r, "bio")
    urlencoded = {**a.headers, "content-type": "application/x-www-form-urlencoded"}
    r = await a.client.patch("/users/me", content=b"bio=x%00y", headers=urlencoded)
    assert_nul_refused(r, "bio")


async def test_nul_in_path_or_query_is_404_or_422(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    for path in ("/users/@a%00b", "/users/@a%00b/followers", "/posts/1%00"):
        r = await a.get(path)
        assert r.status_code == 404, (path, r.text)
        assert error_code(r) == "not_found"
    r = await a.get("/feed?before=1%00")
    assert_nul_refused(r, "before")
    r = await a.get(f"/users/{a.id}/followers?limit=%0010")
    assert_nul_refused(r, "limit")
    r = await a.get("/feed?x%00y=1")
    assert_nul_refused(r, "x\\u0000y")
    # A NUL-free query still works.
    assert (await a.get("/feed?limit=5")).status_code == 200


# -- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize("opener", ["[", '{"a":'])
async def test_json_nested_too_deep_is_400_on_every_json_route(client: httpx.AsyncClient, opener: str) -> None:
    a = await signup(client)
    closer = "]" if opener == "[" else "}"
    deep = (opener * DEEP + "1" + closer * DEEP).encode()
    nested_field = ('{"content": ' + opener * DEEP + "1" + closer * DEEP + "}").encode()
    for method, path in (
        ("POST", "/auth/signup"),
        ("POST", "/auth/login"),
        ("POST", "/posts/"),
        ("PATCH", "/users/me"),
        ("POST", "/chat/rooms"),
        ("POST", "/notify/read"),
    ):
        for body in (deep, nested_field):
            r = await a.client.request(
                method, path, content=body, headers={**a.headers, "content-type": "application/json"}
            )
            assert r.status_code == 400, (path, r.text)
            assert error_code(r) == "bad_request"
    # The app is fine afterwards.
    assert (await a.get("/auth/me")).status_code == 200


async def test_nul_deep_inside_a_field_is_never_a_500(client: httpx.AsyncClient) -> None:
    # Nested about as deep as the decoder allows: whether it decodes (422: the NUL) or not
    # (400) depends on the stack below; looking for the NUL must not overflow it.
    a = await signup(client)
    for depth in (100, 500, 900, 950, 990):
        body = ('{"content": ' + "[" * depth + '"\\u0000"' + "]" * depth + "}").encode()
        r = await a.client.post("/posts/", content=body, headers={**a.headers, "content-type": "application/json"})
        assert r.status_code in (400, 422), (depth, r.text)


# -- Content-Type -------------------------------------------------------------------------------


async def test_json_routes_answer_415_to_other_content_types(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    body = json.dumps({"content": "typed"}).encode()
    others = ("text/plain", "application/xml", "application/jsonx", "text/json", "application/json; charset=latin-1")
    for ctype in others:
        r = await a.client.post("/posts/", content=body, headers={**a.headers, "content-type": ctype})
        assert r.status_code == 415, (ctype, r.text)
        assert error_code(r) == "unsupported_media_type"
    # No Content-Type with a body: refused too.
    r = await a.client.post("/posts/", content=body, headers=a.headers)
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    r = await client.post("/auth/login", content=b'{"identifier": "x", "password": "y"}')
    assert r.status_code == 415
    # JSON by any of its names is read.
    for ctype in (
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        'application/json;charset="UTF-8"',
        "application/merge-patch+json",
    ):
        r = await a.client.post("/posts/", content=body, headers={**a.headers, "content-type": ctype})
        assert r.status_code == 201, (ctype, r.text)
    # No body, no Content-Type: nothing to label (an empty edit).
    r = await a.client.patch("/users/me", headers=a.headers)
    assert r.status_code == 200, r.text


# -- email addresses --------------------------------------------------------------------------

NOT_ONE_MAILBOX = [
    "g:@;;.x",
    "a:b@example.com",
    "x@example.com,y.z",
    "x@example.com, y@example.com",
    "Name <x@example.com>",
    '"quoted"@example.com',
    "x@example.com\n",
    "x@[127.0.0.1]",
    "x@-example.com",
    "x@example",
    "x y@example.com",
]


@pytest.mark.parametrize("address", NOT_ONE_MAILBOX)
async def test_an_email_is_one_plain_mailbox(client: httpx.AsyncClient, address: str) -> None:
    body = {"name": "N", "email": address, "username": "mailbox_test", "password": "long enough"}
    r = await client.post("/auth/signup", json=body)
    assert r.status_code == 422 and set(r.json()["error"]["fields"]) == {"email"}, r.text
    r = await client.post("/auth/forgot-password", json={"email": address})
    assert r.status_code == 422 and set(r.json()["error"]["fields"]) == {"email"}, r.text
    r = await client.post("/auth/reset-password", json={"email": address, "otp": "123456", "new_password": "x" * 10})
    assert r.status_code == 422 and set(r.json()["error"]["fields"]) == {"email"}, r.text


async def test_a_username_with_a_trailing_newline_is_422(client: httpx.AsyncClient) -> None:
    body = {"name": "N", "email": "newline@example.test", "username": "newline_user\n", "password": "long enough"}
    r = await client.post("/auth/signup", json=body)
    assert r.status_code == 422 and set(r.json()["error"]["fields"]) == {"username"}, r.text


async def test_plain_mailboxes_are_accepted(client: httpx.AsyncClient) -> None:
    for address in ("o'brien+tag@mail.example.co.uk", "a.b-c_d@sub-domain.example.test"):
        a = await signup(client, email=address)
        assert (await a.get("/auth/me")).json()["email"] == address


# -- reset-password timing ------------------------------------------------------------------------


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every argon2 hash and verify done in the process (the library's calls, counted and passed through)."""
    calls: list[str] = []
    for name in ("hash", "verify"):
        original = getattr(PasswordHasher, name)

        def counted(self: PasswordHasher, *args: Any, __name: str = name, __original: Any = original) -> Any:
            calls.append(__name)
            return __original(self, *args)

        monkeypatch.setattr(PasswordHasher, name, counted)
    yield calls


async def test_reset_password_does_the_same_work_for_unknown_addresses(
    make_settings: Callable[..., Settings], argon2_calls: list[str]
) -> None:
    async with running_app(make_settings()) as c:
        a = await signup(c)
        outcomes: dict[str, tuple[int, dict[str, Any], list[str]]] = {}
        for who, email in (("known", a.email), ("unknown", "ghost@example.test")):
            argon2_calls.clear()
            r = await c.post("/auth/reset-password", json={"email": email, "otp": "123456", "new_password": "x" * 10})
            outcomes[who] = (r.status_code, r.json(), list(argon2_calls))
        assert outcomes["known"] == outcomes["unknown"]
        assert outcomes["known"][0] == 400 and outcomes["known"][2] == ["hash"]
