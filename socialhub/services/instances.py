"""The instance ledger: counts each instance keeps in the shared store, kept honest
across crashes.

Presence counts a user's sockets per instance, the room joins count a user's sockets
per room per instance (each a `Tally`). Each instance writes its own counts under its
id and proves it is alive with a heartbeat key that expires; counts of an instance
whose heartbeat is gone do not count, and the survivors sweep them away, so an instance
killed with SIGKILL leaves nothing behind for long.

Key layout (hashes are `Counters` keys, values `Values` keys; in Redis under `<prefix>h:`
and `<prefix>kv:`):

- `presence:instances`   hash  `<iid>` -> 1 for every registered instance
- `presence:hb:<iid>`    value the heartbeat, expiring after `HEARTBEAT_TTL_FACTOR` beats
- `presence:i:<iid>`     hash  the instance's index of what it wrote, for whoever sweeps
                               it after a crash (each tally its own fields)
- `presence:sweep:<iid>` value claims the sweep of a dead instance for one sweeper

(The `presence:` prefix is older than the room joins' use of the ledger; the keys stay
as they are so that instances of both versions agree during a rolling upgrade.)

`iid` is `<instance_id>.<random>`, new for each process and again whenever this
instance finds that its heartbeat lapsed (Redis restarted or unreachable for a while,
or the loop stalled): by then others may have swept its entries, so it writes them all
again from memory under a fresh id instead of patching the old ones, and the old id
becomes an ordinary dead instance. The same rebuild follows any write that failed.

The presence worker (PresenceService.run) beats and sweeps for the whole ledger.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from socialhub.errors import Unavailable
from socialhub.infra.kv.base import Counters, Values

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT = 5.0
# A heartbeat key outlives two missed beats: one late beat (GC pause, a slow Redis
# round trip) never makes an instance look dead; a dead one is noticed in ~3-4 beats.
HEARTBEAT_TTL_FACTOR = 3
# Batches for reads and writes of many entries at once (a sweep after a crash, a
# rebuild, the reconcile pass): big enough to be few round trips, small enough not to
# hold Redis.
BATCH = 500
# A sweep claim outlives any sweep, so two live instances never sweep the same dead one;
# if the sweeper dies mid-way, another takes over when the claim expires.
SWEEP_CLAIM_SECONDS = 30.0

REGISTRY = "presence:instances"

Change = tuple[str, str, int]
"""(hash key, field, increment)."""


def index_key(iid: str) -> str:
    return f"presence:i:{iid}"


def heartbeat_key(iid: str) -> str:
    return f"presence:hb:{iid}"


def _sweep_key(iid: str) -> str:
    return f"presence:sweep:{iid}"


T = TypeVar("T")


def chunks(items: Sequence[T], size: int = BATCH) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Tally(Protocol):
    """A family of counts this instance keeps on the ledger. Its counts in memory are the
    truth; the shared ones mirror them."""

    def entries(self, iid: str) -> list[Change]:
        """Every count held now as increments under `iid`, index fields included: what a
        rebuild writes. Called with no await around it."""
        ...

    def release(self, iid: str) -> list[Change]:
        """Every count held now, as decrements under `iid`; forgets them (stopping)."""
        ...

    async def sweep(self, dead: str, index: Sequence[str]) -> None:
        """Remove the entries of a dead instance (`index`: its index's fields)."""
        ...


class InstanceLedger:
    """This instance's id, heartbeat and index in the shared store, and the sweep of the
    dead ones, for every tally added to it."""

    def __init__(
        self, counters: Counters, values: Values, *, instance_id: str, heartbeat: float = DEFAULT_HEARTBEAT
    ) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat must be more than zero")
        self._counters = counters
        self._values = values
        self._instance_id = instance_id
        self.heartbeat = heartbeat
        self._ttl = heartbeat * HEARTBEAT_TTL_FACTOR
        self._iid = self._fresh_id()
        self._tallies: list[Tally] = []
        self._registered = False
        self._dirty = False  # a write failed: rebuild our entries under a fresh id
        self._stopped = False

    def add(self, tally: Tally) -> None:
        self._tallies.append(tally)

    @property
    def instance(self) -> str:
        """The id this process's entries are written under right now."""
        return self._iid

    @property
    def registered(self) -> bool:
        return self._registered

    @property
    def stopped(self) -> bool:
        """After `release`: nothing more is counted."""
        return self._stopped

    async def write(self, changes: list[Change]) -> bool:
        """Apply `changes`; False (and a rebuild at the next beat) when the store failed."""
        try:
            await self._counters.hash_incr_many(changes)
        except Unavailable as exc:
            # Memory holds the truth; the next beat writes it all again under a fresh id.
            logger.warning("presence: store unavailable (%s); entries rebuilt at the next heartbeat", exc)
            self._dirty = True
            return False
        return True

    async def alive(self, iids: set[str]) -> set[str]:
        """Those of `iids` whose heartbeat is there."""
        if not iids:
            return set()
        ordered = sorted(iids)
        beats = await self._values.get_many([heartbeat_key(i) for i in ordered])
        return {iid for iid, beat in zip(ordered, beats, strict=True) if beat is not None}

    # -- the worker's steps ---------------------------------------------------------------

    async def beat(self) -> None:
        """Register, renew the heartbeat, or rebuild when it lapsed or a write failed."""
        if not self._registered:
            await self._values.set(heartbeat_key(self._iid), b"1", ttl=self._ttl)
            await self._counters.hash_incr(REGISTRY, self._iid, 1)
            self._registered = True
            logger.info("presence: instance %s registered", self._iid)
        elif self._dirty:
            await self._rebuild("a write failed")
        elif await self._values.set_if_absent(heartbeat_key(self._iid), b"1", ttl=self._ttl):
            # Our heartbeat had expired: others may have swept our entries already.
            await self._rebuild("the heartbeat lapsed")
        else:
            await self._values.set(heartbeat_key(self._iid), b"1", ttl=self._ttl)

    async def sweep(self) -> None:
        """Sweep every registered instance whose heartbeat is gone (one sweeper each)."""
        registered = await self._counters.hash_get_all(REGISTRY)
        others = {iid for iid in registered if iid != self._iid}
        alive = await self.alive(others)
        for dead in sorted(others - alive):
            if await self._values.set_if_absent(_sweep_key(dead), b"1", ttl=SWEEP_CLAIM_SECONDS):
                await self._sweep_instance(dead)

    async def release(self) -> None:
        """Stopping: remove every tally's counts of this instance; nothing more is counted."""
        self._stopped = True
        iid = self._iid
        changes = [change for tally in self._tallies for change in tally.release(iid)]
        for batch in chunks(changes):
            await self._counters.hash_incr_many(batch)

    async def retire(self, ttl: float) -> None:
        """Let the heartbeat expire after `ttl`: our index stays, and whoever sweeps it
        then finishes what the tallies left for the sweep."""
        if self._registered:
            await self._values.set(heartbeat_key(self._iid), b"1", ttl=ttl)

    # -- internals ------------------------------------------------------------------------

    def _fresh_id(self) -> str:
        return f"{self._instance_id}.{secrets.token_hex(4)}"

    async def _rebuild(self, why: str) -> None:
        """Write this instance's entries again, from memory, under a fresh id."""
        old, iid = self._iid, self._fresh_id()
        # From here on (no await in between) every write goes to the new id, and the
        # snapshot holds exactly what was counted before.
        self._iid = iid
        self._dirty = False
        changes = [change for tally in self._tallies for change in tally.entries(iid)]
        logger.warning("presence: %s; instance %s continues as %s", why, old, iid)
        try:
            await self._values.set(heartbeat_key(iid), b"1", ttl=self._ttl)
            await self._counters.hash_incr(REGISTRY, iid, 1)
            for batch in chunks(changes):
                await self._counters.hash_incr_many(batch)
            # The old id is now dead; any sweep (ours included) removes what is left of it.
            await self._values.delete(heartbeat_key(old))
        except BaseException:
            self._dirty = True
            raise

    async def _sweep_instance(self, dead: str) -> None:
        """Remove a dead instance's entries (each tally its own), then its index."""
        index = list(await self._counters.hash_get_all(index_key(dead)))
        for tally in self._tallies:
            await tally.sweep(dead, index)
        for fields in chunks(index):
            await self._counters.hash_delete(index_key(dead), fields)
        await self._counters.hash_delete(REGISTRY, [dead])
        logger.info("presence: swept dead instance %s (%d index entries)", dead, len(index))
