"""Presence: who is online, across every instance, and who has a socket in which room.

A user is online while any socket of theirs is open on a live instance. Each instance
counts its own sockets in shared counters (the `KeyValue` hashes) and proves it is
alive with a heartbeat key that expires; counts of an instance whose heartbeat is gone
do not count, so an instance killed with SIGKILL cannot leave its users online.

Key layout (KeyValue keys; RedisKV puts hashes under `<prefix>h:`, values under `<prefix>kv:`):

- `presence:u:<user>`   hash  `<iid>` -> the user's open sockets on instance `iid`
- `presence:r:<room>`   hash  `<user>@<iid>` -> the user's sockets joined to the room there
- `presence:i:<iid>`    hash  the instance's index, for whoever sweeps it after a crash:
                              `u:<user>` -> 1 while the user has sockets there or an
                              offline check pending; `r:<room>:<user>` -> joins
- `presence:instances`  hash  `<iid>` -> 1 for every registered instance
- `presence:hb:<iid>`   value the heartbeat, expiring after `HEARTBEAT_TTL_FACTOR` beats
- `presence:on:<user>`  value present while the user is announced online; whoever
                              creates it announces online, whoever deletes it offline,
                              so each change is published once whichever instance sees it
- `presence:sweep:<iid>` value claims the sweep of a dead instance for one sweeper

`iid` is `<instance_id>.<random>`, new for each process and again whenever this
instance finds that its heartbeat lapsed (Redis restarted or unreachable for a while,
or the loop stalled): by then others may have swept its entries, so it writes them all
again from memory under a fresh id instead of patching the old ones, and the old id
becomes an ordinary dead instance. The same reset follows any write that failed.

Every change is published on the pub/sub channel `presence:<user>` as a `PresenceView`
frame. Going online is published at once; going offline `grace` seconds after the last
socket closed, only if none came back anywhere in between (a reconnect does not flap).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

import msgspec

from socialhub.domain.live import presence_channel
from socialhub.domain.protocol import PresenceStatus, PresenceView
from socialhub.domain.time import rfc3339, utcnow
from socialhub.errors import Unavailable
from socialhub.infra.kv.base import KeyValue
from socialhub.infra.pubsub.base import PubSub

logger = logging.getLogger(__name__)

# SPEC: offline "a few seconds after the last one closes": long enough to ride out a
# page reload or a switch between networks, short enough that "online" stays honest.
DEFAULT_GRACE = 5.0
DEFAULT_HEARTBEAT = 5.0
# A heartbeat key outlives two missed beats: one late beat (GC pause, a slow Redis
# round trip) never makes an instance look dead; a dead one is noticed in ~3-4 beats.
HEARTBEAT_TTL_FACTOR = 3
# Batches for reads and writes of many users at once (a sweep after a crash, a rebuild,
# the reconcile pass): big enough to be few round trips, small enough not to hold Redis.
BATCH = 500
# A sweep claim outlives any sweep, so two live instances never sweep the same dead one;
# if the sweeper dies mid-way, another takes over when the claim expires.
SWEEP_CLAIM_SECONDS = 30.0

_ONLINE_FLAG = b"1"

SaveLastSeen = Callable[[int, datetime], Awaitable[None]]
"""Persist when the user was last seen (wired to `users.last_seen_at`)."""
LoadLastSeen = Callable[[Sequence[int]], Awaitable[dict[int, datetime]]]
"""Read `last_seen` for these users; users never seen are left out."""

_encoder = msgspec.json.Encoder()


def _user_key(user_id: int) -> str:
    return f"presence:u:{user_id}"


def _room_key(room_id: int) -> str:
    return f"presence:r:{room_id}"


def _index_key(iid: str) -> str:
    return f"presence:i:{iid}"


def _heartbeat_key(iid: str) -> str:
    return f"presence:hb:{iid}"


def _online_key(user_id: int) -> str:
    return f"presence:on:{user_id}"


def _sweep_key(iid: str) -> str:
    return f"presence:sweep:{iid}"


REGISTRY = "presence:instances"


T = TypeVar("T")


def _chunks(items: Sequence[T], size: int = BATCH) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class PresenceService:
    """Counts sockets and room joins per instance; announces online/offline once per change."""

    def __init__(
        self,
        kv: KeyValue,
        pubsub: PubSub,
        *,
        instance_id: str,
        save_last_seen: SaveLastSeen,
        load_last_seen: LoadLastSeen,
        grace: float = DEFAULT_GRACE,
        heartbeat: float = DEFAULT_HEARTBEAT,
    ) -> None:
        if grace <= 0 or heartbeat <= 0:
            raise ValueError("grace and heartbeat must be more than zero")
        self._kv = kv
        self._pubsub = pubsub
        self._instance_id = instance_id
        self._save_last_seen = save_last_seen
        self._load_last_seen = load_last_seen
        self.grace = grace
        self.heartbeat = heartbeat
        self._ttl = heartbeat * HEARTBEAT_TTL_FACTOR
        self._iid = self._fresh_id()
        # The truth about this instance; the shared counters mirror it. Every change to
        # these happens with no await in between, so the increments sent to the store
        # always add up to them whatever order they land in.
        self._local: dict[int, int] = {}  # user -> open sockets here
        self._rooms: dict[tuple[int, int], int] = {}  # (room, user) -> joined sockets here
        self._pending: dict[int, tuple[float, datetime]] = {}  # user -> (check at, last closed)
        self._tracked: set[int] = set()  # users with `u:<user>` in our index
        self._registered = False
        self._dirty = False  # a write failed: rebuild our entries under a fresh id
        self._stopped = False
        self._wake = asyncio.Event()

    @property
    def instance(self) -> str:
        """The id this process's entries are written under right now."""
        return self._iid

    # -- sockets --------------------------------------------------------------------------

    async def connected(self, user_id: int) -> None:
        """A socket of `user_id` opened here. Publishes `online` unless already online."""
        if self._stopped:
            return
        count = self._local.get(user_id, 0) + 1
        self._local[user_id] = count
        self._pending.pop(user_id, None)  # back within the grace: no offline check
        iid = self._iid
        changes = [(_user_key(user_id), iid, 1)]
        if user_id not in self._tracked:
            self._tracked.add(user_id)
            changes.append((_index_key(iid), f"u:{user_id}", 1))
        if await self._write(changes) and count == 1:
            try:
                await self._announce_online(user_id)
            except Unavailable as exc:
                # The reconcile pass announces it once the store answers again.
                logger.warning("presence: could not announce user %s online (%s)", user_id, exc)

    async def disconnected(self, user_id: int) -> None:
        """A socket of `user_id` closed here. `offline` follows after `grace` if none is left."""
        count = self._local.get(user_id, 0)
        if count <= 0:
            return  # after stop(), or a close without an open: nothing of ours to remove
        if count > 1:
            self._local[user_id] = count - 1
        else:
            del self._local[user_id]
            loop = asyncio.get_running_loop()
            self._pending[user_id] = (loop.time() + self.grace, utcnow())
            self._wake.set()
        await self._write([(_user_key(user_id), self._iid, -1)])

    # -- rooms (who has a socket in the room, for the `message` notification rule) -------

    async def joined(self, room_id: int, user_id: int) -> None:
        """A socket of `user_id` here joined `room_id`."""
        if self._stopped:
            return
        key = (room_id, user_id)
        self._rooms[key] = self._rooms.get(key, 0) + 1
        await self._write(self._room_changes(self._iid, room_id, user_id, 1))

    async def left(self, room_id: int, user_id: int) -> None:
        """A socket of `user_id` here left `room_id` (or closed while joined)."""
        key = (room_id, user_id)
        count = self._rooms.get(key, 0)
        if count <= 0:
            return
        if count > 1:
            self._rooms[key] = count - 1
        else:
            del self._rooms[key]
        await self._write(self._room_changes(self._iid, room_id, user_id, -1))

    async def joined_users(self, room_id: int) -> set[int]:
        """Users with at least one socket joined to `room_id` on a live instance."""
        counts = await self._kv.hash_get_all(_room_key(room_id))
        entries: list[tuple[int, str]] = []
        for field, count in counts.items():
            user, _, iid = field.partition("@")
            if count > 0 and user.isdigit():
                entries.append((int(user), iid))
        alive = await self._alive({iid for _, iid in entries})
        return {user for user, iid in entries if iid in alive}

    # -- reads ----------------------------------------------------------------------------

    async def status(self, user_ids: Sequence[int]) -> list[PresenceView]:
        """Each user's presence, in order, as subscribers see it: online while a socket is
        open on a live instance, and also during the `grace` after the last one closed
        (offline is not announced yet; a reconnect then publishes nothing, so a snapshot
        saying offline would never be corrected). Two store round trips, plus one to
        `load_last_seen` for the offline ones."""
        if not user_ids:
            return []
        counts = await self._kv.hash_get_many([_user_key(u) for u in user_ids])
        iids = sorted({iid for c in counts for iid, n in c.items() if n > 0})
        # One read for the liveness of every instance involved and every online flag.
        values = await self._kv.get_many([_heartbeat_key(i) for i in iids] + [_online_key(u) for u in user_ids])
        alive = {iid for iid, beat in zip(iids, values, strict=False) if beat is not None}
        flags = values[len(iids) :]
        online = [
            flag is not None or any(n > 0 and iid in alive for iid, n in c.items())
            for c, flag in zip(counts, flags, strict=True)
        ]
        offline = [u for u, on in zip(user_ids, online, strict=True) if not on]
        seen = await self._load_last_seen(offline) if offline else {}
        return [
            _view(u, "online", None) if on else _view(u, "offline", seen.get(u))
            for u, on in zip(user_ids, online, strict=True)
        ]

    # -- the worker -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat, offline checks and the sweep of dead instances, until `stop` is set;
        then `stop()` this instance's presence. Cancelled, it leaves everything as is
        (what a crash would leave: the survivors' sweep cleans up)."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(stop.wait())
        next_beat = loop.time()
        try:
            while not stop.is_set() and not self._stopped:
                now = loop.time()
                if now >= next_beat:
                    next_beat = now + self.heartbeat
                    await self._guard("heartbeat", self._beat())
                    await self._guard("reconcile", self._reconcile())
                    await self._guard("sweep", self._sweep())
                await self._guard("offline checks", self._run_due_checks())
                due = min([next_beat, *(at for at, _ in self._pending.values())])
                self._wake.clear()
                waking = asyncio.ensure_future(self._wake.wait())
                try:
                    timeout = max(0.0, due - loop.time())
                    await asyncio.wait({stopping, waking}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waking.cancel()
        finally:
            stopping.cancel()
        await self.stop()

    async def stop(self) -> None:
        """Shut down: this instance's sockets are closing, so its counts go. Offline is
        announced after `grace` as usual, by the other instances' sweep (the heartbeat is
        left to expire after `grace`); `last_seen` is saved now for whoever is offline."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        iid = self._iid
        changes = [(_user_key(u), iid, -n) for u, n in self._local.items()]
        for (room, user), n in self._rooms.items():
            changes += self._room_changes(iid, room, user, -n)
        now = utcnow()
        closed = {u: now for u in self._local} | {u: at for u, (_, at) in self._pending.items()}
        self._local.clear()
        self._rooms.clear()
        self._pending.clear()
        try:
            for batch in _chunks(changes):
                await self._kv.hash_incr_many(batch)
            users = list(closed)
            online = await self._online(users)
            await asyncio.gather(
                *(self._save(u, closed[u]) for u, on in zip(users, online, strict=True) if not on)
            )
            if self._registered:
                # Our index stays: whoever sweeps us once this expires announces offline.
                await self._kv.set(_heartbeat_key(iid), b"1", ttl=self.grace)
        except Unavailable as exc:
            logger.warning("presence: could not remove this instance's entries (%s)", exc)

    # -- internals: writes ------------------------------------------------------------------

    def _fresh_id(self) -> str:
        return f"{self._instance_id}.{secrets.token_hex(4)}"

    @staticmethod
    def _room_changes(iid: str, room_id: int, user_id: int, delta: int) -> list[tuple[str, str, int]]:
        return [
            (_room_key(room_id), f"{user_id}@{iid}", delta),
            (_index_key(iid), f"r:{room_id}:{user_id}", delta),
        ]

    async def _write(self, changes: list[tuple[str, str, int]]) -> bool:
        try:
            await self._kv.hash_incr_many(changes)
        except Unavailable as exc:
            # Memory holds the truth; the next beat writes it all again under a fresh id.
            logger.warning("presence: store unavailable (%s); entries rebuilt at the next heartbeat", exc)
            self._dirty = True
            return False
        return True

    async def _beat(self) -> None:
        if not self._registered:
            await self._kv.set(_heartbeat_key(self._iid), b"1", ttl=self._ttl)
            await self._kv.hash_incr(REGISTRY, self._iid, 1)
            self._registered = True
            logger.info("presence: instance %s registered", self._iid)
        elif self._dirty:
            await self._rebuild("a write failed")
        elif await self._kv.set_if_absent(_heartbeat_key(self._iid), b"1", ttl=self._ttl):
            # Our heartbeat had expired: others may have swept our entries already.
            await self._rebuild("the heartbeat lapsed")
        else:
            await self._kv.set(_heartbeat_key(self._iid), b"1", ttl=self._ttl)

    async def _rebuild(self, why: str) -> None:
        """Write this instance's entries again, from memory, under a fresh id."""
        old, iid = self._iid, self._fresh_id()
        # From here on (no await in between) every write goes to the new id, and the
        # snapshot holds exactly what was counted before.
        self._iid = iid
        self._dirty = False
        self._tracked = set(self._local) | set(self._pending)
        changes = [(_user_key(u), iid, n) for u, n in self._local.items()]
        changes += [(_index_key(iid), f"u:{u}", 1) for u in self._tracked]
        for (room, user), n in self._rooms.items():
            changes += self._room_changes(iid, room, user, n)
        logger.warning("presence: %s; instance %s continues as %s", why, old, iid)
        try:
            await self._kv.set(_heartbeat_key(iid), b"1", ttl=self._ttl)
            await self._kv.hash_incr(REGISTRY, iid, 1)
            for batch in _chunks(changes):
                await self._kv.hash_incr_many(batch)
            # The old id is now dead; any sweep (ours included) removes what is left of it.
            await self._kv.delete(_heartbeat_key(old))
        except BaseException:
            self._dirty = True
            raise

    # -- internals: announcing ----------------------------------------------------------------

    async def _announce_online(self, user_id: int) -> None:
        if await self._kv.set_if_absent(_online_key(user_id), _ONLINE_FLAG):
            await self._publish(_view(user_id, "online", None))

    async def _publish(self, view: PresenceView) -> None:
        try:
            await self._pubsub.publish(presence_channel(int(view.user_id)), _encoder.encode(view))
        except Unavailable as exc:
            logger.warning("presence: could not publish %s for user %s (%s)", view.status, view.user_id, exc)

    async def _save(self, user_id: int, when: datetime) -> None:
        try:
            await self._save_last_seen(user_id, when)
        except Unavailable as exc:
            logger.warning("presence: last_seen of user %s not saved (%s)", user_id, exc)
        except Exception:
            logger.exception("presence: could not save last_seen of user %s", user_id)

    async def _settle(self, closed: dict[int, datetime]) -> None:
        """Announce offline, once across all instances, those of `closed` (user -> last
        seen) who have no socket left on any live instance."""
        users = list(closed)
        candidates = [u for u, on in zip(users, await self._online(users), strict=True) if not on]
        # Whoever deletes the flag announces: another instance settling the same user
        # at the same moment finds it gone.
        took = await asyncio.gather(*(self._kv.delete(_online_key(u)) for u in candidates))
        taken = [u for u, ok in zip(candidates, took, strict=True) if ok]
        if not taken:
            return
        # A socket may have opened anywhere since the first read: then nothing changed.
        online = await self._online(taken)
        back = [u for u, on in zip(taken, online, strict=True) if on]
        gone = [u for u, on in zip(taken, online, strict=True) if not on]
        await asyncio.gather(*(self._kv.set_if_absent(_online_key(u), _ONLINE_FLAG) for u in back))
        await asyncio.gather(*(self._save(u, closed[u]) for u in gone))
        await asyncio.gather(*(self._publish(_view(u, "offline", closed[u])) for u in gone))
        # A socket opened elsewhere after that second read may have published `online`
        # before our `offline` reached the broker. Reading once more, after our publish,
        # and publishing `online` again if so, makes `online` the last word either way.
        for u, on in zip(gone, await self._online(gone), strict=True):
            if on:
                await self._kv.set_if_absent(_online_key(u), _ONLINE_FLAG)
                await self._publish(_view(u, "online", None))

    async def _run_due_checks(self) -> None:
        now = asyncio.get_running_loop().time()
        due = {u: closed for u, (at, closed) in self._pending.items() if at <= now}
        if not due:
            return
        for u in due:
            del self._pending[u]
        users = list(due)
        try:
            for batch in _chunks(users):
                await self._settle({u: due[u] for u in batch})
        except BaseException:
            # Try again at the next beat, unless the user came back meanwhile. A rebuild
            # meanwhile left them out of the new index: put them back so a crash of ours
            # still gets them swept.
            retry = now + self.heartbeat
            for u in users:
                if u not in self._local and u not in self._pending:
                    self._pending[u] = (retry, due[u])
            lost = [u for u in users if u in self._pending and u not in self._tracked]
            self._tracked.update(lost)
            if lost:
                await self._write([(_index_key(self._iid), f"u:{u}", 1) for u in lost])
            raise
        untrack = [u for u in users if u not in self._local and u not in self._pending and u in self._tracked]
        self._tracked.difference_update(untrack)
        iid = self._iid
        await self._write([(_index_key(iid), f"u:{u}", -1) for u in untrack])

    async def _reconcile(self) -> None:
        """Announce online any local user whose flag is missing (a lost race with another
        instance's offline check, a rebuild, a Redis restart that emptied the store)."""
        users = list(self._local)
        for batch in _chunks(users):
            flags = await self._kv.get_many([_online_key(u) for u in batch])
            missing = [u for u, flag in zip(batch, flags, strict=True) if flag is None and u in self._local]
            await asyncio.gather(*(self._announce_online(u) for u in missing))

    # -- internals: dead instances ------------------------------------------------------------

    async def _sweep(self) -> None:
        registered = await self._kv.hash_get_all(REGISTRY)
        others = {iid for iid in registered if iid != self._iid}
        alive = await self._alive(others)
        for dead in sorted(others - alive):
            if await self._kv.set_if_absent(_sweep_key(dead), b"1", ttl=SWEEP_CLAIM_SECONDS):
                await self._sweep_instance(dead)

    async def _sweep_instance(self, dead: str) -> None:
        """Remove a dead instance's entries, announce offline whoever has no socket left."""
        index = await self._kv.hash_get_all(_index_key(dead))
        users: list[int] = []
        entries: list[tuple[str, str]] = []
        for field in index:
            kind, _, rest = field.partition(":")
            if kind == "u" and rest.isdigit():
                users.append(int(rest))
                entries.append((_user_key(int(rest)), dead))
            elif kind == "r":
                room, _, user = rest.partition(":")
                if room.isdigit() and user.isdigit():
                    entries.append((_room_key(int(room)), f"{user}@{dead}"))
        for batch in _chunks(entries):
            await self._kv.hash_delete_many(batch)
        now = utcnow()
        for user_batch in _chunks(users):
            await self._settle(dict.fromkeys(user_batch, now))
        for fields in _chunks(list(index)):
            await self._kv.hash_delete(_index_key(dead), fields)
        await self._kv.hash_delete(REGISTRY, [dead])
        logger.info("presence: swept dead instance %s (%d users, %d entries)", dead, len(users), len(entries))

    # -- internals: reads -------------------------------------------------------------------

    async def _online(self, user_ids: Sequence[int]) -> list[bool]:
        """Whether each user has a socket open on a live instance (the counts alone)."""
        if not user_ids:
            return []
        counts = await self._kv.hash_get_many([_user_key(u) for u in user_ids])
        alive = await self._alive({iid for c in counts for iid, n in c.items() if n > 0})
        return [any(n > 0 and iid in alive for iid, n in c.items()) for c in counts]

    async def _alive(self, iids: set[str]) -> set[str]:
        if not iids:
            return set()
        ordered = sorted(iids)
        beats = await self._kv.get_many([_heartbeat_key(i) for i in ordered])
        return {iid for iid, beat in zip(ordered, beats, strict=True) if beat is not None}

    async def _guard(self, what: str, step: Awaitable[None]) -> None:
        """One step of the worker; a failure is logged and the loop goes on."""
        try:
            await step
        except Unavailable as exc:
            logger.warning("presence %s: store unavailable (%s)", what, exc)
        except Exception:
            logger.exception("presence %s failed", what)


def _view(user_id: int, status: PresenceStatus, last_seen: datetime | None) -> PresenceView:
    return PresenceView(
        user_id=str(user_id), status=status, last_seen=rfc3339(last_seen) if last_seen is not None else None
    )
