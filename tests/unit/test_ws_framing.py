"""Frames the server writes: encoded by the `websockets` library, once per payload for a
fan-out (api/ws/session.py `framed`), and readable by the library's own parser."""

from __future__ import annotations

from collections.abc import Generator

from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from socialhub.api.ws.session import PING, framed


def parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser: Generator[None, None, Frame] = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


def test_a_payload_is_framed_once_and_reads_back() -> None:
    payload = b'{"type":"new_message","message":{"seq":1}}'
    first = framed(payload)
    # The same payload object (a fan-out hands it to every socket): the same bytes, not re-encoded.
    assert framed(payload) is first
    frame = parse(first)
    assert (frame.opcode, frame.data, frame.fin) == (Opcode.TEXT, payload, True)
    # An equal payload in another object is framed again, equally.
    other = bytes(bytearray(payload))
    assert other is not payload
    assert framed(other) == first
    # Lengths that take the 16-bit and 64-bit length forms.
    for size in (125, 126, 65535, 65536, 70_000):
        big = b"x" * size
        assert parse(framed(big)).data == big


def test_the_keepalive_ping() -> None:
    frame = parse(PING)
    assert (frame.opcode, frame.data) == (Opcode.PING, b"")
