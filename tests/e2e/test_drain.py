"""The graceful drain of a stopping instance (`server.drain_seconds`), against a real
`socialhub serve` and real sockets: on SIGTERM /readyz turns 503 at once while ordinary
requests and open sockets go on being served for the drain period; then the sockets are
closed with 1012 one after another over a window as long again (not in one burst), and
the process exits 0. SIGINT still stops at once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from tests.e2e.server import Server, server_env
from tests.e2e.wsclient import WsClient, signups

DRAIN = 3.0  # seconds; the close window is as long again
SOCKETS = 24


def drain_env(database_url: str, seconds: float) -> dict[str, str]:
    return server_env(
        database_url,
        SOCIALHUB_REDIS_URL="",
        SOCIALHUB_RATELIMIT_ENABLED="false",
        SOCIALHUB_SERVER_DRAIN_SECONDS=str(seconds),
    )


async def closed_at(sock: WsClient) -> tuple[float, int | None]:
    """When (monotonic) the server closed this socket, and with which code."""
    await asyncio.wait({sock.reader}, timeout=4 * DRAIN + 10)
    return time.monotonic(), sock.close_code


async def test_sigterm_drains_then_spreads_the_closes(database_url: str, tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", env=drain_env(database_url, DRAIN)).start()
    socks: list[WsClient] = []
    try:
        users = await signups(srv, *(f"d{i}" for i in range(SOCKETS // 2)))
        socks = [await u.socket() for u in users for _ in range(2)]
        watchers = [asyncio.create_task(closed_at(s)) for s in socks]
        async with httpx.AsyncClient(base_url=srv.url, timeout=5) as http:
            assert (await http.get("/readyz")).status_code == 200
            assert srv.proc is not None
            sent = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)

            # Not ready at once (within a few polls), with the reason named.
            while True:
                r = await http.get("/readyz")
                if r.status_code == 503:
                    break
                assert time.monotonic() - sent < 1.0, "readyz still 200 a second after SIGTERM"
                await asyncio.sleep(0.05)
            assert r.json()["checks"]["serving"] is False
            assert r.json()["checks"]["database"] is True

            # Still serving through the drain: REST as a signed-in user, and the sockets.
            me = await http.get("/auth/me", headers=users[0].auth)
            assert me.status_code == 200 and me.json()["id"] == users[0].id, me.text
            await socks[0].ping()
            await asyncio.sleep(DRAIN * 0.6)
            assert (await http.get("/users/me", headers=users[1].auth)).status_code == 200
            assert all(s.close_code is None for s in socks), "a socket closed during the drain period"
            await socks[-1].ping()

        results = await asyncio.gather(*watchers)
        assert {code for _, code in results} == {1012}, results
        times = sorted(t - sent for t, _ in results)
        # The closes begin after the drain period and are spread over the window: no more
        # than a few sockets within any tenth of it (all at once would be one burst).
        assert times[0] >= DRAIN * 0.9, times
        assert times[-1] - times[0] >= DRAIN * 0.6, times
        tenth = DRAIN / 10
        busiest = max(sum(1 for t in times if start <= t < start + tenth) for start in times)
        assert busiest <= SOCKETS // 4, (busiest, times)
        assert await asyncio.to_thread(srv.proc.wait, 30) == 0
        assert time.monotonic() - sent < 2 * DRAIN + 15
    finally:
        await asyncio.gather(*(s.close() for s in socks), return_exceptions=True)
        srv.kill()


async def test_new_sockets_are_turned_away_while_closing(database_url: str, tmp_path: Path) -> None:
    """Once the closes have begun, a new socket (a client reconnecting to the same
    instance) is closed with 1012 at once rather than accepted and closed again later."""
    srv = Server(tmp_path / "data", env=drain_env(database_url, 1.0)).start()
    try:
        users = await signups(srv, "a", "b")
        held = [await u.socket() for u in users]
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.3)  # past the drain period, inside the close window
        late = await WsClient.connect(srv)
        assert await late.wait_closed(5) == 1012
        for sock in held:
            assert await sock.wait_closed(10) == 1012
        assert await asyncio.to_thread(srv.proc.wait, 30) == 0
    finally:
        srv.kill()


async def test_sigint_stops_at_once(database_url: str, tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", env=drain_env(database_url, 30.0)).start()
    try:
        (a,) = await signups(srv, "a")
        sock = await a.socket()
        assert srv.proc is not None
        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        assert await sock.wait_closed(10) == 1012
        assert await asyncio.to_thread(srv.proc.wait, 30) == 0
        assert time.monotonic() - sent < 15  # not the 30 s drain
    finally:
        srv.kill()
