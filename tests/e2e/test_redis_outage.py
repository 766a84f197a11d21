"""A long Redis outage under two real `socialhub serve` instances: no client believes
it is live when it is not.

A private redis-server is killed and stays down past the hub's grace (BROKER_GRACE):
the sockets of both instances are closed with 1012 within the grace and a little
slack (not at once: a blip is ridden out), new sockets are refused with 503
`unavailable` and Retry-After, /readyz says 503. When Redis is back, sockets are
accepted again and a client that resumes with `since_seq` gets what was sent while
its instance could not hear the other, exactly once, and live delivery works again.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from socialhub.api.ws.hub import BROKER_GRACE, BROKER_POLL
from tests.e2e.server import Server
from tests.e2e.test_ws_cluster import RECONNECT_WITHIN, WAIT, cluster_env, readiness, until
from tests.e2e.wsclient import WsClient, connect_ws, signup
from tests.private_redis import PrivateRedis

# The close comes BROKER_GRACE (+ one poll) after the instance saw Redis go; the pub/sub
# reader sees a killed server at once. The rest is slack for a loaded machine.
CLOSED_WITHIN = BROKER_GRACE + BROKER_POLL + 5.0


async def test_long_redis_outage_closes_sockets_refuses_new_ones_and_resumes_without_loss(
    database_url: str, private_redis: PrivateRedis, tmp_path: Path, sockets: list[WsClient]
) -> None:
    env = cluster_env(database_url, private_redis.url, f"shro:{secrets.token_hex(4)}:")
    servers = [Server(tmp_path / "a", env), Server(tmp_path / "b", env)]
    a, b = servers
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        alice, bob = await signup(a, "alice"), await signup(b, "bob")
        room = await alice.room(bob)
        on_a = await alice.socket(a, label="alice@A", timeout=WAIT)
        on_b = await bob.socket(b, label="bob@B", timeout=WAIT)
        sockets += [on_a, on_b]
        await on_a.join(room, since_seq=0)
        await on_b.join(room, since_seq=0)
        await on_a.say(room, "before")
        assert await on_b.wait_seqs(room, 1) == [1]

        await asyncio.to_thread(private_redis.kill)
        went = time.monotonic()

        async def both_not_ready() -> bool:
            return all(code == 503 for code in await asyncio.gather(readiness(a), readiness(b)))

        await until("/readyz kept saying ready with Redis down", both_not_ready, 10)
        # Within the grace the sockets stay open and the conversation goes on (stored in
        # PostgreSQL, acked), but bob's instance cannot hear alice's.
        during = [(await on_a.say(room, f"during {i}"))["seq"] for i in range(2)]
        assert during == [2, 3]
        assert on_a.close_code is None and on_b.close_code is None, "closed before the grace was over"

        # Past the grace, every socket of both instances is told.
        for sock in (on_a, on_b):
            code = await sock.wait_closed(max(0.0, went + CLOSED_WITHIN - time.monotonic()))
            assert code == 1012, f"{sock.label}: {'still open' if code is None else f'closed with {code}'}"
        assert time.monotonic() - went >= BROKER_GRACE - 1, "closed before the grace was over"
        # What bob saw is gap-free; he missed what was sent while B could not hear A.
        seen = on_b.seqs(room)
        assert seen == list(range(1, len(seen) + 1)), seen

        # While Redis stays down, new sockets are refused: 503 unavailable, Retry-After.
        for server in servers:
            with pytest.raises(InvalidStatus) as refused:
                await connect_ws(server)
            response = refused.value.response
            assert response.status_code == 503, response
            assert int(response.headers["Retry-After"]) >= 1
            assert json.loads(response.body)["error"]["code"] == "unavailable"
        assert await both_not_ready()

        await asyncio.to_thread(private_redis.start)

        async def both_ready() -> bool:
            return all(code == 200 for code in await asyncio.gather(readiness(a), readiness(b)))

        await until("/readyz did not recover after Redis came back", both_ready, RECONNECT_WITHIN)

        # Sockets are accepted again; bob resumes where he was and gets the rest exactly once.
        resumed_b = await bob.socket(b, label="bob@B again", timeout=WAIT)
        resumed_a = await alice.socket(a, label="alice@A again", timeout=WAIT)
        sockets += [resumed_a, resumed_b]
        assert (await resumed_b.join(room, since_seq=seen[-1]))["last_seq"] == 3
        await resumed_a.join(room, since_seq=3)
        assert seen + await resumed_b.wait_seqs(room, 3 - len(seen)) == [1, 2, 3]
        # Live across instances again; nothing of the outage comes twice.
        m = await resumed_a.say(room, "after")
        got = await resumed_b.expect("new_message", where=lambda f: f["message"]["seq"] == 4)
        assert got["message"] == m
        await resumed_b.ping()
        assert seen + resumed_b.seqs(room) == [1, 2, 3, 4]
        assert resumed_a.close_code is None and resumed_b.close_code is None
        for server in servers:
            assert server.proc is not None and server.proc.poll() is None
    finally:
        for server in servers:
            server.kill()
