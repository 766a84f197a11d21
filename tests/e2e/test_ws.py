"""SPEC's "WebSocket: GET /ws" against a real `socialhub serve`, with the real
`websockets` client: the handshake, rooms and history over REST, every chat frame,
presence, live notifications, the limits (frame size, frame rate, slow readers),
logout and shutdown.

One server (rate limits off) serves most of the module; the frame-rate limit and
SIGTERM each get a server of their own. Timers under test (the 10 s authenticate
deadline, the 6 s typing expiry, the 5 s presence grace) are waited out once each.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.server import Server, server_env
from tests.e2e.wsclient import Frame, User, WsClient, connect_ws, signups

TYPING_EXPIRES = 6.0  # SPEC
PRESENCE_GRACE = 5.0  # services/presence.py DEFAULT_GRACE ("a few seconds")


def single_env(database_url: str, **extra: str) -> dict[str, str]:
    """One instance: pub/sub and the rest in process."""
    return server_env(database_url, SOCIALHUB_REDIS_URL="", **extra)


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("ws") / "data", env=single_env(database_url, SOCIALHUB_RATELIMIT_ENABLED="false")
    ).start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c


async def history(user: User, room_id: str, **params: Any) -> list[Frame]:
    r = await user.get(f"/chat/{room_id}/history", params={"limit": 100, **params})
    assert r.status_code == 200, r.text
    items: list[Frame] = r.json()["items"]
    return items


async def rooms_of(user: User) -> dict[str, Frame]:
    r = await user.get("/chat/rooms", params={"limit": 100})
    assert r.status_code == 200, r.text
    return {room["id"]: room for room in r.json()["items"]}


# -- authenticate ---------------------------------------------------------------------------


async def test_authenticate(server: Server) -> None:
    (a,) = await signups(server, "a")
    # Opened first, so its 10 s deadline runs while the other cases do.
    silent = await WsClient.connect(server)
    started = time.monotonic()

    good = await a.socket()
    assert good.frames[0] == {"type": "authenticated", "user_id": a.id, "session_id": good.frames[0]["session_id"]}
    await good.ping()

    for token in ("not-a-jwt", a.token[:-4] + "AAAA", ""):
        bad = await WsClient.connect(server)
        await bad.send({"type": "authenticate", "token": token, "ref": "a1"})
        assert await bad.wait_closed() == 4401
        assert [f["type"] for f in bad.frames] == ["error"]
        assert bad.frames[0]["code"] == "unauthenticated"
        assert bad.frames[0]["ref"] == "a1"

    firsts: list[Any] = [{"type": "ping", "ref": "x"}, {"type": "join_room", "room_id": "1"}, "not json", [1, 2]]
    for first in [*firsts, b'{"type": "authenticate", "token": "\xff"}']:
        other = await WsClient.connect(server)
        await other.send(first if isinstance(first, str | bytes | dict) else json.dumps(first))
        assert await other.wait_closed() == 4401, first
        assert [f.get("code") for f in other.frames] == ["unauthenticated"], first

    # The same user on two sockets (two devices): frames reach both.
    second = await a.socket()
    assert second.frames[0]["session_id"] == good.frames[0]["session_id"]  # same token, same session
    (b,) = await signups(server, "b")
    r = await b.post(f"/users/follow/{a.id}")
    assert r.status_code == 200, r.text
    for sock in (good, second):
        n = await sock.expect("notification")
        assert n["notification"]["type"] == "follow"
        assert n["notification"]["actor"]["id"] == b.id

    # No frame within 10 s: closed with 4401.
    assert await silent.wait_closed(timeout=15) == 4401
    waited = time.monotonic() - started
    assert 9.0 <= waited <= 12.5, waited
    assert silent.frames == [] or [f.get("code") for f in silent.frames] == ["unauthenticated"]
    for sock in (good, second):
        await sock.close()


# -- rooms over REST ------------------------------------------------------------------------


async def test_rooms_history_and_membership(server: Server) -> None:
    a, b, c = await signups(server, "a", "b", "c")
    r = await a.post("/chat/rooms", json={"members": [b.id]})
    assert r.status_code == 201, r.text
    direct = r.json()
    assert direct["kind"] == "direct"
    assert {m["id"] for m in direct["members"]} == {a.id, b.id}
    for who, other in ((a, b), (b, a)):
        again = await who.post("/chat/rooms", json={"members": [other.id]})
        assert again.status_code == 200, again.text
        assert again.json()["id"] == direct["id"]

    r = await a.post("/chat/rooms", json={"members": [b.id, c.id], "name": "the three"})
    assert r.status_code == 201, r.text
    group = r.json()
    assert (group["kind"], group["name"]) == ("group", "the three")
    assert {m["id"] for m in group["members"]} == {a.id, b.id, c.id}
    r = await a.post("/chat/rooms", json={"members": [b.id, c.id], "name": "the three"})
    assert r.status_code == 201 and r.json()["id"] != group["id"]  # groups are not unique
    assert (await a.post("/chat/rooms", json={"members": ["123456789"]})).status_code == 404

    sa = await a.socket()
    for i in range(5):
        m = await sa.say(direct["id"], f"direct {i}")
        assert m["seq"] == i + 1
    await sa.say(group["id"], "group 1")

    # History: newest first, paged with ?before=.
    seen: list[int] = []
    before: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if before:
            params["before"] = before
        r = await b.get(f"/chat/{direct['id']}/history", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [m["seq"] for m in page["items"]]
        assert len(page["items"]) <= 2
        before = page["next"]
        if before is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    item = (await history(b, direct["id"]))[0]
    assert item["body"] == "direct 4" and item["sender"]["id"] == a.id and item["room_id"] == direct["id"]

    # GET /chat/rooms: most recent activity first, the last message, unread counts.
    r = await b.get("/chat/rooms")
    assert r.status_code == 200, r.text
    listed = r.json()["items"]
    assert [x["id"] for x in listed][:2] == [group["id"], direct["id"]]
    by_id = {x["id"]: x for x in listed}
    assert by_id[direct["id"]]["last_message"]["seq"] == 5
    assert by_id[direct["id"]]["last_message"]["body"] == "direct 4"
    assert by_id[direct["id"]]["unread_count"] == 5
    assert by_id[group["id"]]["unread_count"] == 1
    assert (await rooms_of(a))[direct["id"]]["unread_count"] == 0  # one's own messages are read

    # Members only: every frame of a non-member is refused with its ref, and history too.
    sc = await c.socket()
    refused: list[Frame] = [
        {"type": "join_room", "room_id": direct["id"], "since_seq": 0},
        {"type": "send_message", "room_id": direct["id"], "body": "let me in", "client_msg_id": "x1"},
        {"type": "typing", "room_id": direct["id"], "state": True},
        {"type": "read", "room_id": direct["id"], "seq": 1},
    ]
    for i, frame in enumerate(refused):
        await sc.send({**frame, "ref": f"f{i}"})
        err = await sc.expect("error", ref=f"f{i}")
        assert err["code"] == "forbidden", (frame, err)
    await sc.ping()
    assert sc.matching("new_message") == [] and sc.matching("joined") == []
    r = await c.get(f"/chat/{direct['id']}/history")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert [m["seq"] for m in await history(a, direct["id"])] == [5, 4, 3, 2, 1]  # nothing stored

    # Unknown room: not_found over both.
    for i, frame in enumerate(refused):
        await sc.send({**frame, "room_id": "999999999999", "ref": f"n{i}"})
        err = await sc.expect("error", ref=f"n{i}")
        assert err["code"] == "not_found", (frame, err)
    for path in ("/chat/999999999999/history", "/chat/nope/history"):
        r = await c.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    for sock in (sa, sc):
        await sock.close()


# -- messages -----------------------------------------------------------------------------


async def test_send_ack_fanout_and_idempotency(server: Server) -> None:
    a, b, c = await signups(server, "a", "b", "c")
    room = await a.room(b, c, name="fanout")
    sa = await a.socket()
    sb1 = await b.socket()
    sb2 = await b.socket()
    sc = await c.socket()
    for sock in (sa, sb1, sb2, sc):
        joined = await sock.join(room)
        assert joined["last_seq"] == 0
        assert joined["ref"].startswith("j")

    messages = [await sa.say(room, f"hello {i}") for i in range(3)]
    assert [m["seq"] for m in messages] == [1, 2, 3]
    m = messages[0]
    assert m["room_id"] == room and m["body"] == "hello 0" and m["sender"]["id"] == a.id
    assert set(m) >= {"id", "room_id", "seq", "sender", "body", "client_msg_id", "created_at"}
    for sock in (sa, sb1, sb2, sc):  # every joined socket, the sender's included
        await sock.wait_seqs(room, 3)
        assert sock.seqs(room) == [1, 2, 3]
        assert sock.matching("new_message")[0]["message"] == m

    # The same client_msg_id again: the same message, stored once, relayed once.
    first = await sb1.say(room, "once", client_msg_id="cid-1")
    again = await sb1.say(room, "once (retry)", client_msg_id="cid-1")
    assert again == first and first["seq"] == 4
    other = await sc.say(room, "mine", client_msg_id="cid-1")  # client_msg_id is per sender
    assert other["seq"] == 5 and other["id"] != first["id"]
    for sock in (sa, sb1, sb2, sc):
        await sock.wait_seqs(room, 5)
        await sock.ping()
        assert sock.seqs(room) == [1, 2, 3, 4, 5]
    assert [x["seq"] for x in await history(a, room)] == [5, 4, 3, 2, 1]

    # Body length: 1..4000 characters.
    for i, body in enumerate(["", "x" * 4001]):
        await sa.send(
            {"type": "send_message", "room_id": room, "body": body, "client_msg_id": f"bad{i}", "ref": f"b{i}"}
        )
        err = await sa.expect("error", ref=f"b{i}")
        assert err["code"] == "bad_request"
    longest = await sa.say(room, "é" * 4000)
    assert longest["seq"] == 6 and longest["body"] == "é" * 4000
    await sa.ping()
    assert len(await history(a, room)) == 6
    for sock in (sa, sb1, sb2, sc):
        await sock.close()


async def test_join_replays_then_streams(server: Server) -> None:
    a, b = await signups(server, "a", "b")
    room = await a.room(b)
    sa = await a.socket()
    for i in range(5):
        await sa.say(room, f"m{i}")
    sb = await b.socket()
    joined = await sb.join(room, since_seq=2)
    assert joined["last_seq"] == 5
    await sb.wait_until(lambda: len(sb.seqs(room)) == 3)
    assert sb.frames[1]["type"] == "joined"  # the replay follows `joined`
    await sa.say(room, "live")
    await sb.wait_until(lambda: 6 in sb.seqs(room))
    await sb.ping()
    assert sb.seqs(room) == [3, 4, 5, 6]
    assert [f["message"]["body"] for f in sb.matching("new_message")] == ["m2", "m3", "m4", "live"]

    # Without since_seq: no replay, only what comes next. Joining twice changes nothing.
    sb2 = await b.socket()
    assert (await sb2.join(room))["last_seq"] == 6
    assert (await sb2.join(room))["last_seq"] == 6
    await sa.say(room, "next")
    await sb2.wait_until(lambda: 7 in sb2.seqs(room))
    await sb2.ping()
    assert sb2.seqs(room) == [7]

    # A replay longer than a socket's send queue (512 frames) still arrives whole, and
    # so do the messages sent while it runs.
    many, more = 700, 60
    for i in range(many):
        await sa.send({"type": "send_message", "room_id": room, "body": f"bulk {i}", "client_msg_id": f"bulk{i}"})
    await sa.wait_count("ack", 7 + many, timeout=30)
    sb3 = await b.socket()
    await sb3.send({"type": "join_room", "room_id": room, "since_seq": 0})
    for i in range(more):
        await sa.send({"type": "send_message", "room_id": room, "body": f"more {i}", "client_msg_id": f"more{i}"})
    joined = await sb3.expect("joined")
    assert 7 + many <= joined["last_seq"] <= 7 + many + more
    await sb3.wait_seqs(room, 7 + many + more, timeout=15)
    await sb3.ping()
    assert sb3.seqs(room) == list(range(1, 8 + many + more))
    assert sb3.close_code is None
    for sock in (sa, sb, sb2, sb3):
        await sock.close()


async def test_join_during_a_burst_has_no_gap_and_no_duplicate(server: Server) -> None:
    """Messages committed while a join's replay runs are sent exactly once, in order."""
    a, b = await signups(server, "a", "b")
    room = await a.room(b)
    senders = [await a.socket() for _ in range(3)]
    joiners = [await b.socket() for _ in range(4)]
    per_sender = 40
    total = per_sender * len(senders)

    async def burst(sock: WsClient, n: int) -> None:
        for i in range(per_sender):
            await sock.send(
                {"type": "send_message", "room_id": room, "body": f"s{n} #{i}", "client_msg_id": f"s{n}-{i}"}
            )
            if i % 5 == 0:
                await asyncio.sleep(0.002)

    joined_at: list[int] = []

    async def join_later(sock: WsClient, delay: float) -> None:
        await asyncio.sleep(delay)
        joined_at.append((await sock.join(room, since_seq=0))["last_seq"])

    await asyncio.gather(
        *(burst(s, n) for n, s in enumerate(senders)),
        *(join_later(j, 0.01 + 0.03 * k) for k, j in enumerate(joiners)),
    )
    for s in senders:
        await s.wait_count("ack", per_sender, timeout=15)
    acked = sorted(f["message"]["seq"] for s in senders for f in s.matching("ack"))
    assert any(0 < n < total for n in joined_at), joined_at  # some joined mid-burst
    assert acked == list(range(1, total + 1))
    for j in joiners:
        await j.wait_seqs(room, total, timeout=10)
        await j.ping()
        assert j.seqs(room) == list(range(1, total + 1))
    for sock in (*senders, *joiners):
        await sock.close()


async def test_leave_room(server: Server) -> None:
    a, b = await signups(server, "a", "b")
    room = await a.room(b)
    sa = await a.socket()
    stay = await b.socket()
    go = await b.socket()
    for sock in (stay, go):
        await sock.join(room)
    await sa.say(room, "both")
    for sock in (stay, go):
        await sock.wait_seqs(room, 1)
    await go.send({"type": "leave_room", "room_id": room, "ref": "l1"})
    await go.expect("ack", ref="l1")
    await sa.say(room, "after leave")
    await stay.wait_until(lambda: stay.seqs(room) == [1, 2])
    await asyncio.sleep(0.3)
    await go.ping()
    assert go.seqs(room) == [1]
    for sock in (sa, stay, go):
        await sock.close()


# -- typing and read receipts ----------------------------------------------------------------


async def test_typing_and_its_expiry(server: Server) -> None:
    a, b = await signups(server, "a", "b")
    room = await a.room(b)
    sa = await a.socket()
    sb = await b.socket()
    for sock in (sa, sb):
        await sock.join(room)

    await sa.send({"type": "typing", "room_id": room, "state": True, "ref": "t1"})
    started = time.monotonic()
    assert await sb.expect("typing", state=True) == {"type": "typing", "room_id": room, "user_id": a.id, "state": True}
    stopped = await sb.expect("typing", state=False, timeout=TYPING_EXPIRES + 3)
    waited = time.monotonic() - started
    assert stopped == {"type": "typing", "room_id": room, "user_id": a.id, "state": False}
    assert TYPING_EXPIRES - 1 <= waited <= TYPING_EXPIRES + 2.5, waited
    await sa.ping()
    assert sa.matching("typing") == []  # the sender is not told of its own typing
    assert len(sb.matching("typing")) == 2

    # An explicit false reaches the others at once (and cancels the expiry).
    await sb.send({"type": "typing", "room_id": room, "state": True})
    await sa.expect("typing", user_id=b.id, state=True)
    await sb.send({"type": "typing", "room_id": room, "state": False})
    await sa.expect("typing", user_id=b.id, state=False, timeout=1)
    for sock in (sa, sb):
        await sock.close()


async def test_read_receipts_and_unread_counts(server: Server) -> None:
    a, b = await signups(server, "a", "b")
    room = await a.room(b)
    sa = await a.socket()
    sb = await b.socket()
    for sock in (sa, sb):
        await sock.join(room)
    for i in range(3):
        await sa.say(room, f"unread {i}")
    assert (await rooms_of(b))[room]["unread_count"] == 3

    await sb.send({"type": "read", "room_id": room, "seq": 2, "ref": "r1"})
    receipt = await sa.expect("read")
    assert receipt == {"type": "read", "room_id": room, "user_id": b.id, "seq": 2}
    assert (await rooms_of(b))[room]["unread_count"] == 1
    await sb.send({"type": "read", "room_id": room, "seq": 3})
    await sa.expect("read", seq=3)
    assert (await rooms_of(b))[room]["unread_count"] == 0
    await sb.ping()
    assert sb.matching("read") == []  # receipts are for the others
    assert (await rooms_of(a))[room]["unread_count"] == 0
    for sock in (sa, sb):
        await sock.close()


async def unread_notifications(user: User) -> int:
    r = await user.get("/notify/unread-count")
    assert r.status_code == 200, r.text
    count: int = r.json()["count"]
    return count


async def test_reading_a_room_to_its_end_reads_its_message_notifications(server: Server) -> None:
    a, b, c = await signups(server, "a", "b", "c")
    room = await a.room(b)
    other = await c.room(b)
    sa, sc = await a.socket(), await c.socket()
    await sa.join(room)
    await sc.join(other)
    # b has no socket: each message notifies b (made just after the ack).
    for i in range(3):
        await sa.say(room, f"while away {i}")
    await sc.say(other, "elsewhere")
    deadline = time.monotonic() + 10
    while await unread_notifications(b) < 4:
        assert time.monotonic() < deadline, "b was not notified"
        await asyncio.sleep(0.05)

    sb = await b.socket()
    await sb.join(room)
    await sb.request({"type": "read", "room_id": room, "seq": 2})
    assert await unread_notifications(b) == 4  # part of the room read: its notifications stay
    await sb.request({"type": "read", "room_id": room, "seq": 3})
    assert await unread_notifications(b) == 1  # read to the end: the room's three are read
    items = (await b.get("/notify/notifications")).json()["items"]
    # Each is made in the background after its message's ack: their order across the two
    # rooms need not be the messages' (c's may come before a's last), so compared as a set.
    assert sorted((n["room_id"], n["read"]) for n in items if n["type"] == "message") == sorted(
        [(other, False), (room, True), (room, True), (room, True)]
    )
    for sock in (sa, sb, sc):
        await sock.close()


# -- presence ---------------------------------------------------------------------------------


async def test_presence(server: Server) -> None:
    watcher, leaver, flapper, never = await signups(server, "watcher", "leaver", "flapper", "never")
    sw = await watcher.socket()
    await sw.send({"type": "subscribe_presence", "user_ids": [leaver.id, flapper.id, never.id], "ref": "sp"})
    for u in (leaver, flapper, never):
        now = await sw.expect("presence", user_id=u.id)
        assert now["status"] == "offline"
        assert set(now) == {"type", "user_id", "status", "last_seen"}

    async def presence_of(u: User) -> Frame:
        r = await watcher.get(f"/users/{u.id}/presence")
        assert r.status_code == 200, r.text
        body: Frame = r.json()
        return body

    assert (await presence_of(never))["status"] == "offline"
    assert (await presence_of(never))["user_id"] == never.id

    # Two sockets each: online once, offline only after the grace that follows the last close.
    leaving = [await leaver.socket() for _ in range(2)]
    flapping = await flapper.socket()
    for u in (leaver, flapper):
        await sw.expect("presence", user_id=u.id, status="online")
        assert (await presence_of(u))["status"] == "online"
    await leaving[0].close()
    await asyncio.sleep(0.3)
    await leaving[1].close()
    closed_at = time.monotonic()
    assert (await presence_of(leaver))["status"] == "online"  # within the grace
    await flapping.close()
    await asyncio.sleep(1.0)
    flapping = await flapper.socket()  # back within the grace

    offline = await sw.expect("presence", user_id=leaver.id, status="offline", timeout=PRESENCE_GRACE + 5)
    waited = time.monotonic() - closed_at
    assert PRESENCE_GRACE - 1 <= waited <= PRESENCE_GRACE + 3.5, waited
    assert offline["last_seen"] is not None
    gone = await presence_of(leaver)
    assert gone["status"] == "offline" and gone["last_seen"] is not None
    await asyncio.sleep(1.5)  # past the flapper's grace too
    await sw.ping()
    assert [f["status"] for f in sw.matching("presence", user_id=flapper.id)] == ["offline", "online"]
    assert [f["status"] for f in sw.matching("presence", user_id=leaver.id)] == ["offline", "online", "offline"]
    assert (await presence_of(flapper))["status"] == "online"
    r = await watcher.get("/users/999999999999/presence")
    assert r.status_code == 404
    for sock in (sw, flapping):
        await sock.close()


# -- notifications --------------------------------------------------------------------------------


async def test_live_notifications(server: Server) -> None:
    a, joined, connected, away = await signups(server, "a", "joined", "connected", "away")
    s_connected = await connected.socket()
    r = await a.post(f"/users/follow/{connected.id}")
    assert r.status_code == 200, r.text
    pushed = await s_connected.expect("notification")
    n = pushed["notification"]
    assert n["type"] == "follow" and n["actor"]["id"] == a.id and n["read"] is False

    room = await a.room(joined, connected, away, name="notify")
    sa = await a.socket()
    s_joined = await joined.socket()
    for sock in (sa, s_joined):
        await sock.join(room)
    await sa.say(room, "are you there?")

    # `connected` has a socket, but not in the room: a live `message` notification.
    pushed = await s_connected.expect("notification")
    assert pushed["notification"]["type"] == "message"
    assert pushed["notification"]["room_id"] == room
    assert pushed["notification"]["actor"]["id"] == a.id

    async def message_notes(u: User) -> list[Frame]:
        r = await u.get("/notify/notifications")
        assert r.status_code == 200, r.text
        return [x for x in r.json()["items"] if x["type"] == "message"]

    notes = await message_notes(away)
    assert [(x["room_id"], x["actor"]["id"]) for x in notes] == [(room, a.id)]
    assert await message_notes(joined) == []
    assert await message_notes(a) == []  # nobody is notified of their own message
    await s_joined.ping()
    assert s_joined.matching("notification") == []
    for sock in (sa, s_joined, s_connected):
        await sock.close()


# -- protocol robustness ----------------------------------------------------------------------------


async def test_ping_and_malformed_frames(server: Server, http: httpx.AsyncClient) -> None:
    (a,) = await signups(server, "a")
    sock = await a.socket()
    await sock.send({"type": "ping", "ref": "hello"})
    assert await sock.expect("pong") == {"type": "pong", "ref": "hello"}
    await sock.send({"type": "ping"})
    assert await sock.expect("pong") == {"type": "pong"}

    with_ref: list[Frame] = [
        {"type": "no_such_frame", "ref": "m1"},
        {"ref": "m2"},
        {"type": "send_message", "ref": "m3"},
        {"type": "send_message", "room_id": "1", "body": 5, "client_msg_id": "c", "ref": "m4"},
        {"type": "join_room", "room_id": 123, "ref": "m5"},
        {"type": "join_room", "room_id": "abc", "ref": "m6"},
        {"type": "join_room", "room_id": "1", "since_seq": -1, "ref": "m7"},
        {"type": "typing", "room_id": "1", "state": "yes", "ref": "m8"},
        {"type": "read", "room_id": "1", "ref": "m9"},
        {"type": "subscribe_presence", "user_ids": "1", "ref": "m10"},
        {"type": 7, "ref": "m11"},
        {"type": "authenticate", "token": a.token, "ref": "m12"},  # only valid as the first frame
    ]
    for frame in with_ref:
        await sock.send(frame)
        err = await sock.expect("error", ref=frame["ref"])
        assert err["code"] == "bad_request", (frame, err)
        assert isinstance(err["message"], str) and err["message"]
    without_ref: list[str | bytes] = [
        "not json",
        "{",
        "[1, 2]",
        '["ping"]',
        "null",
        "42",
        '"ping"',
        '{"type": "ping", "ref": 5}',
        b'{"type": "bin\xff"}',
        "",
    ]
    for raw in without_ref:
        before = len(sock.matching("error"))
        await sock.send(raw)
        await sock.wait_count("error", before + 1)
        err = sock.matching("error")[-1]
        assert err["code"] == "bad_request", (raw, err)
        assert "ref" not in err, (raw, err)
    await sock.ping()

    # A flood of malformed frames: each answered, the server healthy, the socket usable.
    flood = 500
    errors = len(sock.matching("error"))
    for i in range(flood):
        await sock.send("{nope" if i % 2 else json.dumps({"type": "bogus", "ref": f"f{i}"}))
    await sock.wait_until(lambda: len(sock.matching("error")) >= errors + flood, timeout=10)
    assert all(f["code"] == "bad_request" for f in sock.matching("error"))
    r = await http.get("/healthz")
    assert r.status_code == 200
    await sock.ping()
    assert sock.close_code is None
    await sock.close()


async def test_frame_over_64_kib_closes_1009(server: Server) -> None:
    (a,) = await signups(server, "a")
    sock = await a.socket()
    # Exactly 64 KiB is not over the limit: an ordinary bad frame.
    at_limit = json.dumps({"type": "ping", "ref": "big", "pad": ""})
    at_limit = at_limit[:-2] + "x" * (64 * 1024 - len(at_limit)) + '"}'
    assert len(at_limit.encode()) == 64 * 1024
    await sock.send(at_limit)
    await sock.expect("pong", ref="big")  # unknown fields are ignored
    await sock.send("x" * (64 * 1024 + 1))
    assert await sock.wait_closed() == 1009
    # Also before authenticating.
    raw = await WsClient.connect(server)
    await raw.send(json.dumps({"type": "authenticate", "token": "t" * (70 * 1024)}))
    assert await raw.wait_closed() == 1009


async def test_slow_reader_is_disconnected(server: Server, http: httpx.AsyncClient) -> None:
    a, b = await signups(server, "a", "b")
    room = await a.room(b)
    assert server.proc is not None
    proc = psutil.Process(server.proc.pid)
    rss_before = proc.memory_info().rss

    # A reader with a small receive buffer that stops reading once it has joined.
    raw_sock = socket.socket()
    raw_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    raw_sock.connect(("127.0.0.1", server.port))
    # No compression: 4000 equal characters would deflate to almost nothing.
    slow = await connect_ws(server, sock=raw_sock, max_queue=2, ping_interval=None, compression=None)
    await slow.send(json.dumps({"type": "authenticate", "token": b.token}))
    assert json.loads(await slow.recv())["type"] == "authenticated"
    await slow.send(json.dumps({"type": "join_room", "room_id": room}))
    assert json.loads(await slow.recv())["type"] == "joined"
    watcher = await b.socket()  # another socket of the same user, reading
    await watcher.join(room)

    # Big frames: 4000 four-byte characters make ~16 KB per new_message, so the server
    # would hold ~40 MB for this one client if it buffered them all.
    sender = await a.socket()
    body = "\U0001f600" * 4000
    total = 3000
    rss_peak = rss_before
    for start in range(0, total, 100):
        for i in range(start, start + 100):
            await sender.send({"type": "send_message", "room_id": room, "body": body, "client_msg_id": f"big{i}"})
        await sender.wait_frames(start + 101, timeout=20)
        await watcher.wait_frames(start + 102, timeout=20)
        # Keep only what the checks need: the test must not be the one that bloats.
        sender.frames = [{"type": "ack"}] * len(sender.frames)
        watcher.frames = [{"type": "new_message", "message": {"room_id": room, "seq": 0}}] * len(watcher.frames)
        rss_peak = max(rss_peak, proc.memory_info().rss)

    # Now read what the server sent before it gave up on this client.
    received = 0
    try:
        async with asyncio.timeout(20):
            async for _ in slow:
                received += 1
    except ConnectionClosed:
        pass
    assert slow.close_code == 1008, (slow.close_code, received)
    assert received < total
    # Buffered without bound, the ~48 MB sent would all be held for it.
    assert rss_peak - rss_before < total * 16_000 // 2, (rss_before, rss_peak)
    r = await http.get("/healthz")
    assert r.status_code == 200
    for sock in (sender, watcher):
        await sock.close()


# -- sessions ends --------------------------------------------------------------------------------


async def test_logout_closes_that_session_only(server: Server) -> None:
    (a,) = await signups(server, "a")
    other_token = await a.login()
    first = await a.socket()
    also_first = await a.socket()
    other = await a.socket(token=other_token)
    assert other.frames[0]["session_id"] != first.frames[0]["session_id"]

    r = await a.post("/auth/logout")
    assert r.status_code == 204, r.text
    assert await first.wait_closed() == 4401
    assert await also_first.wait_closed() == 4401
    await other.ping()
    # The ended session's token opens no new socket.
    late = await WsClient.connect(server)
    await late.send({"type": "authenticate", "token": a.token})
    assert await late.wait_closed() == 4401
    assert late.frames[0]["code"] == "unauthenticated"
    await other.close()


async def test_frame_rate_limit(database_url: str, tmp_path: Path) -> None:
    limited = Server(tmp_path / "data", env=single_env(database_url, SOCIALHUB_RATELIMIT_SIGNUP="off")).start()
    try:
        a, b = await signups(limited, "a", "b")
        room = await a.room(b)
        sock = await a.socket()
        # 100 frames at once: the burst of 60 passes, the rest (30/s) mostly not. A
        # send_message well past the burst is dropped: nothing is stored.
        n, dropped = 100, 80
        for i in range(n):
            if i == dropped:
                frame = {"type": "send_message", "room_id": room, "body": "x", "client_msg_id": "d", "ref": f"r{i}"}
            else:
                frame = {"type": "ping", "ref": f"r{i}"}
            await sock.send(frame)
        await sock.wait_frames(1 + n)
        answered = sock.frames[1:]
        assert len(answered) == n  # exactly one reply each
        assert {f["ref"] for f in answered} == {f"r{i}" for i in range(n)}
        pongs = [f for f in answered if f["type"] == "pong"]
        refused = [f for f in answered if f["type"] == "error"]
        assert len(pongs) + len(refused) == n
        # The burst, and the few that the 30/s rate lets through while the rest arrive.
        assert 60 <= len(pongs) <= 70, len(pongs)
        assert all(f["code"] == "rate_limited" for f in refused)
        assert [f["ref"] for f in answered[:60]] == [f"r{i}" for i in range(60)]
        assert {"type": "error", "code": "rate_limited", "ref": f"r{dropped}"}.items() <= next(
            f for f in answered if f["ref"] == f"r{dropped}"
        ).items()
        await asyncio.sleep(1.0)  # ~30 frames' worth of budget back
        await sock.ping()
        assert sock.close_code is None
        r = await a.get(f"/chat/{room}/history")
        assert r.json()["items"] == []
        await sock.close()
    finally:
        limited.kill()


async def test_shutdown_closes_sockets_with_1012(database_url: str, tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", env=single_env(database_url, SOCIALHUB_RATELIMIT_ENABLED="false")).start()
    try:
        a, b = await signups(srv, "a", "b")
        room = await a.room(b)
        socks = [await a.socket(), await b.socket()]
        await socks[1].join(room)
        code = await asyncio.to_thread(srv.stop)
        assert code == 0
        for sock in socks:
            assert await sock.wait_closed() == 1012
    finally:
        srv.kill()
