"""Minimal but well-formed file headers for the media tests, built in code (no fixtures).

Each builder returns the first bytes of a real file of its type: what a sniffer or a
size reader sees. Padding to a given length uses zeros, which no check looks at.
"""

from __future__ import annotations

import struct
import zlib


def pad(data: bytes, size: int) -> bytes:
    return data + b"\x00" * max(0, size - len(data))


def png(width: int = 640, height: int = 480) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 16)
    idat_chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + body + idat_chunk + iend


def gif(width: int = 320, height: int = 200) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x80\x00\x00" + b"\x00" * 6 + b"\x3b"


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def exif_orientation(orientation: int, big_endian: bool = True) -> bytes:
    e = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    entry = struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", orientation, 0)
    tiff += struct.pack(e + "H", 1) + entry + struct.pack(e + "I", 0)
    return _segment(0xE1, b"Exif\x00\x00" + tiff)


def jpeg(width: int = 800, height: int = 600, *, orientation: int | None = None, app_padding: int = 0) -> bytes:
    out = b"\xff\xd8"
    out += _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    if orientation is not None:
        out += exif_orientation(orientation)
    if app_padding:
        # An ICC-profile-like APP2 segment pushing the SOF further in.
        out += _segment(0xE2, b"\x00" * app_padding)
    out += _segment(0xDB, b"\x00" + bytes(range(64)))
    out += _segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01")
    out += _segment(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00")
    return out + b"\x12\x34" * 16 + b"\xff\xd9"


def _riff(form: bytes, chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + form + chunks


def webp_lossy(width: int = 300, height: int = 150) -> bytes:
    vp8 = b"\x30\x01\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\x00" * 10
    return _riff(b"WEBP", b"VP8 " + struct.pack("<I", len(vp8)) + vp8)


def webp_lossless(width: int = 123, height: int = 45) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    vp8l = b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 8
    return _riff(b"WEBP", b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l)


def webp_extended(width: int = 4000, height: int = 3000) -> bytes:
    vp8x = b"\x10\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return _riff(b"WEBP", b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x)


def wav() -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 2, 44100, 44100 * 4, 4, 16)
    return _riff(b"WAVE", b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 8) + b"\x00" * 8)


def avi() -> bytes:
    return _riff(b"AVI ", b"LIST" + struct.pack("<I", 4) + b"hdrl")


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    box = major + struct.pack(">I", 0) + b"".join(compatible)
    return struct.pack(">I", 8 + len(box)) + b"ftyp" + box + struct.pack(">I", 8) + b"free"


def _ebml_element(element_id: bytes, payload: bytes) -> bytes:
    assert len(payload) < 127
    return element_id + bytes((0x80 | len(payload),)) + payload


def ebml(doctype: bytes) -> bytes:
    header = (
        _ebml_element(b"\x42\x86", b"\x01")  # EBMLVersion
        + _ebml_element(b"\x42\xf7", b"\x01")  # EBMLReadVersion
        + _ebml_element(b"\x42\xf2", b"\x04")  # EBMLMaxIDLength
        + _ebml_element(b"\x42\xf3", b"\x08")  # EBMLMaxSizeLength
        + _ebml_element(b"\x42\x82", doctype)  # DocType
        + _ebml_element(b"\x42\x87", b"\x04")  # DocTypeVersion
    )
    return b"\x1a\x45\xdf\xa3" + bytes((0x80 | len(header),)) + header + b"\x18\x53\x80\x67\x01"


def ogg(first_packet: bytes) -> bytes:
    page = b"OggS\x00\x02" + b"\x00" * 8 + b"\x01\x02\x03\x04" + b"\x00" * 4 + b"\x00" * 4
    return page + bytes((1, len(first_packet))) + first_packet


def opus() -> bytes:
    return ogg(b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00")


def vorbis() -> bytes:
    return ogg(b"\x01vorbis\x00\x00\x00\x00\x02\x44\xac\x00\x00" + b"\x00" * 15)


def theora() -> bytes:
    return ogg(b"\x80theora\x03\x02\x01" + b"\x00" * 32)


def flac() -> bytes:
    return b"fLaC\x80\x00\x00\x22" + b"\x00" * 34


def id3_mp3() -> bytes:
    return b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\x00" * 10 + mp3_frames(1)


def mp3_frames(count: int = 3) -> bytes:
    # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no padding: 144000*128/44100 = 417 bytes.
    header = b"\xff\xfb\x90\x64"
    return (header + b"\x00" * (417 - 4)) * count


def adts_frames(count: int = 3, length: int = 200) -> bytes:
    # AAC LC, 44.1 kHz (index 4), stereo, no CRC.
    profile, freq, channels = 1, 4, 2
    header = bytes(
        (
            0xFF,
            0xF1,
            (profile << 6) | (freq << 2) | (channels >> 2),
            ((channels & 3) << 6) | ((length >> 11) & 0x03),
            (length >> 3) & 0xFF,
            ((length & 0x07) << 5) | 0x1F,
            0xFC,
        )
    )
    return (header + b"\x00" * (length - 7)) * count


EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 44 + b"\x80\x00\x00\x00"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00"
ZIP = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 20 + b"word/document.xml"
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
