"""Presence: who is online, across every instance.

A user is online while any socket of theirs is open on a live instance. Each instance
counts its own sockets on the instance ledger (services/instances.py: shared counters
under the instance's id, which stop counting when its heartbeat is gone), so an
instance killed with SIGKILL cannot leave its users online. Its worker keeps the
ledger's heartbeat and sweeps dead instances.

Key layout (hashes are `Counters` keys, values `Values` keys; in Redis under `<prefix>h:`
and `<prefix>kv:`; beside the ledger's own):

- `presence:u:<user>`   hash  `<iid>` -> the user's open sockets on instance `iid`
- `presence:i:<iid>`    (the ledger's index) `u:<user>` -> 1 while the user has sockets
                              there or an offline check pending
- `presence:on:<user>`  value present while the user is announced online; whoever
                              creates it announces online, whoever deletes it offline,
                              so each change is published once whichever instance sees it

Every change is published on the pub/sub channel `presence:<user>` as a `PresenceView`
frame. Going online is published at once; going offline `grace` seconds after the last
socket closed, only if none came back anywhere in between (a reconnect does not flap).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import msgspec

from socialhub.domain.live import presence_channel
from socialhub.domain.protocol import PresenceStatus, PresenceView
from socialhub.domain.time import rfc3339, utcnow
from socialhub.errors import Unavailable
from socialhub.infra.kv.base import Counters, Values
from socialhub.infra.pubsub.base import PubSub
from socialhub.services.instances import Change, InstanceLedger, chunks, heartbeat_key, index_key

logger = logging.getLogger(__name__)

# SPEC: offline "a few seconds after the last one closes": long enough to ride out a
# page reload or a switch between networks, short enough that "online" stays honest.
DEFAULT_GRACE = 5.0

_ONLINE_FLAG = b"1"

SaveLastSeen = Callable[[int, datetime], Awaitable[None]]
"""Persist when the user was last seen (wired to `users.last_seen_at`)."""
LoadLastSeen = Callable[[Sequence[int]], Awaitable[dict[int, datetime]]]
"""Read `last_seen` for these users; users never seen are left out."""

_encoder = msgspec.json.Encoder()


def _user_key(user_id: int) -> str:
    return f"presence:u:{user_id}"


def _online_key(user_id: int) -> str:
    return f"presence:on:{user_id}"


class PresenceService:
    """Counts sockets per instance (a Tally of the ledger); announces online/offline
    once per change."""

    def __init__(
        self,
        ledger: InstanceLedger,
        counters: Counters,
        values: Values,
        pubsub: PubSub,
        *,
        save_last_seen: SaveLastSeen,
        load_last_seen: LoadLastSeen,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        if grace <= 0:
            raise ValueError("grace must be more than zero")
        self._ledger = ledger
        self._counters = counters
        self._values = values
        self._pubsub = pubsub
        self._save_last_seen = save_last_seen
        self._load_last_seen = load_last_seen
        self.grace = grace
        self.heartbeat = ledger.heartbeat
        # The truth about this instance; the shared counters mirror it. Every change to
        # these happens with no await in between, so the increments sent to the store
        # always add up to them whatever order they land in.
        self._local: dict[int, int] = {}  # user -> open sockets here
        self._pending: dict[int, tuple[float, datetime]] = {}  # user -> (check at, last closed)
        self._tracked: set[int] = set()  # users with `u:<user>` in our index
        self._wake = asyncio.Event()
        ledger.add(self)

    @property
    def instance(self) -> str:
        """The id this process's entries are written under right now."""
        return self._ledger.instance

    # -- sockets --------------------------------------------------------------------------

    async def connected(self, user_id: int) -> None:
        """A socket of `user_id` opened here. Publishes `online` unless already online."""
        if self._ledger.stopped:
            return
        count = self._local.get(user_id, 0) + 1
        self._local[user_id] = count
        self._pending.pop(user_id, None)  # back within the grace: no offline check
        iid = self._ledger.instance
        changes = [(_user_key(user_id), iid, 1)]
        if user_id not in self._tracked:
            self._tracked.add(user_id)
            changes.append((index_key(iid), f"u:{user_id}", 1))
        if await self._ledger.write(changes) and count == 1:
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
        await self._ledger.write([(_user_key(user_id), self._ledger.instance, -1)])

    # -- reads ----------------------------------------------------------------------------

    async def status(self, user_ids: Sequence[int]) -> list[PresenceView]:
        """Each user's presence, in order, as subscribers see it: online while a socket is
        open on a live instance, and also during the `grace` after the last one closed
        (offline is not announced yet; a reconnect then publishes nothing, so a snapshot
        saying offline would never be corrected). Two store round trips, plus one to
        `load_last_seen` for the offline ones."""
        if not user_ids:
            return []
        counts = await self._counters.hash_get_many([_user_key(u) for u in user_ids])
        iids = sorted({iid for c in counts for iid, n in c.items() if n > 0})
        # One read for the liveness of every instance involved and every online flag.
        values = await self._values.get_many([heartbeat_key(i) for i in iids] + [_online_key(u) for u in user_ids])
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
        """The ledger's heartbeat and sweep of dead instances, and the offline checks,
        until `stop` is set; then `stop()` this instance's presence. Cancelled, it leaves
        everything as is (what a crash would leave: the survivors' sweep cleans up)."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(stop.wait())
        next_beat = loop.time()
        try:
            while not stop.is_set() and not self._ledger.stopped:
                now = loop.time()
                if now >= next_beat:
                    next_beat = now + self.heartbeat
                    await self._guard("heartbeat", self._ledger.beat())
                    await self._guard("reconcile", self._reconcile())
                    await self._guard("sweep", self._ledger.sweep())
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
        """Shut down: this instance's sockets are closing, so its counts go (every tally's,
        on the ledger). Offline is announced after `grace` as usual, by the other
        instances' sweep (the heartbeat is left to expire after `grace`); `last_seen` is
        saved now for whoever is offline."""
        if self._ledger.stopped:
            return
        self._wake.set()
        now = utcnow()
        closed = {u: now for u in self._local} | {u: at for u, (_, at) in self._pending.items()}
        self._pending.clear()
        try:
            await self._ledger.release()  # clears _local (our `release`), and the others'
            users = list(closed)
            online = await self._online(users)
            await asyncio.gather(*(self._save(u, closed[u]) for u, on in zip(users, online, strict=True) if not on))
            # Our index stays: whoever sweeps us once this expires announces offline.
            await self._ledger.retire(self.grace)
        except Unavailable as exc:
            logger.warning("presence: could not remove this instance's entries (%s)", exc)

    # -- the ledger's Tally ------------------------------------------------------------------

    def entries(self, iid: str) -> list[Change]:
        # A rebuild: our index lists again every user with sockets or a check pending.
        self._tracked = set(self._local) | set(self._pending)
        changes = [(_user_key(u), iid, n) for u, n in self._local.items()]
        changes += [(index_key(iid), f"u:{u}", 1) for u in self._tracked]
        return changes

    def release(self, iid: str) -> list[Change]:
        changes = [(_user_key(u), iid, -n) for u, n in self._local.items()]
        self._local.clear()
        return changes

    async def sweep(self, dead: str, index: Sequence[str]) -> None:
        """Remove the dead instance's socket counts; announce offline whoever has none left."""
        users = [int(rest) for kind, _, rest in (f.partition(":") for f in index) if kind == "u" and rest.isdigit()]
        for batch in chunks([(_user_key(u), dead) for u in users]):
            await self._counters.hash_delete_many(batch)
        now = utcnow()
        for user_batch in chunks(users):
            await self._settle(dict.fromkeys(user_batch, now))

    # -- internals: announcing ----------------------------------------------------------------

    async def _announce_online(self, user_id: int) -> None:
        if await self._values.set_if_absent(_online_key(user_id), _ONLINE_FLAG):
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
        took = await asyncio.gather(*(self._values.delete(_online_key(u)) for u in candidates))
        taken = [u for u, ok in zip(candidates, took, strict=True) if ok]
        if not taken:
            return
        # A socket may have opened anywhere since the first read: then nothing changed.
        online = await self._online(taken)
        back = [u for u, on in zip(taken, online, strict=True) if on]
        gone = [u for u, on in zip(taken, online, strict=True) if not on]
        await asyncio.gather(*(self._values.set_if_absent(_online_key(u), _ONLINE_FLAG) for u in back))
        await asyncio.gather(*(self._save(u, closed[u]) for u in gone))
        await asyncio.gather(*(self._publish(_view(u, "offline", closed[u])) for u in gone))
        # A socket opened elsewhere after that second read may have published `online`
        # before our `offline` reached the broker. Reading once more, after our publish,
        # and publishing `online` again if so, makes `online` the last word either way.
        for u, on in zip(gone, await self._online(gone), strict=True):
            if on:
                await self._values.set_if_absent(_online_key(u), _ONLINE_FLAG)
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
            for batch in chunks(users):
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
                await self._ledger.write([(index_key(self._ledger.instance), f"u:{u}", 1) for u in lost])
            raise
        untrack = [u for u in users if u not in self._local and u not in self._pending and u in self._tracked]
        self._tracked.difference_update(untrack)
        iid = self._ledger.instance
        await self._ledger.write([(index_key(iid), f"u:{u}", -1) for u in untrack])

    async def _reconcile(self) -> None:
        """Announce online any local user whose flag is missing (a lost race with another
        instance's offline check, a rebuild, a Redis restart that emptied the store)."""
        users = list(self._local)
        for batch in chunks(users):
            flags = await self._values.get_many([_online_key(u) for u in batch])
            missing = [u for u, flag in zip(batch, flags, strict=True) if flag is None and u in self._local]
            await asyncio.gather(*(self._announce_online(u) for u in missing))

    # -- internals: reads -------------------------------------------------------------------

    async def _online(self, user_ids: Sequence[int]) -> list[bool]:
        """Whether each user has a socket open on a live instance (the counts alone)."""
        if not user_ids:
            return []
        counts = await self._counters.hash_get_many([_user_key(u) for u in user_ids])
        alive = await self._ledger.alive({iid for c in counts for iid, n in c.items() if n > 0})
        return [any(n > 0 and iid in alive for iid, n in c.items()) for c in counts]

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
