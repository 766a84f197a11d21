"""PostgreSQL goes away under traffic and comes back: a real `socialhub serve` on a
private cluster the test stops cleanly (`pg_ctl stop -m fast`) and then crashes
(`-m immediate`), while a client writes steadily over REST and over a WebSocket.

During each outage every request is answered 503 `unavailable` with Retry-After, in
time (no 500, no hang); /readyz says 503; `send_message` gets `error unavailable` and
the socket stays open, and a new socket is told to reconnect (1012), not to sign in
again. After it, the pool heals by itself: no request fails on a stale
connection, the background workers go on (a post written after the outage reaches a
follower's feed, a like a notification), and every write that was acknowledged is in
the database. The server's log carries no traceback for the outage.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.e2e.server import Server, server_env
from tests.e2e.wsclient import User, WsClient, signup
from tests.private_postgres import PrivatePostgres

# Each outage lasts this long: several writes of each kind meet it.
OUTAGE = 3.0
# A request during an outage is answered within database.connect_timeout (5 s by
# default); the rest is slack for a loaded machine.
ANSWER_WITHIN = 10.0
# Writes go on this long after PostgreSQL is back, every one of them answered 2xx.
AFTER = 3.0
# The outbox readers retry with backoff capped at 10 s (infra/events/outbox.py); the rest is slack.
WORKERS_BACK_WITHIN = 30.0


@dataclass
class Log:
    """What the writers saw, in order: (monotonic time, what, outcome)."""

    entries: list[tuple[float, str, str]] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)  # ids of the posts answered 201
    messages: list[str] = field(default_factory=list)  # client_msg_ids acked
    # client_msg_ids answered `unavailable`: a commit cut off by the outage may or may not
    # have happened (a client retries them with the same id and gets the one message).
    unsure: list[str] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def outcomes(self, since: float, until: float = float("inf")) -> list[str]:
        return [o for t, _, o in self.entries if since <= t <= until]


async def write_posts(user: User, log: Log, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=user.server.url, timeout=ANSWER_WITHIN * 2, headers=user.auth) as c:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.monotonic()
            try:
                r = await c.post("/posts/", json={"content": f"post {i}"})
            except httpx.HTTPError as exc:
                log.problems.append(f"POST /posts/ {i}: {exc!r}")
                continue
            took = time.monotonic() - started
            if took > ANSWER_WITHIN:
                log.problems.append(f"POST /posts/ {i} answered in {took:.1f}s")
            if r.status_code == 201:
                log.posts.append(r.json()["id"])
                log.entries.append((started, "post", "ok"))
            elif r.status_code == 503 and r.json()["error"]["code"] == "unavailable" and r.headers.get("retry-after"):
                log.entries.append((started, "post", "unavailable"))
            else:
                log.problems.append(f"POST /posts/ {i}: {r.status_code} {r.headers} {r.text}")
            await asyncio.sleep(0.05)


async def write_messages(sock: WsClient, room: str, log: Log, stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        cid = secrets.token_hex(8)
        started = time.monotonic()
        frame = {"type": "send_message", "room_id": room, "body": f"message {i}", "client_msg_id": cid}
        try:
            answer = await sock.request(frame, timeout=ANSWER_WITHIN)
        except AssertionError as exc:
            log.problems.append(f"send_message {i}: {exc}")
            return
        if answer["type"] == "ack":
            assert answer["message"]["client_msg_id"] == cid
            log.messages.append(cid)
            log.entries.append((started, "message", "ok"))
        elif answer.get("code") == "unavailable":
            log.unsure.append(cid)
            log.entries.append((started, "message", "unavailable"))
        else:
            log.problems.append(f"send_message {i}: {answer}")
        await asyncio.sleep(0.05)


async def watch_readiness(server: Server, log: Log, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=ANSWER_WITHIN * 2) as c:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = (await c.get("/readyz")).status_code
            except httpx.HTTPError as exc:
                log.problems.append(f"/readyz: {exc!r}")
                status = 0
            log.ready.append((started, status))
            await asyncio.sleep(0.2)


async def eventually(what: str, check: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < end, what
        await asyncio.sleep(0.2)


def tracebacks(log_file: Path) -> list[str]:
    found = []
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                found.append(line)
            continue
        if isinstance(entry, dict) and "exc" in entry:
            found.append(f"{entry.get('logger')}: {entry.get('msg')}\n{entry['exc']}")
    return found


async def test_postgres_restart_and_crash_under_traffic_lose_no_acknowledged_write(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    pg = private_postgres
    env = server_env(pg.url, SOCIALHUB_RATELIMIT_ENABLED="false")
    server = Server(tmp_path / "s", env)
    await asyncio.to_thread(server.start)
    sock: WsClient | None = None
    try:
        alice, bob = await signup(server, "alice"), await signup(server, "bob")
        r = await bob.post(f"/users/follow/{alice.id}")
        assert r.status_code == 200, r.text
        room = await alice.room(bob)
        sock = await alice.socket(server, label="alice", timeout=ANSWER_WITHIN)
        await sock.join(room, since_seq=0)

        log = Log()
        stop = asyncio.Event()
        writers = [
            asyncio.create_task(write_posts(alice, log, stop)),
            asyncio.create_task(write_messages(sock, room, log, stop)),
            asyncio.create_task(watch_readiness(server, log, stop)),
        ]
        outages: list[tuple[float, float]] = []
        # A session no socket or request has checked yet (none is cached).
        fresh_token = await bob.login()
        try:
            await asyncio.sleep(1.0)
            for mode in ("fast", "immediate"):
                went = time.monotonic()
                await asyncio.to_thread(pg.stop, mode)
                if mode == "fast":
                    # A socket whose session cannot be checked is not told to sign in
                    # again (4401): `error unavailable`, then 1012 (reconnect).
                    late = await WsClient.connect(server, label="bob, during", timeout=ANSWER_WITHIN)
                    await late.send({"type": "authenticate", "token": fresh_token})
                    assert (await late.expect("error"))["code"] == "unavailable"
                    assert await late.wait_closed(ANSWER_WITHIN) == 1012
                await asyncio.sleep(OUTAGE)
                await asyncio.to_thread(pg.start)
                back = time.monotonic()
                outages.append((went, back))
                await asyncio.sleep(AFTER)
        finally:
            stop.set()
            await asyncio.gather(*writers)

        assert not log.problems, "\n".join(log.problems)
        ends = [went for went, _ in outages[1:]] + [float("inf")]
        for (went, back), next_went in zip(outages, ends, strict=True):
            during = log.outcomes(went + 0.5, back - 0.5)
            assert during and set(during) == {"unavailable"}, f"during the outage: {during}"
            assert any(status == 503 for t, status in log.ready if went + 0.5 <= t <= back - 0.5), log.ready
            # After the first success nothing fails: no stale connection is handed out.
            after = log.outcomes(back, next_went)
            assert "ok" in after, f"nothing succeeded after the outage: {after}"
            assert "unavailable" not in after[after.index("ok") :], f"after the outage: {after}"
        assert log.ready[-1][1] == 200, log.ready[-5:]

        # The socket lived through both outages and still works.
        assert sock.close_code is None, sock.close_code
        # A client retries the sends answered `unavailable` with their client_msg_id: each
        # is then stored exactly once, whether or not its first try had committed.
        for cid in log.unsure:
            await sock.say(room, "retried", client_msg_id=cid)
        last = await sock.say(room, "after both")

        # Every acknowledged write is in the database, the messages with gap-free seqs.
        conn = await asyncpg.connect(pg.url)
        try:
            ids = [int(p) for p in log.posts]
            stored_posts = {str(r["id"]) for r in await conn.fetch("SELECT id FROM posts WHERE id = ANY($1)", ids)}
            rows = await conn.fetch(
                "SELECT seq, client_msg_id FROM messages WHERE room_id = $1 ORDER BY seq", int(room)
            )
        finally:
            await conn.close()
        assert set(log.posts) == stored_posts, f"acknowledged posts lost: {set(log.posts) - stored_posts}"
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        assert rows[-1]["client_msg_id"] == last["client_msg_id"] and rows[-1]["seq"] == last["seq"]
        stored_messages = {r["client_msg_id"] for r in rows}
        lost = set(log.messages) - stored_messages
        assert not lost, f"acknowledged messages lost: {lost}"
        # Each send stored once: the acked ones, the retried ones and the last.
        assert stored_messages == {*log.messages, *log.unsure, last["client_msg_id"]}
        assert len(rows) == len(stored_messages)

        # The background workers went on: a post written now reaches bob's feed (the
        # outbox reader's fan-out), a like a notification for alice.
        r = await alice.post("/posts/", json={"content": "after the outages"})
        assert r.status_code == 201, r.text
        post_id = r.json()["id"]

        async def in_feed() -> bool:
            r = await bob.get("/feed", params={"limit": 5})
            return r.status_code == 200 and post_id in [p["id"] for p in r.json()["items"]]

        await eventually("a post after the outage never reached the follower's feed", in_feed, WORKERS_BACK_WITHIN)
        r = await bob.post(f"/posts/like/{post_id}")
        assert r.status_code == 200, r.text

        async def notified() -> bool:
            r = await alice.get("/notify/unread-count")
            return r.status_code == 200 and r.json()["count"] >= 1

        await eventually("a like after the outage made no notification", notified, WORKERS_BACK_WITHIN)

        assert server.proc is not None and server.proc.poll() is None
        found = tracebacks(server.log)
        assert not found, "tracebacks in the server's log:\n" + "\n".join(found[:5])
    finally:
        if sock is not None:
            await sock.close()
        server.kill()
