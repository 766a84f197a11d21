"""Hostile input against a real `socialhub serve`: the request head's 32 KiB bound
(raw sockets, as a fuzzer or an attacker sends), and over /ws the rules for U+0000,
too-deep JSON and a presence subscription of a whole contact list.

The HTTP body rules run in-process: tests/integration/test_input.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from socialhub.api.http.connection import MAX_HEAD_BYTES
from socialhub.domain.protocol import MAX_PRESENCE_IDS
from tests.e2e.server import Server, server_env
from tests.e2e.wsclient import WsClient, signups

DEEP = 2000  # far past msgspec's depth (Python's recursion limit, 1,000)


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(database_url, SOCIALHUB_REDIS_URL="", SOCIALHUB_RATELIMIT_ENABLED="false")
    srv = Server(tmp_path_factory.mktemp("input") / "data", env=env).start()
    yield srv
    srv.kill()


# -- the request head -------------------------------------------------------------------------


def exchange(server: Server, request: bytes, timeout: float = 5.0) -> bytes:
    """Send `request` on a new connection; everything the server answers until it closes
    (a timeout, when it keeps the connection open, fails the test)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def head(target: str = "/healthz", *lines: str) -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *lines]) + "\r\n\r\n").encode()


def assert_431(answer: bytes) -> None:
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 431 "), answer[:200]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    assert json.loads(body)["error"]["code"] == "too_large"


def test_a_head_over_32_kib_is_431_and_the_connection_closed(server: Server) -> None:
    big = "a" * (40 * 1024)
    cases = {
        "one big header": head("/healthz", f"X-Big: {big}"),
        "a long URL": head(f"/healthz?q={big}"),
        "many small headers": head("/healthz", *(f"X-H{i}: {'v' * 20}" for i in range(2000))),
        "a WebSocket upgrade": head(
            "/ws",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            f"X-Big: {big}",
        ),
    }
    for what, request in cases.items():
        started = time.monotonic()
        answer = exchange(server, request)  # returns once the server closed the connection
        assert time.monotonic() - started < 2.0, what
        assert_431(answer)
    # Just under the bound is an ordinary request.
    fits = head("/healthz", f"X-Big: {'a' * (MAX_HEAD_BYTES - 200)}", "Connection: close")
    assert exchange(server, fits).startswith(b"HTTP/1.1 200 ")


def test_an_endless_header_is_cut_off_early_while_others_are_served(server: Server) -> None:
    total = 100 * 1024 * 1024
    chunk = b"a" * (1024 * 1024)
    assert server.proc is not None
    process = psutil.Process(server.proc.pid)
    rss_before = process.memory_info().rss
    sent = 0
    failed: list[BaseException] = []

    def stream() -> None:
        nonlocal sent
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
                while sent < total:
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError as exc:  # reset or broken pipe: the server closed on us
                failed.append(exc)

    started = time.monotonic()
    writer = threading.Thread(target=stream)
    writer.start()
    r = httpx.get(server.url + "/healthz", timeout=5)
    assert r.status_code == 200
    writer.join(30)
    assert not writer.is_alive()
    elapsed = time.monotonic() - started
    # The server stopped reading after ~32 KiB: the sender failed once the socket buffers
    # (a few MB on loopback) were full, long before 100 MB, and it did not take the server
    # seconds of copying.
    assert failed, f"all {sent} bytes were taken"
    assert sent < 32 * 1024 * 1024, sent
    assert elapsed < 10, elapsed
    assert process.memory_info().rss - rss_before < 64 * 1024 * 1024
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200


def test_a_nul_in_a_body_is_422_and_the_connection_kept(server: Server) -> None:
    body = b'{"identifier": "a\\u0000b", "password": "long enough"}'
    login = (
        b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(login)
        first = s.recv(65536)
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):  # the head and the whole JSON body
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 422 "), first[:200]
        assert b'"identifier"' in first
        # The same connection answers the next request (a 500 used to close it).
        s.sendall(head("/healthz", "Connection: close"))
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


# -- the socket ---------------------------------------------------------------------------------


async def test_nul_in_a_frame_is_validation_error_and_the_socket_stays(server: Server) -> None:
    a, b = await signups(server, "nul_a", "nul_b")
    room = await a.room(b)
    sock = await a.socket()
    try:
        frame = {"type": "send_message", "room_id": room, "body": "a\x00b", "client_msg_id": "c1"}
        err = await sock.request(frame)
        assert err["type"] == "error" and err["code"] == "validation_error", err
        assert set(err["fields"]) == {"body"}
        err = await sock.request({**frame, "body": "fine", "client_msg_id": "c\x00"})
        assert err["code"] == "validation_error" and set(err["fields"]) == {"client_msg_id"}
        await sock.ping()
        assert sock.close_code is None
        r = await a.get(f"/chat/{room}/history")
        assert r.json()["items"] == []  # nothing stored
        # An escaped backslash before u0000 is text like any other.
        said = await sock.say(room, "C:\\u0000")
        assert said["body"] == "C:\\u0000" and said["seq"] == 1
    finally:
        await sock.close()


async def test_a_frame_nested_too_deep_is_bad_request_and_the_socket_stays(server: Server) -> None:
    (a,) = await signups(server, "deep")
    sock = await a.socket()
    try:
        deep = "[" * DEEP + "]" * DEEP
        frames = [
            deep,
            '{"type": "ping", "ref": ' + deep + "}",
            '{"type": "call_candidate", "call_id": "1", "candidate": ' + deep + ', "ref": "cc"}',
            "{" + '"a":{' * DEEP + "}" * DEEP + "}",
        ]
        for i, raw in enumerate(frames):
            await sock.send(raw)
            await sock.wait_count("error", i + 1)
            err = sock.matching("error")[-1]
            assert err["code"] == "bad_request", (raw[:40], err)
            await sock.ping()
        assert sock.matching("error")[2].get("ref") is None  # the envelope was too deep too
        # A NUL nested about as deep as the decoder allows: refused either way, never a drop.
        for depth in (500, 900, 990):
            nested = "[" * depth + '"\\u0000"' + "]" * depth
            before = len(sock.matching("error"))
            await sock.send('{"type": "call_candidate", "call_id": "1", "candidate": ' + nested + "}")
            await sock.wait_count("error", before + 1)
            err = sock.matching("error")[-1]
            assert err["code"] in ("bad_request", "validation_error"), err
            await sock.ping()
        assert sock.close_code is None
    finally:
        await sock.close()
    # As the first frame: not an authenticate frame, so SPEC's rule for the first frame
    # (`error unauthenticated`, then close 4401), never a silent drop.
    first = await WsClient.connect(server)
    await first.send("[" * DEEP + "]" * DEEP)
    assert await first.wait_closed() == 4401
    assert [f.get("code") for f in first.frames] == ["unauthenticated"]


async def test_presence_of_a_whole_contact_list(server: Server) -> None:
    (a,) = await signups(server, "contacts")
    sock = await a.socket(timeout=30)
    try:
        # Ids of nobody are fine: they are offline. ~52 KB a frame, under the 64 KiB cap.
        batch = MAX_PRESENCE_IDS // 2
        ids = [str(10**17 + i) for i in range(MAX_PRESENCE_IDS + batch)]
        for start in range(0, MAX_PRESENCE_IDS, batch):
            part = ids[start : start + batch]
            ack = await sock.request({"type": "subscribe_presence", "user_ids": part})
            assert ack["type"] == "ack", ack
            assert sock.close_code is None
        await sock.wait_count("presence", MAX_PRESENCE_IDS)
        assert {f["user_id"] for f in sock.matching("presence")} == set(ids[:MAX_PRESENCE_IDS])
        assert all(f["status"] == "offline" for f in sock.matching("presence"))
        # Past the per-socket cap: a clear error, nothing more followed, the socket stays.
        err = await sock.request({"type": "subscribe_presence", "user_ids": ids[MAX_PRESENCE_IDS:]})
        assert err["type"] == "error" and err["code"] == "validation_error", err
        assert err["message"].startswith("user_ids: ") and str(MAX_PRESENCE_IDS) in err["message"]
        await sock.ping()
        assert len(sock.matching("presence")) == MAX_PRESENCE_IDS
        assert sock.close_code is None
    finally:
        await sock.close()
