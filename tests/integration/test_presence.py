"""Presence over both back ends: one process (memory counters, values and pub/sub, shared by the
services of a test as if they were instances in one process) and real Redis (each
instance with its own clients and pub/sub, like separate processes).

Timings: grace 0.2 s, heartbeat 0.1 s (a heartbeat key lives 0.3 s). "Nothing was
published" is checked after waiting the grace plus a margin.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from socialhub.domain.protocol import PresenceView
from socialhub.infra.kv.base import Counters, Values
from socialhub.infra.kv.memory import MemoryCounters, MemoryValues
from socialhub.infra.kv.redis import RedisCounters, RedisValues
from socialhub.infra.pubsub.base import PubSub
from socialhub.infra.pubsub.memory import MemoryPubSub
from socialhub.infra.pubsub.redis import RedisPubSub
from socialhub.infra.redis_client import client_from_url
from socialhub.services.instances import REGISTRY, InstanceLedger
from socialhub.services.presence import PresenceService
from socialhub.services.roomjoins import RoomJoins
from tests.contract.conftest import REDIS_URL, eventually

GRACE = 0.2
HEARTBEAT = 0.1
QUIET = GRACE + 0.1  # long enough for any offline check to have run
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Node:
    """One instance: a PresenceService, the room joins on the same ledger, the worker."""

    def __init__(self, service: PresenceService, rooms: RoomJoins) -> None:
        self.service = service
        self.rooms = rooms
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(service.run(self.stop_event))

    async def crash(self) -> None:
        """What SIGKILL leaves: the worker gone without any cleanup."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def shutdown(self) -> None:
        self.stop_event.set()
        await self.task


class Env:
    def __init__(self, kind: str, prefix: str) -> None:
        self.kind = kind
        self.prefix = prefix
        self.last_seen: dict[int, datetime] = {}  # stands in for users.last_seen_at
        self.nodes: list[Node] = []
        self._clients: list[aioredis.Redis] = []
        self._pubsubs: list[PubSub] = []
        self._shared: tuple[Counters, Values, PubSub] | None = None
        self._frames: dict[int, list[dict[str, Any]]] = {}
        self._listener: PubSub | None = None

    async def _backends(self) -> tuple[Counters, Values, PubSub]:
        if self.kind == "memory":
            if self._shared is None:
                self._shared = (MemoryCounters(), MemoryValues(), MemoryPubSub())
                self._pubsubs.append(self._shared[2])
            return self._shared
        client = client_from_url(REDIS_URL)
        pubsub = RedisPubSub(REDIS_URL, self.prefix)
        await pubsub.start()
        self._clients.append(client)
        self._pubsubs.append(pubsub)
        return RedisCounters(client, self.prefix), RedisValues(client, self.prefix), pubsub

    async def save(self, user_id: int, when: datetime) -> None:
        self.last_seen[user_id] = when

    async def load(self, user_ids: Any) -> dict[int, datetime]:
        return {u: self.last_seen[u] for u in user_ids if u in self.last_seen}

    async def node(self, name: str) -> Node:
        counters, values, pubsub = await self._backends()
        ledger = InstanceLedger(counters, values, instance_id=name, heartbeat=HEARTBEAT)
        service = PresenceService(
            ledger, counters, values, pubsub, save_last_seen=self.save, load_last_seen=self.load, grace=GRACE
        )
        node = Node(service, RoomJoins(ledger, counters))
        self.nodes.append(node)
        await eventually(lambda: ledger.registered, within=2)
        return node

    async def counters(self) -> Counters:
        """The shared counters, to inspect."""
        return (await self._backends())[0]

    async def values(self) -> Values:
        """The shared values, to inspect (and to lose one, as Redis might)."""
        return (await self._backends())[1]

    async def watch(self, *user_ids: int) -> None:
        """Collect every presence frame published for `user_ids`, as decoded JSON."""
        if self._listener is None:
            self._listener = (await self._backends())[2]

        async def collect(channel: str, payload: bytes) -> None:
            self._frames[int(channel.rsplit(":", 1)[1])].append(msgspec.json.decode(payload))

        for u in user_ids:
            self._frames[u] = []
            await self._listener.subscribe(f"presence:{u}", collect)

    def frames(self, user_id: int) -> list[dict[str, Any]]:
        return self._frames[user_id]

    def statuses(self, user_id: int) -> list[str]:
        return [f["status"] for f in self._frames[user_id]]

    async def aclose(self) -> None:
        for node in self.nodes:
            await node.crash()
        for pubsub in self._pubsubs:
            await pubsub.close()
        for client in self._clients:
            await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    prefix = f"shtest:{secrets.token_hex(6)}:"
    e = Env(request.param, prefix)
    yield e
    await e.aclose()
    if request.param == "redis":
        admin = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in admin.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await admin.delete(*keys)
        await admin.aclose()


async def status_of(node: Node, user_id: int) -> PresenceView:
    return (await node.service.status([user_id]))[0]


def assert_frame(frame: dict[str, Any], user_id: int, status: str) -> None:
    """SPEC: presence {user_id, status, last_seen}; ids are strings, times RFC 3339 ms."""
    assert set(frame) == {"type", "user_id", "status", "last_seen"}
    assert frame["type"] == "presence" and frame["user_id"] == str(user_id) and frame["status"] == status
    if status == "online":
        assert frame["last_seen"] is None
    else:
        assert RFC3339_MS.match(frame["last_seen"]), frame["last_seen"]


# -- one instance ----------------------------------------------------------------------------


async def test_online_is_published_at_once_and_once(env: Env) -> None:
    a = await env.node("a")
    await env.watch(1)
    await a.service.connected(1)
    await a.service.connected(1)  # a second socket: already online
    await eventually(lambda: len(env.frames(1)) == 1)
    assert_frame(env.frames(1)[0], 1, "online")
    view = await status_of(a, 1)
    assert view == PresenceView(user_id="1", status="online", last_seen=None)
    assert msgspec.json.decode(msgspec.json.encode(view)) == env.frames(1)[0]
    await asyncio.sleep(0.05)
    assert env.statuses(1) == ["online"]


async def test_offline_after_the_last_socket_and_the_grace(env: Env) -> None:
    a = await env.node("a")
    await env.watch(1)
    await a.service.connected(1)
    await a.service.connected(1)
    await a.service.disconnected(1)
    await asyncio.sleep(QUIET)
    assert env.statuses(1) == ["online"]  # one socket is still open

    loop = asyncio.get_running_loop()
    before = datetime.now(UTC)
    closed_at = loop.time()
    await a.service.disconnected(1)
    # During the grace the user still reads as online: subscribers were not told otherwise.
    assert (await status_of(a, 1)).status == "online"
    await eventually(lambda: len(env.frames(1)) == 2, within=2)
    assert loop.time() - closed_at >= GRACE
    offline = env.frames(1)[1]
    assert_frame(offline, 1, "offline")
    # last_seen is when the last socket closed, saved before it is announced.
    assert before <= env.last_seen[1] <= datetime.now(UTC)
    view = await status_of(a, 1)
    assert view.status == "offline" and view.last_seen == offline["last_seen"]


async def test_a_reconnect_within_the_grace_publishes_nothing(env: Env) -> None:
    a = await env.node("a")
    await env.watch(1)
    await a.service.connected(1)
    await eventually(lambda: env.statuses(1) == ["online"])
    for _ in range(3):
        await a.service.disconnected(1)
        await asyncio.sleep(GRACE / 4)
        await a.service.connected(1)
    await asyncio.sleep(QUIET)
    assert env.statuses(1) == ["online"]
    assert 1 not in env.last_seen


async def test_status_of_many_users_in_order(env: Env) -> None:
    a = await env.node("a")
    env.last_seen[3] = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    await a.service.connected(2)
    views = await a.service.status([3, 2, 4])
    assert views == [
        PresenceView(user_id="3", status="offline", last_seen="2024-05-01T12:00:00.123Z"),
        PresenceView(user_id="2", status="online", last_seen=None),
        PresenceView(user_id="4", status="offline", last_seen=None),
    ]
    assert await a.service.status([]) == []


async def test_a_lapsed_heartbeat_rebuilds_the_entries_without_flapping(env: Env) -> None:
    a = await env.node("a")
    await env.watch(1)
    await a.service.connected(1)
    await a.rooms.joined(7, 1)
    await eventually(lambda: env.statuses(1) == ["online"])
    old = a.service.instance
    counters = await env.counters()
    await (await env.values()).delete(f"presence:hb:{old}")  # as if Redis lost it, or we stalled too long
    await eventually(lambda: a.service.instance != old, within=2)
    # The old id is swept like any dead instance (here by the instance itself).
    await eventually(lambda: _registry_lacks(counters, old), within=2)
    assert a.service.instance in await counters.hash_get_all(REGISTRY)
    assert await a.rooms.joined_users(7) == {1}
    assert (await status_of(a, 1)).status == "online"
    await asyncio.sleep(QUIET)
    assert env.statuses(1) == ["online"]


async def test_a_lost_online_flag_is_announced_again(env: Env) -> None:
    # What a Redis restart, or a lost race with another instance's offline check, leaves.
    a = await env.node("a")
    await env.watch(1)
    await a.service.connected(1)
    await eventually(lambda: env.statuses(1) == ["online"])
    assert await (await env.values()).delete("presence:on:1")
    await eventually(lambda: env.statuses(1) == ["online", "online"], within=2)


async def _registry_lacks(counters: Counters, iid: str) -> bool:
    return iid not in await counters.hash_get_all(REGISTRY)


# -- rooms -----------------------------------------------------------------------------------


async def test_joined_users_count_sockets_per_instance(env: Env) -> None:
    a, b = await env.node("a"), await env.node("b")
    await a.rooms.joined(7, 1)
    await b.rooms.joined(7, 2)
    await b.rooms.joined(7, 2)  # two sockets of user 2 in the room
    await b.rooms.joined(8, 3)
    assert await a.rooms.joined_users(7) == {1, 2}
    assert await b.rooms.joined_users(8) == {3}
    await b.rooms.left(7, 2)
    assert await a.rooms.joined_users(7) == {1, 2}
    await b.rooms.left(7, 2)
    await b.rooms.left(7, 2)  # one leave too many is ignored
    await a.rooms.left(7, 1)
    assert await b.rooms.joined_users(7) == set()
    assert await b.rooms.joined_users(99) == set()


# -- several instances -----------------------------------------------------------------------


async def test_online_while_either_instance_has_a_socket(env: Env) -> None:
    a, b = await env.node("a"), await env.node("b")
    await env.watch(1)
    await a.service.connected(1)
    await b.service.connected(1)
    await eventually(lambda: env.statuses(1) == ["online"])
    await a.service.disconnected(1)
    await asyncio.sleep(QUIET)
    assert env.statuses(1) == ["online"]  # still open on b
    assert (await status_of(a, 1)).status == "online"
    await b.service.disconnected(1)
    await eventually(lambda: env.statuses(1) == ["online", "offline"], within=2)
    assert (await status_of(a, 1)).status == "offline"
    assert (await status_of(b, 1)).status == "offline"


async def test_simultaneous_last_closes_announce_offline_once(env: Env) -> None:
    a, b = await env.node("a"), await env.node("b")
    await env.watch(1)
    await a.service.connected(1)
    await b.service.connected(1)
    await asyncio.gather(a.service.disconnected(1), b.service.disconnected(1))
    await eventually(lambda: env.statuses(1) == ["online", "offline"], within=2)
    await asyncio.sleep(QUIET)
    assert env.statuses(1) == ["online", "offline"]


async def test_moving_to_another_instance_within_the_grace_publishes_nothing(env: Env) -> None:
    a, b = await env.node("a"), await env.node("b")
    await env.watch(1)
    await a.service.connected(1)
    await eventually(lambda: env.statuses(1) == ["online"])
    await a.service.disconnected(1)
    await asyncio.sleep(GRACE / 2)
    await b.service.connected(1)
    await asyncio.sleep(QUIET)
    assert env.statuses(1) == ["online"]
    assert (await status_of(a, 1)).status == "online"


async def test_a_crashed_instance_does_not_leave_its_users_online(env: Env) -> None:
    a, b = await env.node("a"), await env.node("b")
    await env.watch(1, 2)
    await a.service.connected(1)  # only on a
    await a.service.connected(2)  # on both
    await b.service.connected(2)
    await a.rooms.joined(7, 1)
    await b.rooms.joined(7, 2)
    await eventually(lambda: env.statuses(1) == ["online"] and env.statuses(2) == ["online"])
    assert await b.rooms.joined_users(7) == {1, 2}
    dead = a.service.instance

    loop = asyncio.get_running_loop()
    crashed_at = loop.time()
    await a.crash()
    # b notices once a's heartbeat key expires (3 beats) and announces for a.
    await eventually(lambda: env.statuses(1) == ["online", "offline"], within=3)
    assert loop.time() - crashed_at < 6 * HEARTBEAT + 0.3
    assert_frame(env.frames(1)[1], 1, "offline")
    assert 1 in env.last_seen
    assert await b.rooms.joined_users(7) == {2}
    assert (await status_of(b, 1)).status == "offline"
    assert (await status_of(b, 2)).status == "online"
    # The dead instance's entries are gone, not just ignored.
    counters = await env.counters()
    assert dead not in await counters.hash_get_all(REGISTRY)
    assert await counters.hash_get_many(["presence:u:1", f"presence:i:{dead}", "presence:r:7"]) == [
        {},
        {},
        {f"2@{b.service.instance}": 1},
    ]
    assert env.statuses(2) == ["online"]


async def test_a_stopping_instance_hands_its_users_over(env: Env) -> None:
    a, b = await env.node("a"), await env.node("b")
    await env.watch(1, 2)
    await a.service.connected(1)
    await a.service.connected(2)
    await b.service.connected(2)
    await a.rooms.joined(7, 1)
    await eventually(lambda: env.statuses(1) == ["online"] and env.statuses(2) == ["online"])

    await a.shutdown()
    assert 1 in env.last_seen and 2 not in env.last_seen  # saved at once for who is offline
    assert await b.rooms.joined_users(7) == set()
    # Offline is announced after the grace, by b.
    await asyncio.sleep(GRACE / 2)
    assert env.statuses(1) == ["online"]
    await eventually(lambda: env.statuses(1) == ["online", "offline"], within=3)
    await asyncio.sleep(0.05)
    assert env.statuses(2) == ["online"]
    assert (await status_of(b, 2)).status == "online"
