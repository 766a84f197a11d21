"""File types: which files are accepted, decided from their first bytes.

The type a client declares (and the file name) is never believed: `sniff` reads the
magic bytes and answers the real type, or None for anything that is not an image,
a video or an audio file we serve (the caller answers 415). Refused on purpose:
SVG (it can carry script), HTML, PDF, archives, executables, and anything unknown.

`image_size` reads the pixel size of the common image formats from the same head,
when that is cheap (no decoding; a bounded scan of the first bytes).

No I/O here: both functions look only at the bytes given to them.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

Kind = Literal["image", "video", "audio"]
ALL_KINDS: frozenset[Kind] = frozenset(("image", "video", "audio"))
IMAGE_ONLY: frozenset[Kind] = frozenset(("image",))

# How much of a file `sniff` needs. Every signature below sits in the first few dozen
# bytes, except the second frame header that confirms an MP3 or AAC stream found by
# frame sync alone: an MP3 frame is at most 1441 bytes (320 kbit/s at 32 kHz, padded)
# and AAC frames are rarely over 2 KiB, so 4 KiB sees the second header.
SNIFF_BYTES = 4096
# How much `image_size` looks at: a JPEG's SOF marker comes after its APP segments
# (EXIF, ICC profile, thumbnail), each at most 64 KiB and usually far less.
IMAGE_HEAD_BYTES = 64 * 1024


class Sniffed(msgspec.Struct, frozen=True):
    """The real type of a file: what it is served as, and its broad kind."""

    content_type: str
    kind: Kind


PNG = Sniffed("image/png", "image")
JPEG = Sniffed("image/jpeg", "image")
GIF = Sniffed("image/gif", "image")
WEBP = Sniffed("image/webp", "image")
AVIF = Sniffed("image/avif", "image")
HEIC = Sniffed("image/heic", "image")
HEIF = Sniffed("image/heif", "image")
MP4 = Sniffed("video/mp4", "video")
QUICKTIME = Sniffed("video/quicktime", "video")
THREE_GP = Sniffed("video/3gpp", "video")
WEBM = Sniffed("video/webm", "video")
MATROSKA = Sniffed("video/x-matroska", "video")
OGG_VIDEO = Sniffed("video/ogg", "video")
M4A = Sniffed("audio/mp4", "audio")
MP3 = Sniffed("audio/mpeg", "audio")
AAC = Sniffed("audio/aac", "audio")
WAV = Sniffed("audio/wav", "audio")
FLAC = Sniffed("audio/flac", "audio")
OGG_AUDIO = Sniffed("audio/ogg", "audio")

# ISO base media (ftyp) brands, from the registered list at mp4ra.org. Checked as the
# major brand first, then the compatible brands in order. M4V is served as video/mp4:
# the same container, and every browser plays video/mp4 (video/x-m4v is Apple's alone).
FTYP_BRANDS: dict[bytes, Sniffed] = {
    b"avif": AVIF,
    b"avis": AVIF,
    b"heic": HEIC,
    b"heix": HEIC,
    b"heim": HEIC,
    b"heis": HEIC,
    b"hevc": HEIC,
    b"hevx": HEIC,
    b"mif1": HEIF,
    b"msf1": HEIF,
    b"M4A ": M4A,
    b"M4B ": M4A,
    b"F4A ": M4A,
    b"qt  ": QUICKTIME,
    b"M4V ": MP4,
    b"M4VH": MP4,
    b"M4VP": MP4,
    b"isom": MP4,
    b"iso2": MP4,
    b"iso3": MP4,
    b"iso4": MP4,
    b"iso5": MP4,
    b"iso6": MP4,
    b"mp41": MP4,
    b"mp42": MP4,
    b"mp71": MP4,
    b"avc1": MP4,
    b"dash": MP4,
    b"mmp4": MP4,
    b"MSNV": MP4,
    b"f4v ": MP4,
    b"3gp4": THREE_GP,
    b"3gp5": THREE_GP,
    b"3gp6": THREE_GP,
    b"3ge6": THREE_GP,
    b"3gg6": THREE_GP,
}
# "mif1" (generic HEIF) often comes first with the precise brand ("avif", "heic") among
# the compatible ones; a precise brand anywhere wins over these generic ones.
GENERIC_BRANDS = frozenset((b"mif1", b"msf1", b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42"))
# Old QuickTime files may start with a top-level atom instead of ftyp.
QUICKTIME_ATOMS = frozenset((b"moov", b"wide"))

# First packet of the first Ogg page: the codec's identification header.
OGG_CODECS: tuple[tuple[bytes, Sniffed], ...] = (
    (b"OpusHead", OGG_AUDIO),
    (b"\x01vorbis", OGG_AUDIO),
    (b"\x7fFLAC", OGG_AUDIO),
    (b"Speex   ", OGG_AUDIO),
    (b"\x80theora", OGG_VIDEO),
)

# MPEG audio Layer III bitrates (kbit/s) by bitrate index; index 0 ("free format") and
# 15 (invalid) are refused. ISO/IEC 11172-3 and 13818-3.
MP3_BITRATES_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MP3_BITRATES_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
MP3_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
# ADTS sampling frequency indexes 0..12 are defined (96 kHz .. 7350 Hz).
ADTS_MAX_FREQ_INDEX = 12

# JPEG start-of-frame markers carry the size: SOF0-3, 5-7, 9-11, 13-15 (not DHT C4,
# JPG C8, DAC CC).
JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
# Markers without a length field: TEM and RST0-7 (SOI/EOI are handled apart).
JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))
JPEG_SOS = 0xDA
JPEG_EOI = 0xD9
JPEG_APP1 = 0xE1
# EXIF orientations 5-8 rotate by 90°: the displayed width is the stored height.
EXIF_ORIENTATION_TAG = 0x0112
EXIF_TRANSPOSED = frozenset((5, 6, 7, 8))


def sniff(head: bytes) -> Sniffed | None:
    """The real type of a file from its first bytes (SNIFF_BYTES are enough), or None."""
    head = head[:SNIFF_BYTES]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head.startswith(b"RIFF") and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return WEBP
        if form == b"WAVE":
            return WAV
        return None
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    if len(head) >= 8 and head[4:8] in QUICKTIME_ATOMS:
        return QUICKTIME
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return _sniff_ebml(head)
    if head.startswith(b"OggS"):
        return _sniff_ogg(head)
    if head.startswith(b"fLaC"):
        return FLAC
    if head.startswith(b"ID3") and len(head) >= 10 and 2 <= head[3] <= 4:
        # ID3v2.2-2.4 tag in front of MPEG audio; the tag may be large (cover art), the
        # audio after it is not looked for.
        return MP3
    if _is_adts(head):
        return AAC
    if _is_mp3_frames(head):
        return MP3
    return None


def _sniff_ftyp(head: bytes) -> Sniffed | None:
    # The box holds the major brand, a minor version, then compatible brands to its end
    # (a size under 16 is malformed or a 64-bit size: the major brand alone then).
    box_size = struct.unpack(">I", head[0:4])[0]
    brands = [head[8:12]]
    end = min(box_size, len(head))
    brands += [head[i : i + 4] for i in range(16, end - 3, 4)]
    found = [FTYP_BRANDS[b] for b in brands if b in FTYP_BRANDS]
    precise = [FTYP_BRANDS[b] for b in brands if b in FTYP_BRANDS and b not in GENERIC_BRANDS]
    if precise:
        return precise[0]
    return found[0] if found else None


def _ebml_vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `pos`: (value, length) or None."""
    if pos >= len(data):
        return None
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or pos + length > len(data):
        return None
    value = first if keep_marker else first & (0xFF >> length)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    return value, length


def _sniff_ebml(head: bytes) -> Sniffed | None:
    """Matroska or WebM, from the EBML header's DocType element (ID 0x4282)."""
    header = _ebml_vint(head, 4, keep_marker=False)
    if header is None:
        return None
    header_size, n = header
    pos, end = 4 + n, min(4 + n + header_size, len(head))
    while pos < end:
        element = _ebml_vint(head, pos, keep_marker=True)
        if element is None:
            return None
        element_id, n = element
        size = _ebml_vint(head, pos + n, keep_marker=False)
        if size is None:
            return None
        value_size, m = size
        pos += n + m
        if element_id == 0x4282:
            doctype = head[pos : pos + value_size].rstrip(b"\x00")
            if doctype == b"webm":
                return WEBM
            if doctype == b"matroska":
                return MATROSKA
            return None
        pos += value_size
    return None


def _sniff_ogg(head: bytes) -> Sniffed | None:
    """The codec of an Ogg stream, from the first packet of its first page."""
    if len(head) < 27:
        return None
    segments = head[26]
    packet = head[27 + segments :]
    for magic, sniffed in OGG_CODECS:
        if packet.startswith(magic):
            return sniffed
    return None


def _adts_frame(head: bytes, pos: int) -> int | None:
    """The length of an ADTS frame at `pos`, or None when no valid header is there."""
    h = head[pos : pos + 7]
    if len(h) < 7 or h[0] != 0xFF or h[1] & 0xF6 != 0xF0:
        return None
    if (h[2] >> 2) & 0x0F > ADTS_MAX_FREQ_INDEX:
        return None
    length = ((h[3] & 0x03) << 11) | (h[4] << 3) | (h[5] >> 5)
    return length if length >= 7 else None


def _is_adts(head: bytes) -> bool:
    first = _adts_frame(head, 0)
    if first is None:
        return False
    # Confirm with the next frame when the head reaches it.
    return first + 7 > len(head) or _adts_frame(head, first) is not None


def _mp3_frame(head: bytes, pos: int) -> int | None:
    """The length of an MPEG audio Layer III frame at `pos`, or None."""
    h = head[pos : pos + 4]
    if len(h) < 4 or h[0] != 0xFF or h[1] & 0xE0 != 0xE0:
        return None
    version = (h[1] >> 3) & 0x03  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = (h[1] >> 1) & 0x03  # 1: Layer III
    bitrate_index = h[2] >> 4
    rate_index = (h[2] >> 2) & 0x03
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    rate = MP3_SAMPLE_RATES[version][rate_index]
    padding = (h[2] >> 1) & 0x01
    if version == 3:
        return 144_000 * MP3_BITRATES_V1[bitrate_index] // rate + padding
    return 72_000 * MP3_BITRATES_V2[bitrate_index] // rate + padding


def _is_mp3_frames(head: bytes) -> bool:
    first = _mp3_frame(head, 0)
    if first is None:
        return False
    # Two bytes 0xFF 0xEx happen by chance; a second header exactly one frame later does not.
    return first + 4 > len(head) or _mp3_frame(head, first) is not None


def image_size(head: bytes, content_type: str) -> tuple[int, int] | None:
    """(width, height) in pixels as displayed, from the first IMAGE_HEAD_BYTES, or None.

    PNG, GIF, JPEG (EXIF rotation applied) and WebP; None for other types (AVIF/HEIC
    keep it deep in their box tree) or when the head does not reach it.
    """
    head = head[:IMAGE_HEAD_BYTES]
    size: tuple[int, int] | None = None
    if content_type == "image/png":
        if len(head) >= 24 and head[12:16] == b"IHDR":
            size = struct.unpack(">II", head[16:24])
    elif content_type == "image/gif":
        if len(head) >= 10:
            size = struct.unpack("<HH", head[6:10])
    elif content_type == "image/jpeg":
        size = _jpeg_size(head)
    elif content_type == "image/webp":
        size = _webp_size(head)
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _webp_size(head: bytes) -> tuple[int, int] | None:
    if len(head) < 30 or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":
        # Lossy: a 3-byte frame tag, the start code 9D 01 2A, then 14-bit width and height.
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        # Lossless: signature 0x2F, then width-1 and height-1 in 14 bits each.
        if head[20] != 0x2F:
            return None
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        # Extended: canvas width-1 and height-1 in 24 bits each.
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    pos = 2
    transposed = False
    n = len(head)
    while pos + 4 <= n:
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (JPEG_SOS, JPEG_EOI):
            return None
        length = struct.unpack(">H", head[pos + 2 : pos + 4])[0]
        if length < 2:
            return None
        if marker in JPEG_SOF:
            if pos + 9 > n:
                return None
            h, w = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return (h, w) if transposed else (w, h)
        if marker == JPEG_APP1:
            transposed = _exif_transposed(head[pos + 4 : pos + 2 + length]) or transposed
        pos += 2 + length
    return None


def _exif_transposed(segment: bytes) -> bool:
    """True when an APP1 EXIF segment says the image is shown rotated by 90°."""
    if not segment.startswith(b"Exif\x00\x00") or len(segment) < 14:
        return False
    tiff = segment[6:]
    order = tiff[:2]
    if order == b"II":
        endian = "<"
    elif order == b"MM":
        endian = ">"
    else:
        return False
    ifd = struct.unpack(endian + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return False
    count = struct.unpack(endian + "H", tiff[ifd : ifd + 2])[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            return False
        tag, _type, _count = struct.unpack(endian + "HHI", tiff[entry : entry + 8])
        if tag == EXIF_ORIENTATION_TAG:
            orientation = struct.unpack(endian + "H", tiff[entry + 8 : entry + 10])[0]
            return orientation in EXIF_TRANSPOSED
    return False
