"""One connected socket: its bounded send queue, its writer, its frame budget.

Sending never blocks the sender: frames go into a bounded queue drained by one
writer task. Overflow policy: a client whose queue is full does not read, and it is
disconnected (close CLOSE_POLICY, 1008) rather than buffered without bound; the frames it missed
are in PostgreSQL and it resumes with `since_seq`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from starlette.websockets import WebSocket, WebSocketState

from socialhub.config import Rate
from socialhub.domain.protocol import CLOSE_NORMAL, CLOSE_POLICY

logger = logging.getLogger(__name__)

# Frames waiting for one slow socket. A chat burst of a few hundred messages fits;
# more means the client is not reading. (~1 KB a frame: at most ~0.5 MB per socket.)
SEND_QUEUE_FRAMES = 512
# A replay (join_room with since_seq) may be longer than the queue: it is fed at the
# client's pace and keeps the queue at most half full, so live frames still fit. A
# client that takes no frame for SLOW_CLIENT_SECONDS meanwhile does not read.
REPLAY_HIGH_WATER = SEND_QUEUE_FRAMES // 2
SLOW_CLIENT_SECONDS = 10.0


class FrameBudget:
    """The per-socket frame rate (GCRA): `rate.limit` per `rate.period`, bursts of `rate.burst`."""

    def __init__(self, rate: Rate | None) -> None:
        self.rate = rate
        self._tat = 0.0

    def allow(self) -> bool:
        if self.rate is None:
            return True
        now = asyncio.get_running_loop().time()
        interval = self.rate.interval
        tat = max(self._tat, now)
        if tat + interval - now > self.rate.burst * interval:
            return False
        self._tat = tat + interval
        return True


class Session:
    """A socket of `user_id` in session `session_id` (one per device)."""

    def __init__(self, websocket: WebSocket, user_id: int, session_id: int, rate: Rate | None) -> None:
        self.websocket = websocket
        self.user_id = user_id
        self.session_id = session_id
        # Tells this socket from the other sockets of the same session (two tabs, one token).
        self.socket_id = secrets.randbits(62) + 1
        self.budget = FrameBudget(rate)
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(SEND_QUEUE_FRAMES)
        self._writer: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()  # set when the queue is below REPLAY_HIGH_WATER, or closing
        self.closing = False
        self.close_code = CLOSE_NORMAL

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer:{self.session_id}")

    def send(self, data: bytes) -> None:
        """Queue a frame (JSON bytes); never waits."""
        if self.closing:
            return
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            logger.info("closing a socket of user %s: it does not read", self.user_id)
            self.close(CLOSE_POLICY, "send queue full: the client does not read")

    async def send_paced(self, data: bytes) -> None:
        """Queue a frame of a replay, first waiting while the queue is half full."""
        while not self.closing and self._queue.qsize() >= REPLAY_HIGH_WATER:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), SLOW_CLIENT_SECONDS)
            except TimeoutError:
                logger.info("closing a socket of user %s: it does not read its replay", self.user_id)
                self.close(CLOSE_POLICY, "replay not read: the client does not read")
        self.send(data)

    async def _write(self) -> None:
        try:
            while True:
                data = await self._queue.get()
                await self.websocket.send_text(data.decode())
                if self._queue.qsize() < REPLAY_HIGH_WATER:
                    self._drained.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The socket went away under us; the reader sees the disconnect and cleans up.
            logger.debug("socket write failed", exc_info=True)

    def close(self, code: int, reason: str = "") -> None:
        """Close from anywhere without waiting; queued frames are dropped."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self._drained.set()
        if self._writer is not None:
            self._writer.cancel()
        task = asyncio.create_task(self._close(code, reason))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def _close(self, code: int, reason: str) -> None:
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(code, reason)

    async def flush_and_stop(self) -> None:
        """Called when the reader ends: stop the writer."""
        self.closing = True
        self._drained.set()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer


_closing: set[asyncio.Task[None]] = set()
