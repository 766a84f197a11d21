"""The media policy: real types from magic bytes, and image sizes from the head."""

from __future__ import annotations

import pytest

from socialhub.domain.filetypes import IMAGE_HEAD_BYTES, SNIFF_BYTES, image_size, sniff
from tests import media_samples as s

ACCEPTED = [
    ("png", s.png(), "image/png", "image"),
    ("jpeg", s.jpeg(), "image/jpeg", "image"),
    ("gif", s.gif(), "image/gif", "image"),
    ("webp lossy", s.webp_lossy(), "image/webp", "image"),
    ("webp lossless", s.webp_lossless(), "image/webp", "image"),
    ("avif", s.ftyp(b"avif", b"mif1", b"miaf", b"MA1B"), "image/avif", "image"),
    ("avif behind mif1", s.ftyp(b"mif1", b"avif", b"miaf"), "image/avif", "image"),
    ("heic", s.ftyp(b"heic", b"mif1", b"heic"), "image/heic", "image"),
    ("heic behind mif1", s.ftyp(b"mif1", b"heic"), "image/heic", "image"),
    ("heif", s.ftyp(b"mif1", b"mif1", b"miaf"), "image/heif", "image"),
    ("mp4", s.ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "video/mp4", "video"),
    ("mp4 mp42", s.ftyp(b"mp42", b"mp42", b"isom"), "video/mp4", "video"),
    ("m4v", s.ftyp(b"M4V ", b"M4V ", b"M4A ", b"mp42", b"isom"), "video/mp4", "video"),
    ("mov", s.ftyp(b"qt  ", b"qt  "), "video/quicktime", "video"),
    ("old mov", s.pad(b"\x00\x00\x00\x08wide\x00\x00\x00\x10mdat", 64), "video/quicktime", "video"),
    ("3gp", s.ftyp(b"3gp4", b"isom", b"3gp4"), "video/3gpp", "video"),
    ("webm", s.ebml(b"webm"), "video/webm", "video"),
    ("mkv", s.ebml(b"matroska"), "video/x-matroska", "video"),
    ("ogg theora", s.theora(), "video/ogg", "video"),
    ("m4a", s.ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"), "audio/mp4", "audio"),
    ("mp3 with id3", s.id3_mp3(), "audio/mpeg", "audio"),
    ("mp3 frames", s.mp3_frames(3), "audio/mpeg", "audio"),
    ("aac adts", s.adts_frames(3), "audio/aac", "audio"),
    ("wav", s.wav(), "audio/wav", "audio"),
    ("flac", s.flac(), "audio/flac", "audio"),
    ("ogg opus", s.opus(), "audio/ogg", "audio"),
    ("ogg vorbis", s.vorbis(), "audio/ogg", "audio"),
]


@pytest.mark.parametrize(("name", "head", "content_type", "kind"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_types(name: str, head: bytes, content_type: str, kind: str) -> None:
    sniffed = sniff(head)
    assert sniffed is not None, name
    assert (sniffed.content_type, sniffed.kind) == (content_type, kind)
    # What follows the head changes nothing, and the sniffer never needs more than SNIFF_BYTES.
    assert sniff(s.pad(head, SNIFF_BYTES * 4)) == sniffed
    assert sniff(s.pad(head, SNIFF_BYTES)[:SNIFF_BYTES]) == sniffed


REFUSED = [
    ("empty", b""),
    ("windows exe", s.EXE),
    ("elf", s.ELF),
    ("zip", s.ZIP),
    ("pdf", s.PDF),
    ("html", s.HTML),
    ("html with leading space", b"  \n" + s.HTML),
    ("svg", s.SVG),
    ("bare svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'),
    ("text", b"hello, this is not a picture\n" * 10),
    ("avi", s.avi()),
    ("riff unknown", b"RIFF\x10\x00\x00\x00ABCDxxxxxxxx"),
    ("ftyp unknown brand", s.ftyp(b"crx ", b"crx ")),
    ("ebml unknown doctype", s.ebml(b"other")),
    ("ogg unknown codec", s.ogg(b"\x01unknown codec")),
    ("lone mp3 sync", b"\xff\xfb\x90\x64" + b"\x01" * 500),
    ("mpeg free bitrate", b"\xff\xfb\x00\x64" + b"\x00" * 100),
    ("truncated png signature", b"\x89PNG\r\n"),
    ("png signature one byte off", b"\x89PNG\r\n\x1a\x0b" + b"\x00" * 20),
    ("gif 88", b"GIF88a" + b"\x00" * 20),
    ("jpeg 2 bytes", b"\xff\xd8"),
    ("shell script", b"#!/bin/sh\nrm -rf /\n"),
]


@pytest.mark.parametrize(("name", "head"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_types(name: str, head: bytes) -> None:
    assert sniff(head) is None, name


def test_frame_sync_is_confirmed_by_the_next_frame_when_the_head_reaches_it() -> None:
    one = s.mp3_frames(1)
    # A file shorter than one frame has nothing to confirm with: the header alone decides.
    assert sniff(one[:200]) is not None
    # Within the head, the next frame must be where the first one's length says.
    assert sniff(one + b"\x00" * 10) is None
    assert sniff(one + one) is not None
    adts = s.adts_frames(1)
    assert sniff(adts[:100]) is not None
    assert sniff(adts + b"\x00" * 10) is None


def test_declared_type_tricks_do_not_help() -> None:
    # An executable with a PNG name is still an executable; a PNG after a prefix is not a PNG.
    assert sniff(s.EXE + s.png()) is None
    assert sniff(b"\x00" + s.png()) is None
    # A polyglot starting as an image is served as the image (with nosniff), which is harmless.
    assert sniff(s.png() + s.HTML) is not None


SIZES = [
    ("png", s.png(640, 480), "image/png", (640, 480)),
    ("png large", s.png(100_000, 3), "image/png", (100_000, 3)),
    ("gif", s.gif(320, 200), "image/gif", (320, 200)),
    ("jpeg", s.jpeg(800, 600), "image/jpeg", (800, 600)),
    ("jpeg after a big app segment", s.jpeg(1024, 768, app_padding=30_000), "image/jpeg", (1024, 768)),
    ("jpeg rotated 90", s.jpeg(800, 600, orientation=6), "image/jpeg", (600, 800)),
    ("jpeg upside down", s.jpeg(800, 600, orientation=3), "image/jpeg", (800, 600)),
    ("webp lossy", s.webp_lossy(300, 150), "image/webp", (300, 150)),
    ("webp lossless", s.webp_lossless(123, 45), "image/webp", (123, 45)),
    ("webp extended", s.webp_extended(4000, 3000), "image/webp", (4000, 3000)),
]


@pytest.mark.parametrize(("name", "head", "content_type", "size"), SIZES, ids=[x[0] for x in SIZES])
def test_image_size(name: str, head: bytes, content_type: str, size: tuple[int, int]) -> None:
    assert image_size(head, content_type) == size
    assert image_size(s.pad(head, IMAGE_HEAD_BYTES * 2), content_type) == size


def test_exif_little_endian_orientation() -> None:
    head = s.jpeg(10, 20)
    rotated = head[:2] + s.exif_orientation(8, big_endian=False) + head[2:]
    assert image_size(rotated, "image/jpeg") == (20, 10)


def test_image_size_unknown_or_out_of_reach() -> None:
    # SOF beyond the first 64 KiB: not looked for.
    deep = b"\xff\xd8" + (b"\xff\xe2" + b"\xff\xff" + b"\x00" * 65533) + s.jpeg(100, 100)[2:]
    assert image_size(deep, "image/jpeg") is None
    assert image_size(s.jpeg(100, 100)[:40], "image/jpeg") is None  # truncated before SOF
    assert image_size(s.png(1, 1)[:20], "image/png") is None
    assert image_size(s.ftyp(b"avif", b"mif1"), "image/avif") is None
    assert image_size(s.ftyp(b"isom", b"avc1"), "video/mp4") is None
    assert image_size(b"GIF89a\x00\x00\x00\x00", "image/gif") is None  # zero size
    assert image_size(b"\xff\xd8\x12\x34" + b"\x00" * 100, "image/jpeg") is None  # no marker
