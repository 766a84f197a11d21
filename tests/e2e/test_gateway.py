"""The shipped Nginx gateway (deploy/nginx/socialhub.conf, run by Debian's nginx) in front
of two real `socialhub serve` instances sharing one PostgreSQL database and one Redis.

REST goes through the gateway (media included: uploaded through one instance, served by
either), per-IP limits see the client's address (X-Forwarded-For from the gateway is
believed, a client's own is not), sockets through the gateway land on both instances,
and a rolling restart (SIGTERM one instance, start it again, then the other) under a
steady chat load loses and doubles nothing: every client is moved by a 1012 close,
reconnects through the gateway, resumes with `since_seq`, and resends what was not
acknowledged with the same `client_msg_id`.

Media are in one S3 bucket both instances share (the tests' S3-protocol server), as in
deploy/compose.yaml: a file uploaded through one instance is served by the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests import media_samples
from tests.conftest import REDIS_URL, fresh_database
from tests.e2e.gateway import Gateway
from tests.e2e.server import Server, server_env
from tests.s3_server import S3Server, drop_bucket, new_bucket

# Each instance drains for this long on SIGTERM, then closes its sockets over as long again.
DRAIN = 1.5
ROOMS = 3
SEND_EVERY = 0.1  # seconds between two messages of one member (10/s; 60/s in all)
WAIT = 30.0


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[str]:
    async with fresh_database("socialhub_gateway") as url:
        yield url


@pytest.fixture(scope="module")
async def bucket(s3_server: S3Server) -> AsyncIterator[str]:
    name = await new_bucket(s3_server)
    yield name
    await drop_bucket(s3_server, name)


@pytest.fixture(scope="module")
def env(database: str, s3_server: S3Server, bucket: str) -> dict[str, str]:
    return server_env(
        database,
        **s3_server.env(bucket),
        SOCIALHUB_REDIS_URL=REDIS_URL,
        SOCIALHUB_REDIS_KEY_PREFIX=f"shgw:{secrets.token_hex(4)}:",
        SOCIALHUB_SERVER_DRAIN_SECONDS=str(DRAIN),
        # Limits stay on (they are what the forwarded address is for); sign-ups are many
        # and all come from this machine.
        SOCIALHUB_RATELIMIT_SIGNUP="off",
        SOCIALHUB_RATELIMIT_LOGIN="5/60s",
    )


class Cluster:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        # Where both instances keep their logs; media are in the shared bucket.
        self.data = root / "shared"
        self.env = env
        self.servers = [Server(self.data, env), Server(self.data, env)]
        self.gateway = Gateway(root / "nginx", [f"127.0.0.1:{s.port}" for s in self.servers])

    def start(self) -> Cluster:
        for server in self.servers:
            server.start()
        self.gateway.start()
        return self

    def restart(self, i: int) -> float:
        """SIGTERM instance `i` (it drains), wait for it to exit 0, start it again on its
        port; the seconds it took to exit."""
        old = self.servers[i]
        assert old.proc is not None
        sent = time.monotonic()
        old.proc.send_signal(signal.SIGTERM)
        assert old.proc.wait(60) == 0, old.log.read_text()[-3000:]
        took = time.monotonic() - sent
        self.servers[i] = Server(self.data, self.env, port=old.port).start()
        return took

    def stop(self) -> None:
        self.gateway.stop()
        for server in self.servers:
            server.kill()


@pytest.fixture(scope="module")
def cluster(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("gateway"), env)
    try:
        yield c.start()
    finally:
        c.stop()


async def signup(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    username = f"{name}_{secrets.token_hex(4)}"
    body = {"name": name, "email": f"{username}@example.test", "username": username, "password": "pass word 1"}
    r = await http.post("/auth/signup", json=body)
    assert r.status_code == 201, r.text
    user: dict[str, Any] = r.json()
    return user


def bearer(user: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['token']}"}


async def sockets_on(server: Server) -> int:
    """The instance's own count of open, authenticated sockets (its /metrics)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as c:
        text = (await c.get("/metrics")).text
    m = re.search(r"^socialhub_ws_sockets (\S+)$", text, re.M)
    assert m is not None, text[:500]
    return int(float(m.group(1)))


# -- REST ---------------------------------------------------------------------------------------


async def test_rest_and_media_through_the_gateway(cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster.gateway.url, timeout=15) as http:
        alice, bob = await signup(http, "alice"), await signup(http, "bob")
        me = await http.get("/auth/me", headers=bearer(alice))
        assert me.status_code == 200 and me.json()["id"] == alice["user"]["id"], me.text
        r = await http.post(f"/users/follow/{alice['user']['id']}", headers=bearer(bob))
        assert r.status_code == 200, r.text

        picture = media_samples.png(320, 200)
        r = await http.post(
            "/posts/",
            headers=bearer(alice),
            data={"content": "through the gateway"},
            files=[("media", ("a.png", picture, "image/png"))],
        )
        assert r.status_code == 201, r.text
        post = r.json()
        url = post["media"][0]["url"]
        # Round robin: successive reads are served by both instances, from the one store.
        served_by: set[str] = set()
        for _ in range(4):
            got = await http.get(url)
            assert got.status_code == 200 and got.content == picture, got.status_code
            etag = got.headers["etag"]
            ranged = await http.get(url, headers={"Range": "bytes=0-9"})
            assert ranged.status_code == 206 and ranged.content == picture[:10]
            assert (await http.get(url, headers={"If-None-Match": etag})).status_code == 304
        for server in cluster.servers:
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as direct:
                got = await direct.get(url)
                assert got.status_code == 200 and got.content == picture
                served_by.add(server.url)
        assert len(served_by) == 2

        # The post reaches bob's feed (the consumers run on the instances behind).
        end = time.monotonic() + WAIT
        while True:
            feed = await http.get("/feed", headers=bearer(bob))
            assert feed.status_code == 200, feed.text
            if [p["id"] for p in feed.json()["items"]] == [post["id"]]:
                break
            assert time.monotonic() < end, feed.json()
            await asyncio.sleep(0.2)

        # The original system's routes and the API's error format, through nginx.
        assert (await http.get(f"/posts/{post['id']}", headers=bearer(bob))).json()["id"] == post["id"]
        assert (await http.get("/notify/unread-count", headers=bearer(alice))).status_code == 200
        assert (await http.get("/api/v1/auth/verify-user", headers=bearer(bob))).json()["user_id"] == bob["user"]["id"]
        missing = await http.get("/no/such/route")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert (await http.get("/auth/me")).json()["error"]["code"] == "unauthenticated"
        assert (await http.get("/openapi.json")).json()["openapi"].startswith("3.1")
        # /metrics is for Prometheus on each instance, not for the public.
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.get("/readyz")).status_code == 200


async def test_per_ip_limits_see_the_client_behind_the_gateway(cluster: Cluster) -> None:
    """login is limited to 5 a minute per IP (this module's setting). Clients from two
    loopback addresses: the one that spends its 5 is limited, the other is not, and
    naming the first one in its own X-Forwarded-For does not make it so."""

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=address)
        return httpx.AsyncClient(base_url=cluster.gateway.url, transport=transport, timeout=10)

    def attempt() -> dict[str, str]:
        return {"identifier": f"nobody_{secrets.token_hex(4)}", "password": "wrong password"}

    async with client("127.0.0.2") as first, client("127.0.0.3") as second:
        codes = [(await first.post("/auth/login", json=attempt())).status_code for _ in range(6)]
        assert codes == [401] * 5 + [429], codes
        spoofed = await second.post("/auth/login", json=attempt(), headers={"X-Forwarded-For": "127.0.0.2"})
        assert spoofed.status_code == 401, spoofed.text
        assert (await first.post("/auth/login", json=attempt())).status_code == 429


# -- sockets ------------------------------------------------------------------------------------


class Member:
    """One user's socket through the gateway that never gives up: when the server closes
    it (1012 in a restart), it reconnects through the gateway, authenticates, rejoins its
    room with the last seq it saw, and sends again what was not acknowledged, with the
    same client_msg_id. Records every message it receives and every ack."""

    def __init__(self, gateway: Gateway, user: dict[str, Any], room: str) -> None:
        self.gateway = gateway
        self.user = user
        self.name = user["user"]["username"]
        self.room = room
        self.seqs: list[int] = []
        self.unacked: dict[str, str] = {}  # client_msg_id -> body, sent or to send
        self.acked: dict[str, int] = {}  # client_msg_id -> seq
        self.close_codes: list[int | None] = []
        self.errors: list[dict[str, Any]] = []
        self.connects = 0
        self.ws: ClientConnection | None = None
        self.joined = asyncio.Event()

    async def _send(self, cid: str) -> None:
        ws = self.ws
        if ws is None:
            return  # sent again once it reconnects
        frame = {"type": "send_message", "room_id": self.room, "body": self.unacked[cid], "client_msg_id": cid}
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({**frame, "ref": cid}))

    async def say(self, body: str) -> None:
        cid = f"{self.name}-{len(self.unacked) + len(self.acked)}"
        self.unacked[cid] = body
        await self._send(cid)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with connect(self.gateway.ws_url, open_timeout=10, close_timeout=2, max_queue=None) as ws:
                    await self._session(ws)
            except (ConnectionClosed, InvalidStatus, OSError, TimeoutError):
                pass
            self.ws = None
            self.joined.clear()
            if not stop.is_set():
                await asyncio.sleep(random.uniform(0.1, 0.4))  # back-off with jitter

    async def _session(self, ws: ClientConnection) -> None:
        await ws.send(json.dumps({"type": "authenticate", "token": self.user["token"]}))
        since = self.seqs[-1] if self.seqs else 0
        await ws.send(json.dumps({"type": "join_room", "room_id": self.room, "since_seq": since, "ref": "join"}))
        try:
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "authenticated":
                    self.connects += 1
                elif kind == "joined":
                    self.ws = ws
                    self.joined.set()
                    for cid in list(self.unacked):
                        await self._send(cid)
                elif kind == "new_message" and frame["message"]["room_id"] == self.room:
                    self.seqs.append(frame["message"]["seq"])
                elif kind == "ack" and frame.get("ref") in self.unacked:
                    cid = frame["ref"]
                    assert frame["message"]["client_msg_id"] == cid, frame
                    self.acked[cid] = frame["message"]["seq"]
                    del self.unacked[cid]
                elif kind == "error":
                    self.errors.append(frame)
        finally:
            self.close_codes.append(ws.close_code)


async def test_sockets_land_on_both_instances(cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster.gateway.url, timeout=15) as http:
        users = [await signup(http, f"s{i}") for i in range(2)]
        r = await http.post("/chat/rooms", headers=bearer(users[0]), json={"members": [users[1]["user"]["id"]]})
        assert r.status_code in (200, 201), r.text
    room = r.json()["id"]
    members = [Member(cluster.gateway, users[i % 2], room) for i in range(6)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(m.run(stop)) for m in members]
    try:
        await asyncio.wait_for(asyncio.gather(*(m.joined.wait() for m in members)), WAIT)
        counts = [await sockets_on(s) for s in cluster.servers]
        assert sum(counts) == 6 and min(counts) >= 1, counts
        # A message sent on one instance reaches the sockets on the other, through Redis.
        await members[0].say("hello both")
        end = time.monotonic() + WAIT
        while not all(m.seqs == [1] for m in members):
            assert time.monotonic() < end, [m.seqs for m in members]
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        for m in members:
            if m.ws is not None:
                await m.ws.close()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.timeout(300)
async def test_rolling_restart_under_chat_load_loses_and_doubles_nothing(cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster.gateway.url, timeout=15) as http:
        pairs = [(await signup(http, f"a{i}"), await signup(http, f"b{i}")) for i in range(ROOMS)]
        rooms = []
        for a, b in pairs:
            r = await http.post("/chat/rooms", headers=bearer(a), json={"members": [b["user"]["id"]]})
            assert r.status_code in (200, 201), r.text
            rooms.append(r.json()["id"])
    members = [Member(cluster.gateway, u, room) for pair, room in zip(pairs, rooms, strict=True) for u in pair]
    stop, quiet = asyncio.Event(), asyncio.Event()
    readers = [asyncio.create_task(m.run(stop)) for m in members]

    async def chatter(member: Member) -> int:
        sent = 0
        while not quiet.is_set():
            await member.say(f"{member.name} #{sent}")
            sent += 1
            await asyncio.sleep(SEND_EVERY)
        return sent

    try:
        await asyncio.wait_for(asyncio.gather(*(m.joined.wait() for m in members)), WAIT)
        assert min([await sockets_on(s) for s in cluster.servers]) >= 1
        talking = [asyncio.create_task(chatter(m)) for m in members]
        await asyncio.sleep(2)
        took = []
        for i in range(2):
            took.append(await asyncio.to_thread(cluster.restart, i))
            await asyncio.sleep(2)  # load on the restarted pair before the next one goes
        quiet.set()
        sent = await asyncio.gather(*talking)

        # Everything sent is acknowledged in the end (resent after a reconnect if need be),
        # and every member has every message of its room.
        end = time.monotonic() + WAIT
        while any(m.unacked for m in members):
            assert time.monotonic() < end, {m.name: len(m.unacked) for m in members}
            await asyncio.sleep(0.1)
        totals = {room: sum(sent[i] for i, m in enumerate(members) if m.room == room) for room in rooms}
        while any(len(m.seqs) < totals[m.room] for m in members):
            assert time.monotonic() < end, {m.name: (len(m.seqs), totals[m.room]) for m in members}
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a duplicate would arrive late

        for m in members:
            assert m.errors == [], (m.name, m.errors[:5])
            # No loss, no duplicate, in order, across the reconnects.
            assert m.seqs == list(range(1, totals[m.room] + 1)), (m.name, m.seqs)
        for room in rooms:
            acks = sorted(seq for m in members if m.room == room for seq in m.acked.values())
            assert acks == list(range(1, totals[room] + 1)), room  # each message stored once

        # The history through the gateway holds each client_msg_id once.
        async with httpx.AsyncClient(base_url=cluster.gateway.url, timeout=15) as http:
            for (a, _), room in zip(pairs, rooms, strict=True):
                ids: list[str] = []
                before = None
                while True:
                    params: dict[str, Any] = {"limit": 100, **({"before": before} if before else {})}
                    r = await http.get(f"/chat/{room}/history", headers=bearer(a), params=params)
                    assert r.status_code == 200, (r.status_code, r.text)
                    page = r.json()
                    ids += [msg["client_msg_id"] for msg in page["items"]]
                    before = page["next"]
                    if before is None:
                        break
                assert len(ids) == len(set(ids)) == totals[room]

        # Every client was moved by a restart with 1012 and came back through the gateway.
        for m in members:
            assert 1012 in m.close_codes, (m.name, m.close_codes)
            assert m.connects >= 2, (m.name, m.connects)
        # Each instance drained (DRAIN, then its n sockets closed at i/n of the next DRAIN,
        # n >= 2 here) and exited by itself.
        assert all(1.5 * DRAIN <= t < 2 * DRAIN + 20 for t in took), took
        assert sum(sent) >= 6 * 40, sent
    finally:
        quiet.set()
        stop.set()
        for m in members:
            if m.ws is not None:
                await m.ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
