"""The WebSocket frames (SPEC, "WebSocket: GET /ws"): JSON objects with a `type`.

Client frames decode into one tagged union; a client may add `ref` to any frame and
gets it back on the direct reply (`ack` or `error`). Server frames are encoded once
and, for fan-out, sent as the same bytes to every socket.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from socialhub.domain.calls import Call
from socialhub.domain.chat import Message
from socialhub.domain.text import may_hold_nul, nul_fields
from socialhub.errors import BadRequest, ValidationFailed

Ref = Annotated[str, msgspec.Meta(max_length=100)] | None
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=20, pattern=r"^[0-9]+$")]
# SPEC: body 1..4000 characters.
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
ClientMsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# An SDP offer of a few m-lines is 2-6 KB; the socket's 64 KiB frame cap bounds it anyway.
Sdp = Annotated[str, msgspec.Meta(min_length=1, max_length=60_000)]
# A socket follows the presence of at most this many users, over any number of frames:
# a whole contact list (5,000 is Facebook's cap on friends, the larger social graphs'
# usual bound). One 64 KiB frame holds about 2,900 ids, so a bigger list takes two.
MAX_PRESENCE_IDS = 5000


class Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    ref: Ref = None


class Authenticate(Frame, frozen=True, tag="authenticate"):
    token: Annotated[str, msgspec.Meta(max_length=4096)]


class JoinRoom(Frame, frozen=True, tag="join_room"):
    room_id: Id
    since_seq: Annotated[int, msgspec.Meta(ge=0)] | None = None


class LeaveRoom(Frame, frozen=True, tag="leave_room"):
    room_id: Id


class SendMessage(Frame, frozen=True, tag="send_message"):
    room_id: Id
    body: Body
    client_msg_id: ClientMsgId


class Typing(Frame, frozen=True, tag="typing"):
    room_id: Id
    state: bool


class Read(Frame, frozen=True, tag="read"):
    room_id: Id
    seq: Annotated[int, msgspec.Meta(ge=0)]


class SubscribePresence(Frame, frozen=True, tag="subscribe_presence"):
    user_ids: Annotated[list[Id], msgspec.Meta(max_length=MAX_PRESENCE_IDS)]


class CallInvite(Frame, frozen=True, tag="call_invite"):
    callee_id: Id
    media: Literal["audio", "video"]
    sdp: Sdp


class CallAnswer(Frame, frozen=True, tag="call_answer"):
    call_id: Id
    sdp: Sdp


class CallCandidate(Frame, frozen=True, tag="call_candidate"):
    call_id: Id
    candidate: Any


class CallReject(Frame, frozen=True, tag="call_reject"):
    call_id: Id


class CallHangup(Frame, frozen=True, tag="call_hangup"):
    call_id: Id


class Ping(Frame, frozen=True, tag="ping"):
    pass


ClientFrame = (
    Authenticate
    | JoinRoom
    | LeaveRoom
    | SendMessage
    | Typing
    | Read
    | SubscribePresence
    | CallInvite
    | CallAnswer
    | CallCandidate
    | CallReject
    | CallHangup
    | Ping
)


class Envelope(msgspec.Struct, frozen=True):
    """Just enough of any frame to answer it: its type and ref."""

    type: Any = None
    ref: Any = None


_frames = msgspec.json.Decoder(ClientFrame)
_envelope = msgspec.json.Decoder(Envelope)


def decode_frame(raw: bytes) -> ClientFrame:
    """A client frame, or the SocialhubError to answer it with (the socket stays open):
    bad_request when it is not JSON (malformed, not UTF-8, or nested deeper than msgspec
    allows: it raises RecursionError at Python's recursion limit) or not a valid frame
    (msgspec's ValidationError is a DecodeError); validation_error naming the fields when
    a string holds U+0000, which PostgreSQL cannot store (SPEC, Conventions)."""
    try:
        frame = _frames.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8 in a binary frame.
        raise BadRequest(f"bad frame: {exc}") from None
    except RecursionError:
        raise BadRequest("bad frame: nested too deep") from None
    if may_hold_nul(raw):
        values = {f.encode_name: getattr(frame, f.name) for f in msgspec.structs.fields(frame)}
        fields = nul_fields(values, values)
        if fields:
            raise ValidationFailed("; ".join(f"{k}: {v}" for k, v in fields.items()), fields=fields)
    return frame


def frame_ref(raw: bytes) -> str | None:
    """The frame's `ref` when it has a usable one (to answer a frame that did not decode)."""
    try:
        ref = _envelope.decode(raw).ref
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return ref if isinstance(ref, str) else None


# -- server frames -------------------------------------------------------------------


class Authenticated(msgspec.Struct, frozen=True, tag_field="type", tag="authenticated"):
    user_id: str
    session_id: str


class Joined(msgspec.Struct, frozen=True, tag_field="type", tag="joined"):
    room_id: str
    last_seq: int
    ref: str | UnsetType = UNSET


class Ack(msgspec.Struct, frozen=True, tag_field="type", tag="ack", omit_defaults=True):
    ref: str | None = None
    message: Message | UnsetType = UNSET
    call: Call | UnsetType = UNSET


class Error(msgspec.Struct, frozen=True, tag_field="type", tag="error", omit_defaults=True):
    code: str
    message: str
    ref: str | UnsetType = UNSET
    # As in the HTTP error body: field -> problem, on a frame whose strings hold U+0000.
    fields: dict[str, str] | None = None


class Pong(msgspec.Struct, frozen=True, tag_field="type", tag="pong"):
    ref: str | UnsetType = UNSET


# Close codes, one table (STYLE rule 7): error code -> WebSocket close code.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012  # service restart: reconnect (elsewhere) and resume with since_seq
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 registry: a temporary condition; reconnect later
CLOSE_CODES: dict[str, int] = {
    "unauthenticated": CLOSE_UNAUTHENTICATED,
    "too_large": CLOSE_TOO_BIG,
    "unavailable": CLOSE_RESTART,
}
