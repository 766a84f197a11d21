"""The RateLimiter contract, run over every implementation (memory and Redis).

Timings: intervals of 0.1-0.2 s keep the suite fast. A figure in seconds is checked
against the time the test itself measured since the key's first request (a slow
machine widens the window instead of failing), and every wait adds a margin.
"""

from __future__ import annotations

import asyncio

import pytest

from socialhub.config import Rate
from socialhub.infra.kv.base import RateLimiter, Values
from socialhub.infra.kv.memory import MemoryRateLimiter, MemoryValues

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


async def test_burst_then_deny_then_allow_after_the_interval(limiter: RateLimiter) -> None:
    watch = Stopwatch()
    decisions = [await limiter.rate_limit("login:1.2.3.4", RATE) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    assert all(d.limit == 3 and d.retry_after == 0 for d in decisions)
    # Each request pushes the full-burst point out by one interval.
    for n, d in enumerate(decisions, start=1):
        assert about(d.reset_after, n * 0.2, watch)

    denied = await limiter.rate_limit("login:1.2.3.4", RATE)
    assert not denied.allowed
    assert denied.remaining == 0
    assert about(denied.retry_after, 0.2, watch)
    assert about(denied.reset_after, 0.6, watch)

    await asyncio.sleep(denied.retry_after + 0.03)
    again = await limiter.rate_limit("login:1.2.3.4", RATE)
    assert again.allowed
    assert again.remaining == 0
    assert not (await limiter.rate_limit("login:1.2.3.4", RATE)).allowed


async def test_back_to_a_full_burst_after_reset_after(limiter: RateLimiter) -> None:
    for _ in range(3):
        last = await limiter.rate_limit("k", RATE)
    await asyncio.sleep(last.reset_after + 0.03)
    fresh = await limiter.rate_limit("k", RATE)
    assert fresh.allowed and fresh.remaining == 2


async def test_denied_requests_are_not_counted(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.rate_limit("k", RATE)
    denials = [await limiter.rate_limit("k", RATE) for _ in range(20)]
    assert not any(d.allowed for d in denials)
    # Had the 20 denials counted, the key would be blocked for another 4 s.
    await asyncio.sleep(denials[-1].retry_after + 0.03)
    assert (await limiter.rate_limit("k", RATE)).allowed


async def test_cost_counts_several_and_a_denied_cost_leaves_room(limiter: RateLimiter) -> None:
    watch = Stopwatch()
    first = await limiter.rate_limit("k", RATE, cost=2)
    assert first.allowed and first.remaining == 1
    too_big = await limiter.rate_limit("k", RATE, cost=2)
    assert not too_big.allowed
    assert too_big.remaining == 1  # what is left, though not enough for this request
    assert about(too_big.retry_after, 0.2, watch)
    last = await limiter.rate_limit("k", RATE, cost=1)
    assert last.allowed and last.remaining == 0


async def test_cost_zero_peeks_without_counting(limiter: RateLimiter) -> None:
    await limiter.rate_limit("k", RATE)
    peek = await limiter.rate_limit("k", RATE, cost=0)
    assert peek.allowed and peek.remaining == 2
    assert (await limiter.rate_limit("k", RATE)).remaining == 1


async def test_a_cost_above_the_burst_is_refused(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError):
        await limiter.rate_limit("k", RATE, cost=4)


async def test_keys_are_independent(limiter: RateLimiter, values: Values) -> None:
    for _ in range(3):
        assert (await limiter.rate_limit("ip:a", RATE)).allowed
    assert not (await limiter.rate_limit("ip:a", RATE)).allowed
    other = await limiter.rate_limit("ip:b", RATE)
    assert other.allowed and other.remaining == 2
    # Rate keys and value keys live apart: a value named like a rate key is untouched.
    assert await values.get("ip:a") is None


async def test_rates_with_different_bursts(limiter: RateLimiter) -> None:
    # A slow refill, so that 61 round trips cannot earn back a request.
    wide = Rate(limit=1, period=10.0, burst=60)
    watch = Stopwatch()
    decisions = [await limiter.rate_limit("ws", wide) for _ in range(61)]
    assert sum(d.allowed for d in decisions) == 60
    assert decisions[59].remaining == 0
    assert about(decisions[60].retry_after, 10.0, watch)


# In process only: the bound on memory, which Redis enforces with its own maxmemory.


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


async def test_memory_rate_table_is_capped() -> None:
    store = MemoryRateLimiter(max_keys=100, clock=FakeClock())
    for i in range(1000):
        await store.rate_limit(f"ip:{i}", RATE)
    assert len(store) == 100
    # The most recent keys survive; the oldest were forgiven.
    assert (await store.rate_limit("ip:999", RATE)).remaining == 1
    assert (await store.rate_limit("ip:0", RATE)).remaining == 2


async def test_memory_sweep_drops_expired_entries() -> None:
    clock = FakeClock()
    limiter, store = MemoryRateLimiter(clock=clock), MemoryValues(clock=clock)
    for i in range(50):
        await limiter.rate_limit(f"ip:{i}", RATE)
        await store.set(f"v:{i}", b"x", ttl=1)
    await store.set("keep", b"x")
    assert len(limiter) + len(store) == 101
    clock.now += 61 * 1_000_000_000  # past the sweep interval and every expiry
    assert await store.get("keep") == b"x"
    await limiter.rate_limit("peek", RATE, cost=0)  # each table sweeps on its own calls; cost 0 stores nothing
    assert len(limiter) + len(store) == 1
