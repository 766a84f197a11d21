"""The end-to-end tests' client of a real `socialhub serve`: users signed up over REST,
and `/ws` sockets whose reader keeps every frame for the test to pick from."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.server import Server

Frame = dict[str, Any]


async def connect_ws(server: Server, **options: Any) -> ClientConnection:
    """A bare connection to the server's /ws; `options` go to `websockets` as they are."""
    # max_queue=None: the reader keeps every frame anyway, and a client that stopped
    # reading from TCP would be one the server may disconnect as slow.
    defaults: dict[str, Any] = {"open_timeout": 10, "close_timeout": 2, "max_queue": None}
    return await connect(f"ws://127.0.0.1:{server.port}/ws", **{**defaults, **options})


def _is(frame: Frame, type_: str, fields: dict[str, Any]) -> bool:
    return frame.get("type") == type_ and all(frame.get(k) == v for k, v in fields.items())


class WsClient:
    """One socket. `frames` holds every frame in arrival order; `expect` and `request`
    take them one at a time, so each frame answers one wait. Waits time out after the
    socket's `timeout` unless given one, and fail at once when the socket has closed."""

    def __init__(self, ws: ClientConnection, label: str, timeout: float = 5.0) -> None:
        self.ws = ws
        self.label = label
        self.timeout = timeout
        self.frames: list[Frame] = []
        self.taken: set[int] = set()
        self.session_id = ""
        self._changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, server: Server, *, label: str = "", timeout: float = 5.0, **options: Any) -> WsClient:
        """A socket that has not authenticated."""
        return cls(await connect_ws(server, **options), label or f"ws@{server.port}", timeout)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self._changed.set()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, frame: Frame | str | bytes) -> None:
        """A frame as JSON; text or bytes as they are (to send what is not a frame)."""
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def authenticate(self, token: str, user_id: str) -> None:
        await self.send({"type": "authenticate", "token": token})
        ok = await self.expect("authenticated")
        assert ok["user_id"] == user_id, ok
        assert ok["session_id"].isdigit(), ok
        self.session_id = ok["session_id"]

    # -- what arrived -----------------------------------------------------------------------

    def matching(self, type_: str, **fields: Any) -> list[Frame]:
        """Every frame so far of this type with these fields, taken or not."""
        return [f for f in self.frames if _is(f, type_, fields)]

    def pending(self) -> list[Frame]:
        """The frames not yet taken."""
        return [f for i, f in enumerate(self.frames) if i not in self.taken]

    def index(self, frame: Frame) -> int:
        """Where this very frame (not an equal one) stands in arrival order."""
        return next(i for i, f in enumerate(self.frames) if f is frame)

    def messages(self, room_id: str) -> list[Frame]:
        """The messages of every `new_message` of the room, in arrival order."""
        return [f["message"] for f in self.matching("new_message") if f["message"]["room_id"] == room_id]

    def seqs(self, room_id: str) -> list[int]:
        return [m["seq"] for m in self.messages(room_id)]

    # -- waiting ----------------------------------------------------------------------------

    async def wait_until(self, check: Callable[[], bool], timeout: float | None = None, what: str = "") -> None:
        """Wait for frames until `check()` holds."""
        timeout = self.timeout if timeout is None else timeout
        end = time.monotonic() + timeout
        while not check():
            left = end - time.monotonic()
            if left <= 0 or self.reader.done():
                state = "open" if not self.reader.done() else f"closed with {self.close_code}"
                what = what or "condition not met"
                raise AssertionError(f"{self.label} ({state}): {what} within {timeout}s; got {self.frames[-10:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def take(self, match: Callable[[Frame], bool], timeout: float | None = None, what: str = "") -> Frame:
        """Take the first frame not yet taken that `match` accepts, waiting for it."""

        def first() -> int | None:
            return next((i for i, f in enumerate(self.frames) if i not in self.taken and match(f)), None)

        await self.wait_until(lambda: first() is not None, timeout, what)
        i = first()
        assert i is not None
        self.taken.add(i)
        return self.frames[i]

    async def expect(
        self, type_: str, timeout: float | None = None, where: Callable[[Frame], bool] | None = None, **fields: Any
    ) -> Frame:
        """Take the first frame of this type with these fields (that `where` accepts)."""
        return await self.take(
            lambda f: _is(f, type_, fields) and (where is None or where(f)), timeout, f"no {type_} {fields}"
        )

    async def request(self, frame: Frame, timeout: float | None = None) -> Frame:
        """Send with a fresh ref; the ack or error that answers it."""
        ref = secrets.token_hex(4)
        await self.send({**frame, "ref": ref})
        return await self.take(
            lambda f: f.get("ref") == ref and f.get("type") in ("ack", "error"),
            timeout,
            f"no answer to {frame['type']}",
        )

    async def wait_frames(self, n: int, timeout: float | None = None) -> None:
        await self.wait_until(lambda: len(self.frames) >= n, timeout, f"not {n} frames")

    async def wait_count(self, type_: str, n: int, timeout: float | None = None) -> None:
        await self.wait_until(lambda: len(self.matching(type_)) >= n, timeout, f"not {n} {type_}")

    async def wait_seqs(self, room_id: str, n: int, timeout: float | None = None) -> list[int]:
        """Wait for `n` messages of the room; their seqs."""
        await self.wait_until(lambda: len(self.seqs(room_id)) >= n, timeout, f"not {n} messages")
        return self.seqs(room_id)

    async def wait_closed(self, timeout: float | None = None) -> int | None:
        """The close code once the server closed the socket; None if still open after `timeout`."""
        await asyncio.wait({self.reader}, timeout=self.timeout if timeout is None else timeout)
        return self.close_code

    # -- chat -------------------------------------------------------------------------------

    async def ping(self) -> None:
        """A round trip: frames the server queued before the pong have arrived."""
        ref = "p" + secrets.token_hex(4)
        await self.send({"type": "ping", "ref": ref})
        await self.expect("pong", ref=ref)

    async def join(self, room_id: str, since_seq: int | None = None) -> Frame:
        """join_room; the `joined` frame."""
        frame: Frame = {"type": "join_room", "room_id": room_id, "ref": "j" + secrets.token_hex(4)}
        if since_seq is not None:
            frame["since_seq"] = since_seq
        await self.send(frame)
        return await self.expect("joined", room_id=room_id)

    async def say(self, room_id: str, body: str, client_msg_id: str | None = None) -> Frame:
        """send_message and wait for its ack; the stored message."""
        ref = "s" + secrets.token_hex(4)
        cid = client_msg_id or secrets.token_hex(8)
        await self.send({"type": "send_message", "room_id": room_id, "body": body, "client_msg_id": cid, "ref": ref})
        message: Frame = (await self.expect("ack", ref=ref))["message"]
        assert message["client_msg_id"] == cid, message
        # A client_msg_id of the caller's may be a retry, answered with the earlier message.
        assert client_msg_id is not None or message["body"] == body, message
        return message

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


class User:
    """An account signed up on `server`: REST calls as it (on any instance), and sockets."""

    def __init__(self, server: Server, body: Frame, password: str) -> None:
        self.server = server
        self.id: str = body["user"]["id"]
        self.username: str = body["user"]["username"]
        self.token: str = body["token"]
        self.password = password

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str, *, server: Server | None = None, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=(server or self.server).url, timeout=10) as c:
            return await c.get(path, headers=self.auth, **kw)

    async def post(self, path: str, *, server: Server | None = None, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=(server or self.server).url, timeout=10) as c:
            return await c.post(path, headers=self.auth, **kw)

    async def login(self, server: Server | None = None) -> str:
        """A second session (another device): its access token."""
        async with httpx.AsyncClient(base_url=(server or self.server).url, timeout=10) as c:
            r = await c.post("/auth/login", json={"identifier": self.username, "password": self.password})
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    async def room(self, *others: User, name: str | None = None) -> str:
        """A chat room of this user and `others`: its id."""
        body: Frame = {"members": [o.id for o in others]}
        if name is not None:
            body["name"] = name
        r = await self.post("/chat/rooms", json=body)
        assert r.status_code in (200, 201), r.text
        room_id: str = r.json()["id"]
        return room_id

    async def socket(
        self, server: Server | None = None, token: str | None = None, *, label: str = "", timeout: float = 5.0
    ) -> WsClient:
        """A socket on `server` (the user's own by default), authenticated with `token`."""
        sock = await WsClient.connect(server or self.server, label=label or self.username, timeout=timeout)
        await sock.authenticate(token or self.token, self.id)
        return sock


async def signup(server: Server, name: str) -> User:
    username = f"{name}_{secrets.token_hex(4)}"
    password = "pass word 1"
    body = {"name": name, "email": f"{username}@example.test", "username": username, "password": password}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        r = await c.post("/auth/signup", json=body)
    assert r.status_code == 201, r.text
    return User(server, r.json(), password)


async def signups(server: Server, *names: str) -> list[User]:
    return list(await asyncio.gather(*(signup(server, n) for n in names)))
