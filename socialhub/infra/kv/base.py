"""The ports on small shared state with expiry, one per purpose:

- `RateLimiter`: rate limits (GCRA), for the HTTP limits and the login throttle;
- `Values`: plain values with an optional expiry: caches, one-time markers, flags;
- `Timelines`: capped sets of ids read newest first, for the home feed;
- `Counters`: hashes of counters their owners bring back to zero, for presence.

Each has two implementations: in `memory` (one process; the default) and in `redis`
(shared by every instance, all four over the one Redis client). Both are real and
pass the same contract tests (tests/contract/test_{rate_limiter,values,timelines,counters}.py).
A caller takes only the port it uses. Keys are plain strings; the Redis
implementations put each port under its own namespace of the configured prefix.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import msgspec

from socialhub.config import Rate


class RateDecision(msgspec.Struct, frozen=True):
    """The outcome of one rate-limit check (GCRA)."""

    allowed: bool
    limit: int  # the burst: how many requests a fresh key may make at once
    remaining: int  # how many more would be allowed right now
    reset_after: float  # seconds until the key is back to a full burst
    retry_after: float  # seconds until the next request would be allowed (0 when allowed)


def gcra_interval(rate: Rate, unit: int) -> int:
    """The emission interval in whole `unit`s per second (at least one unit)."""
    return max(1, round(rate.interval * unit))


def check_cost(rate: Rate, cost: int) -> None:
    """Refuse a cost no burst could ever allow: it would be denied forever."""
    if not 0 <= cost <= rate.burst:
        raise ValueError(f"cost must be 0..burst ({rate.burst}), got {cost}")


class RateLimiter(abc.ABC):
    """Rate limits under the generic cell rate algorithm."""

    @abc.abstractmethod
    async def rate_limit(self, key: str, rate: Rate, cost: int = 1) -> RateDecision:
        """Count `cost` against `key` under the generic cell rate algorithm, atomically.

        A denied request is not counted. `rate.burst` requests may come at once; after
        that one more is allowed every `rate.interval` seconds. A cost above the burst
        raises ValueError.
        """


class Values(abc.ABC):
    """Byte values with an optional expiry."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store `value`, expiring after `ttl` seconds when given."""

    @abc.abstractmethod
    async def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store `value` only when `key` is absent; True when stored."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove `key`, atomically; True when it was there (so one caller of many "takes" it)."""

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key, in order (None when absent or expired), in one round trip."""


class Timelines(abc.ABC):
    """Capped sets of ids, read newest first.

    A timeline exists once created (it may be empty); adding to a missing timeline does
    nothing, so fan-out never resurrects one that expired: it is rebuilt on read.
    """

    @abc.abstractmethod
    async def create(self, key: str, ids: Sequence[int], cap: int, ttl: float) -> None:
        """Create (or merge into) the timeline, keep the newest `cap` ids, expire after `ttl`."""

    @abc.abstractmethod
    async def add(self, key: str, ids: Sequence[int], cap: int) -> bool:
        """Add ids to an existing timeline and trim it to `cap`; False when it does not exist."""

    @abc.abstractmethod
    async def remove(self, key: str, ids: Sequence[int]) -> None:
        """Remove ids (absent ones are ignored)."""

    @abc.abstractmethod
    async def range(self, key: str, before: int | None, limit: int) -> list[int] | None:
        """Up to `limit` ids below `before`, newest first; None when the timeline does not exist."""

    @abc.abstractmethod
    async def touch(self, key: str, ttl: float) -> None:
        """Push the timeline's expiry to `ttl` from now (no-op when it does not exist)."""


class Counters(abc.ABC):
    """Hashes of counters: key -> {field: int}.

    Counters that their owners bring back to zero (sockets, joins), so a field that
    reaches exactly 0 is deleted and a hash with no field is gone: absent reads as 0,
    and increments commute (-1 then +1 ends at 0 and absent, like +1 then -1). A
    negative count is kept. Hashes do not expire and are not evicted: evicting a
    counter would corrupt it.
    """

    @abc.abstractmethod
    async def hash_incr_many(self, changes: Sequence[tuple[str, str, int]]) -> list[int]:
        """Add each (key, field, delta), all atomically in one round trip; the new values, in order.

        A field whose new value is 0 is deleted.
        """

    @abc.abstractmethod
    async def hash_get_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        """Every field of each hash, in order ({} when absent), in one round trip."""

    @abc.abstractmethod
    async def hash_delete_many(self, entries: Sequence[tuple[str, str]]) -> None:
        """Delete each (key, field) in one round trip (absent ones are ignored)."""

    async def hash_incr(self, key: str, field: str, delta: int) -> int:
        """Add `delta` to one field atomically; its new value (0: the field was deleted)."""
        return (await self.hash_incr_many([(key, field, delta)]))[0]

    async def hash_get_all(self, key: str) -> dict[str, int]:
        """Every field of one hash ({} when absent)."""
        return (await self.hash_get_many([key]))[0]

    async def hash_delete(self, key: str, fields: Sequence[str]) -> None:
        """Delete `fields` of one hash (absent ones are ignored)."""
        await self.hash_delete_many([(key, f) for f in fields])
