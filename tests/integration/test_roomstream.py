"""The room stream's delivery rules, without sockets: real PostgreSQL (the messages),
the in-process pub/sub, and sinks that record what a socket would have been sent.

Rules: `joined`, then the replay after `since_seq`, then live; live frames held back
while a replay runs; each seq once; a gap filled from PostgreSQL; nothing after leave.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from socialhub.domain.notifications import NewNotification
from socialhub.domain.users import Principal
from socialhub.errors import Forbidden
from socialhub.infra.kv.memory import MemoryCounters, MemoryValues
from socialhub.infra.pubsub.memory import MemoryPubSub
from socialhub.services import chat as chat_module
from socialhub.services.chat import ChatService
from socialhub.services.instances import InstanceLedger
from socialhub.services.roomjoins import RoomJoins
from socialhub.services.roomstream import RoomStream
from socialhub.storage.chat import ChatStore
from socialhub.storage.database import Database
from socialhub.storage.users import UserStore
from socialhub.supervisor import Supervisor
from tests.conftest import migrated_database, pool
from tests.contract.conftest import eventually


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
    def __init__(self, db: Database) -> None:
        self.db = db
        self.pubsub = MemoryPubSub()
        self.notified: list[NewNotification] = []
        self.supervisor = Supervisor()
        counters = MemoryCounters()
        self.ledger = InstanceLedger(counters, MemoryValues(), instance_id="test")
        self.joins = RoomJoins(self.ledger, counters)
        self.chat = ChatService(
            store=ChatStore(db),
            users=UserStore(db),
            pubsub=self.pubsub,
            notify=self.notify,
            joined_users=self.joins.joined_users,
            spawn=self.supervisor.spawn,
        )
        self.stream = RoomStream(pubsub=self.pubsub, chat=self.chat, joins=self.joins)

    async def notify(self, new: NewNotification) -> None:
        self.notified.append(new)

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
    yield e
    e.chat.stop()
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
    # Bob has no socket in the room: he, not Alice, is notified of the message.
    assert [(n.user_id, n.type) for n in env.notified] == [(bob.user_id, "message")]
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
