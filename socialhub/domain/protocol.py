"""The WebSocket protocol of `GET /ws`: every frame, in the order a session meets them.

One socket per client carries everything live. Every frame is a JSON object (a text
or binary WebSocket message) with a `type`. A client may add `ref` (a string) to any
frame it sends; the server echoes it on the direct reply to that frame (`ack`,
`joined`, `pong` or `error`). Ids are decimal strings, times RFC 3339 UTC with
milliseconds. A socket may send 30 frames a second, bursts of 60 (the rate limit
`ws_frames` in the configuration): a frame over it is answered `error rate_limited` and
dropped.

Read top to bottom: the limits, the handshake, the frames a client sends, the frames
the server sends, the close codes. `CLIENT_FRAMES` and `SERVER_FRAMES` list them all;
the AsyncAPI document is generated from this module. Pure types: no I/O here.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, UnsetType

from socialhub.domain.calls import Call
from socialhub.domain.chat import Message
from socialhub.domain.notifications import Notification

# -- limits ---------------------------------------------------------------------------

MAX_FRAME_BYTES: Final = 64 * 1024
"""SPEC: a larger frame closes the socket with CLOSE_TOO_BIG (uvicorn's ws_max_size)."""
AUTH_TIMEOUT_SECONDS: Final = 10.0
"""SPEC: `authenticate` must come first, within this, else close CLOSE_UNAUTHENTICATED."""
PING_INTERVAL_SECONDS: Final = 20.0
"""SPEC: the server pings this often and drops a socket that does not answer in as long."""
MAX_REF_CHARS: Final = 100
"""A `ref` is the client's correlation id: a UUID, a counter; this is plenty."""
MAX_TOKEN_CHARS: Final = 4096
"""An access token is a few hundred characters; the bound keeps a junk one cheap."""
MAX_ID_DIGITS: Final = 20
"""Ids are 64-bit snowflakes: at most 20 decimal digits."""
MAX_BODY_CHARS: Final = 4000
"""SPEC: a message body is 1..4000 characters."""
MAX_CLIENT_MSG_ID_CHARS: Final = 128
"""A client's idempotency key for a message (a UUID is 36)."""
MAX_SDP_CHARS: Final = 60_000
"""An SDP offer of a few m-lines is 2-6 KB; the 64 KiB frame cap bounds it anyway."""
MAX_PRESENCE_IDS: Final = 5000
"""A socket follows the presence of at most this many users, over any number of frames:
a whole contact list (5,000 is Facebook's cap on friends, the larger social graphs'
usual bound). One 64 KiB frame holds about 2,900 ids, so a bigger list takes two."""
TYPING_EXPIRES_SECONDS: Final = 6.0
"""SPEC: `typing true` ends by itself after this; the others then get `typing false`."""

Ref = Annotated[str, msgspec.Meta(max_length=MAX_REF_CHARS)] | None
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_DIGITS, pattern=r"^[0-9]+$")]
Seq = Annotated[int, msgspec.Meta(ge=0)]
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_BODY_CHARS)]
ClientMsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CLIENT_MSG_ID_CHARS)]
Sdp = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SDP_CHARS)]
PresenceStatus = Literal["online", "offline"]


class Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A frame a client sends: any may carry `ref`, echoed on the direct reply."""

    ref: Ref = None


# -- handshake ------------------------------------------------------------------------


class Authenticate(Frame, frozen=True, tag="authenticate"):
    """Client, first frame, within AUTH_TIMEOUT_SECONDS: the access token of a session.
    A bad token gets `error unauthenticated`, then close CLOSE_UNAUTHENTICATED; a server
    that cannot check it for now gets `error unavailable`, then close CLOSE_RESTART."""

    token: Annotated[str, msgspec.Meta(max_length=MAX_TOKEN_CHARS)]


class Authenticated(msgspec.Struct, frozen=True, tag_field="type", tag="authenticated"):
    """Server, the answer to a good `authenticate`: the socket is live. The same user may
    hold several sockets (devices), on any instances."""

    user_id: str
    session_id: str


# -- client frames --------------------------------------------------------------------


class JoinRoom(Frame, frozen=True, tag="join_room"):
    """Start the room's stream on this socket (members only, else `error forbidden`).
    Answered `joined`, then every message with seq > `since_seq` as `new_message`, then
    new ones as they come: each once, in seq order, none missing."""

    room_id: Id
    since_seq: Seq | None = None


class LeaveRoom(Frame, frozen=True, tag="leave_room"):
    """Stop the room's stream on this socket. Answered `ack` when it has a `ref`."""

    room_id: Id


class SendMessage(Frame, frozen=True, tag="send_message"):
    """Store a message (seq assigned) and send it as `new_message` to every socket that
    joined the room, on every instance. Answered `ack {message}`. The same
    `client_msg_id` from the same sender is stored once and acked with the same message."""

    room_id: Id
    body: Body
    client_msg_id: ClientMsgId


class Typing(Frame, frozen=True, tag="typing"):
    """Tell the others in the room (`typing` from the server); `true` ends by itself
    after TYPING_EXPIRES_SECONDS. Answered `ack` when it has a `ref`."""

    room_id: Id
    state: bool


class Read(Frame, frozen=True, tag="read"):
    """Mark the room read up to `seq` (stored: unread counts); the others in the room get
    `read`. Answered `ack` when it has a `ref`."""

    room_id: Id
    seq: Seq


class SubscribePresence(Frame, frozen=True, tag="subscribe_presence"):
    """Follow these users' presence: a `presence` frame for each now, and on each change.
    Adds to what the socket follows, up to MAX_PRESENCE_IDS in all. Answered `ack` when
    it has a `ref`, after the snapshot."""

    user_ids: Annotated[list[Id], msgspec.Meta(max_length=MAX_PRESENCE_IDS)]


class CallInvite(Frame, frozen=True, tag="call_invite"):
    """Call a user with an SDP offer. Answered `ack {call}`; every socket of the callee
    gets `call_incoming`. A busy callee: `call_ended busy`; no answer in time: `call_ended
    missed` to both and a `missed_call` notification. SDP that does not parse: `error
    bad_request`."""

    callee_id: Id
    media: Literal["audio", "video"]
    sdp: Sdp


class CallAnswer(Frame, frozen=True, tag="call_answer"):
    """Callee: accept with an SDP answer. Answered `ack {call}`; the caller gets
    `call_answered`, the callee's other sockets `call_ended answered_elsewhere`."""

    call_id: Id
    sdp: Sdp


class CallCandidate(Frame, frozen=True, tag="call_candidate"):
    """Either party: an ICE candidate, relayed to the other as `call_candidate`."""

    call_id: Id
    candidate: Any


class CallReject(Frame, frozen=True, tag="call_reject"):
    """Callee: decline a ringing call. Answered `ack {call}`; both get `call_ended rejected`."""

    call_id: Id


class CallHangup(Frame, frozen=True, tag="call_hangup"):
    """Either party: end the call. Answered `ack {call}`; both get `call_ended hangup`."""

    call_id: Id


class Ping(Frame, frozen=True, tag="ping"):
    """An application-level ping (the server also pings at the WebSocket level): `pong`."""


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
CLIENT_FRAMES: Final[tuple[type[Frame], ...]] = (
    Authenticate,
    JoinRoom,
    LeaveRoom,
    SendMessage,
    Typing,
    Read,
    SubscribePresence,
    CallInvite,
    CallAnswer,
    CallCandidate,
    CallReject,
    CallHangup,
    Ping,
)

# -- server frames --------------------------------------------------------------------


class Ack(msgspec.Struct, frozen=True, tag_field="type", tag="ack", omit_defaults=True):
    """The direct reply to a frame that succeeded: with `message` for `send_message`,
    with `call` for the call frames; bare (only when the frame had a `ref`) otherwise."""

    ref: str | None = None
    message: Message | UnsetType = UNSET
    call: Call | UnsetType = UNSET


class Error(msgspec.Struct, frozen=True, tag_field="type", tag="error", omit_defaults=True):
    """The direct reply to a frame that failed, with the error codes of the HTTP API
    (`bad_request`, `validation_error`, `forbidden`, `not_found`, `rate_limited`,
    `unavailable`, ...). The socket stays open unless a close code follows."""

    code: str
    message: str
    ref: str | UnsetType = UNSET
    fields: dict[str, str] | None = None
    """As in the HTTP error body: field -> problem (a string holding U+0000)."""


class Joined(msgspec.Struct, frozen=True, tag_field="type", tag="joined"):
    """The reply to `join_room`: the room's last seq when the stream started; the replay
    (if `since_seq` was below it) follows, then the live stream."""

    room_id: str
    last_seq: int
    ref: str | UnsetType = UNSET


class Pong(msgspec.Struct, frozen=True, tag_field="type", tag="pong"):
    """The reply to `ping`."""

    ref: str | UnsetType = UNSET


class NewMessageFrame(msgspec.Struct, frozen=True, tag_field="type", tag="new_message"):
    """A message of a room this socket joined: replayed after `joined`, then live. Each
    seq once and in order, whichever instance the sender was on."""

    message: Message


class TypingFrame(msgspec.Struct, frozen=True, tag_field="type", tag="typing"):
    """Another member of a joined room started or stopped typing."""

    room_id: str
    user_id: str
    state: bool


class ReadFrame(msgspec.Struct, frozen=True, tag_field="type", tag="read"):
    """Another member of a joined room read up to `seq`."""

    room_id: str
    user_id: str
    seq: int


class PresenceView(msgspec.Struct, frozen=True, tag_field="type", tag="presence"):
    """A followed user's presence, sent on `subscribe_presence` and on each change (also
    the body of `GET /users/{ref}/presence`). Online while any socket of theirs is open
    anywhere; offline a few seconds after the last one closes."""

    user_id: str
    status: PresenceStatus
    last_seen: str | None
    """RFC 3339 ms; null while online or when never seen."""


class CallIncoming(msgspec.Struct, frozen=True, tag_field="type", tag="call_incoming"):
    """To every socket of the callee: a call rings, with the caller's SDP offer."""

    call: Call
    sdp: str


class CallAnswered(msgspec.Struct, frozen=True, tag_field="type", tag="call_answered"):
    """To the caller's socket: the callee answered, with the SDP answer."""

    call_id: str
    sdp: str


class CallCandidateFrame(msgspec.Struct, frozen=True, tag_field="type", tag="call_candidate"):
    """To the other party: an ICE candidate relayed as sent."""

    call_id: str
    candidate: Any


class CallEnded(msgspec.Struct, frozen=True, tag_field="type", tag="call_ended"):
    """A call ended, or never rang on this socket. `reason`: `busy`
    (to the caller), `missed` (no answer in time, to both), `answered_elsewhere` (to
    the callee's other sockets), `rejected`, `hangup` (to both; also when a party vanished)."""

    call_id: str
    reason: str


class NotificationFrame(msgspec.Struct, frozen=True, tag_field="type", tag="notification"):
    """To every socket of the user: a notification, the moment it is created."""

    notification: Notification


ServerFrame = (
    Authenticated
    | Ack
    | Error
    | Joined
    | Pong
    | NewMessageFrame
    | TypingFrame
    | ReadFrame
    | PresenceView
    | CallIncoming
    | CallAnswered
    | CallCandidateFrame
    | CallEnded
    | NotificationFrame
)
SERVER_FRAMES: Final[tuple[type[msgspec.Struct], ...]] = (
    Authenticated,
    Ack,
    Error,
    Joined,
    Pong,
    NewMessageFrame,
    TypingFrame,
    ReadFrame,
    PresenceView,
    CallIncoming,
    CallAnswered,
    CallCandidateFrame,
    CallEnded,
    NotificationFrame,
)

# -- close codes ----------------------------------------------------------------------

CLOSE_NORMAL: Final = 1000
"""The socket ended normally (the client closed it)."""
CLOSE_INVALID_DATA: Final = 1007
"""A text frame that is not UTF-8."""
CLOSE_POLICY: Final = 1008
"""The client does not read: more than the send buffer waited for it, or it took nothing
of its replay for a while. What it missed is stored; it reconnects and resumes with
`since_seq`."""
CLOSE_TOO_BIG: Final = 1009
"""A frame over MAX_FRAME_BYTES."""
CLOSE_INTERNAL: Final = 1011
"""The server could not go on with this socket: a keepalive ping got no answer, or handling
a frame failed unexpectedly. Reconnect with back-off and resume with `since_seq`."""
CLOSE_RESTART: Final = 1012
"""Service restart, or the stream may have a gap (the broker link was lost): reconnect,
elsewhere if need be, and resume each room with `since_seq`."""
CLOSE_TRY_AGAIN_LATER: Final = 1013
"""RFC 6455 registry: a temporary condition (the broker is down); reconnect later.
socialhub answers such an upgrade with HTTP 503 instead and never sends this code; a
client treats it as it treats that 503 (a proxy in front may send it)."""
CLOSE_UNAUTHENTICATED: Final = 4401
"""No valid `authenticate` in time, or the session ended (logout, password reset):
sign in again before reconnecting."""

CLOSE_CODES: Final[dict[str, int]] = {
    "unauthenticated": CLOSE_UNAUTHENTICATED,
    "too_large": CLOSE_TOO_BIG,
    "unavailable": CLOSE_RESTART,
}
"""Error code -> the close code that follows it (STYLE rule 7: one table). An error of
a single frame (`too_large`, `unavailable`) leaves the socket open all the same."""

# -- replies --------------------------------------------------------------------------

REPLIES: Final[dict[type[Frame], tuple[type[msgspec.Struct], ...]]] = {
    Authenticate: (Authenticated, Error),
    JoinRoom: (Joined, Error),
    LeaveRoom: (Ack, Error),
    SendMessage: (Ack, Error),
    Typing: (Ack, Error),
    Read: (Ack, Error),
    SubscribePresence: (Ack, Error),
    CallInvite: (Ack, Error),
    CallAnswer: (Ack, Error),
    CallCandidate: (Ack, Error),
    CallReject: (Ack, Error),
    CallHangup: (Ack, Error),
    Ping: (Pong, Error),
}
"""Client frame -> the frames that answer it directly, with its `ref` (a bare `ack`
only when the frame had one). Everything else the server sends comes unasked."""
