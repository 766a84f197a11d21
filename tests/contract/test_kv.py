"""The KeyValue contract, run over every implementation (memory and Redis).

Timings: intervals of 0.1-0.2 s keep the suite fast. A figure in seconds is checked
against the time the test itself measured since the key's first request (a slow
machine widens the window instead of failing), and every wait adds a margin.
"""

from __future__ import annotations

import asyncio

import pytest

from socialhub.config import Rate
from socialhub.infra.kv.base import KeyValue
from socialhub.infra.kv.memory import MemoryKV

# Three at once, then one every 0.2 s.
RATE = Rate(limit=5, period=1.0, burst=3)
# Clock granularity: Redis TIME is in microseconds, the loop clock in nanoseconds.
EPS = 0.002


class Stopwatch:
    def __init__(self) -> None:
        self._start = asyncio.get_running_loop().time()

    def elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self._start


def about(value: float, expected: float, watch: Stopwatch) -> bool:
    """`value` is `expected` minus at most the time elapsed since the watch started."""
    return expected - watch.elapsed() - EPS <= value <= expected + EPS


async def test_burst_then_deny_then_allow_after_the_interval(kv: KeyValue) -> None:
    watch = Stopwatch()
    decisions = [await kv.rate_limit("login:1.2.3.4", RATE) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    assert all(d.limit == 3 and d.retry_after == 0 for d in decisions)
    # Each request pushes the full-burst point out by one interval.
    for n, d in enumerate(decisions, start=1):
        assert about(d.reset_after, n * 0.2, watch)

    denied = await kv.rate_limit("login:1.2.3.4", RATE)
    assert not denied.allowed
    assert denied.remaining == 0
    assert about(denied.retry_after, 0.2, watch)
    assert about(denied.reset_after, 0.6, watch)

    await asyncio.sleep(denied.retry_after + 0.03)
    again = await kv.rate_limit("login:1.2.3.4", RATE)
    assert again.allowed
    assert again.remaining == 0
    assert not (await kv.rate_limit("login:1.2.3.4", RATE)).allowed


async def test_back_to_a_full_burst_after_reset_after(kv: KeyValue) -> None:
    for _ in range(3):
        last = await kv.rate_limit("k", RATE)
    await asyncio.sleep(last.reset_after + 0.03)
    fresh = await kv.rate_limit("k", RATE)
    assert fresh.allowed and fresh.remaining == 2


async def test_denied_requests_are_not_counted(kv: KeyValue) -> None:
    for _ in range(3):
        await kv.rate_limit("k", RATE)
    denials = [await kv.rate_limit("k", RATE) for _ in range(20)]
    assert not any(d.allowed for d in denials)
    # Had the 20 denials counted, the key would be blocked for another 4 s.
    await asyncio.sleep(denials[-1].retry_after + 0.03)
    assert (await kv.rate_limit("k", RATE)).allowed


async def test_cost_counts_several_and_a_denied_cost_leaves_room(kv: KeyValue) -> None:
    watch = Stopwatch()
    first = await kv.rate_limit("k", RATE, cost=2)
    assert first.allowed and first.remaining == 1
    too_big = await kv.rate_limit("k", RATE, cost=2)
    assert not too_big.allowed
    assert too_big.remaining == 1  # what is left, though not enough for this request
    assert about(too_big.retry_after, 0.2, watch)
    last = await kv.rate_limit("k", RATE, cost=1)
    assert last.allowed and last.remaining == 0


async def test_cost_zero_peeks_without_counting(kv: KeyValue) -> None:
    await kv.rate_limit("k", RATE)
    peek = await kv.rate_limit("k", RATE, cost=0)
    assert peek.allowed and peek.remaining == 2
    assert (await kv.rate_limit("k", RATE)).remaining == 1


async def test_a_cost_above_the_burst_is_refused(kv: KeyValue) -> None:
    with pytest.raises(ValueError):
        await kv.rate_limit("k", RATE, cost=4)


async def test_keys_are_independent(kv: KeyValue) -> None:
    for _ in range(3):
        assert (await kv.rate_limit("ip:a", RATE)).allowed
    assert not (await kv.rate_limit("ip:a", RATE)).allowed
    other = await kv.rate_limit("ip:b", RATE)
    assert other.allowed and other.remaining == 2
    # Rate keys and value keys live apart: a value named like a rate key is untouched.
    assert await kv.get("ip:a") is None


async def test_rates_with_different_bursts(kv: KeyValue) -> None:
    # A slow refill, so that 61 round trips cannot earn back a request.
    wide = Rate(limit=1, period=10.0, burst=60)
    watch = Stopwatch()
    decisions = [await kv.rate_limit("ws", wide) for _ in range(61)]
    assert sum(d.allowed for d in decisions) == 60
    assert decisions[59].remaining == 0
    assert about(decisions[60].retry_after, 10.0, watch)


async def test_get_set_delete(kv: KeyValue) -> None:
    assert await kv.get("a") is None
    await kv.set("a", b"1")
    assert await kv.get("a") == b"1"
    await kv.set("a", b"\x00\xff binary")
    assert await kv.get("a") == b"\x00\xff binary"
    await kv.delete("a")
    assert await kv.get("a") is None
    await kv.delete("a")  # absent: no error


async def test_ttl_expiry(kv: KeyValue) -> None:
    await kv.set("short", b"x", ttl=0.1)
    await kv.set("long", b"y", ttl=5)
    assert await kv.get("short") == b"x"
    await asyncio.sleep(0.25)
    assert await kv.get("short") is None
    assert await kv.get("long") == b"y"


async def test_set_without_ttl_clears_an_old_ttl(kv: KeyValue) -> None:
    await kv.set("a", b"x", ttl=0.1)
    await kv.set("a", b"y")
    await asyncio.sleep(0.25)
    assert await kv.get("a") == b"y"


async def test_set_if_absent(kv: KeyValue) -> None:
    assert await kv.set_if_absent("once", b"first", ttl=0.1)
    assert not await kv.set_if_absent("once", b"second", ttl=0.1)
    assert await kv.get("once") == b"first"
    await asyncio.sleep(0.25)
    assert await kv.set_if_absent("once", b"third")
    assert await kv.get("once") == b"third"


async def test_set_if_absent_under_concurrency_stores_exactly_once(kv: KeyValue) -> None:
    results = await asyncio.gather(*(kv.set_if_absent("race", str(i).encode()) for i in range(20)))
    assert sum(results) == 1


async def test_a_bad_ttl_is_refused(kv: KeyValue) -> None:
    with pytest.raises(ValueError):
        await kv.set("a", b"x", ttl=0)


async def test_ping(kv: KeyValue) -> None:
    assert await kv.ping()


# MemoryKV only: the bound on memory, which Redis enforces with its own maxmemory.


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


async def test_memory_rate_table_is_capped() -> None:
    store = MemoryKV(max_rate_keys=100, clock=FakeClock())
    for i in range(1000):
        await store.rate_limit(f"ip:{i}", RATE)
    assert len(store) == 100
    # The most recent keys survive; the oldest were forgiven.
    assert (await store.rate_limit("ip:999", RATE)).remaining == 1
    assert (await store.rate_limit("ip:0", RATE)).remaining == 2


async def test_memory_sweep_drops_expired_entries() -> None:
    clock = FakeClock()
    store = MemoryKV(clock=clock)
    for i in range(50):
        await store.rate_limit(f"ip:{i}", RATE)
        await store.set(f"v:{i}", b"x", ttl=1)
    await store.set("keep", b"x")
    assert len(store) == 101
    clock.now += 61 * 1_000_000_000  # past the sweep interval and every expiry
    assert await store.get("keep") == b"x"
    assert len(store) == 1


# -- timelines ---------------------------------------------------------------------------


async def test_timeline_missing_until_created(kv: KeyValue) -> None:
    assert await kv.timeline_range("t", None, 10) is None
    assert await kv.timeline_add("t", [5], 10) is False
    assert await kv.timeline_range("t", None, 10) is None  # adding never creates
    await kv.timeline_create("t", [], 10, 60)
    assert await kv.timeline_range("t", None, 10) == []  # exists, empty


async def test_timeline_orders_pages_and_caps(kv: KeyValue) -> None:
    big = (1 << 62) + 7  # beyond a double's exact range: ordering must still be exact
    await kv.timeline_create("t", [3, 1, 2, big, big - 1], 4, 60)
    assert await kv.timeline_range("t", None, 10) == [big, big - 1, 3, 2]  # 1 trimmed by the cap
    assert await kv.timeline_range("t", None, 4) == [big, big - 1, 3, 2]  # exactly all of them
    assert await kv.timeline_range("t", None, 3) == [big, big - 1, 3]
    assert await kv.timeline_add("t", [10, 3], 4) is True  # 3 again is no change
    assert await kv.timeline_range("t", None, 10) == [big, big - 1, 10, 3]
    assert await kv.timeline_range("t", big - 1, 2) == [10, 3]
    assert await kv.timeline_range("t", 3, 5) == []
    await kv.timeline_remove("t", [10, 999])
    assert await kv.timeline_range("t", None, 10) == [big, big - 1, 3]


async def test_timeline_create_merges_with_an_existing_one(kv: KeyValue) -> None:
    await kv.timeline_create("t", [1, 2], 10, 60)
    await kv.timeline_create("t", [2, 3], 10, 60)
    assert await kv.timeline_range("t", None, 10) == [3, 2, 1]


async def test_timeline_expires_and_touch_extends(kv: KeyValue) -> None:
    await kv.timeline_create("a", [1], 10, 0.2)
    await kv.timeline_create("b", [1], 10, 0.2)
    await kv.timeline_touch("b", 5)
    await asyncio.sleep(0.35)
    assert await kv.timeline_range("a", None, 10) is None
    assert await kv.timeline_range("b", None, 10) == [1]


# -- delete, get_many --------------------------------------------------------------------


async def test_delete_says_whether_the_key_was_there(kv: KeyValue) -> None:
    await kv.set("a", b"1")
    await kv.set("gone", b"x", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await kv.delete("a") is True
    assert await kv.delete("a") is False
    assert await kv.delete("gone") is False  # expired counts as absent


async def test_delete_is_taken_by_exactly_one_of_many(kv: KeyValue) -> None:
    await kv.set("flag", b"1")
    results = await asyncio.gather(*(kv.delete("flag") for _ in range(20)))
    assert sum(results) == 1


async def test_get_many(kv: KeyValue) -> None:
    assert await kv.get_many([]) == []
    await kv.set("a", b"1")
    await kv.set("b", b"\x00", ttl=0.05)
    await kv.set("c", b"3")
    await asyncio.sleep(0.1)
    assert await kv.get_many(["a", "b", "missing", "c", "a"]) == [b"1", None, None, b"3", b"1"]


# -- hashes of counters ------------------------------------------------------------------


async def test_hash_incr_counts_and_deletes_a_field_at_zero(kv: KeyValue) -> None:
    assert await kv.hash_get_all("h") == {}
    assert await kv.hash_incr("h", "a", 1) == 1
    assert await kv.hash_incr("h", "a", 2) == 3
    assert await kv.hash_incr("h", "b", 1) == 1
    assert await kv.hash_get_all("h") == {"a": 3, "b": 1}
    assert await kv.hash_incr("h", "a", -3) == 0
    assert await kv.hash_get_all("h") == {"b": 1}
    assert await kv.hash_incr("h", "b", -1) == 0
    assert await kv.hash_get_all("h") == {}
    # Hashes live apart from values and timelines.
    assert await kv.get("h") is None
    assert await kv.timeline_range("h", None, 10) is None


async def test_hash_increments_commute_through_negative(kv: KeyValue) -> None:
    # A decrement that lands before its increment leaves -1, then 0 and absent.
    assert await kv.hash_incr("h", "a", -1) == -1
    assert await kv.hash_get_all("h") == {"a": -1}
    assert await kv.hash_incr("h", "a", 1) == 0
    assert await kv.hash_get_all("h") == {}


async def test_hash_incr_many_in_order_across_keys(kv: KeyValue) -> None:
    assert await kv.hash_incr_many([]) == []
    out = await kv.hash_incr_many([("x", "f", 2), ("y", "f:1@i.2", 5), ("x", "f", -2), ("x", "g", 1)])
    assert out == [2, 5, 0, 1]
    assert await kv.hash_get_many(["x", "y", "z"]) == [{"g": 1}, {"f:1@i.2": 5}, {}]
    assert await kv.hash_get_many([]) == []


async def test_hash_incr_is_atomic_under_concurrency(kv: KeyValue) -> None:
    await asyncio.gather(*(kv.hash_incr_many([("h", "n", 1), ("g", "n", 2)]) for _ in range(50)))
    await asyncio.gather(*(kv.hash_incr("h", "n", -1) for _ in range(20)))
    assert await kv.hash_get_many(["h", "g"]) == [{"n": 30}, {"n": 100}]


async def test_hash_delete(kv: KeyValue) -> None:
    await kv.hash_incr_many([("h", "a", 1), ("h", "b", 2), ("h", "c", 3), ("g", "a", 1)])
    await kv.hash_delete("h", ["a", "missing"])
    assert await kv.hash_get_all("h") == {"b": 2, "c": 3}
    await kv.hash_delete_many([("h", "b"), ("h", "c"), ("g", "a"), ("nothing", "x")])
    assert await kv.hash_get_many(["h", "g"]) == [{}, {}]
    await kv.hash_delete_many([])
    await kv.hash_delete("h", [])
