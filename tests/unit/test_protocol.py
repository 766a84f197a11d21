"""The socket's frames (domain/protocol.py): every one round-trips, keeps its bytes, and
every client frame has a handler."""

from __future__ import annotations

from typing import Any, get_args

import msgspec
import pytest

from socialhub.api.ws.dispatch import Dispatcher
from socialhub.domain import protocol as p
from socialhub.domain.calls import Call
from socialhub.domain.chat import Message
from socialhub.domain.notifications import Notification
from socialhub.domain.users import UserSummary

ALICE = UserSummary(id="1", username="alice", name="Alice", avatar_url=None)
BOB = UserSummary(id="2", username="bob", name="Bob", avatar_url="/media/b.png")
MESSAGE = Message(
    id="10", room_id="5", seq=3, sender=ALICE, body="hi", client_msg_id="c1", created_at="2024-05-01T12:00:00.000Z"
)
CALL = Call(id="7", caller=ALICE, callee=BOB, media="audio", state="ringing", started_at="2024-05-01T12:00:00.000Z")
NOTIFICATION = Notification(
    id="9", type="follow", actor=BOB, created_at="2024-05-01T12:00:00.000Z", read=False, post_id="4"
)
ALICE_JSON = '{"id":"1","username":"alice","name":"Alice","avatar_url":null}'
BOB_JSON = '{"id":"2","username":"bob","name":"Bob","avatar_url":"/media/b.png"}'
MESSAGE_JSON = (
    f'{{"id":"10","room_id":"5","seq":3,"sender":{ALICE_JSON},"body":"hi","client_msg_id":"c1",'
    '"created_at":"2024-05-01T12:00:00.000Z"}'
)
CALL_JSON = (
    f'{{"id":"7","caller":{ALICE_JSON},"callee":{BOB_JSON},"media":"audio","state":"ringing",'
    '"started_at":"2024-05-01T12:00:00.000Z"}'
)

# One of each frame, and its bytes on the wire (as they were before the frames moved
# into one module: clients parse these).
CLIENT: list[tuple[p.Frame, str]] = [
    (p.Authenticate(token="t"), '{"type":"authenticate","token":"t","ref":null}'),
    (p.JoinRoom(room_id="5", since_seq=2, ref="r"), '{"type":"join_room","room_id":"5","since_seq":2,"ref":"r"}'),
    (p.LeaveRoom(room_id="5"), '{"type":"leave_room","room_id":"5","ref":null}'),
    (
        p.SendMessage(room_id="5", body="hi", client_msg_id="c1"),
        '{"type":"send_message","room_id":"5","body":"hi","client_msg_id":"c1","ref":null}',
    ),
    (p.Typing(room_id="5", state=True), '{"type":"typing","room_id":"5","state":true,"ref":null}'),
    (p.Read(room_id="5", seq=3), '{"type":"read","room_id":"5","seq":3,"ref":null}'),
    (p.SubscribePresence(user_ids=["1", "2"]), '{"type":"subscribe_presence","user_ids":["1","2"],"ref":null}'),
    (
        p.CallInvite(callee_id="2", media="video", sdp="v=0"),
        '{"type":"call_invite","callee_id":"2","media":"video","sdp":"v=0","ref":null}',
    ),
    (p.CallAnswer(call_id="7", sdp="v=0"), '{"type":"call_answer","call_id":"7","sdp":"v=0","ref":null}'),
    (
        p.CallCandidate(call_id="7", candidate={"candidate": "c", "sdpMid": "0"}),
        '{"type":"call_candidate","call_id":"7","candidate":{"candidate":"c","sdpMid":"0"},"ref":null}',
    ),
    (p.CallReject(call_id="7"), '{"type":"call_reject","call_id":"7","ref":null}'),
    (p.CallHangup(call_id="7"), '{"type":"call_hangup","call_id":"7","ref":null}'),
    (p.Ping(ref="x"), '{"type":"ping","ref":"x"}'),
]
SERVER: list[tuple[msgspec.Struct, str]] = [
    (p.Authenticated(user_id="1", session_id="2"), '{"type":"authenticated","user_id":"1","session_id":"2"}'),
    (p.Ack(), '{"type":"ack"}'),
    (p.Ack(ref="r", message=MESSAGE), f'{{"type":"ack","ref":"r","message":{MESSAGE_JSON}}}'),
    (p.Ack(ref="r", call=CALL), f'{{"type":"ack","ref":"r","call":{CALL_JSON}}}'),
    (p.Error(code="forbidden", message="no"), '{"type":"error","code":"forbidden","message":"no"}'),
    (
        p.Error(code="validation_error", message="m", ref="r", fields={"body": "nul"}),
        '{"type":"error","code":"validation_error","message":"m","ref":"r","fields":{"body":"nul"}}',
    ),
    (p.Joined(room_id="5", last_seq=3), '{"type":"joined","room_id":"5","last_seq":3}'),
    (p.Joined(room_id="5", last_seq=3, ref="r"), '{"type":"joined","room_id":"5","last_seq":3,"ref":"r"}'),
    (p.Pong(), '{"type":"pong"}'),
    (p.Pong(ref="x"), '{"type":"pong","ref":"x"}'),
    (p.NewMessageFrame(MESSAGE), f'{{"type":"new_message","message":{MESSAGE_JSON}}}'),
    (
        p.TypingFrame(room_id="5", user_id="1", state=False),
        '{"type":"typing","room_id":"5","user_id":"1","state":false}',
    ),
    (p.ReadFrame(room_id="5", user_id="1", seq=3), '{"type":"read","room_id":"5","user_id":"1","seq":3}'),
    (
        p.PresenceView(user_id="1", status="offline", last_seen="2024-05-01T12:00:00.123Z"),
        '{"type":"presence","user_id":"1","status":"offline","last_seen":"2024-05-01T12:00:00.123Z"}',
    ),
    (
        p.PresenceView(user_id="1", status="online", last_seen=None),
        '{"type":"presence","user_id":"1","status":"online","last_seen":null}',
    ),
    (p.CallIncoming(call=CALL, sdp="v=0"), f'{{"type":"call_incoming","call":{CALL_JSON},"sdp":"v=0"}}'),
    (p.CallAnswered(call_id="7", sdp="v=0"), '{"type":"call_answered","call_id":"7","sdp":"v=0"}'),
    (
        p.CallCandidateFrame(call_id="7", candidate={"candidate": "c"}),
        '{"type":"call_candidate","call_id":"7","candidate":{"candidate":"c"}}',
    ),
    (p.CallEnded(call_id="7", reason="busy"), '{"type":"call_ended","call_id":"7","reason":"busy"}'),
    (
        p.NotificationFrame(NOTIFICATION),
        '{"type":"notification","notification":{"id":"9","type":"follow","actor":'
        f'{BOB_JSON},"created_at":"2024-05-01T12:00:00.000Z","read":false,"post_id":"4"}}}}',
    ),
]


def test_the_lists_name_every_frame_of_the_unions_once() -> None:
    assert p.CLIENT_FRAMES == get_args(p.ClientFrame)
    assert p.SERVER_FRAMES == get_args(p.ServerFrame)
    for frames in (p.CLIENT_FRAMES, p.SERVER_FRAMES):
        tags = [f.__struct_config__.tag for f in frames]
        assert len(set(tags)) == len(tags)
        assert all(f.__struct_config__.tag_field == "type" and f.__struct_config__.frozen for f in frames)
        assert all(f.__doc__ for f in frames), "every frame says what it does and when it is sent"


def test_the_examples_cover_every_frame() -> None:
    assert {type(frame) for frame, _ in CLIENT} == set(p.CLIENT_FRAMES)
    assert {type(frame) for frame, _ in SERVER} == set(p.SERVER_FRAMES)


@pytest.mark.parametrize(("frame", "wire"), CLIENT, ids=lambda v: type(v).__name__ if not isinstance(v, str) else "")
def test_client_frames_round_trip(frame: p.Frame, wire: str) -> None:
    data = msgspec.json.encode(frame)
    assert data.decode() == wire
    assert msgspec.json.decode(data, type=p.ClientFrame) == frame


@pytest.mark.parametrize(("frame", "wire"), SERVER, ids=lambda v: type(v).__name__ if not isinstance(v, str) else "")
def test_server_frames_round_trip(frame: Any, wire: str) -> None:
    data = msgspec.json.encode(frame)
    assert data.decode() == wire
    assert msgspec.json.decode(data, type=p.ServerFrame) == frame


def test_every_client_frame_is_handled() -> None:
    """`authenticate` by the endpoint (first frame only), every other by the dispatcher."""
    assert set(Dispatcher.HANDLERS) == set(p.CLIENT_FRAMES) - {p.Authenticate}


def test_close_codes_follow_their_errors() -> None:
    assert p.CLOSE_CODES == {"unauthenticated": 4401, "too_large": 1009, "unavailable": 1012}
    assert (p.CLOSE_POLICY, p.CLOSE_RESTART, p.CLOSE_TRY_AGAIN_LATER) == (1008, 1012, 1013)
