"""The Counters contract, run over every implementation (memory and Redis)."""

from __future__ import annotations

import asyncio

from socialhub.infra.kv.base import Counters, Timelines, Values


async def test_hash_incr_counts_and_deletes_a_field_at_zero(
    counters: Counters, values: Values, timelines: Timelines
) -> None:
    assert await counters.hash_get_all("h") == {}
    assert await counters.hash_incr("h", "a", 1) == 1
    assert await counters.hash_incr("h", "a", 2) == 3
    assert await counters.hash_incr("h", "b", 1) == 1
    assert await counters.hash_get_all("h") == {"a": 3, "b": 1}
    assert await counters.hash_incr("h", "a", -3) == 0
    assert await counters.hash_get_all("h") == {"b": 1}
    assert await counters.hash_incr("h", "b", -1) == 0
    assert await counters.hash_get_all("h") == {}
    # Hashes live apart from values and timelines.
    assert await values.get("h") is None
    assert await timelines.range("h", None, 10) is None


async def test_hash_increments_commute_through_negative(counters: Counters) -> None:
    # A decrement that lands before its increment leaves -1, then 0 and absent.
    assert await counters.hash_incr("h", "a", -1) == -1
    assert await counters.hash_get_all("h") == {"a": -1}
    assert await counters.hash_incr("h", "a", 1) == 0
    assert await counters.hash_get_all("h") == {}


async def test_hash_incr_many_in_order_across_keys(counters: Counters) -> None:
    assert await counters.hash_incr_many([]) == []
    out = await counters.hash_incr_many([("x", "f", 2), ("y", "f:1@i.2", 5), ("x", "f", -2), ("x", "g", 1)])
    assert out == [2, 5, 0, 1]
    assert await counters.hash_get_many(["x", "y", "z"]) == [{"g": 1}, {"f:1@i.2": 5}, {}]
    assert await counters.hash_get_many([]) == []


async def test_hash_incr_is_atomic_under_concurrency(counters: Counters) -> None:
    await asyncio.gather(*(counters.hash_incr_many([("h", "n", 1), ("g", "n", 2)]) for _ in range(50)))
    await asyncio.gather(*(counters.hash_incr("h", "n", -1) for _ in range(20)))
    assert await counters.hash_get_many(["h", "g"]) == [{"n": 30}, {"n": 100}]


async def test_hash_delete(counters: Counters) -> None:
    await counters.hash_incr_many([("h", "a", 1), ("h", "b", 2), ("h", "c", 3), ("g", "a", 1)])
    await counters.hash_delete("h", ["a", "missing"])
    assert await counters.hash_get_all("h") == {"b": 2, "c": 3}
    await counters.hash_delete_many([("h", "b"), ("h", "c"), ("g", "a"), ("nothing", "x")])
    assert await counters.hash_get_many(["h", "g"]) == [{}, {}]
    await counters.hash_delete_many([])
    await counters.hash_delete("h", [])
