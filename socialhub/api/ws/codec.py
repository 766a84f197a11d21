"""Frames in and out of the socket: decoding a client frame (or finding the error to
answer it with) and encoding the `error` reply. The frames themselves are in
domain/protocol.py."""

from __future__ import annotations

from typing import Any

import msgspec

from socialhub.domain.protocol import ClientFrame, Error
from socialhub.domain.text import may_hold_nul, nul_fields
from socialhub.errors import BadRequest, ValidationFailed


class Envelope(msgspec.Struct, frozen=True):
    """Just enough of any frame to answer it: its type and ref."""

    type: Any = None
    ref: Any = None


_frames = msgspec.json.Decoder(ClientFrame)
_envelope = msgspec.json.Decoder(Envelope)
_encoder = msgspec.json.Encoder()


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


def encode_error(code: str, message: str, ref: str | None = None, fields: dict[str, str] | None = None) -> bytes:
    """An `error` frame; `ref` only when the frame answered had one."""
    if ref is not None:
        return _encoder.encode(Error(code=code, message=message, ref=ref, fields=fields))
    return _encoder.encode(Error(code=code, message=message, fields=fields))
