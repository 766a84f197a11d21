"""Room membership as chat reads it on its hot paths: who may join a room's stream or
type in it, and whom a message may notify (its members with no socket in the room).

A room's member ids are read from PostgreSQL once and held in process, so a message to
a room of 1,000 does not read 1,000 ids again. (Sending needs none of this: the send
statement checks membership under the room's lock.) What keeps the copies true:

- Whatever changes a room's members calls `changed(room_id)` after its commit: the
  room is dropped here before the call returns (the writer's instance reads its own
  write), its listeners run (the room stream stops the stream of a socket whose user
  left), and the change is announced on the pub/sub port so every instance does the
  same within milliseconds.
- A read that was running while its room was dropped does not store what it read.
- What pub/sub cannot promise is covered as the read cache covers it: while the broker
  is unhealthy nothing is held (every read goes to PostgreSQL), everything is dropped
  when it is back, and an entry is re-read after `TTL` at the latest (an instance that
  died between its commit and its announcement).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from socialhub.errors import Forbidden, NotFound, SocialhubError
from socialhub.infra.pubsub.base import PubSub, Subscription
from socialhub.storage.chat import ChatStore

logger = logging.getLogger(__name__)

CHANNEL = "members.changed"
# The safety net for an announcement lost in flight; not the primary mechanism.
TTL = 300.0
# How many member ids are held in all (~70 bytes each in a frozenset of ints, so some
# 35 MB at most): a thousand rooms of the largest (MAX_ROOM_MEMBERS, 5,000) or a hundred
# thousand direct rooms. The least recently used rooms go first.
MAX_IDS_HELD = 500_000

Listener = Callable[[int], Awaitable[None]]
"""Called with a room's id after its members changed (on any instance)."""


class RoomMembers:
    def __init__(self, store: ChatStore, pubsub: PubSub, *, ttl: float = TTL, max_ids: int = MAX_IDS_HELD) -> None:
        self._store = store
        self._pubsub = pubsub
        self._ttl = ttl
        self._max_ids = max_ids
        self._rooms: OrderedDict[int, tuple[float, frozenset[int]]] = OrderedDict()
        self._held = 0
        # Bumped by every drop: a read that began before one does not store its result.
        self._epoch = 0
        self._listeners: list[Listener] = []
        self._subscription: Subscription | None = None

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        self._subscription = await self._pubsub.subscribe(CHANNEL, self._on_changed)
        self._pubsub.on_reset(self._on_reset)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    async def ids(self, room_id: int) -> frozenset[int]:
        """The room's member ids (empty for a room that does not exist)."""
        now = time.monotonic()
        held = self._rooms.get(room_id)
        if held is not None and now - held[0] < self._ttl and self._pubsub.healthy:
            self._rooms.move_to_end(room_id)
            return held[1]
        epoch = self._epoch
        ids = frozenset(await self._store.get_member_ids(room_id))
        if epoch == self._epoch and self._pubsub.healthy:
            self._hold(room_id, now, ids)
        return ids

    async def check(self, user_id: int, room_id: int) -> None:
        """Forbidden for a non-member (NotFound when the room does not exist)."""
        if user_id in await self.ids(room_id):
            return
        if await self._store.get_activity(room_id) is None:
            raise NotFound("no such room")
        raise Forbidden("only the room's members may do that")

    async def changed(self, room_id: int) -> None:
        """The room's members changed (committed): drop it here, tell the listeners, and
        announce it to the other instances (best effort: see the module's notes)."""
        await self._on_changed(CHANNEL, str(room_id).encode())
        try:
            await self._pubsub.publish(CHANNEL, str(room_id).encode())
        except SocialhubError:
            logger.warning("could not announce a membership change of room %s", room_id)

    def _hold(self, room_id: int, now: float, ids: frozenset[int]) -> None:
        self._drop(room_id)
        self._rooms[room_id] = (now, ids)
        self._held += len(ids)
        while self._held > self._max_ids and self._rooms:
            _, (_, old) = self._rooms.popitem(last=False)
            self._held -= len(old)

    def _drop(self, room_id: int) -> None:
        self._epoch += 1
        held = self._rooms.pop(room_id, None)
        if held is not None:
            self._held -= len(held[1])

    async def _on_changed(self, _channel: str, payload: bytes) -> None:
        try:
            room_id = int(payload)
        except ValueError:
            logger.warning("malformed membership change ignored: %r", payload[:40])
            return
        self._drop(room_id)
        for listener in self._listeners:
            try:
                await listener(room_id)
            except Exception:
                logger.exception("membership listener failed for room %s", room_id)

    async def _on_reset(self) -> None:
        # Announcements may have been missed while the broker was away.
        self._epoch += 1
        self._rooms.clear()
        self._held = 0
