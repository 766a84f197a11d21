"""What the live pub/sub channels carry between instances.

`user:<id>` reaches every socket of a user, on every instance (notifications, call
signaling); `room:<id>` every socket joined to a room. Each message is a server frame,
encoded once, in an envelope that says which of the sockets it is for.
"""

from __future__ import annotations

import msgspec

_encoder = msgspec.json.Encoder()


class UserEvent(msgspec.Struct, frozen=True):
    frame: msgspec.Raw
    only_socket: int = 0  # for one socket (a call's own), 0: every socket of the user
    exclude_socket: int = 0  # not for this socket (it did the thing)


class RoomEvent(msgspec.Struct, frozen=True):
    frame: msgspec.Raw
    seq: int = 0  # for new_message: lets a joining socket drop what its replay already sent
    exclude_user: int = 0  # typing and read receipts are for the others in the room


def user_channel(user_id: int) -> str:
    return f"user:{user_id}"


def room_channel(room_id: int) -> str:
    return f"room:{room_id}"


def encode_user_event(frame: msgspec.Struct, *, only_socket: int = 0, exclude_socket: int = 0) -> bytes:
    raw = msgspec.Raw(_encoder.encode(frame))
    return _encoder.encode(UserEvent(frame=raw, only_socket=only_socket, exclude_socket=exclude_socket))


def encode_room_event(frame: msgspec.Struct, *, seq: int = 0, exclude_user: int = 0) -> bytes:
    return _encoder.encode(RoomEvent(frame=msgspec.Raw(_encoder.encode(frame)), seq=seq, exclude_user=exclude_user))
