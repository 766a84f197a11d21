"""Hypothesis against a real `socialhub serve`'s /ws: hostile frames before and after
`authenticate`.

Frames: any JSON value; every frame type of domain/protocol.py with each field given a
value of the wrong type, a huge, deeply nested, unicode or NUL-holding string, or
left out; text that is not JSON; binary frames. Properties (SPEC, "WebSocket"):

- after authenticate, the server never answers `error internal`, never closes, and a
  `ping` right after the hostile frame still gets its `pong`;
- before it, the server answers `error unauthenticated` (never `internal`) and closes
  with 4401, a close frame and not a dropped connection;
- a frame over 64 KiB is closed with 1009, before and after authenticate.

The runs are derandomized (the same frames each time); the frames sent are reported at
the end of the module. The `slow` variant sends WS_SLOW_EXAMPLES.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socialhub.domain.protocol import CLOSE_TOO_BIG, CLOSE_UNAUTHENTICATED, ClientFrame
from tests.e2e.server import Server, server_env
from tests.e2e.wsclient import User, WsClient, signup

MAX_FRAME = 64 * 1024  # SPEC
# A hostile string of up to this many characters stays under the 64 KiB cap even when each
# is escaped as a surrogate pair, \uXXXX\uXXXX (12 bytes): the "stays usable" property is
# for frames the server reads.
HUGE = MAX_FRAME // 12 - 64
WS_EXAMPLES = 2000
WS_PRE_AUTH_EXAMPLES = 400
WS_SLOW_EXAMPLES = 20000
ANSWER = 10.0  # seconds: the pong after a hostile frame, the close before authenticate

# Every client frame type and its fields, from the protocol's own Structs.
FRAME_FIELDS: dict[str, list[str]] = {
    t.tag: [f.encode_name for f in t.fields] for t in msgspec.inspect.type_info(ClientFrame).types
}


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- hostile values ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
hostile_strings = st.one_of(
    st.text(max_size=200),  # any unicode, NUL and lone surrogates included
    st.text(alphabet=st.characters(codec="utf-8"), min_size=HUGE // 2, max_size=HUGE).map(lambda s: s[:HUGE]),
    st.integers(min_value=1, max_value=HUGE).map(lambda n: "x" * n),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "\udfff", "🦄" * 100, "\u202e" * 10, "0" * 25, "-1", "1e3", " 1"]),
    st.from_regex(r"[0-9]{1,25}", fullmatch=True),  # id-shaped, in range and past it
)
nested = st.integers(min_value=1, max_value=5000).map(lambda depth: ("[" * depth) + ("]" * depth))
hostile_values = st.one_of(json_values, hostile_strings, st.just(1 << 70), st.just(-(1 << 70)))


@st.composite
def typed_frames(draw: st.DrawFn) -> str:
    """A frame of a real type whose fields are each kept plausible, made hostile or left out."""
    tag = draw(st.sampled_from(sorted(FRAME_FIELDS)))
    frame: dict[str, Any] = {"type": tag}
    for name in FRAME_FIELDS[tag]:
        choice = draw(st.sampled_from(["hostile", "plausible", "absent"]))
        if choice == "hostile":
            frame[name] = draw(hostile_values)
        elif choice == "plausible":
            frame[name] = draw(st.sampled_from(["1", "9223372036854775807", "audio", "v=0", True, 0, []]))
    return json.dumps(frame)


frames: st.SearchStrategy[str | bytes] = st.one_of(
    typed_frames(),
    json_values.map(json.dumps),
    # Text that is not JSON (or is, by chance); a text frame is UTF-8, so lone surrogates
    # cannot be sent as such (they come escaped inside JSON, and raw in binary frames).
    hostile_strings.map(lambda s: s.encode("utf-8", "replace").decode()),
    nested,
    st.builds(lambda n: '{"type": "ping", "ref": ' + ("[" * n) + ("]" * n) + "}", st.integers(1, 5000)),
    st.binary(max_size=2000),
    typed_frames().map(str.encode),  # a JSON frame in a binary message
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),  # invalid UTF-8 in binary
)


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(database_url, SOCIALHUB_REDIS_URL="", SOCIALHUB_RATELIMIT_ENABLED="false")
    srv = Server(tmp_path_factory.mktemp("fuzz-ws") / "data", env=env).start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    """Hypothesis calls the test synchronously; each example runs its coroutine here."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def user(server: Server, loop: asyncio.Runner) -> User:
    return loop.run(signup(server, "wsfuzz"))


class Socket:
    """One authenticated socket, reopened only when an example has closed it (which that
    example then fails for)."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.ws: WsClient | None = None

    async def open(self) -> WsClient:
        if self.ws is None or self.ws.reader.done():
            self.ws = await self.user.socket(timeout=ANSWER)
        return self.ws

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


@pytest.fixture(scope="module")
def socket(user: User, loop: asyncio.Runner) -> Iterator[Socket]:
    sock = Socket(user)
    yield sock
    loop.run(sock.close())


def internal_errors(ws: WsClient, since: int) -> list[dict[str, Any]]:
    return [f for f in ws.frames[since:] if f.get("type") == "error" and f.get("code") == "internal"]


async def hostile_then_ping(socket: Socket, frame: str | bytes) -> None:
    ws = await socket.open()
    since = len(ws.frames)
    await ws.send(frame)
    ref = "fuzz-" + secrets.token_hex(4)
    await ws.send({"type": "ping", "ref": ref})
    try:
        await ws.expect("pong", ref=ref)
    except AssertionError:
        raise AssertionError(f"no pong after the frame (socket closed with {ws.close_code}): {frame!r:.300}") from None
    assert not internal_errors(ws, since), (frame, internal_errors(ws, since))


async def hostile_first(server: Server, frame: str | bytes) -> None:
    ws = await WsClient.connect(server, timeout=ANSWER)
    try:
        await ws.send(frame)
        code = await ws.wait_closed(ANSWER)
        assert code == CLOSE_UNAUTHENTICATED, (code, frame)
        assert [f.get("code") for f in ws.frames] == ["unauthenticated"], (ws.frames, frame)
    finally:
        await ws.close()


# -- the properties --------------------------------------------------------------------


@_settings(WS_EXAMPLES)
@given(frame=frames)
def test_a_hostile_frame_leaves_the_socket_usable(
    frame: str | bytes, socket: Socket, loop: asyncio.Runner, sent: Counter[str]
) -> None:
    sent["socket frames, after authenticate"] += 1
    loop.run(hostile_then_ping(socket, frame))


@_settings(WS_PRE_AUTH_EXAMPLES)
@given(frame=frames)
def test_a_hostile_first_frame_closes_with_4401(
    frame: str | bytes, server: Server, loop: asyncio.Runner, sent: Counter[str]
) -> None:
    sent["socket frames, before authenticate"] += 1
    loop.run(hostile_first(server, frame))


@_settings(WS_PRE_AUTH_EXAMPLES // 2)
@given(token=hostile_values)
def test_a_bad_token_closes_with_4401(token: Any, server: Server, loop: asyncio.Runner, sent: Counter[str]) -> None:
    sent["socket frames, authenticate with a bad token"] += 1
    loop.run(hostile_first(server, json.dumps({"type": "authenticate", "token": token})))


@pytest.mark.parametrize("authenticated", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_a_frame_over_64_kib_closes_with_1009(
    kind: str, authenticated: bool, server: Server, user: User, loop: asyncio.Runner
) -> None:
    async def run() -> None:
        ws = await (user.socket(timeout=ANSWER) if authenticated else WsClient.connect(server, timeout=ANSWER))
        try:
            body = json.dumps({"type": "ping", "ref": "x" * MAX_FRAME})
            await ws.send(body if kind == "text" else body.encode())
            assert await ws.wait_closed(ANSWER) == CLOSE_TOO_BIG
            assert not internal_errors(ws, 0)
        finally:
            await ws.close()

    loop.run(run())


@pytest.mark.slow
@_settings(WS_SLOW_EXAMPLES)
@given(frame=frames)
def test_a_hostile_frame_leaves_the_socket_usable_at_length(
    frame: str | bytes, socket: Socket, loop: asyncio.Runner, sent: Counter[str]
) -> None:
    sent["socket frames, slow, after authenticate"] += 1
    loop.run(hostile_then_ping(socket, frame))
