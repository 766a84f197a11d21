"""Rate limits through the HTTP middleware, in-process and shared through Redis."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from socialhub.config import Settings
from tests.conftest import error_code, running_app, signup
from tests.private_redis import PrivateRedis


@pytest.mark.parametrize("redis", [False, True], ids=["memory", "redis"])
async def test_login_is_limited_per_ip_with_headers(make_settings: Callable[..., Settings], redis: bool) -> None:
    settings = make_settings(redis=redis, ratelimit={"login": "3/60s"})
    async with running_app(settings) as c:
        seen = []
        for _ in range(3):
            r = await c.post("/auth/login", json={"identifier": "who", "password": "whatever1"})
            assert r.status_code == 401
            seen.append(int(r.headers["ratelimit-remaining"]))
            assert r.headers["ratelimit-limit"] == "3" and int(r.headers["ratelimit-reset"]) >= 1
        assert seen == [2, 1, 0]
        r = await c.post("/auth/login", json={"identifier": "who", "password": "whatever1"})
        assert r.status_code == 429 and error_code(r) == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 20
        # A header the client made up does not buy a new allowance (no trusted proxy here).
        r = await c.post(
            "/auth/login", json={"identifier": "who", "password": "x" * 9}, headers={"x-forwarded-for": "10.9.9.9"}
        )
        assert r.status_code == 429
        # Routes without a rule carry no headers.
        assert "ratelimit-limit" not in (await c.get("/healthz")).headers


async def test_writes_are_limited_per_user(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ratelimit={"write": "2/60s"})
    async with running_app(settings) as c:
        a, b, x = await signup(c), await signup(c), await signup(c)
        assert (await a.post(f"/users/follow/{b.id}")).status_code == 200
        assert (await a.post(f"/users/follow/{x.id}")).status_code == 200
        r = await a.post(f"/users/follow/{b.id}")
        assert r.status_code == 429 and r.headers["retry-after"]
        # b is another user: its own budget.
        assert (await b.post(f"/users/follow/{a.id}")).status_code == 200
        # Reads are not limited by the write rule.
        assert (await a.get(f"/users/{b.id}")).status_code == 200


async def test_a_limit_is_shared_by_two_instances_through_redis(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis=True, ratelimit={"signup": "2/60s"})
    async with running_app(settings) as one, running_app(settings) as two:
        await signup(one)
        await signup(two)
        r = await one.post(
            "/auth/signup", json={"name": "n", "email": "z@example.test", "username": "zed_zed", "password": "p" * 8}
        )
        assert r.status_code == 429
        r = await two.post(
            "/auth/signup", json={"name": "n", "email": "z@example.test", "username": "zed_zed", "password": "p" * 8}
        )
        assert r.status_code == 429


async def test_disabled_limits(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ratelimit={"enabled": False, "login": "1/60s"})
    async with running_app(settings) as c:
        for _ in range(3):
            r = await c.post("/auth/login", json={"identifier": "who", "password": "whatever1"})
            assert r.status_code == 401 and "ratelimit-limit" not in r.headers


async def test_limits_let_requests_through_while_redis_is_down_and_say_so_once(
    make_settings: Callable[..., Settings], private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis=private_redis.url, ratelimit={"login": "3/60s"})
    async with running_app(settings) as c:
        private_redis.kill()
        with caplog.at_level(logging.WARNING, logger="socialhub.api.http.ratelimit"):
            for _ in range(6):  # past the limit of 3: nothing counts while the store is down
                r = await c.post("/auth/login", json={"identifier": "who", "password": "whatever1"})
                assert r.status_code == 401, r.text
                assert "ratelimit-limit" not in r.headers
        told = [rec for rec in caplog.records if rec.name == "socialhub.api.http.ratelimit"]
        assert len(told) == 1 and not told[0].exc_info, [rec.getMessage() for rec in told]
