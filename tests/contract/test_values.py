"""The Values contract, run over every implementation (memory and Redis)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from socialhub.infra.kv.base import Values
from socialhub.infra.redis_client import client_from_url, ping


async def test_get_set_delete(values: Values) -> None:
    assert await values.get("a") is None
    await values.set("a", b"1")
    assert await values.get("a") == b"1"
    await values.set("a", b"\x00\xff binary")
    assert await values.get("a") == b"\x00\xff binary"
    await values.delete("a")
    assert await values.get("a") is None
    await values.delete("a")  # absent: no error


async def test_ttl_expiry(values: Values) -> None:
    await values.set("short", b"x", ttl=0.1)
    await values.set("long", b"y", ttl=5)
    assert await values.get("short") == b"x"
    await asyncio.sleep(0.25)
    assert await values.get("short") is None
    assert await values.get("long") == b"y"


async def test_set_without_ttl_clears_an_old_ttl(values: Values) -> None:
    await values.set("a", b"x", ttl=0.1)
    await values.set("a", b"y")
    await asyncio.sleep(0.25)
    assert await values.get("a") == b"y"


async def test_set_if_absent(values: Values) -> None:
    assert await values.set_if_absent("once", b"first", ttl=0.1)
    assert not await values.set_if_absent("once", b"second", ttl=0.1)
    assert await values.get("once") == b"first"
    await asyncio.sleep(0.25)
    assert await values.set_if_absent("once", b"third")
    assert await values.get("once") == b"third"


async def test_set_if_absent_under_concurrency_stores_exactly_once(values: Values) -> None:
    results = await asyncio.gather(*(values.set_if_absent("race", str(i).encode()) for i in range(20)))
    assert sum(results) == 1


async def test_a_bad_ttl_is_refused(values: Values) -> None:
    with pytest.raises(ValueError):
        await values.set("a", b"x", ttl=0)


async def test_delete_says_whether_the_key_was_there(values: Values) -> None:
    await values.set("a", b"1")
    await values.set("gone", b"x", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await values.delete("a") is True
    assert await values.delete("a") is False
    assert await values.delete("gone") is False  # expired counts as absent


async def test_delete_is_taken_by_exactly_one_of_many(values: Values) -> None:
    await values.set("flag", b"1")
    results = await asyncio.gather(*(values.delete("flag") for _ in range(20)))
    assert sum(results) == 1


async def test_get_many(values: Values) -> None:
    assert await values.get_many([]) == []
    await values.set("a", b"1")
    await values.set("b", b"\x00", ttl=0.05)
    await values.set("c", b"3")
    await asyncio.sleep(0.1)
    assert await values.get_many(["a", "b", "missing", "c", "a"]) == [b"1", None, None, b"3", b"1"]


async def test_ping(redis_url: str) -> None:
    # The readiness check of the Redis client all the ports share (in process there is
    # nothing that could be down, so nothing to check).
    client = client_from_url(redis_url)
    try:
        assert await ping(client)
    finally:
        await client.aclose()
    gone = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        assert not await ping(gone)
    finally:
        await gone.aclose()
