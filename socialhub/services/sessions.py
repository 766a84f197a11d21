"""SessionGuard: every authenticated request checks that its session is still live.

JWTs alone cannot be revoked, so each request also checks the session row, through a
small per-process cache. A revocation (logout, refresh replay, password reset) evicts
the entry here and, through the pub/sub port, on every other instance within
milliseconds. While the pub/sub broker is unreachable evictions may be missed, so the
cache is bypassed until it is back (and then cleared).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import msgspec

from socialhub.domain.time import utcnow
from socialhub.domain.users import Principal
from socialhub.errors import Unauthenticated, Unavailable
from socialhub.infra.pubsub.base import PubSub, Subscription
from socialhub.services.tokens import TokenCodec
from socialhub.storage.auth import AuthStore

logger = logging.getLogger(__name__)

REVOCATIONS_CHANNEL = "auth.revocations"
# A live entry is re-checked against PostgreSQL at least this often even if no revocation
# arrives: a safety net for a message lost in flight, not the primary mechanism.
CACHE_TTL_SECONDS = 30.0
# Entries are ~100 bytes: 100k sessions is ~10 MB per process.
CACHE_MAX_ENTRIES = 100_000

RevocationListener = Callable[[int, list[int]], Awaitable[None]]
"""Called with (user_id, session_ids) for each revocation seen, local or remote."""


class Revocation(msgspec.Struct, frozen=True):
    user_id: int
    session_ids: list[int]


class _Entry(msgspec.Struct):
    user_id: int
    live: bool
    checked_at: float


class SessionGuard:
    """Authenticates access tokens and spreads revocations."""

    def __init__(self, tokens: TokenCodec, store: AuthStore, pubsub: PubSub) -> None:
        self.tokens = tokens
        self.store = store
        self.pubsub = pubsub
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        self._generation = 0  # bumped by every eviction, so a slow lookup never re-caches stale state
        self._subscription: Subscription | None = None
        self._listeners: list[RevocationListener] = []

    async def start(self) -> None:
        self.pubsub.on_reset(self._on_reset)
        self._subscription = await self.pubsub.subscribe(REVOCATIONS_CHANNEL, self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    def add_listener(self, listener: RevocationListener) -> None:
        """E.g. the WebSocket hub closes a revoked session's sockets."""
        self._listeners.append(listener)

    async def authenticate(self, token: str) -> Principal:
        """The principal of a valid token whose session is live; Unauthenticated otherwise."""
        principal = self.tokens.decode(token)
        if not await self._session_live(principal):
            raise Unauthenticated("session ended")
        return principal

    async def _session_live(self, p: Principal) -> bool:
        use_cache = self.pubsub.healthy
        now = time.monotonic()
        if use_cache:
            entry = self._cache.get(p.session_id)
            if entry is not None and now - entry.checked_at < CACHE_TTL_SECONDS:
                return entry.live and entry.user_id == p.user_id
        generation = self._generation
        session = await self.store.get_session(p.session_id)
        live = session is not None and session.revoked_at is None and session.expires_at > utcnow()
        user_id = session.user_id if session is not None else 0
        if use_cache and generation == self._generation and session is not None:
            self._cache[p.session_id] = _Entry(user_id=user_id, live=live, checked_at=now)
            self._cache.move_to_end(p.session_id)
            while len(self._cache) > CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)
        return live and user_id == p.user_id

    async def revoked(self, user_id: int, session_ids: Iterable[int]) -> None:
        """Tell every instance (this one first) that these sessions ended."""
        ids = list(session_ids)
        if not ids:
            return
        await self._evict(user_id, ids)
        try:
            await self.pubsub.publish(REVOCATIONS_CHANNEL, msgspec.json.encode(Revocation(user_id, ids)))
        except Unavailable:
            # Other instances bypass their caches while the broker is down, and clear them
            # when it is back, so they still refuse these sessions.
            logger.warning("could not broadcast a session revocation; the broker is down")

    async def _evict(self, user_id: int, session_ids: list[int]) -> None:
        self._generation += 1
        for sid in session_ids:
            self._cache.pop(sid, None)
        for listener in self._listeners:
            try:
                await listener(user_id, session_ids)
            except Exception:
                logger.exception("revocation listener failed")

    async def _on_message(self, channel: str, payload: bytes) -> None:
        try:
            msg = msgspec.json.decode(payload, type=Revocation)
        except msgspec.DecodeError:
            logger.warning("malformed revocation message ignored")
            return
        await self._evict(msg.user_id, msg.session_ids)

    async def _on_reset(self) -> None:
        self._generation += 1
        self._cache.clear()
