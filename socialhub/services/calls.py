"""Voice and video calls: WebRTC signaling relayed over the users' sockets.

The server keeps the call record (PostgreSQL) and relays offers, answers and ICE
candidates through the `user:<id>` channels, so both parties may be on any instance.
It checks SDP only as far as aiortc's parser goes: it must parse and carry media.
Ring deadlines are in the database and swept by every instance (an UPDATE decides
which one ends a call), so a ring still times out when its instance dies.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from socialhub.domain.calls import (
    ACTIVE,
    ANSWERED_ELSEWHERE,
    BUSY,
    DISCONNECTED,
    ENDED,
    HANGUP,
    MISSED,
    REJECTED,
    RINGING,
    Call,
    CallRecord,
)
from socialhub.domain.live import encode_user_event, user_channel
from socialhub.domain.notifications import NewNotification, Notifier
from socialhub.domain.pages import Page, PageRequest, page_of
from socialhub.domain.protocol import CallAnswered, CallCandidateFrame, CallEnded, CallIncoming
from socialhub.domain.users import Principal
from socialhub.errors import BadRequest, Conflict, Forbidden, NotFound, SocialhubError, Unavailable, ValidationFailed
from socialhub.storage.calls import CallStore
from socialhub.supervisor import OutageLog, sleep_unless

logger = logging.getLogger(__name__)

# A real offer is 2-10 KB; anything far beyond is not a browser's.
MAX_SDP_BYTES = 32 * 1024
MAX_CANDIDATE_BYTES = 4 * 1024
SWEEP_SECONDS = 1.0
# A party whose every socket has been gone this long (after presence's own grace) ends
# the call: a phone switching networks reconnects well within it.
DISCONNECT_GRACE = 10.0

OnlineCheck = Callable[[Sequence[int]], Awaitable[dict[int, bool]]]
ExistingUsers = Callable[[Sequence[int]], Awaitable[set[int]]]


class IceServer(msgspec.Struct, frozen=True, omit_defaults=True):
    urls: list[str]
    username: str | UnsetType = UNSET
    credential: str | UnsetType = UNSET


class IceServers(msgspec.Struct, frozen=True):
    ice_servers: list[IceServer]
    ttl: int


def check_sdp(sdp: str) -> None:
    """BadRequest unless aiortc parses `sdp` into a description with media."""
    from aiortc.sdp import SessionDescription

    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise BadRequest(f"SDP over {MAX_SDP_BYTES} bytes")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # the parser raises whatever its line handlers raise
        raise BadRequest(f"SDP does not parse: {exc}") from None
    if not parsed.media or any(m.kind not in ("audio", "video", "application") for m in parsed.media):
        raise BadRequest("SDP has no audio, video or data media section")


def turn_credentials(secret: str, user_id: int, ttl: int, now: float | None = None) -> tuple[str, str]:
    """The TURN REST scheme coturn's use-auth-secret checks: username "<expiry>:<user>",
    credential base64(HMAC-SHA1(secret, username))."""
    expiry = int(now if now is not None else time.time()) + ttl
    username = f"{expiry}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class CallService:
    def __init__(
        self,
        *,
        store: CallStore,
        publish: Callable[[str, bytes], Awaitable[None]],
        notify: Notifier,
        online: OnlineCheck,
        existing_users: ExistingUsers,
        ring_timeout: float,
        stun_urls: Sequence[str] = (),
        turn_urls: Sequence[str] = (),
        turn_secret: str = "",
        turn_ttl: float = 86400.0,
    ) -> None:
        self.store = store
        self._publish_raw = publish
        self.notify = notify
        self.online = online
        self.existing_users = existing_users
        self.ring_timeout = ring_timeout
        self.stun_urls = list(stun_urls)
        self.turn_urls = list(turn_urls)
        self.turn_secret = turn_secret
        self.turn_ttl = int(turn_ttl)
        self._absent_since: dict[int, float] = {}  # user -> when first seen offline in a live call

    # -- REST -------------------------------------------------------------------------------

    def ice_servers(self, viewer: Principal) -> IceServers:
        servers: list[IceServer] = []
        if self.stun_urls:
            servers.append(IceServer(urls=self.stun_urls))
        if self.turn_urls and self.turn_secret:
            username, credential = turn_credentials(self.turn_secret, viewer.user_id, self.turn_ttl)
            servers.append(IceServer(urls=self.turn_urls, username=username, credential=credential))
        return IceServers(ice_servers=servers, ttl=self.turn_ttl)

    async def history(self, viewer: Principal, page: PageRequest) -> Page[Call]:
        records = await self.store.get_history(viewer.user_id, page.before, page.limit)
        return page_of([Call.of(r) for r in records], [r.id for r in records], page.limit)

    # -- signaling ----------------------------------------------------------------------------

    async def invite(self, viewer: Principal, socket_id: int, callee_id: int, media: str, sdp: str) -> Call:
        """Ring every socket of the callee; `socket_id` is the calling socket, which alone gets the answer."""
        check_sdp(sdp)
        if callee_id == viewer.user_id:
            raise ValidationFailed("you cannot call yourself", fields={"callee_id": "cannot call yourself"})
        if callee_id not in await self.existing_users([callee_id]):
            raise NotFound("no such user")
        call = await self.store.insert_call(
            caller_id=viewer.user_id,
            callee_id=callee_id,
            media=media,
            caller_socket_id=socket_id,
            ring_seconds=self.ring_timeout,
        )
        view = Call.of(call)
        if call.state == ENDED:
            # Busy: the caller (this device) hears it right after its ack.
            await self._send(viewer.user_id, CallEnded(call_id=view.id, reason=BUSY), only=socket_id)
        else:
            await self._send(callee_id, CallIncoming(call=view, sdp=sdp))
        return view

    async def _party_call(self, viewer: Principal, call_id: int) -> CallRecord:
        call = await self.store.get_call(call_id)
        if call is None:
            raise NotFound("no such call")
        if viewer.user_id not in (call.caller_id, call.callee_id):
            raise Forbidden("only the two parties may signal on a call")
        return call

    async def answer(self, viewer: Principal, socket_id: int, call_id: int, sdp: str) -> Call:
        """The first socket of the callee to answer wins; the others stop ringing."""
        check_sdp(sdp)
        call = await self._party_call(viewer, call_id)
        if viewer.user_id != call.callee_id:
            raise Forbidden("only the callee answers")
        answered = await self.store.update_answered(call_id, viewer.user_id, socket_id)
        if answered is None:
            raise Conflict(f"the call is {call.state} ({call.end_reason or 'answered'})")
        view = Call.of(answered)
        await self._send(call.caller_id, CallAnswered(call_id=view.id, sdp=sdp), only=call.caller_socket_id)
        await self._send(call.callee_id, CallEnded(call_id=view.id, reason=ANSWERED_ELSEWHERE), exclude=socket_id)
        return view

    async def candidate(self, viewer: Principal, call_id: int, candidate: Any) -> None:
        if len(msgspec.json.encode(candidate)) > MAX_CANDIDATE_BYTES:
            raise BadRequest("candidate too large")
        call = await self._party_call(viewer, call_id)
        if call.state == ENDED:
            raise Conflict("the call has ended")
        frame = CallCandidateFrame(call_id=str(call.id), candidate=candidate)
        if viewer.user_id == call.caller_id:
            # Before the answer, every ringing device may use them; after, only the one that answered.
            await self._send(call.callee_id, frame, only=call.callee_socket_id or 0)
        else:
            await self._send(call.caller_id, frame, only=call.caller_socket_id)

    async def reject(self, viewer: Principal, call_id: int) -> Call:
        call = await self._party_call(viewer, call_id)
        if viewer.user_id != call.callee_id:
            raise Forbidden("only the callee rejects; the caller hangs up")
        return await self._end(call, REJECTED, states=(RINGING,))

    async def hangup(self, viewer: Principal, call_id: int) -> Call:
        call = await self._party_call(viewer, call_id)
        return await self._end(call, HANGUP)

    async def _end(self, call: CallRecord, reason: str, *, states: tuple[str, ...] = (RINGING, ACTIVE)) -> Call:
        ended = await self.store.update_ended(call.id, reason, states=states)
        if ended is None:
            raise Conflict(f"the call is {call.state}")
        await self._announce_end(ended, reason)
        return Call.of(ended)

    async def _announce_end(self, call: CallRecord, reason: str) -> None:
        frame = CallEnded(call_id=str(call.id), reason=HANGUP if reason == DISCONNECTED else reason)
        await self._send(call.caller_id, frame)
        await self._send(call.callee_id, frame)
        if reason == MISSED:
            await self.notify(NewNotification(call.callee_id, "missed_call", call.caller_id, call_id=call.id))

    async def _send(self, user_id: int, frame: msgspec.Struct, *, only: int = 0, exclude: int = 0) -> None:
        try:
            await self._publish_raw(
                user_channel(user_id), encode_user_event(frame, only_socket=only, exclude_socket=exclude)
            )
        except SocialhubError:
            logger.warning("could not relay a call frame to user %s", user_id)

    # -- the sweeper --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Every second: end rings past their deadline (missed), and calls a party has
        left (every socket gone for DISCONNECT_GRACE; while ringing, only the caller counts)."""
        outage = OutageLog(logger, "call sweep")
        while not stop.is_set():
            try:
                await self.sweep_once()
                outage.ok()
            except Unavailable as exc:
                outage.failed(exc)  # overdue rings end at the first sweep after it is back
            except Exception:
                logger.exception("call sweep failed")
            await sleep_unless(stop, SWEEP_SECONDS)

    async def sweep_once(self) -> None:
        for call_id in await self.store.get_overdue_rings():
            ended = await self.store.update_ended(call_id, MISSED, states=(RINGING,))
            if ended is not None:
                await self._announce_end(ended, MISSED)
        live = await self.store.get_live_calls()
        users = sorted({u for c in live for u in (c.caller_id, c.callee_id)})
        status = await self.online(users) if users else {}
        now = time.monotonic()
        for user_id in users:
            if status.get(user_id, False):
                self._absent_since.pop(user_id, None)
            else:
                self._absent_since.setdefault(user_id, now)
        for user_id in [u for u in self._absent_since if u not in status]:
            del self._absent_since[user_id]
        for call in live:
            # A ringing callee need not be online (a phone with the app closed): an unanswered
            # ring runs to its timeout and is missed, with the notification, not hung up.
            parties = (call.caller_id, call.callee_id) if call.state == ACTIVE else (call.caller_id,)
            if any(now - self._absent_since.get(u, now) >= DISCONNECT_GRACE for u in parties):
                ended = await self.store.update_ended(call.id, DISCONNECTED)
                if ended is not None:
                    await self._announce_end(ended, DISCONNECTED)
