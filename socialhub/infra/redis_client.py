"""The one Redis client of a process, shared by the key-value ports and pub/sub.

`app.py` makes it once from `redis.url`, hands it to each Redis implementation and
closes it last; the implementations never close it. Errors of a command surface as
`socialhub.errors.Unavailable` in each implementation, so callers never see redis-py.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

# Fail fast when Redis is gone: a request waiting on a dead Redis holds a worker, and
# the caller turns Unavailable into a 503 anyway. Two quick retries ride out a
# connection the server just closed (idle timeout, failover) without a user noticing.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
RETRIES = 2


def client_from_url(url: str) -> aioredis.Redis:
    """A command client with this project's timeouts and retry policy."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES),
    )


def check_binary(client: aioredis.Redis) -> None:
    """Values are bytes end to end; a decoding client would hand back str."""
    if client.connection_pool.connection_kwargs.get("decode_responses", False):
        raise ValueError("the Redis client must be created with decode_responses=False")


async def ping(client: aioredis.Redis) -> bool:
    """True when Redis answers (for /readyz)."""
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
