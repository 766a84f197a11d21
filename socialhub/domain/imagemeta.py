"""Image metadata removal without re-encoding: the pixels are copied byte for byte.

Photos carry where and when they were taken and on what device (EXIF GPS, Make/Model,
DateTimeOriginal; XMP; IPTC; text chunks), and sometimes a thumbnail of the uncropped
original. `strip` copies an image's container from `data` to `out`, keeping what a
viewer needs to show it as meant and nothing else:

- the orientation (an EXIF block rebuilt with that one tag; dropped when it says "as
  stored"), the colour profile (ICC) and the other colour and transparency data;
- every frame of an animation, with its timing and looping;
- the compressed pixels, untouched: no decoding, no quality lost.

What goes: every other EXIF tag (the GPS and Exif sub-IFDs, the IFD1 thumbnail), XMP,
IPTC/Photoshop blocks, comments and text chunks, JFIF thumbnails, JPEG MPF (the extra
images a phone appends after the first, each with its own EXIF) and anything after the
image's end. Unknown blocks go too: keeping only what is known is what makes this a
filter rather than a blacklist.

JPEG (markers), PNG/APNG (chunks), GIF (blocks) and WebP (RIFF chunks) are rewritten.
AVIF/HEIC/HEIF keep their Exif and XMP as items located by offset in the `iloc` box;
removing them would move every other item, so `isobmff.blank_metadata_items` overwrites
them in place instead (same length, so nothing moves).

Pure and synchronous: `data` is any bytes-like object with `find` (an mmap of the
uploaded file, so a 10 MB image is paged in, not copied), `out` a binary file. A file
that ends early or breaks its format's structure raises MalformedImage.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Protocol

from PIL import Image

EXIF_ORIENTATION = 0x0112
# Orientation 1 is "as stored": an EXIF block holding only that says nothing.
ORIENTATIONS = range(2, 9)
EXIF_HEADER = b"Exif\x00\x00"
# Copies are written in pieces of this size, so a big entropy-coded segment is never
# one bytes object in memory.
COPY_CHUNK = 1 << 20


class MalformedImage(Exception):
    """The file breaks its format's structure (or ends before the image does)."""


class Buffer(Protocol):
    """What the filters read from: bytes, or an mmap of the upload."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: slice, /) -> bytes: ...
    def find(self, sub: bytes, start: int = ..., /) -> int: ...


def strip(data: Buffer, out: BinaryIO, content_type: str) -> None:
    """Write `data` without its metadata to `out`; see the module docstring."""
    if content_type == "image/jpeg":
        _strip_jpeg(data, out)
    elif content_type == "image/png":
        _strip_png(data, out)
    elif content_type == "image/gif":
        _strip_gif(data, out)
    elif content_type == "image/webp":
        _strip_webp(data, out)
    else:
        raise ValueError(f"no metadata filter for {content_type}")


def orientation_only(exif: bytes) -> bytes | None:
    """An EXIF block (TIFF bytes, with or without the "Exif\\0\\0" header) reduced to its
    orientation, as TIFF bytes without that header; None when there is nothing to keep
    (no orientation, "as stored", or a block Pillow cannot parse)."""
    parsed = Image.Exif()
    try:
        parsed.load(exif)
        orientation = parsed.get(EXIF_ORIENTATION)
    except Exception:  # a damaged block: nothing in it is worth keeping
        return None
    if orientation not in ORIENTATIONS:
        return None
    kept = Image.Exif()
    kept[EXIF_ORIENTATION] = orientation
    return kept.tobytes()[len(EXIF_HEADER) :]


def _copy(data: Buffer, start: int, end: int, out: BinaryIO) -> None:
    for offset in range(start, end, COPY_CHUNK):
        out.write(data[offset : min(offset + COPY_CHUNK, end)])


def _byte(data: Buffer, pos: int) -> int:
    if pos >= len(data):
        raise MalformedImage("the file ends before the image does")
    return data[pos : pos + 1][0]


def _need(data: Buffer, end: int) -> None:
    if end > len(data):
        raise MalformedImage("the file ends before the image does")


# -- JPEG (ITU T.81 markers; JFIF, EXIF, ICC and Adobe APPn segments) ------------------------

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
APP0, APP1, APP2, APP14, COM = 0xE0, 0xE1, 0xE2, 0xEE, 0xFE
# Segments the decoder needs: frame headers (SOF0-15 but DHT C4, JPG C8, DAC CC), tables
# (DHT, DAC, DQT), DNL, DRI, DHP, EXP.
JPEG_CODING = frozenset((*range(0xC0, 0xD0), 0xDB, 0xDC, 0xDD, 0xDE, 0xDF)) - {0xC8}
# Markers without a length: TEM and the restart markers.
JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))
# JFIF APP0 up to and with the thumbnail's width and height (then the thumbnail's pixels).
JFIF_FIXED = 14


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _strip_jpeg(data: Buffer, out: BinaryIO) -> None:
    if data[0:2] != b"\xff\xd8":
        raise MalformedImage("not a JPEG")
    out.write(b"\xff\xd8")
    pos = 2
    exif_seen = False
    while True:
        if _byte(data, pos) != 0xFF:
            raise MalformedImage("a JPEG segment does not start with a marker")
        while _byte(data, pos + 1) == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = _byte(data, pos + 1)
        if marker == EOI:
            # Whatever follows (MPF images, vendor trailers, a zip) is not this image.
            out.write(b"\xff\xd9")
            return
        if marker in JPEG_STANDALONE:
            out.write(data[pos : pos + 2])
            pos += 2
            continue
        _need(data, pos + 4)
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        end = pos + 2 + length
        if length < 2:
            raise MalformedImage("a JPEG segment has a bad length")
        _need(data, end)
        if marker == SOS:
            out.write(data[pos:end])
            scan_end = _entropy_end(data, end)
            _copy(data, end, scan_end, out)
            pos = scan_end
            continue
        if marker in JPEG_CODING:
            out.write(data[pos:end])
        elif marker == APP0:
            payload = data[pos + 4 : end]
            if payload.startswith(b"JFIF\x00") and len(payload) >= JFIF_FIXED:
                # The JFIF thumbnail may show what a crop removed: keep the header, no thumbnail.
                out.write(_jpeg_segment(APP0, payload[: JFIF_FIXED - 2] + b"\x00\x00"))
        elif marker == APP1:
            payload = data[pos + 4 : end]
            if payload.startswith(EXIF_HEADER) and not exif_seen:
                exif_seen = True
                kept = orientation_only(payload)
                if kept is not None:
                    out.write(_jpeg_segment(APP1, EXIF_HEADER + kept))
        elif marker == APP2:
            if data[pos + 4 : pos + 16] == b"ICC_PROFILE\x00":
                out.write(data[pos:end])
        elif marker == APP14:
            # Adobe's segment says whether the components are RGB, YCbCr or YCCK.
            if data[pos + 4 : pos + 9] == b"Adobe":
                out.write(data[pos:end])
        elif APP0 <= marker <= 0xEF or marker == COM:
            pass  # XMP, IPTC, MPF, FPXR, comments, vendor blocks
        else:
            raise MalformedImage(f"unsupported JPEG marker 0x{marker:02X}")
        pos = end


def _entropy_end(data: Buffer, pos: int) -> int:
    """Where the entropy-coded data after an SOS header ends: the next real marker."""
    while True:
        ff = data.find(b"\xff", pos)
        if ff < 0:
            raise MalformedImage("the file ends inside the JPEG's image data")
        following = _byte(data, ff + 1)
        if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed 0xFF, restart marker
            pos = ff + 2
            continue
        return ff


# -- PNG and APNG (PNG 3rd edition chunks) ------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that shape what is shown: the critical ones, transparency, colour (gamma,
# chromaticities, sRGB, ICC, significant bits, CICP and HDR metadata), background, pixel
# aspect, and APNG's animation control and frames.
PNG_KEEP = frozenset(
    (
        b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
        b"cICP", b"mDCV", b"cLLI", b"mDCv", b"cLLi", b"bKGD", b"pHYs", b"acTL", b"fcTL", b"fdAT",
    )
)  # fmt: skip


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _strip_png(data: Buffer, out: BinaryIO) -> None:
    if data[0:8] != PNG_SIGNATURE:
        raise MalformedImage("not a PNG")
    out.write(PNG_SIGNATURE)
    pos = 8
    while True:
        _need(data, pos + 8)
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        _need(data, end)
        if kind in PNG_KEEP:
            _copy(data, pos, end, out)
            if kind == b"IEND":
                return  # anything after IEND is not part of the image
        elif kind == b"eXIf":
            kept = orientation_only(data[pos + 8 : pos + 8 + length])
            if kept is not None:
                out.write(_png_chunk(b"eXIf", kept))
        elif kind[0:1].isupper():
            # A critical chunk this filter does not know (e.g. Apple's CgBI): decoders must
            # refuse such a file, and so do we.
            raise MalformedImage(f"unknown critical PNG chunk {kind!r}")
        pos = end


# -- GIF (GIF89a blocks) -------------------------------------------------------------------------

GIF_EXTENSION, GIF_IMAGE, GIF_TRAILER = 0x21, 0x2C, 0x3B
GIF_GRAPHIC_CONTROL, GIF_PLAIN_TEXT, GIF_APPLICATION = 0xF9, 0x01, 0xFF
# Application extensions a viewer uses: looping (Netscape, and its older twin) and an ICC
# profile. XMP ("XMP DataXMP") and everything else go.
GIF_APPS_KEPT = frozenset((b"NETSCAPE2.0", b"ANIMEXTS1.0", b"ICCRGBG1012"))


def _gif_sub_blocks_end(data: Buffer, pos: int) -> int:
    """The end of a chain of data sub-blocks starting at `pos` (after its 0 terminator)."""
    while True:
        size = _byte(data, pos)
        pos += 1 + size
        if size == 0:
            return pos


def _strip_gif(data: Buffer, out: BinaryIO) -> None:
    if data[0:6] not in (b"GIF87a", b"GIF89a"):
        raise MalformedImage("not a GIF")
    flags = _byte(data, 10)
    pos = 13 + (3 << ((flags & 0x07) + 1) if flags & 0x80 else 0)  # header, screen, global palette
    _need(data, pos)
    _copy(data, 0, pos, out)
    while True:
        block = _byte(data, pos)
        if block == GIF_TRAILER:
            out.write(b"\x3b")  # and nothing after it
            return
        if block == GIF_IMAGE:
            _need(data, pos + 10)
            local = _byte(data, pos + 9)
            start = pos
            pos += 10 + (3 << ((local & 0x07) + 1) if local & 0x80 else 0)
            pos = _gif_sub_blocks_end(data, pos + 1)  # after the LZW minimum code size
            _need(data, pos)
            _copy(data, start, pos, out)
        elif block == GIF_EXTENSION:
            label = _byte(data, pos + 1)
            start = pos
            pos = _gif_sub_blocks_end(data, pos + 2)
            _need(data, pos)
            if label in (GIF_GRAPHIC_CONTROL, GIF_PLAIN_TEXT):
                _copy(data, start, pos, out)
            elif label == GIF_APPLICATION and data[start + 3 : start + 14] in GIF_APPS_KEPT:
                _copy(data, start, pos, out)
            # comments (0xFE), XMP and other application blocks are dropped
        else:
            raise MalformedImage(f"unknown GIF block 0x{block:02X}")


# -- WebP (RIFF container: simple VP8/VP8L, or extended VP8X) -------------------------------------

# Extended-format chunks that shape what is shown: the header, ICC, animation, alpha and
# the bitstreams. EXIF is reduced to the orientation; XMP and unknown chunks go.
WEBP_KEEP = frozenset((b"VP8X", b"ICCP", b"ANIM", b"ANMF", b"ALPH", b"VP8 ", b"VP8L"))
VP8X_EXIF, VP8X_XMP = 0x08, 0x04


def _strip_webp(data: Buffer, out: BinaryIO) -> None:
    if data[0:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise MalformedImage("not a WebP")
    end = 8 + struct.unpack("<I", data[4:8])[0]
    _need(data, end)
    # Each kept chunk: (fourcc, (start, end) of the payload in data, or new payload bytes).
    chunks: list[tuple[bytes, tuple[int, int] | bytes]] = []
    pos = 12
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        payload = (pos + 8, pos + 8 + size)
        _need(data, payload[1])
        if kind in WEBP_KEEP:
            chunks.append((kind, payload))
        elif kind == b"EXIF":
            kept = orientation_only(data[payload[0] : payload[1]])
            if kept is not None:
                chunks.append((kind, kept))
        pos = payload[1] + (size & 1)  # chunks are padded to an even size
    if not chunks:
        raise MalformedImage("a WebP without an image")
    if chunks[0][0] == b"VP8X":
        header = chunks[0][1]
        assert isinstance(header, tuple)
        vp8x = bytearray(data[header[0] : header[1]])
        if not vp8x:
            raise MalformedImage("an empty VP8X chunk")
        vp8x[0] &= ~(VP8X_EXIF | VP8X_XMP) & 0xFF
        if any(kind == b"EXIF" for kind, _ in chunks):
            vp8x[0] |= VP8X_EXIF
        chunks[0] = (b"VP8X", bytes(vp8x))
    else:
        # The simple format is one bitstream chunk; anything beside it is not read.
        chunks = chunks[:1]

    def length(part: tuple[int, int] | bytes) -> int:
        return part[1] - part[0] if isinstance(part, tuple) else len(part)

    total = 4 + sum(8 + length(p) + (length(p) & 1) for _, p in chunks)
    out.write(b"RIFF" + struct.pack("<I", total) + b"WEBP")
    for kind, part in chunks:
        n = length(part)
        out.write(kind + struct.pack("<I", n))
        if isinstance(part, tuple):
            _copy(data, part[0], part[1], out)
        else:
            out.write(part)
        if n & 1:
            out.write(b"\x00")
