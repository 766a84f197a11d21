"""The Timelines contract, run over every implementation (memory and Redis)."""

from __future__ import annotations

import asyncio

from socialhub.infra.kv.base import Timelines


async def test_timeline_missing_until_created(timelines: Timelines) -> None:
    assert await timelines.range("t", None, 10) is None
    assert await timelines.add("t", [5], 10) is False
    assert await timelines.range("t", None, 10) is None  # adding never creates
    await timelines.create("t", [], 10, 60)
    assert await timelines.range("t", None, 10) == []  # exists, empty


async def test_timeline_orders_pages_and_caps(timelines: Timelines) -> None:
    big = (1 << 62) + 7  # beyond a double's exact range: ordering must still be exact
    await timelines.create("t", [3, 1, 2, big, big - 1], 4, 60)
    assert await timelines.range("t", None, 10) == [big, big - 1, 3, 2]  # 1 trimmed by the cap
    assert await timelines.range("t", None, 4) == [big, big - 1, 3, 2]  # exactly all of them
    assert await timelines.range("t", None, 3) == [big, big - 1, 3]
    assert await timelines.add("t", [10, 3], 4) is True  # 3 again is no change
    assert await timelines.range("t", None, 10) == [big, big - 1, 10, 3]
    assert await timelines.range("t", big - 1, 2) == [10, 3]
    assert await timelines.range("t", 3, 5) == []
    await timelines.remove("t", [10, 999])
    assert await timelines.range("t", None, 10) == [big, big - 1, 3]


async def test_timeline_create_merges_with_an_existing_one(timelines: Timelines) -> None:
    await timelines.create("t", [1, 2], 10, 60)
    await timelines.create("t", [2, 3], 10, 60)
    assert await timelines.range("t", None, 10) == [3, 2, 1]


async def test_timeline_expires_and_touch_extends(timelines: Timelines) -> None:
    await timelines.create("a", [1], 10, 0.2)
    await timelines.create("b", [1], 10, 0.2)
    await timelines.touch("b", 5)
    await asyncio.sleep(0.35)
    assert await timelines.range("a", None, 10) is None
    assert await timelines.range("b", None, 10) == [1]
