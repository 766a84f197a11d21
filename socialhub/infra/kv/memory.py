"""The in-process implementations of the key-value ports: one instance's rate limits,
values, timelines and counters.

`MemoryRateLimiter` runs the same GCRA maths as `redis.RedisRateLimiter`, in integer
nanoseconds of `time.monotonic_ns()` (integers so that "3 requests left" never becomes
2.9999 and rounds down to 2).

Memory is bounded. An entry whose time is up is dropped when it is next touched, by
a sweep that runs at most every `SWEEP_INTERVAL` seconds during normal calls, and,
when a table is still at its cap, by evicting the least recently used entry. So an
attacker cycling IP addresses through the login limit costs at most `MAX_RATE_KEYS`
small entries; the price is that under such a flood the oldest keys are forgiven.

Hashes of counters are the exception: they are neither capped nor evicted (dropping a
counter would corrupt it). Each field is a live count its owner brings back to zero
(a socket, a room join), and a field at zero is deleted, so they hold only what is live.
"""

from __future__ import annotations

import abc
import bisect
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from socialhub.config import Rate
from socialhub.infra.kv.base import (
    Counters,
    RateDecision,
    RateLimiter,
    Timelines,
    Values,
    check_cost,
    gcra_interval,
)

# A rate entry is one str key and one int (~150 bytes with dict overhead), so 100k of
# them is ~15 MB: far more than the distinct clients one instance sees within the
# longest window (signup: 1 h), small enough that a flood of spoofed keys is harmless.
MAX_RATE_KEYS = 100_000
# Values are small markers and flags (a feed reader's activity, presence heartbeats and
# online flags); the count is capped, not the bytes, because callers store small values.
MAX_VALUE_KEYS = 100_000
# Timelines hold at most `cap` ints each (400 in the feed: ~15 KB); a dropped one is
# rebuilt from PostgreSQL on its next read, so evicting the least recently used is safe.
MAX_TIMELINES = 50_000
# A full sweep is O(n); once a minute keeps expired entries from piling up without
# letting a busy limiter pay for a scan on every call.
SWEEP_INTERVAL = 60.0

_NS = 1_000_000_000


def _ttl_ns(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError(f"ttl must be more than zero, got {ttl!r}")
    return max(1, round(ttl * _NS))


class _Swept(abc.ABC):
    """A table whose entries expire: the clock, and a sweep of what expired that runs
    at most every `SWEEP_INTERVAL` seconds, during normal calls."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._next_sweep = clock() + round(SWEEP_INTERVAL * _NS)

    def _tick(self) -> int:
        """The current time, sweeping expired entries when a sweep is due."""
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + round(SWEEP_INTERVAL * _NS)
            self._sweep(now)
        return now

    @abc.abstractmethod
    def _sweep(self, now: int) -> None:
        """Drop every entry whose time is up at `now`."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Entries held (live or not yet swept); for tests and metrics."""


class MemoryRateLimiter(_Swept, RateLimiter):
    """Rate limits for one process; the default when no Redis is configured."""

    def __init__(self, *, max_keys: int = MAX_RATE_KEYS, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if max_keys < 1:
            raise ValueError("the key cap must be at least 1")
        super().__init__(clock)
        self._max_keys = max_keys
        # key -> theoretical arrival time (ns); in least-recently-used order.
        self._rates: OrderedDict[str, int] = OrderedDict()

    async def rate_limit(self, key: str, rate: Rate, cost: int = 1) -> RateDecision:
        check_cost(rate, cost)
        now = self._tick()
        interval = gcra_interval(rate, _NS)
        tolerance = rate.burst * interval
        tat = max(self._rates.get(key, now), now)
        new_tat = tat + cost * interval
        allowed = new_tat - now <= tolerance
        if allowed and cost > 0:
            self._store_rate(key, new_tat)
        stored = new_tat if allowed else tat
        retry_after = 0 if allowed else new_tat - tolerance - now
        return RateDecision(
            allowed=allowed,
            limit=rate.burst,
            # max: a key last used under a larger burst may sit beyond this rate's tolerance.
            remaining=max(0, (tolerance - (stored - now)) // interval),
            reset_after=(stored - now) / _NS,
            retry_after=retry_after / _NS,
        )

    def _store_rate(self, key: str, tat: int) -> None:
        self._rates[key] = tat
        self._rates.move_to_end(key)
        while len(self._rates) > self._max_keys:
            self._rates.popitem(last=False)

    def _sweep(self, now: int) -> None:
        # A rate key whose TAT has passed is back to a full burst: the same as absent.
        for key in [k for k, tat in self._rates.items() if tat <= now]:
            del self._rates[key]

    def __len__(self) -> int:
        return len(self._rates)


class MemoryValues(_Swept, Values):
    """Values for one process; the default when no Redis is configured."""

    def __init__(self, *, max_keys: int = MAX_VALUE_KEYS, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if max_keys < 1:
            raise ValueError("the key cap must be at least 1")
        super().__init__(clock)
        self._max_keys = max_keys
        # key -> (value, expires at ns or None); in least-recently-used order.
        self._values: OrderedDict[str, tuple[bytes, int | None]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        now = self._tick()
        entry = self._values.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= now:
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        ttl_ns = _ttl_ns(ttl)
        now = self._tick()
        self._store_value(key, value, None if ttl_ns is None else now + ttl_ns)

    async def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        ttl_ns = _ttl_ns(ttl)
        if await self.get(key) is not None:
            return False
        now = self._clock()
        self._store_value(key, value, None if ttl_ns is None else now + ttl_ns)
        return True

    async def delete(self, key: str) -> bool:
        entry = self._values.pop(key, None)
        return entry is not None and (entry[1] is None or entry[1] > self._clock())

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    def _store_value(self, key: str, value: bytes, expires: int | None) -> None:
        self._values[key] = (value, expires)
        self._values.move_to_end(key)
        while len(self._values) > self._max_keys:
            self._values.popitem(last=False)

    def _sweep(self, now: int) -> None:
        for key in [k for k, (_, exp) in self._values.items() if exp is not None and exp <= now]:
            del self._values[key]

    def __len__(self) -> int:
        return len(self._values)


class MemoryTimelines(_Swept, Timelines):
    """Timelines for one process; the default when no Redis is configured."""

    def __init__(self, *, max_timelines: int = MAX_TIMELINES, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if max_timelines < 1:
            raise ValueError("the timeline cap must be at least 1")
        super().__init__(clock)
        self._max_timelines = max_timelines
        # key -> ([ids ascending], expires at ns); in least-recently-used order.
        self._timelines: OrderedDict[str, tuple[list[int], int]] = OrderedDict()

    async def create(self, key: str, ids: Sequence[int], cap: int, ttl: float) -> None:
        ttl_ns = _ttl_ns(ttl)
        assert ttl_ns is not None
        now = self._tick()
        current = self._timeline(key, now)
        merged = sorted(set(current or ()) | set(ids))[-cap:] if cap > 0 else []
        self._timelines[key] = (merged, now + ttl_ns)
        self._timelines.move_to_end(key)
        while len(self._timelines) > self._max_timelines:
            self._timelines.popitem(last=False)

    async def add(self, key: str, ids: Sequence[int], cap: int) -> bool:
        current = self._timeline(key, self._tick())
        if current is None:
            return False
        for i in ids:
            pos = bisect.bisect_left(current, i)
            if pos == len(current) or current[pos] != i:
                current.insert(pos, i)
        if len(current) > cap:
            del current[: len(current) - cap]
        return True

    async def remove(self, key: str, ids: Sequence[int]) -> None:
        current = self._timeline(key, self._tick())
        if current is None:
            return
        for i in ids:
            pos = bisect.bisect_left(current, i)
            if pos < len(current) and current[pos] == i:
                del current[pos]

    async def range(self, key: str, before: int | None, limit: int) -> list[int] | None:
        current = self._timeline(key, self._tick())
        if current is None:
            return None
        end = len(current) if before is None else bisect.bisect_left(current, before)
        return current[max(0, end - limit) : end][::-1]

    async def touch(self, key: str, ttl: float) -> None:
        ttl_ns = _ttl_ns(ttl)
        assert ttl_ns is not None
        now = self._tick()
        current = self._timeline(key, now)
        if current is not None:
            self._timelines[key] = (current, now + ttl_ns)

    def _timeline(self, key: str, now: int) -> list[int] | None:
        entry = self._timelines.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._timelines[key]
            return None
        self._timelines.move_to_end(key)
        return entry[0]

    def _sweep(self, now: int) -> None:
        for key in [k for k, (_, exp) in self._timelines.items() if exp <= now]:
            del self._timelines[key]

    def __len__(self) -> int:
        return len(self._timelines)


class MemoryCounters(Counters):
    """Hashes of counters for one process; the default when no Redis is configured."""

    def __init__(self) -> None:
        # key -> {field: count}; a field at 0 is removed, an empty hash too.
        self._hashes: dict[str, dict[str, int]] = {}

    async def hash_incr_many(self, changes: Sequence[tuple[str, str, int]]) -> list[int]:
        # No await until the end: the whole batch is applied atomically.
        out: list[int] = []
        for key, field, delta in changes:
            fields = self._hashes.setdefault(key, {})
            value = fields.get(field, 0) + delta
            if value == 0:
                fields.pop(field, None)
                if not fields:
                    del self._hashes[key]
            else:
                fields[field] = value
            out.append(value)
        return out

    async def hash_get_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        return [dict(self._hashes.get(key, {})) for key in keys]

    async def hash_delete_many(self, entries: Sequence[tuple[str, str]]) -> None:
        for key, field in entries:
            fields = self._hashes.get(key)
            if fields is not None:
                fields.pop(field, None)
                if not fields:
                    del self._hashes[key]

    def __len__(self) -> int:
        """Hashes held; for tests and metrics."""
        return len(self._hashes)
