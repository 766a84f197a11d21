"""Two real `socialhub serve` instances on one PostgreSQL and one Redis, real
`websockets` clients: the socket's promises across instances (issue 4, sections 5-7).

Chat, typing, read receipts, presence and notifications cross from one instance to
the other; a client resumes on the other instance with `since_seq` and gets exactly
what it missed; an instance killed with SIGKILL in the middle of a burst loses and
doubles nothing once clients resume and resend what was not acked (and a message it
committed but never relayed still reaches the sockets joined elsewhere); a Redis
restart is never a silent stop (the shared Redis is never touched: that test runs
its own); a non-member gets nothing of a room on either instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import REDIS_URL
from tests.e2e.server import Server, server_env, start_pair
from tests.e2e.wsclient import User, WsClient, signup
from tests.private_redis import PrivateRedis

# How long a socket waits for a frame unless told: cross-instance delivery goes through
# Redis; slack for a loaded machine.
WAIT = 15.0
# Presence: offline is announced `grace` (5 s) after the last socket closed, by a
# worker that wakes for it; the rest is slack for a loaded machine.
OFFLINE_WITHIN = 15.0
# SPEC: `typing true` expires by itself after 6 s.
TYPING_EXPIRES = 6.0
BURST = 200
# An instance killed with SIGKILL: its heartbeat key expires after 3 beats of 5 s and a
# survivor's next sweep (every beat) announces its users offline.
DEAD_INSTANCE_OFFLINE = 35.0
# A private Redis that is killed: the pub/sub reader reconnects with backoff capped at 5 s.
RECONNECT_WITHIN = 20.0


def cluster_env(database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    return server_env(
        database_url,
        SOCIALHUB_REDIS_URL=redis_url,
        SOCIALHUB_REDIS_KEY_PREFIX=prefix,
        SOCIALHUB_RATELIMIT_ENABLED="false",
    )


@pytest.fixture(scope="module")
def env(database_url: str) -> dict[str, str]:
    return cluster_env(database_url, REDIS_URL, f"shws:{secrets.token_hex(4)}:")


@pytest.fixture(scope="module")
def pair(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Instances A and B, shared by the tests that do not kill anything."""
    a, b = start_pair(tmp_path_factory.mktemp("cluster"), env)
    yield a, b
    for server in (a, b):
        server.kill()


# -- clients ------------------------------------------------------------------------------


async def opened(into: list[WsClient], server: Server, user: User, label: str) -> WsClient:
    sock = await user.socket(server, label=label, timeout=WAIT)
    into.append(sock)
    return sock


async def room_rows(database_url: str, room_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch("SELECT seq, client_msg_id FROM messages WHERE room_id = $1 ORDER BY seq", int(room_id))
        )
    finally:
        await conn.close()


# -- cross-instance --------------------------------------------------------------------------


async def test_chat_typing_receipts_presence_and_notifications_cross_instances(
    pair: tuple[Server, Server], sockets: list[WsClient]
) -> None:
    a, b = pair
    alice, bob, carol, dave = [await signup(a, n) for n in ("alice", "bob", "carol", "dave")]
    room = await alice.room(bob)
    on_a = await opened(sockets, a, alice, "alice@A")
    on_b = await opened(sockets, b, bob, "bob@B")
    assert (await on_a.join(room, since_seq=0))["last_seq"] == 0
    assert (await on_b.join(room, since_seq=0))["last_seq"] == 0

    # Messages, both ways.
    first = await on_a.say(room, "hello from A")
    assert first["seq"] == 1 and first["sender"]["id"] == alice.id
    got = await on_b.expect("new_message", where=lambda f: f["message"]["seq"] == 1)
    assert got["message"] == first
    second = await on_b.say(room, "hello from B")
    got = await on_a.expect("new_message", where=lambda f: f["message"]["seq"] == 2)
    assert got["message"] == second
    assert await on_a.wait_seqs(room, 2) == [1, 2] and await on_b.wait_seqs(room, 2) == [1, 2]

    # Typing, both ways; B's `true` is left to expire by itself (checked at the end).
    await on_a.send({"type": "typing", "room_id": room, "state": True})
    t = await on_b.expect("typing")
    assert t == {"type": "typing", "room_id": room, "user_id": alice.id, "state": True}
    await on_a.send({"type": "typing", "room_id": room, "state": False})
    t = await on_b.expect("typing")
    assert t["state"] is False and t["user_id"] == alice.id
    await on_b.send({"type": "typing", "room_id": room, "state": True})
    typing_since = time.monotonic()
    t = await on_a.expect("typing")
    assert t == {"type": "typing", "room_id": room, "user_id": bob.id, "state": True}

    # Read receipts, both ways, and stored (unread counts, asked of the other instance).
    r = await alice.get("/chat/rooms", server=a)
    assert [(x["id"], x["unread_count"]) for x in r.json()["items"]] == [(room, 1)]
    await on_a.send({"type": "read", "room_id": room, "seq": 2})
    receipt = await on_b.expect("read")
    assert receipt == {"type": "read", "room_id": room, "user_id": alice.id, "seq": 2}
    await on_b.send({"type": "read", "room_id": room, "seq": 2})
    receipt = await on_a.expect("read")
    assert receipt == {"type": "read", "room_id": room, "user_id": bob.id, "seq": 2}
    r = await alice.get("/chat/rooms", server=b)
    assert [(x["id"], x["unread_count"]) for x in r.json()["items"]] == [(room, 0)]
    assert not [f for f in on_a.pending() if f["type"] in ("typing", "read") and f["user_id"] == alice.id]

    # Presence: watched on A, the user comes and goes on B.
    await on_a.send({"type": "subscribe_presence", "user_ids": [carol.id]})
    p = await on_a.expect("presence", user_id=carol.id)
    assert p["status"] == "offline"
    carol_b = await opened(sockets, b, carol, "carol@B")
    p = await on_a.expect("presence", user_id=carol.id)
    assert p["status"] == "online"
    assert (await alice.get(f"/users/{carol.id}/presence", server=a)).json()["status"] == "online"

    # A notification made by an action on A reaches the user's socket on B.
    assert (await dave.post(f"/users/follow/{carol.id}")).status_code == 200
    note = await carol_b.expect("notification", timeout=15)
    assert note["notification"]["type"] == "follow" and note["notification"]["actor"]["id"] == dave.id

    # `message` notifications go to members with no socket in the room, wherever they are.
    group = await alice.room(bob, carol, name="group")
    await on_a.join(group)
    sent = await on_a.say(group, "anyone?")
    note = await carol_b.expect("notification", timeout=15)
    assert note["notification"]["type"] == "message" and note["notification"]["room_id"] == group
    assert note["notification"]["actor"]["id"] == alice.id
    assert (await on_b.expect("notification", timeout=15))["notification"]["room_id"] == group
    assert sent["seq"] == 1

    closed_at = time.monotonic()
    await carol_b.close()
    p = await on_a.expect("presence", timeout=OFFLINE_WITHIN, user_id=carol.id)
    assert p["status"] == "offline" and p["last_seen"] is not None
    # No flapping: "offline" comes after the grace, not at once.
    assert time.monotonic() - closed_at >= 4.0
    assert not [f for f in on_a.pending() if f["type"] == "presence"]

    # B's `typing true` expired by itself on its own instance and that crossed to A.
    left = TYPING_EXPIRES + 5 - (time.monotonic() - typing_since)
    t = await on_a.expect("typing", timeout=max(left, 0.1))
    assert t == {"type": "typing", "room_id": room, "user_id": bob.id, "state": False}


async def test_replay_after_reconnecting_to_the_other_instance(
    pair: tuple[Server, Server], sockets: list[WsClient]
) -> None:
    a, b = pair
    alice, bob = await signup(a, "alice"), await signup(b, "bob")
    room = await bob.room(alice)
    bob_b = await opened(sockets, b, bob, "bob@B")
    await bob_b.join(room)
    alice_a = await opened(sockets, a, alice, "alice@A")
    await alice_a.join(room, since_seq=0)
    k, n = 5, 12
    for i in range(1, k + 1):
        await bob_b.say(room, f"m{i}")
    assert await alice_a.wait_seqs(room, k) == list(range(1, k + 1))
    await alice_a.close()

    for i in range(k + 1, n + 1):
        await bob_b.say(room, f"m{i}")
    alice_b = await opened(sockets, b, alice, "alice@B")
    assert (await alice_b.join(room, since_seq=k))["last_seq"] == n
    assert await alice_b.wait_seqs(room, n - k) == list(range(k + 1, n + 1))
    assert [m["body"] for m in alice_b.messages(room)] == [f"m{i}" for i in range(k + 1, n + 1)]

    # Then the live stream, from both instances.
    bob_a = await opened(sockets, a, bob, "bob@A")
    await bob_b.say(room, "live from B")
    await bob_a.say(room, "live from A")
    await bob_b.say(room, "live from B again")
    assert await alice_b.wait_seqs(room, n - k + 3) == list(range(k + 1, n + 4))
    await asyncio.sleep(0.3)
    assert alice_b.seqs(room) == list(range(k + 1, n + 4)), "a message came twice"


async def test_non_member_can_neither_join_read_nor_send_on_either_instance(
    pair: tuple[Server, Server], sockets: list[WsClient], database_url: str
) -> None:
    a, b = pair
    alice, bob, mallory = await signup(a, "alice"), await signup(a, "bob"), await signup(b, "mallory")
    room = await alice.room(bob)
    alice_a = await opened(sockets, a, alice, "alice@A")
    await alice_a.join(room)
    await alice_a.say(room, "members only")
    intruders = [await opened(sockets, server, mallory, f"mallory@{name}") for name, server in (("A", a), ("B", b))]
    for server, sock in zip(pair, intruders, strict=True):
        await sock.send({"type": "join_room", "room_id": room, "since_seq": 0, "ref": "j"})
        err = await sock.expect("error", ref="j")
        assert err["code"] == "forbidden"
        await sock.send(
            {"type": "send_message", "room_id": room, "body": "let me in", "client_msg_id": "x", "ref": "s"}
        )
        err = await sock.expect("error", ref="s")
        assert err["code"] == "forbidden"
        await sock.send({"type": "typing", "room_id": room, "state": True, "ref": "t"})
        assert (await sock.expect("error", ref="t"))["code"] == "forbidden"
        await sock.send({"type": "read", "room_id": room, "seq": 1, "ref": "r"})
        assert (await sock.expect("error", ref="r"))["code"] == "forbidden"
        r = await mallory.get(f"/chat/{room}/history", server=server)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
    # The refused join streams nothing; the refused send stored nothing.
    await alice_a.say(room, "still members only")
    await asyncio.sleep(0.5)
    for sock in intruders:
        assert not sock.matching("new_message")
        assert not [f for f in sock.pending() if f["type"] in ("new_message", "typing", "read")]
        assert not sock.reader.done()
    assert [r["seq"] for r in await room_rows(database_url, room)] == [1, 2]
    assert (await bob.get(f"/chat/{room}/history", server=b)).status_code == 200


# -- an instance killed mid-burst ---------------------------------------------------------------


async def test_instance_killed_mid_burst_loses_and_doubles_nothing(
    pair: tuple[Server, Server], env: dict[str, str], tmp_path: Path, sockets: list[WsClient], database_url: str
) -> None:
    _, b = pair
    # The victim is a third instance, so the pair stays up for the other tests.
    victim = await asyncio.to_thread(Server(tmp_path / "victim", env).start)
    try:
        sender, r1, r2 = await signup(b, "sender"), await signup(b, "r_one"), await signup(b, "r_two")
        room = await sender.room(r1, r2, name="burst")
        recv_victim = await opened(sockets, victim, r1, "r1@victim")
        recv_b = await opened(sockets, b, r2, "r2@B")
        await recv_victim.join(room, since_seq=0)
        await recv_b.join(room, since_seq=0)
        out = await opened(sockets, victim, sender, "sender@victim")
        # The sender starts typing on the victim, which then dies before its 6 s timer
        # would have ended it: B must end it for its own sockets.
        await out.send({"type": "typing", "room_id": room, "state": True})
        typing_at = time.monotonic()
        assert (await recv_b.expect("typing", user_id=sender.id))["state"] is True
        # A user whose only socket is on the victim: the survivors must not keep them online.
        ghost = await signup(b, "ghost")
        await opened(sockets, victim, ghost, "ghost@victim")
        await recv_b.send({"type": "subscribe_presence", "user_ids": [ghost.id]})
        assert (await recv_b.expect("presence", user_id=ghost.id))["status"] == "online"

        ids = [f"burst-{i:03d}" for i in range(BURST)]
        acked: dict[str, int] = {}

        def take_acks(sock: WsClient) -> None:
            for f in sock.pending():
                assert f["type"] != "error", f
                if f["type"] == "ack" and f.get("ref") in ids:
                    acked[f["ref"]] = f["message"]["seq"]

        async def burst() -> None:
            with contextlib.suppress(ConnectionClosed):
                for i, cid in enumerate(ids):
                    await out.send(
                        {"type": "send_message", "room_id": room, "body": f"#{i}", "client_msg_id": cid, "ref": cid}
                    )

        sending = asyncio.create_task(burst())
        # Kill once the server is well into the burst (acks flowing), not before.
        end = time.monotonic() + 20
        while len(out.matching("ack")) < BURST // 4:
            assert time.monotonic() < end, "the burst is not being acked"
            await asyncio.sleep(0.002)
        await asyncio.to_thread(victim.kill)
        assert time.monotonic() - typing_at < TYPING_EXPIRES, "the victim lived long enough to end the typing"
        await sending
        await out.wait_closed(10)
        await recv_victim.wait_closed(10)
        take_acks(out)
        assert 0 < len(acked) < BURST, f"the kill did not land mid-burst ({len(acked)} acked)"
        seen_before = recv_victim.seqs(room)

        # The receiver that was on the victim resumes on B while the sender resends there.
        resumed = await opened(sockets, b, r1, "r1@B")
        out_b = await opened(sockets, b, sender, "sender@B")
        await resumed.join(room, since_seq=seen_before[-1] if seen_before else 0)
        retry = [cid for cid in ids if cid not in acked]
        for cid in retry:
            body = f"#{ids.index(cid)}"
            await out_b.send({"type": "send_message", "room_id": room, "body": body, "client_msg_id": cid, "ref": cid})
        end = time.monotonic() + 20
        while len(acked) < BURST:
            take_acks(out_b)
            assert time.monotonic() < end, f"{BURST - len(acked)} resends were not acked"
            await asyncio.sleep(0.01)

        rows = await room_rows(database_url, room)
        assert [r["seq"] for r in rows] == list(range(1, BURST + 1)), "seq has a gap"
        assert sorted(r["client_msg_id"] for r in rows) == ids, "a client_msg_id is missing or doubled"
        by_id = {r["client_msg_id"]: r["seq"] for r in rows}
        assert acked == by_id, "an ack does not name the stored message"

        everything = list(range(1, BURST + 1))
        assert await recv_b.wait_seqs(room, BURST) == everything, "the receiver that stayed on B"
        await resumed.wait_seqs(room, BURST - len(seen_before))
        assert seen_before + resumed.seqs(room) == everything, "the receiver that resumed on B"
        await asyncio.sleep(0.3)
        assert recv_b.seqs(room) == everything and seen_before + resumed.seqs(room) == everything

        # The typing that the dead victim never ended ends on B by itself.
        ended = await recv_b.expect("typing", timeout=TYPING_EXPIRES + 10, user_id=sender.id)
        assert ended["state"] is False and time.monotonic() - typing_at >= TYPING_EXPIRES

        # The victim's heartbeat lapses; a survivor sweeps its users and announces them offline.
        gone = await recv_b.expect("presence", timeout=DEAD_INSTANCE_OFFLINE, user_id=ghost.id)
        assert gone["status"] == "offline"
        assert (await r2.get(f"/users/{ghost.id}/presence", server=b)).json()["status"] == "offline"
    finally:
        victim.kill()


async def test_a_message_committed_by_an_instance_that_died_before_relaying_it_is_delivered(
    pair: tuple[Server, Server], sockets: list[WsClient], database_url: str
) -> None:
    """The window a SIGKILL can hit between the commit and the publish, made certain: the
    row is committed as the dying instance would have, and nothing was relayed. The
    sender never got its ack, so it resends on the survivor; the receivers joined to the
    room get the message (once), not only whoever happens to resume later."""
    a, b = pair
    sender, receiver = await signup(a, "sender"), await signup(b, "receiver")
    room = await sender.room(receiver)
    on_b = await opened(sockets, b, receiver, "receiver@B")
    on_a = await opened(sockets, a, receiver, "receiver@A")
    await on_b.join(room, since_seq=0)
    await on_a.join(room, since_seq=0)
    out = await opened(sockets, a, sender, "sender@A")
    await out.say(room, "first")
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            seq = await conn.fetchval(
                "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq", int(room)
            )
            await conn.execute(
                "INSERT INTO messages (room_id, seq, sender_id, body, client_msg_id) VALUES ($1, $2, $3, $4, $5)",
                int(room), seq, int(sender.id), "never relayed", "lost-ack",
            )  # fmt: skip
    finally:
        await conn.close()
    assert seq == 2
    await out.send(
        {"type": "send_message", "room_id": room, "body": "never relayed", "client_msg_id": "lost-ack", "ref": "retry"}
    )
    ack = await out.expect("ack", ref="retry")
    assert ack["message"]["seq"] == 2 and ack["message"]["client_msg_id"] == "lost-ack"
    for sock in (on_a, on_b):
        assert await sock.wait_seqs(room, 2, timeout=5) == [1, 2], sock.label
    await out.say(room, "third")
    for sock in (on_a, on_b):
        assert await sock.wait_seqs(room, 3) == [1, 2, 3], sock.label
    await out.send(
        {"type": "send_message", "room_id": room, "body": "never relayed", "client_msg_id": "lost-ack", "ref": "again"}
    )
    assert (await out.expect("ack", ref="again"))["message"]["seq"] == 2
    await asyncio.sleep(0.3)
    assert on_a.seqs(room) == on_b.seqs(room) == [1, 2, 3], "a resend was delivered twice"


# -- a Redis restart in the middle of a conversation ---------------------------------------------


async def readiness(server: Server) -> int:
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            return (await c.get("/readyz")).status_code
    except httpx.HTTPError:
        return 0


async def until(what: str, check: Callable[[], Any], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < end, what
        await asyncio.sleep(0.1)


async def test_redis_restart_mid_conversation_is_never_a_silent_stop(
    database_url: str, private_redis: PrivateRedis, tmp_path: Path, sockets: list[WsClient]
) -> None:
    env = cluster_env(database_url, private_redis.url, f"shws:{secrets.token_hex(4)}:")
    servers = [Server(tmp_path / "ra", env), Server(tmp_path / "rb", env)]
    a, b = servers
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        alice, bob = await signup(a, "alice"), await signup(b, "bob")
        room = await alice.room(bob)
        on_a = await opened(sockets, a, alice, "alice@A")
        on_b = await opened(sockets, b, bob, "bob@B")
        await on_a.join(room, since_seq=0)
        await on_b.join(room, since_seq=0)
        await on_a.say(room, "before 1")
        await on_b.say(room, "before 2")
        assert await on_a.wait_seqs(room, 2) == [1, 2] and await on_b.wait_seqs(room, 2) == [1, 2]

        await asyncio.to_thread(private_redis.kill)

        async def both_not_ready() -> bool:
            return all(code == 503 for code in await asyncio.gather(readiness(a), readiness(b)))

        await until("/readyz kept saying ready with Redis down", both_not_ready, 10)
        # The conversation goes on while Redis is down: stored in PostgreSQL, acked.
        during = [await on_a.say(room, "during 1"), await on_b.say(room, "during 2")]
        assert [m["seq"] for m in during] == [3, 4]
        await asyncio.sleep(1)
        assert await both_not_ready()

        await asyncio.to_thread(private_redis.start)

        async def both_ready() -> bool:
            return all(code == 200 for code in await asyncio.gather(readiness(a), readiness(b)))

        await until("/readyz did not recover after Redis came back", both_ready, RECONNECT_WITHIN)
        # Their streams may have gaps: every socket is told, by a close with 1012.
        for sock in (on_a, on_b):
            code = await sock.wait_closed(RECONNECT_WITHIN)
            assert code == 1012, f"{sock.label}: {'still open' if code is None else f'closed with {code}'}"

        # They resume, each on the other instance, with since_seq, and get every message.
        resumed_a = await opened(sockets, b, alice, "alice@B")
        resumed_b = await opened(sockets, a, bob, "bob@A")
        for old, new in ((on_a, resumed_a), (on_b, resumed_b)):
            seen = old.seqs(room)
            assert seen == list(range(1, len(seen) + 1)), f"{old.label}: {seen}"
            assert (await new.join(room, since_seq=seen[-1]))["last_seq"] == 4
            assert seen + await new.wait_seqs(room, 4 - len(seen)) == [1, 2, 3, 4]

        # Live delivery across instances works again, with no server restarted.
        m = await resumed_a.say(room, "after, from B")
        got = await resumed_b.expect("new_message", where=lambda f: f["message"]["seq"] == 5)
        assert got["message"] == m
        m = await resumed_b.say(room, "after, from A")
        got = await resumed_a.expect("new_message", where=lambda f: f["message"]["seq"] == 6)
        assert got["message"] == m
        await resumed_b.send({"type": "typing", "room_id": room, "state": True})
        assert (await resumed_a.expect("typing"))["user_id"] == bob.id
        await resumed_a.send({"type": "subscribe_presence", "user_ids": [bob.id]})
        assert (await resumed_a.expect("presence"))["status"] == "online"
        for server in servers:
            assert server.proc is not None and server.proc.poll() is None
    finally:
        for server in servers:
            server.kill()
