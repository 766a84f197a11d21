"""Room joins: which users have a socket joined to which room, across instances.

Chat's rule for the `message` notification needs it: a member with a socket in the
room sees the message arrive and is not notified. Each instance counts its own joined
sockets on the instance ledger (services/instances.py), so the joins of an instance
that dies stop counting once its heartbeat is gone, and are swept.

Key layout (`Counters` hashes, beside the ledger's own keys):

- `presence:r:<room>`  `<user>@<iid>` -> the user's sockets joined to the room on `iid`
- `presence:i:<iid>`   (the ledger's index) `r:<room>:<user>` -> the same count
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from socialhub.infra.kv.base import Counters
from socialhub.services.instances import Change, InstanceLedger, chunks, index_key


def _room_key(room_id: int) -> str:
    return f"presence:r:{room_id}"


def _changes(iid: str, room_id: int, user_id: int, delta: int) -> list[Change]:
    return [
        (_room_key(room_id), f"{user_id}@{iid}", delta),
        (index_key(iid), f"r:{room_id}:{user_id}", delta),
    ]


class RoomJoins:
    """Counts room joins per instance on `ledger` (a Tally of it)."""

    def __init__(self, ledger: InstanceLedger, counters: Counters) -> None:
        self._ledger = ledger
        self._counters = counters
        # (room, user) -> joined sockets here. Every change happens with no await in
        # between, so the increments sent to the store always add up to it.
        self._rooms: dict[tuple[int, int], int] = {}
        self._users: dict[int, set[int]] = {}  # room -> the users counted in _rooms
        ledger.add(self)

    async def joined(self, room_id: int, user_id: int) -> None:
        """A socket of `user_id` here joined `room_id`."""
        if self._ledger.stopped:
            return
        key = (room_id, user_id)
        self._rooms[key] = self._rooms.get(key, 0) + 1
        self._users.setdefault(room_id, set()).add(user_id)
        await self._ledger.write(_changes(self._ledger.instance, room_id, user_id, 1))

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
            users = self._users[room_id]
            users.discard(user_id)
            if not users:
                del self._users[room_id]
        await self._ledger.write(_changes(self._ledger.instance, room_id, user_id, -1))

    def joined_here(self, room_id: int) -> AbstractSet[int]:
        """Users with a socket joined to `room_id` on this instance (a view: not to keep)."""
        return self._users.get(room_id, frozenset())

    async def joined_users(self, room_id: int) -> set[int]:
        """Users with at least one socket joined to `room_id` on a live instance."""
        counts = await self._counters.hash_get_all(_room_key(room_id))
        entries: list[tuple[int, str]] = []
        for field, count in counts.items():
            user, _, iid = field.partition("@")
            if count > 0 and user.isdigit():
                entries.append((int(user), iid))
        alive = await self._ledger.alive({iid for _, iid in entries})
        return {user for user, iid in entries if iid in alive}

    # -- the ledger's Tally ---------------------------------------------------------------

    def entries(self, iid: str) -> list[Change]:
        changes: list[Change] = []
        for (room, user), n in self._rooms.items():
            changes += _changes(iid, room, user, n)
        return changes

    def release(self, iid: str) -> list[Change]:
        changes: list[Change] = []
        for (room, user), n in self._rooms.items():
            changes += _changes(iid, room, user, -n)
        self._rooms.clear()
        self._users.clear()
        return changes

    async def sweep(self, dead: str, index: Sequence[str]) -> None:
        entries: list[tuple[str, str]] = []
        for field in index:
            kind, _, rest = field.partition(":")
            if kind == "r":
                room, _, user = rest.partition(":")
                if room.isdigit() and user.isdigit():
                    entries.append((_room_key(int(room)), f"{user}@{dead}"))
        for batch in chunks(entries):
            await self._counters.hash_delete_many(batch)
