"""The Redis implementations of the key-value ports: rate limits, values, timelines and
counters shared by every instance, all over the process's one Redis client.

Rate limits run as one Lua script, so a check and its update are atomic however many
instances hit the same key, and the script reads the server's `TIME` rather than
each instance's clock, so instances whose clocks disagree still agree on the limit.
Times inside the script are integer microseconds: a double holds today's epoch in
microseconds exactly (< 2**53), which keeps "remaining" free of rounding errors.

Keys: `<prefix>rl:<key>` holds a rate key's theoretical arrival time (TAT);
`<prefix>kv:<key>` holds a value; `<prefix>tl:<key>` a timeline (sorted set);
`<prefix>h:<key>` a hash of counters. The namespaces keep `get("x")` from ever
reading limiter state, and keep all of them clear of other users of the same prefix.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from socialhub.config import Rate
from socialhub.errors import Unavailable
from socialhub.infra.kv.base import (
    Counters,
    RateDecision,
    RateLimiter,
    Timelines,
    Values,
    check_cost,
    gcra_interval,
)
from socialhub.infra.redis_client import check_binary

_US = 1_000_000

# KEYS[1] = the rate key; ARGV = burst, emission interval (us), cost.
# Writing after TIME needs effect replication, the default since Redis 5.
# Returns {allowed (1/0), remaining, reset_after (us), retry_after (us)}.
GCRA_SCRIPT = """
local burst = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tolerance = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allowed = new_tat - now <= tolerance
local stored = tat
local retry_after = new_tat - tolerance - now
if allowed then
  stored = new_tat
  retry_after = 0
  if cost > 0 then
    -- %d, not tostring: tostring keeps 14 digits and would round the TAT.
    redis.call('SET', KEYS[1], string.format('%d', new_tat),
               'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
  end
end
-- max: a key last used under a larger burst may sit beyond this rate's tolerance.
local remaining = math.max(0, math.floor((tolerance - (stored - now)) / interval))
return {allowed and 1 or 0, remaining, stored - now, retry_after}
"""


def _ttl_ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError(f"ttl must be more than zero, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


# Timelines are sorted sets whose members all score 0, so they sort by member: ids
# zero-padded to 19 digits sort as numbers (a float score would lose precision above
# 2**53). SENTINEL ("-" sorts before every digit) marks that the timeline exists even
# when it holds no ids; it stays at rank 0 when trimming.
SENTINEL = b"-"
ID_WIDTH = 19

# KEYS[1] timeline; ARGV[1] cap; ARGV[2..] padded ids. Adds only to an existing timeline.
TIMELINE_ADD_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 1, -(tonumber(ARGV[1]) + 1))
return 1
"""


# KEYS[i] hash, ARGV[2i-1] field, ARGV[2i] delta: HINCRBY each, HDEL a field that
# reaches 0. One script, so the batch is atomic and one round trip.
HASH_INCR_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  local field = ARGV[2 * i - 1]
  local value = redis.call('HINCRBY', KEYS[i], field, ARGV[2 * i])
  if value == 0 then redis.call('HDEL', KEYS[i], field) end
  out[i] = value
end
return out
"""


def _pad(value: int) -> bytes:
    return str(value).zfill(ID_WIDTH).encode()


async def _call(pending: Awaitable[Any]) -> Any:
    try:
        return await pending
    except (RedisError, OSError) as exc:
        raise Unavailable(f"key-value store unavailable: {exc}") from exc


class RedisRateLimiter(RateLimiter):
    """Rate limits in Redis, shared by every instance using `prefix`."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        check_binary(client)
        self._prefix = prefix
        self._gcra = client.register_script(GCRA_SCRIPT)

    async def rate_limit(self, key: str, rate: Rate, cost: int = 1) -> RateDecision:
        check_cost(rate, cost)
        args = [rate.burst, gcra_interval(rate, _US), cost]
        try:
            reply: Any = await self._gcra(keys=[f"{self._prefix}rl:{key}"], args=args)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"rate limiter unavailable: {exc}") from exc
        allowed, remaining, reset_after, retry_after = (int(x) for x in reply)
        return RateDecision(
            allowed=bool(allowed),
            limit=rate.burst,
            remaining=remaining,
            reset_after=reset_after / _US,
            retry_after=retry_after / _US,
        )


class RedisValues(Values):
    """Values in Redis, shared by every instance using `prefix`."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        check_binary(client)
        self._client = client
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._client.get(self._value_key(key))
        except (RedisError, OSError) as exc:
            raise Unavailable(f"key-value store unavailable: {exc}") from exc
        # The stubs allow str for decoding clients, which check_binary refused.
        return cast(bytes | None, value)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        ms = _ttl_ms(ttl)
        try:
            await self._client.set(self._value_key(key), value, px=ms)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"key-value store unavailable: {exc}") from exc

    async def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        ms = _ttl_ms(ttl)
        try:
            stored = await self._client.set(self._value_key(key), value, px=ms, nx=True)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"key-value store unavailable: {exc}") from exc
        return bool(stored)

    async def delete(self, key: str) -> bool:
        return bool(await _call(self._client.delete(self._value_key(key))))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = await _call(self._client.mget([self._value_key(k) for k in keys]))
        return cast(list[bytes | None], values)

    def _value_key(self, key: str) -> str:
        return f"{self._prefix}kv:{key}"


class RedisTimelines(Timelines):
    """Timelines in Redis, shared by every instance using `prefix`."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        check_binary(client)
        self._client = client
        self._prefix = prefix
        self._timeline_add = client.register_script(TIMELINE_ADD_SCRIPT)

    async def create(self, key: str, ids: Sequence[int], cap: int, ttl: float) -> None:
        ms = _ttl_ms(ttl) or 1
        k = self._timeline_key(key)
        members: dict[bytes, float] = {SENTINEL: 0, **{_pad(i): 0 for i in ids}}
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(k, members)
                pipe.zremrangebyrank(k, 1, -(cap + 1))
                pipe.pexpire(k, ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"key-value store unavailable: {exc}") from exc

    async def add(self, key: str, ids: Sequence[int], cap: int) -> bool:
        if not ids:
            return bool(await _call(self._client.exists(self._timeline_key(key))))
        reply = await _call(self._timeline_add(keys=[self._timeline_key(key)], args=[cap, *(_pad(i) for i in ids)]))
        return bool(reply)

    async def remove(self, key: str, ids: Sequence[int]) -> None:
        if ids:
            await _call(self._client.zrem(self._timeline_key(key), *(_pad(i) for i in ids)))

    async def range(self, key: str, before: int | None, limit: int) -> list[int] | None:
        # One command: the range reaches down to the sentinel, which every timeline holds,
        # so an empty answer means there is no timeline (one more member is asked for in
        # case the sentinel is among them).
        top = b"(" + _pad(before) if before is not None else b"+"
        members = await _call(
            self._client.zrevrangebylex(self._timeline_key(key), top, b"[" + SENTINEL, start=0, num=limit + 1)
        )
        if not members:
            return None
        return [int(m) for m in members if m != SENTINEL][:limit]

    async def touch(self, key: str, ttl: float) -> None:
        ms = _ttl_ms(ttl) or 1
        await _call(self._client.pexpire(self._timeline_key(key), ms))

    def _timeline_key(self, key: str) -> str:
        return f"{self._prefix}tl:{key}"


class RedisCounters(Counters):
    """Hashes of counters in Redis, shared by every instance using `prefix`."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        check_binary(client)
        self._client = client
        self._prefix = prefix
        self._hash_incr = client.register_script(HASH_INCR_SCRIPT)

    async def hash_incr_many(self, changes: Sequence[tuple[str, str, int]]) -> list[int]:
        if not changes:
            return []
        keys = [self._hash_key(key) for key, _, _ in changes]
        args: list[str | int] = []
        for _, field, delta in changes:
            args += [field, delta]
        reply = await _call(self._hash_incr(keys=keys, args=args))
        return [int(v) for v in reply]

    async def hash_get_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        if not keys:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(self._hash_key(key))
                replies: list[dict[bytes, bytes]] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"key-value store unavailable: {exc}") from exc
        return [{f.decode(): int(v) for f, v in reply.items()} for reply in replies]

    async def hash_delete_many(self, entries: Sequence[tuple[str, str]]) -> None:
        by_key: dict[str, list[str]] = {}
        for key, field in entries:
            by_key.setdefault(key, []).append(field)
        if not by_key:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, fields in by_key.items():
                    pipe.hdel(self._hash_key(key), *fields)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"key-value store unavailable: {exc}") from exc

    def _hash_key(self, key: str) -> str:
        return f"{self._prefix}h:{key}"
