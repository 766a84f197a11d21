"""ChatStore.insert_message (one call of socialhub_send_message) on real PostgreSQL, under
concurrency: seq without gaps, a resend stored once, nothing for a non-member.

The races are made certain rather than likely: a second connection holds the room row's
lock while the sends start, and lets go only once every one of them is waiting for it.
Each send has then begun its statement before the first one commits, which is the case a
single-statement send (one snapshot, taken before the wait) gets wrong.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import asyncpg
import pytest

from socialhub.domain.chat import MessageRecord
from socialhub.storage.chat import ChatStore, InsertedMessage
from socialhub.storage.database import Database
from socialhub.storage.migrate import migrate
from tests.conftest import fresh_database

T = TypeVar("T")
# Connections of the store's pool: all 20 same-id sends wait on the lock at once.
POOL_SIZE = 20
WAIT_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
async def chat_db() -> AsyncIterator[Database]:
    async with fresh_database("socialhub_chat_send") as url:
        await migrate(url)
        db = Database()
        await db.open(url, min_size=POOL_SIZE, max_size=POOL_SIZE)
        yield db
        await db.close()


async def new_user(db: Database) -> int:
    u = "u" + secrets.token_hex(6)
    user_id: int = await db.fetchval(
        """INSERT INTO users (username, email, name, password_hash) VALUES ($1, $2, $3, 'x') RETURNING id""",
        u,
        f"{u}@example.test",
        f"User {u}",
    )
    return user_id


async def new_room(db: Database, members: list[int]) -> int:
    room_id: int = await db.fetchval(
        "INSERT INTO rooms (kind, name, created_by) VALUES ('group', 'test', $1) RETURNING id", members[0]
    )
    await db.execute("INSERT INTO room_members (room_id, user_id) SELECT $1, unnest($2::bigint[])", room_id, members)
    return room_id


async def race(db: Database, room_id: int, sends: Sequence[Awaitable[T]], waiting: int) -> list[T]:
    """Run `sends` while another connection holds the room row's lock; let go once
    `waiting` of them wait for it."""
    holder = await db.connect_dedicated()
    tasks: list[asyncio.Future[T]] = []
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM rooms WHERE id = $1 FOR UPDATE", room_id)
            tasks = [asyncio.ensure_future(s) for s in sends]
            deadline = time.monotonic() + WAIT_TIMEOUT_S
            while (blocked := await _blocked_sends(holder)) < waiting:
                assert time.monotonic() < deadline, f"only {blocked} of {waiting} sends waited for the lock"
                await asyncio.sleep(0.01)
    except BaseException:
        await holder.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    await holder.close()
    return await asyncio.gather(*tasks)


async def _blocked_sends(conn: asyncpg.Connection) -> int:
    # Inside a transaction pg_stat_activity is read once and kept: drop that copy first.
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    count: int = await conn.fetchval(
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"""
    )
    return count


async def test_concurrent_sends_get_seq_without_gaps(chat_db: Database) -> None:
    store = ChatStore(chat_db)
    members = [await new_user(chat_db) for _ in range(5)]
    room_id = await new_room(chat_db, members)
    sends = [store.insert_message(room_id, members[i % 5], f"message {i}", f"cmid-{i}") for i in range(50)]

    results = await race(chat_db, room_id, sends, waiting=POOL_SIZE)

    assert all(r is not None and r.created for r in results)
    records = [r.message for r in results if r is not None]
    assert sorted(m.seq for m in records) == list(range(1, 51))
    assert len({m.id for m in records}) == 50
    stored = await chat_db.fetch("SELECT seq, body FROM messages WHERE room_id = $1 ORDER BY seq", room_id)
    assert [r["seq"] for r in stored] == list(range(1, 51))
    assert {r["body"] for r in stored} == {f"message {i}" for i in range(50)}
    assert await store.get_last_seq(room_id) == 50
    # Each sender has read up to their own last message.
    last_own = {int(m.sender.id): 0 for m in records}
    for m in records:
        last_own[int(m.sender.id)] = max(last_own[int(m.sender.id)], m.seq)
    read = await chat_db.fetch("SELECT user_id, last_read_seq FROM room_members WHERE room_id = $1", room_id)
    assert {r["user_id"]: r["last_read_seq"] for r in read} == last_own


async def test_concurrent_resends_store_one_message(chat_db: Database) -> None:
    store = ChatStore(chat_db)
    sender, other = await new_user(chat_db), await new_user(chat_db)
    room_id = await new_room(chat_db, [sender, other])
    first = await store.insert_message(room_id, other, "before", "other-1")
    assert first is not None and first.message.seq == 1

    sends = [store.insert_message(room_id, sender, "hello", "same-id") for _ in range(20)]
    results = await race(chat_db, room_id, sends, waiting=20)

    assert all(r is not None for r in results)
    pairs = [r for r in results if r is not None]
    assert sum(p.created for p in pairs) == 1
    assert len({p.message.id for p in pairs}) == 1
    message = pairs[0].message
    assert all(p.message == message for p in pairs)
    assert (message.seq, message.body, message.client_msg_id, int(message.sender.id)) == (2, "hello", "same-id", sender)
    count = await chat_db.fetchval(
        "SELECT count(*) FROM messages WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = 'same-id'",
        room_id,
        sender,
    )
    assert count == 1
    assert await store.get_last_seq(room_id) == 2  # no seq burnt by the resends

    # A later resend, its body changed, still returns the first message; the next send goes on from 2.
    again = await store.insert_message(room_id, sender, "changed", "same-id")
    assert again == InsertedMessage(message, False)
    nxt = await store.insert_message(room_id, sender, "next", "other-2")
    assert nxt is not None and nxt.created and nxt.message.seq == 3


async def test_the_sender_summary_comes_back(chat_db: Database) -> None:
    store = ChatStore(chat_db)
    sender, other = await new_user(chat_db), await new_user(chat_db)
    await chat_db.execute("UPDATE users SET avatar_url = 'https://x.test/a.png' WHERE id = $1", sender)
    room_id = await new_room(chat_db, [sender, other])
    result = await store.insert_message(room_id, sender, "hi", "c1")
    assert result is not None
    message, created = result.message, result.created
    user = await chat_db.fetchrow("SELECT username, name, avatar_url FROM users WHERE id = $1", sender)
    assert user is not None
    assert created and isinstance(message, MessageRecord)
    assert (message.room_id, message.seq, message.body, message.client_msg_id) == (room_id, 1, "hi", "c1")
    assert (message.sender.id, message.sender.username, message.sender.name, message.sender.avatar_url) == (
        str(sender),
        user["username"],
        user["name"],
        "https://x.test/a.png",
    )
    assert await store.get_history(room_id, None, 10) == [message]


async def test_a_non_member_gets_none_and_changes_nothing(chat_db: Database) -> None:
    store = ChatStore(chat_db)
    member, outsider = await new_user(chat_db), await new_user(chat_db)
    room_id = await new_room(chat_db, [member])

    assert await store.insert_message(room_id, outsider, "let me in", "x1") is None
    assert await store.insert_message(room_id + 1, member, "no such room", "x2") is None
    assert await chat_db.fetchval("SELECT count(*) FROM messages WHERE room_id = $1", room_id) == 0
    assert await store.get_last_seq(room_id) == 0


async def test_a_failed_send_is_undone_whole(chat_db: Database) -> None:
    """Autocommit: a send that fails after taking the lock and bumping last_seq (here a
    NULL body, refused by the insert) is rolled back whole: no seq burnt, no lock left."""
    store = ChatStore(chat_db)
    sender = await new_user(chat_db)
    room_id = await new_room(chat_db, [sender])
    with pytest.raises(asyncpg.NotNullViolationError):
        await store.insert_message(room_id, sender, None, "f1")  # type: ignore[arg-type]
    assert await store.get_last_seq(room_id) == 0
    result = await asyncio.wait_for(store.insert_message(room_id, sender, "good", "f2"), 5)
    assert result is not None and result.message.seq == 1
