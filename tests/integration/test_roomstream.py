"""The room stream's delivery rules, without sockets: real PostgreSQL (the messages),
the in-process pub/sub, and sinks that record what a socket would have been sent.

Rules: `joined`, then the replay after `since_seq`, then live; live frames held back
while a replay runs; each seq once; a gap filled from PostgreSQL; nothing after leave.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from socialhub.domain.notifications import NewNotification
from socialhub.domain.users import Principal
from socialhub.errors import Forbidden
from socialhub.infra.kv.memory import MemoryCounters, MemoryValues
from socialhub.infra.pubsub.base import PubSub
from socialhub.infra.pubsub.memory import MemoryPubSub
from socialhub.infra.pubsub.redis import RedisPubSub
from socialhub.services import chat as chat_module
from socialhub.services.chat import ChatService
from socialhub.services.instances import InstanceLedger
from socialhub.services.members import RoomMembers
from socialhub.services.roomjoins import RoomJoins
from socialhub.services.roomstream import RoomStream
from socialhub.storage.chat import ChatStore
from socialhub.storage.database import Database
from socialhub.storage.users import UserStore
from socialhub.supervisor import Supervisor
from tests.conftest import migrated_database, pool
from tests.contract.conftest import REDIS_URL, eventually


class Recorder:
    """A socket's sink: records each frame. With `gate` cleared, a paced send (the
    replay's) waits, as for a client that reads slowly."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.frames: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.pacing = asyncio.Event()  # set when a paced send waits at the gate

    def send(self, data: bytes) -> None:
        self.frames.append(json.loads(data))

    async def send_paced(self, data: bytes) -> None:
        if not self.gate.is_set():
            self.pacing.set()
            await self.gate.wait()
        self.send(data)

    def seqs(self) -> list[int]:
        return [f["message"]["seq"] for f in self.frames if f["type"] == "new_message"]

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


class Env:
    """One instance: by default alone, on the in-process pub/sub; `pubsub` and `shared`
    (the counters and values that Redis would hold) make several."""

    def __init__(
        self,
        db: Database,
        pubsub: PubSub | None = None,
        shared: tuple[MemoryCounters, MemoryValues] | None = None,
        name: str = "test",
    ) -> None:
        self.db = db
        self.pubsub = pubsub or MemoryPubSub()
        self.notified: list[NewNotification] = []
        self.supervisor = Supervisor()
        counters, values = shared or (MemoryCounters(), MemoryValues())
        self.ledger = InstanceLedger(counters, values, instance_id=name)
        self.joins = RoomJoins(self.ledger, counters)
        store = ChatStore(db)
        self.members = RoomMembers(store, self.pubsub)
        self.stream = RoomStream(pubsub=self.pubsub, store=store, members=self.members, joins=self.joins)
        self.chat = ChatService(
            store=store,
            users=UserStore(db),
            members=self.members,
            rooms=self.stream,
            notify=self.notify,
            joins=self.joins,
            spawn=self.supervisor.spawn,
        )

    async def notify(self, news: Sequence[NewNotification]) -> None:
        self.notified += news

    async def user(self) -> Principal:
        name = "u" + secrets.token_hex(6)
        user_id: int = await self.db.fetchval(
            "INSERT INTO users (username, email, name, password_hash) VALUES ($1, $2, $1, 'x') RETURNING id",
            name,
            f"{name}@example.test",
        )
        return Principal(user_id=user_id, session_id=1)

    async def room(self, *members: Principal) -> int:
        room, _ = await self.chat.create_room(members[0], [m.user_id for m in members[1:]], "test")
        return int(room.id)

    async def send(self, who: Principal, room_id: int, n: int = 1) -> list[int]:
        seqs = []
        for _ in range(n):
            message = await self.chat.send(who, room_id, "hi", secrets.token_hex(8))
            seqs.append(message.seq)
        return seqs


@pytest.fixture(scope="module")
async def db() -> AsyncIterator[Database]:
    async with migrated_database("socialhub_roomstream") as url:
        async with pool(url) as database:
            yield database


@pytest.fixture
async def env(db: Database) -> AsyncIterator[Env]:
    e = Env(db)
    await e.ledger.beat()  # alive (the presence worker beats in the server)
    await e.members.start()
    yield e
    e.chat.stop()
    await e.members.stop()
    await e.pubsub.close()


async def test_joined_then_the_replay_then_live(env: Env) -> None:
    alice, bob = await env.user(), await env.user()
    room = await env.room(alice, bob)
    await env.send(alice, room, 3)
    sink = Recorder(bob.user_id)
    await env.stream.join(sink, room, since_seq=1, ref="j")
    assert sink.frames[0] == {"type": "joined", "room_id": str(room), "last_seq": 3, "ref": "j"}
    assert sink.seqs() == [2, 3]
    await env.send(alice, room, 2)
    await eventually(lambda: sink.seqs() == [2, 3, 4, 5])
    # Without since_seq: no replay, only what comes next.
    late = Recorder(alice.user_id)
    await env.stream.join(late, room, since_seq=None)
    assert late.frames == [{"type": "joined", "room_id": str(room), "last_seq": 5}]
    await env.send(bob, room)
    await eventually(lambda: late.seqs() == [6] and sink.seqs() == [2, 3, 4, 5, 6])


async def test_live_messages_wait_for_the_replay(env: Env) -> None:
    alice, bob = await env.user(), await env.user()
    room = await env.room(alice, bob)
    await env.send(alice, room, 2)
    await env.chat.send(alice, room, "third", "m3")
    sink = Recorder(bob.user_id)
    sink.gate.clear()
    joining = asyncio.create_task(env.stream.join(sink, room, since_seq=0))
    await asyncio.wait_for(sink.pacing.wait(), 5)
    # The replay is stuck on the first message; meanwhile four arrive live, and the
    # third, already in the replay, is relayed again (resent).
    await env.send(alice, room, 2)
    await env.chat.send(alice, room, "third", "m3")
    await env.send(alice, room, 2)
    await asyncio.sleep(0.05)
    assert sink.seqs() == []
    sink.gate.set()
    await joining
    assert sink.seqs() == [1, 2, 3, 4, 5, 6, 7]
    await env.send(alice, room)
    await eventually(lambda: sink.seqs() == [1, 2, 3, 4, 5, 6, 7, 8])


async def test_each_seq_once(env: Env) -> None:
    alice, bob = await env.user(), await env.user()
    room = await env.room(alice, bob)
    sink = Recorder(bob.user_id)
    await env.stream.join(sink, room, since_seq=0)
    first = await env.chat.send(alice, room, "hi", "same")
    again = await env.chat.send(alice, room, "hi", "same")  # a resend: stored once, relayed again
    assert first == again
    await env.send(alice, room)
    await eventually(lambda: sink.seqs() == [1, 2])
    await asyncio.sleep(0.05)
    assert sink.seqs() == [1, 2]


async def test_a_gap_is_filled_from_postgresql(env: Env) -> None:
    alice, bob = await env.user(), await env.user()
    room = await env.room(alice, bob)
    sink = Recorder(bob.user_id)
    await env.stream.join(sink, room, since_seq=0)
    await env.send(alice, room)
    await eventually(lambda: sink.seqs() == [1])
    # Stored but never relayed (its sender died between commit and publish).
    assert await env.chat.store.insert_message(room, alice.user_id, "lost", "lost") is not None
    await env.send(alice, room)
    await eventually(lambda: sink.seqs() == [1, 2, 3])
    assert [f["message"]["body"] for f in sink.frames if f["type"] == "new_message"] == ["hi", "lost", "hi"]


async def test_leave_stops_the_stream_and_the_count(env: Env) -> None:
    alice, bob = await env.user(), await env.user()
    room = await env.room(alice, bob)
    sink, other = Recorder(bob.user_id), Recorder(alice.user_id)
    await env.stream.join(sink, room, since_seq=None)
    await env.stream.join(other, room, since_seq=None)
    assert await env.joins.joined_users(room) == {alice.user_id, bob.user_id}
    assert env.stream.rooms_of(sink) == {room}
    await env.stream.leave(sink, room)
    assert env.stream.rooms_of(sink) == frozenset()
    assert await env.joins.joined_users(room) == {alice.user_id}
    await env.send(alice, room)
    await eventually(lambda: other.seqs() == [1])
    await asyncio.sleep(0.05)
    assert sink.seqs() == []
    # Bob has no socket in the room: he, not Alice, is notified of the message (after the ack).
    await eventually(lambda: [(n.user_id, n.type) for n in env.notified] == [(bob.user_id, "message")])
    await env.stream.leave_all(other)
    assert await env.joins.joined_users(room) == set()


async def test_joining_twice_changes_nothing(env: Env) -> None:
    alice, bob = await env.user(), await env.user()
    room = await env.room(alice, bob)
    await env.send(alice, room, 2)
    sink = Recorder(bob.user_id)
    await env.stream.join(sink, room, since_seq=0)
    await env.stream.join(sink, room, since_seq=0, ref="again")
    assert sink.types() == ["joined", "new_message", "new_message", "joined"]
    assert sink.frames[-1] == {"type": "joined", "room_id": str(room), "last_seq": 2, "ref": "again"}
    await env.stream.leave(sink, room)
    assert await env.joins.joined_users(room) == set()


async def test_only_members_join(env: Env) -> None:
    alice, bob, eve = await env.user(), await env.user(), await env.user()
    room = await env.room(alice, bob)
    sink = Recorder(eve.user_id)
    with pytest.raises(Forbidden):
        await env.stream.join(sink, room, since_seq=0)
    assert sink.frames == [] and env.stream.rooms_of(sink) == frozenset()
    assert await env.joins.joined_users(room) == set()


async def test_typing_reaches_the_others_and_ends_by_itself(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_module, "TYPING_EXPIRES_SECONDS", 0.2)
    monkeypatch.setattr(chat_module, "TYPING_LAPSE_GRACE", 0.1)
    alice, bob = await env.user(), await env.user()
    room = await env.room(alice, bob)
    typer, reader = Recorder(alice.user_id), Recorder(bob.user_id)
    await env.stream.join(typer, room, since_seq=None)
    await env.stream.join(reader, room, since_seq=None)
    await env.chat.typing(alice, room, True)
    typing = {"type": "typing", "room_id": str(room), "user_id": str(alice.user_id)}
    await eventually(lambda: reader.frames[1:] == [typing | {"state": True}])
    # The typer's instance is gone (its timer with it): the lapse ends it here.
    env.chat.stop()
    await eventually(lambda: reader.frames[2:] == [typing | {"state": False}], within=3)
    assert typer.types() == ["joined"]


# -- this instance's own frames, and membership changes ------------------------------------


async def test_own_messages_reach_own_sockets_at_once_and_once(env: Env) -> None:
    alice, bob = await env.user(), await env.user()
    room = await env.room(alice, bob)
    sink = Recorder(bob.user_id)
    await env.stream.join(sink, room, since_seq=0)
    await env.send(alice, room)
    # Delivered before send returned: not through the pub/sub's inbox and back.
    assert sink.seqs() == [1]
    await env.chat.typing(alice, room, True)
    assert sink.types() == ["joined", "new_message", "typing"]
    await asyncio.sleep(0.05)  # the copies the pub/sub hands back are dropped
    assert sink.types() == ["joined", "new_message", "typing"]


async def test_two_instances_on_redis_each_seq_once_and_in_order(db: Database) -> None:
    prefix = f"shtest:{secrets.token_hex(6)}:"
    shared = (MemoryCounters(), MemoryValues())  # the joins and heartbeats, as one Redis would hold them
    envs = [Env(db, RedisPubSub(REDIS_URL, prefix), shared, name) for name in ("a", "b")]
    for e in envs:
        await e.pubsub.start()
        await e.ledger.beat()
        await e.members.start()
    a, b = envs
    try:
        alice, bob, carol = await a.user(), await a.user(), await a.user()
        room = await a.room(alice, bob, carol)
        on_a, also_on_a, on_b = Recorder(bob.user_id), Recorder(alice.user_id), Recorder(carol.user_id)
        await a.stream.join(on_a, room, since_seq=0)
        await a.stream.join(also_on_a, room, since_seq=0)
        await b.stream.join(on_b, room, since_seq=0)
        # Sends from both instances at once: each instance's own reach its sockets at
        # once, the other's through Redis, in whatever order the commits resume.
        await asyncio.gather(*(e.send(who, room, 10) for e, who in ((a, alice), (b, carol), (a, bob), (b, alice))))
        everything = list(range(1, 41))
        for sink in (on_a, also_on_a, on_b):
            await eventually(lambda sink=sink: sink.seqs() == everything)  # type: ignore[misc]
        await asyncio.sleep(0.1)
        assert on_a.seqs() == also_on_a.seqs() == on_b.seqs() == everything
        # Every member has a socket in the room, on one instance or the other: no one
        # is notified (each instance asks the shared joins for those not joined to it).
        assert a.notified == [] and b.notified == []
        # A membership change on one instance reaches the other's cache.
        assert bob.user_id in await b.members.ids(room)
        await db.execute("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2", room, bob.user_id)
        await a.members.changed(room)
        await eventually(lambda: _not_in(b, room, bob.user_id))
    finally:
        for e in envs:
            e.chat.stop()
            await e.members.stop()
            await e.pubsub.close()


async def _not_in(env: Env, room: int, user_id: int) -> bool:
    return user_id not in await env.members.ids(room)


async def test_a_new_member_gets_the_stream_and_notifications(env: Env) -> None:
    alice, bob, carol = await env.user(), await env.user(), await env.user()
    room = await env.room(alice, bob)
    with pytest.raises(Forbidden):
        await env.stream.join(Recorder(carol.user_id), room, since_seq=0)
    await env.db.execute("INSERT INTO room_members (room_id, user_id) VALUES ($1, $2)", room, carol.user_id)
    await env.members.changed(room)
    sink = Recorder(carol.user_id)
    await env.stream.join(sink, room, since_seq=0)
    await env.send(alice, room)
    assert sink.seqs() == [1]
    # (Notifications are made after the ack: who is in the room is asked then.)
    await eventually(lambda: [n.user_id for n in env.notified] == [bob.user_id])
    await env.stream.leave(sink, room)
    await env.send(alice, room)
    expected = sorted([bob.user_id, bob.user_id, carol.user_id])
    await eventually(lambda: sorted(n.user_id for n in env.notified) == expected)


async def test_a_removed_member_stops_getting_the_stream_and_notifications(env: Env) -> None:
    alice, bob, carol = await env.user(), await env.user(), await env.user()
    room = await env.room(alice, bob, carol)
    sink, other = Recorder(bob.user_id), Recorder(alice.user_id)
    await env.stream.join(sink, room, since_seq=0)
    await env.stream.join(other, room, since_seq=0)
    await env.send(alice, room)
    assert sink.seqs() == [1]
    await eventually(lambda: [n.user_id for n in env.notified] == [carol.user_id])
    for gone in (bob, carol):
        await env.db.execute("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2", room, gone.user_id)
    await env.members.changed(room)
    assert env.stream.rooms_of(sink) == frozenset()
    await env.send(alice, room)
    assert other.seqs() == [1, 2] and sink.seqs() == [1]
    await asyncio.sleep(0.05)
    assert sink.seqs() == [1] and [n.user_id for n in env.notified] == [carol.user_id]
    with pytest.raises(Forbidden):
        await env.stream.join(sink, room, since_seq=0)
