"""What the live pub/sub channels carry between instances.

`user:<id>` reaches every socket of a user, on every instance (notifications, call
signaling); `room:<id>` every socket joined to a room. Each message is a server frame
(domain/protocol.py), encoded once, in an envelope that says which of the sockets it is
for. `presence:<id>` reaches the sockets following a user's presence: its messages are
bare `presence` frames, sent as they are.
"""

from __future__ import annotations

import msgspec

_encoder = msgspec.json.Encoder()


class UserEvent(msgspec.Struct, frozen=True):
    frame: msgspec.Raw
    only_socket: int = 0  # for one socket (a call's own), 0: every socket of the user
    exclude_socket: int = 0  # not for this socket (it did the thing)


# No lapse. Always this object: omit_defaults leaves a field out only when it is the
# default itself.
NO_LAPSE = msgspec.Raw(b"")


class RoomEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    frame: msgspec.Raw
    seq: int = 0  # for new_message: lets a joining socket drop what its replay already sent
    exclude_user: int = 0  # typing and read receipts are for the others in the room
    # A state that ends by itself (`typing true`): unless a later event with the same
    # `lapse_key` comes first, every instance delivers `lapse` to its own sockets after
    # `lapse_after` seconds, so it ends even when the instance that sent it is gone. An
    # event with the key and an empty `lapse` cancels a pending one. (Empty rather than
    # None: msgspec decodes no union with Raw.)
    lapse_key: str = ""
    lapse_after: float = 0.0
    lapse: msgspec.Raw = NO_LAPSE
    # The process that published it, which has already delivered it to its own sockets
    # (services/roomstream.py) and drops it when the broker hands it back.
    origin: int = 0


def user_channel(user_id: int) -> str:
    return f"user:{user_id}"


def room_channel(room_id: int) -> str:
    return f"room:{room_id}"


def presence_channel(user_id: int) -> str:
    return f"presence:{user_id}"


def encode_user_event(frame: msgspec.Struct, *, only_socket: int = 0, exclude_socket: int = 0) -> bytes:
    raw = msgspec.Raw(_encoder.encode(frame))
    return _encoder.encode(UserEvent(frame=raw, only_socket=only_socket, exclude_socket=exclude_socket))


def room_event(
    frame: msgspec.Struct,
    *,
    seq: int = 0,
    exclude_user: int = 0,
    lapse_key: str = "",
    lapse_after: float = 0.0,
    lapse: msgspec.Struct | None = None,
) -> RoomEvent:
    """The event carrying `frame`, encoded once: every socket is sent these same bytes."""
    return RoomEvent(
        frame=msgspec.Raw(_encoder.encode(frame)),
        seq=seq,
        exclude_user=exclude_user,
        lapse_key=lapse_key,
        lapse_after=lapse_after,
        lapse=msgspec.Raw(_encoder.encode(lapse)) if lapse is not None else NO_LAPSE,
    )
