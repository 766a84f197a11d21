"""Minimal but well-formed files for the media tests, built in code (no fixtures).

The image builders (png, gif, jpeg, webp_lossy) give whole images that Pillow decodes,
with nothing the upload's metadata filter would take out, so they are stored byte for
byte. The other builders give the first bytes of a real file of their type: what a
sniffer or a size reader sees. Padding to a given length uses zeros, which no check
looks at (an image's filter drops them: they are after its end).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib

from PIL import ExifTags, Image, ImageCms, PngImagePlugin


def pad(data: bytes, size: int) -> bytes:
    return data + b"\x00" * max(0, size - len(data))


def png(width: int = 640, height: int = 480) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    # Black RGB rows, each with filter byte 0: a whole image in a few hundred bytes.
    idat = zlib.compress(b"\x00" * (height * (1 + 3 * width)), 9)
    idat_chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + body + idat_chunk + iend


def _pillow(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """A PNG of random pixels: about 3 * width * height bytes, whatever zlib does."""
    return _pillow(Image.frombytes("RGB", (width, height), os.urandom(3 * width * height)), "PNG")


def gif(width: int = 320, height: int = 200) -> bytes:
    return _pillow(Image.new("P", (width, height)), "GIF")


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def exif_orientation(orientation: int, big_endian: bool = True) -> bytes:
    e = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    entry = struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", orientation, 0)
    tiff += struct.pack(e + "H", 1) + entry + struct.pack(e + "I", 0)
    return _segment(0xE1, b"Exif\x00\x00" + tiff)


def jpeg(width: int = 800, height: int = 600, *, orientation: int | None = None, app_padding: int = 0) -> bytes:
    """A grey JPEG (JFIF) by Pillow; `orientation` adds an EXIF block holding only that."""
    made = _pillow(Image.new("RGB", (width, height), (128, 128, 128)), "JPEG", quality=75)
    assert made[2:4] == b"\xff\xe0"  # SOI, then Pillow's JFIF APP0
    jfif_end = 4 + struct.unpack(">H", made[4:6])[0]
    out = made[:jfif_end]
    if orientation is not None:
        out += exif_orientation(orientation)
    if app_padding:
        # An APP2 segment (not an ICC profile) pushing the SOF further in.
        out += _segment(0xE2, b"\x00" * app_padding)
    return out + made[jfif_end:]


def _riff(form: bytes, chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + form + chunks


def webp_lossy(width: int = 300, height: int = 150) -> bytes:
    return _pillow(Image.new("RGB", (width, height), (10, 200, 30)), "WEBP", quality=80)


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


# -- photos as cameras and editors write them: what the upload must strip ----------------------

CAMERA_MAKE = "Phonemaker"
CAMERA_MODEL = "Phone 12 Pro"
TAKEN_AT = "2026:11:27 03:04:05"
XMP_SECRET = "xmp-location-Gruene-Strasse-7"
TEXT_SECRET = "text-chunk-serial-XJ9"
# What no stored file may contain, byte for byte.
SECRETS = (CAMERA_MAKE.encode(), CAMERA_MODEL.encode(), TAKEN_AT.encode(), XMP_SECRET.encode(), TEXT_SECRET.encode())
XMP = (
    '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    f'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description about="{XMP_SECRET}"/>'
    '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
).encode()


def camera_exif(orientation: int = 6) -> bytes:
    """An EXIF block as a phone writes it: device, time, GPS position, orientation."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = CAMERA_MAKE
    exif[ExifTags.Base.Model] = CAMERA_MODEL
    exif[ExifTags.Base.DateTime] = TAKEN_AT
    exif[ExifTags.Base.Orientation] = orientation
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = TAKEN_AT
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 29.5)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (2.0, 17.0, 40.2)
    return exif.tobytes()


@functools.cache
def icc_profile() -> bytes:
    """A real sRGB ICC profile (LittleCMS). Made once: its header holds the time it was
    made, so two made either side of a minute differ (a test that made one for the upload
    and another to compare failed so in CI)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo_jpeg(width: int = 80, height: int = 60, *, orientation: int = 6, trailer: bool = True) -> bytes:
    """A JPEG with camera EXIF, XMP, an ICC profile and a comment; with `trailer`, a second
    JPEG with its own EXIF after the end (what MPF phones append)."""
    image = Image.new("RGB", (width, height), (200, 120, 40))
    main = _pillow(
        image, "JPEG", exif=camera_exif(orientation), icc_profile=icc_profile(), xmp=XMP, comment=TEXT_SECRET
    )
    return main + (_pillow(image.resize((16, 12)), "JPEG", exif=camera_exif(1)) if trailer else b"")


def photo_png(width: int = 40, height: int = 30, *, orientation: int = 8) -> bytes:
    """A PNG with text chunks (tEXt, zTXt, iTXt with XMP), a camera eXIf, tIME and an ICC profile."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", TEXT_SECRET)
    info.add_text("Author", CAMERA_MODEL, zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    info.add(b"tIME", struct.pack(">HBBBBB", 2026, 11, 27, 3, 4, 5))
    image = Image.new("RGBA", (width, height), (0, 90, 200, 128))
    return _pillow(image, "PNG", pnginfo=info, exif=camera_exif(orientation), icc_profile=icc_profile())


def photo_webp(*, frames: int = 3) -> bytes:
    """An animated WebP with camera EXIF, XMP and an ICC profile."""
    images = [Image.new("RGB", (48, 32), (40 * i, 100, 200)) for i in range(frames)]
    return _pillow(
        images[0], "WEBP", save_all=True, append_images=images[1:], duration=120, loop=0, lossless=True,
        exif=camera_exif(3), xmp=XMP, icc_profile=icc_profile(),
    )  # fmt: skip


def photo_gif(*, frames: int = 3) -> bytes:
    """An animated, looping GIF with a comment and an XMP application block."""
    images = [Image.new("RGB", (30, 20), (80 * i, 0, 255 - 80 * i)) for i in range(frames)]
    made = _pillow(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0, comment=TEXT_SECRET)
    xmp_block = (
        b"\x21\xff\x0bXMP DataXMP"
        + b"".join(bytes((len(piece),)) + piece for piece in (XMP[i : i + 255] for i in range(0, len(XMP), 255)))
        + b"\x00"
    )
    # Right before the trailer, where editors put it.
    return made[:-1] + xmp_block + made[-1:]


def photo_avif() -> bytes:
    """An AVIF with camera EXIF and XMP items."""
    return _pillow(Image.new("RGB", (32, 24), (9, 99, 199)), "AVIF", exif=camera_exif(1), xmp=XMP)
