"""Auth routes against a real PostgreSQL, through the in-process ASGI app."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable
from email import policy
from email.parser import BytesParser
from pathlib import Path

import httpx
import jwt
import pytest

from socialhub.config import Settings
from tests.conftest import TEST_SECRET, error_code, running_app, signup


async def test_signup_returns_user_tokens_and_refuses_duplicates(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    r = await a.get("/auth/me")
    assert r.status_code == 200
    me = r.json()
    assert me["id"] == a.id and me["email"] == a.email and me["username"] == a.username
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", me["created_at"])
    assert me["followers_count"] == 0 and "following" not in me
    for clash in ({"username": a.username.upper()}, {"email": a.email.upper()}):
        body = {"name": "X", "email": "other@example.test", "username": "other_name", "password": "long enough"}
        body.update(clash)
        r = await client.post("/auth/signup", json=body)
        assert r.status_code == 409 and error_code(r) == "conflict"
        assert set(r.json()["error"]["fields"]) == set(clash)


async def test_signup_validation_lists_every_bad_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/auth/signup", json={"email": 3, "username": "a b", "password": "short"})
    assert r.status_code == 422 and error_code(r) == "validation_error"
    fields = r.json()["error"]["fields"]
    assert set(fields) == {"name", "email", "username", "password"}
    assert fields["name"] == "required"
    r = await client.post(
        "/auth/signup", json={"name": "x", "email": "a@b.c", "username": "ok_name", "password": "p" * 129}
    )
    assert r.status_code == 422 and set(r.json()["error"]["fields"]) == {"password"}


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"{oops", "application/json", 400),
        (b"[1, 2]", "application/json", 422),
        (b'"text"', "application/json", 422),
        (b"\xff\xfe", "application/json", 400),
        (b"identifier=a&password=b", "application/x-www-form-urlencoded", 415),
    ],
)
async def test_bad_bodies_get_4xx_not_500(client: httpx.AsyncClient, body: bytes, ctype: str, status: int) -> None:
    r = await client.post("/auth/login", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert error_code(r)


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/auth/login",
        content=b'{"identifier": "' + b"a" * (2 << 20) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and error_code(r) == "too_large"

    async def chunks():  # no Content-Length: the cap applies while streaming
        for _ in range(40):
            yield b" " * 65536

    r = await client.post("/auth/login", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


async def test_login_by_email_or_username_and_same_answer_for_unknown(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    for ident in (a.email, a.username, a.username.upper(), a.email.upper()):
        r = await client.post("/auth/login", json={"identifier": ident, "password": a.password})
        assert r.status_code == 200, ident
        assert r.json()["user"]["id"] == a.id and r.json()["token"] and r.json()["refresh_token"]
        # The access token's lifetime in seconds, as its own `exp - iat` says.
        claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
        assert r.json()["expires_in"] == claims["exp"] - claims["iat"] > 0
    wrong = await client.post("/auth/login", json={"identifier": a.username, "password": "not the password"})
    unknown = await client.post("/auth/login", json={"identifier": "nobody_here", "password": "not the password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_unknown_user_login_costs_a_hash_too(make_settings: Callable[..., Settings]) -> None:
    # With a deliberately slow hash, an unknown user must take about as long as a known one.
    settings = make_settings(auth={"argon2_time_cost": 3, "argon2_memory_kib": 32768})
    async with running_app(settings) as c:
        a = await signup(c)

        async def timed(ident: str) -> float:
            t = time.perf_counter()
            r = await c.post("/auth/login", json={"identifier": ident, "password": "wrong password"})
            assert r.status_code == 401
            return time.perf_counter() - t

        await timed("warm_up_user")  # the dummy hash is made on first use
        known = min([await timed(a.username) for _ in range(3)])
        unknown = min([await timed("nobody_at_all") for _ in range(3)])
        assert unknown > known * 0.5, (known, unknown)


@pytest.mark.parametrize("header", ["", "Bearer", "Basic abc", "Bearer not.a.jwt", "Bearer " + "a" * 5000])
async def test_requests_without_a_valid_token_are_401(client: httpx.AsyncClient, header: str) -> None:
    r = await client.get("/auth/me", headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and error_code(r) == "unauthenticated"


async def test_tampered_alg_none_foreign_and_expired_tokens_are_refused(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    claims = jwt.decode(a.token, TEST_SECRET, algorithms=["HS256"])
    head, payload, sig = a.token.split(".")
    forged_payload = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "1"}).encode()).rstrip(b"=").decode()
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    bad = [
        f"{head}.{forged_payload}.{sig}",  # payload changed, signature kept
        f"{none_header}.{payload}.",  # alg: none
        jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256"),
        jwt.encode({**claims, "exp": int(time.time()) - 60, "iat": int(time.time()) - 1000}, TEST_SECRET),
        jwt.encode({k: v for k, v in claims.items() if k != "sid"}, TEST_SECRET),
        jwt.encode({**claims, "sid": "12345"}, TEST_SECRET),  # no such session
    ]
    for token in bad:
        r = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, token
    assert (await a.get("/auth/me")).status_code == 200


async def test_token_claims(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    claims = jwt.decode(a.token, TEST_SECRET, algorithms=["HS256"])
    assert set(claims) >= {"sub", "sid", "exp", "iat", "jti"}
    assert claims["sub"] == a.id and claims["exp"] - claims["iat"] == 900


async def test_refresh_rotates_and_replay_revokes_the_session(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    r1 = await client.post("/auth/refresh", json={"refresh_token": a.refresh_token})
    assert r1.status_code == 200
    t1 = r1.json()
    assert t1["refresh_token"] != a.refresh_token and set(t1) == {"token", "refresh_token", "expires_in"}
    r2 = await client.post("/auth/refresh", json={"refresh_token": t1["refresh_token"]})
    assert r2.status_code == 200
    t2 = r2.json()
    # The first token again: a replay. The whole session ends, including the newest tokens.
    r = await client.post("/auth/refresh", json={"refresh_token": a.refresh_token})
    assert r.status_code == 401 and error_code(r) == "unauthenticated"
    assert (await client.get("/auth/me", headers={"Authorization": f"Bearer {t2['token']}"})).status_code == 401
    assert (await client.post("/auth/refresh", json={"refresh_token": t2["refresh_token"]})).status_code == 401
    for junk in ("", "x" * 1000, "nope"):
        r = await client.post("/auth/refresh", json={"refresh_token": junk})
        assert r.status_code in (401, 422)


async def test_concurrent_refresh_with_one_token_yields_at_most_one_winner(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    results = await asyncio.gather(
        *[client.post("/auth/refresh", json={"refresh_token": a.refresh_token}) for _ in range(5)]
    )
    assert sorted(r.status_code for r in results).count(200) <= 1
    assert all(r.status_code in (200, 401) for r in results)


async def test_logout_stops_that_session_only(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    r = await client.post("/auth/login", json={"identifier": a.email, "password": a.password})
    other = r.json()
    assert (await a.get("/auth/me")).status_code == 200  # cached as live
    assert (await a.post("/auth/logout")).status_code == 204
    assert (await a.get("/auth/me")).status_code == 401
    assert (await client.post("/auth/refresh", json={"refresh_token": a.refresh_token})).status_code == 401
    r = await client.get("/auth/me", headers={"Authorization": f"Bearer {other['token']}"})
    assert r.status_code == 200
    assert (await a.post("/auth/logout")).status_code == 401


async def test_verify_user_for_gateways(client: httpx.AsyncClient) -> None:
    a = await signup(client)
    r = await a.get("/api/v1/auth/verify-user")
    assert r.status_code == 200 and r.json() == {"user_id": a.id, "username": a.username}
    assert (await client.get("/api/v1/auth/verify-user")).status_code == 401


def _codes(mail_dir: Path, address: str) -> list[str]:
    codes = []
    for path in sorted(mail_dir.glob("*.eml")):
        msg = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        if msg["To"] == address:
            body = msg.get_body(preferencelist=("plain",))
            assert body is not None
            found = re.search(r"\b(\d{6})\b", body.get_content())
            assert found
            codes.append(found.group(1))
    return codes


async def _wait_code(mail_dir: Path, address: str, count: int = 1) -> str:
    for _ in range(100):
        codes = _codes(mail_dir, address)
        if len(codes) >= count:
            return codes[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no reset mail for {address}")


async def test_password_reset_by_emailed_code(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    mail_dir = settings.data_path / "mail"
    async with running_app(settings) as c:
        a = await signup(c)
        second = (await c.post("/auth/login", json={"identifier": a.username, "password": a.password})).json()
        for path in ("/auth/forgot-password", "/auth/request-password-reset"):
            r = await c.post(path, json={"email": a.email})
            assert r.status_code == 202
        code = await _wait_code(mail_dir, a.email, 2)  # the second request replaced the first code
        r = await c.post("/auth/reset-password", json={"email": a.email, "otp": code, "new_password": "new password 2"})
        assert r.status_code == 200, r.text
        # Every session ended; the old password no longer works; the new one does.
        assert (await a.get("/auth/me")).status_code == 401
        assert (await c.get("/auth/me", headers={"Authorization": f"Bearer {second['token']}"})).status_code == 401
        assert (await c.post("/auth/login", json={"identifier": a.email, "password": a.password})).status_code == 401
        assert (
            await c.post("/auth/login", json={"identifier": a.email, "password": "new password 2"})
        ).status_code == 200
        # A code works once.
        r = await c.post("/auth/reset-password", json={"email": a.email, "otp": code, "new_password": "another pw 3"})
        assert r.status_code == 400 and error_code(r) == "bad_request"


async def test_reset_code_allows_five_tries_then_is_spent(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with running_app(settings) as c:
        a = await signup(c)
        await c.post("/auth/forgot-password", json={"email": a.email})
        code = await _wait_code(settings.data_path / "mail", a.email)
        wrong = f"{(int(code) + 1) % 1000000:06d}"
        for _ in range(5):
            r = await c.post("/auth/reset-password", json={"email": a.email, "otp": wrong, "new_password": "x" * 10})
            assert r.status_code == 400
        r = await c.post("/auth/reset-password", json={"email": a.email, "otp": code, "new_password": "x" * 10})
        assert r.status_code == 400  # spent by the fifth wrong try
        assert (await a.get("/auth/me")).status_code == 200


async def test_expired_reset_code_is_refused(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(auth={"otp_ttl": 0.3})
    async with running_app(settings) as c:
        a = await signup(c)
        await c.post("/auth/forgot-password", json={"email": a.email})
        code = await _wait_code(settings.data_path / "mail", a.email)
        await asyncio.sleep(0.5)
        r = await c.post("/auth/reset-password", json={"email": a.email, "otp": code, "new_password": "x" * 10})
        assert r.status_code == 400


async def test_forgot_password_is_the_same_for_unknown_addresses(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with running_app(settings) as c:
        a = await signup(c)
        known = await c.post("/auth/forgot-password", json={"email": a.email})
        unknown = await c.post("/auth/forgot-password", json={"email": "ghost@example.test"})
        assert known.status_code == unknown.status_code == 202 and known.json() == unknown.json()
        await _wait_code(settings.data_path / "mail", a.email)
        await asyncio.sleep(0.1)
        assert _codes(settings.data_path / "mail", "ghost@example.test") == []
        r = await c.post(
            "/auth/reset-password", json={"email": "ghost@example.test", "otp": "123456", "new_password": "x" * 10}
        )
        assert r.status_code == 400
        bad = await c.post("/auth/reset-password", json={"email": a.email, "otp": "12ab56", "new_password": "x" * 10})
        assert bad.status_code == 422 and "otp" in bad.json()["error"]["fields"]
