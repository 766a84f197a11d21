"""Exif and XMP blanked in place in HEIF-family images (AVIF, HEIC, HEIF).

These files (ISO/IEC 23008-12 on the ISO base media file format) keep metadata as items
of the top-level `meta` box: `iinf` names each item's type (`Exif`, or `mime` with the
content type `application/rdf+xml` for XMP) and `iloc` says where its bytes are (file
offsets into `mdat`, or offsets into the `idat` box). Taking an item out would move the
bytes after it and every offset in `iloc` with them; instead its bytes are overwritten
with a block of the same length that says nothing: an EXIF block with no tags, an empty
XMP packet padded with spaces. Nothing else moves, so the image stays byte-identical.

Orientation and colour are not in these items here: HEIF shows an image turned by its
`irot`/`imir` properties and coloured by `colr` (ICC or CICP), all in `iprp`, which is
kept as it is (MIAF tells readers to ignore EXIF orientation).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from socialhub.domain.imagemeta import COPY_CHUNK, Buffer, MalformedImage

# An EXIF item: a 4-byte offset to the TIFF header (0), then a big-endian TIFF header
# whose first IFD holds no entry and links to none.
EMPTY_EXIF_ITEM = b"\x00\x00\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x00" + b"\x00\x00\x00\x00"
XMP_HEAD = b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"/>'
XMP_TAIL = b'<?xpacket end="w"?>'
XMP_TYPE = b"application/rdf+xml"


def _boxes(data: Buffer, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The boxes in [start, end): (type, payload start, box end)."""
    out: list[tuple[bytes, int, int]] = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise MalformedImage("a box header runs past its parent")
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise MalformedImage(f"the {kind!r} box runs past its parent")
        out.append((kind, pos + header, pos + size))
        pos += size
    return out


def _uint(data: Buffer, pos: int, size: int, end: int) -> int:
    if pos + size > end:
        raise MalformedImage("a box ends before its fields")
    return int.from_bytes(data[pos : pos + size], "big") if size else 0


def _metadata_items(data: Buffer, start: int, end: int) -> dict[int, bool]:
    """The Exif and XMP items listed in an `iinf` payload: item ID -> is XMP."""
    version = _uint(data, start, 1, end)
    pos = start + 4 + (2 if version == 0 else 4)
    found: dict[int, bool] = {}
    for kind, body, box_end in _boxes(data, pos, end):
        if kind != b"infe" or _uint(data, body, 1, box_end) < 2:
            continue  # infe versions 0 and 1 predate typed items; nothing to find there
        id_size = 2 if _uint(data, body, 1, box_end) == 2 else 4
        item_id = _uint(data, body + 4, id_size, box_end)
        type_at = body + 4 + id_size + 2
        item_type = data[type_at : type_at + 4]
        if item_type == b"Exif":
            found[item_id] = False
        elif item_type == b"mime":
            rest = data[type_at + 4 : box_end]
            if rest.split(b"\x00", 2)[1:2] == [XMP_TYPE]:  # item_name, then content_type
                found[item_id] = True
    return found


def _extents(
    data: Buffer, start: int, end: int, idat: int | None, wanted: dict[int, bool]
) -> dict[int, list[tuple[int, int]]]:
    """File ranges (offset, length) of the `wanted` items, from an `iloc` payload."""
    version = _uint(data, start, 1, end)
    sizes = _uint(data, start + 4, 2, end)
    offset_size, length_size = sizes >> 12, (sizes >> 8) & 0x0F
    base_size, index_size = (sizes >> 4) & 0x0F, sizes & 0x0F if version in (1, 2) else 0
    wide = version == 2
    pos = start + 6
    count = _uint(data, pos, 4 if wide else 2, end)
    pos += 4 if wide else 2
    found: dict[int, list[tuple[int, int]]] = {}
    for _ in range(count):
        item_id = _uint(data, pos, 4 if wide else 2, end)
        pos += 4 if wide else 2
        method = 0
        if version in (1, 2):
            method = _uint(data, pos, 2, end) & 0x0F
            pos += 2
        pos += 2  # data_reference_index
        base = _uint(data, pos, base_size, end)
        pos += base_size
        extent_count = _uint(data, pos, 2, end)
        pos += 2
        ranges: list[tuple[int, int]] = []
        for _ in range(extent_count):
            pos += index_size
            offset = _uint(data, pos, offset_size, end)
            length = _uint(data, pos + offset_size, length_size, end)
            pos += offset_size + length_size
            ranges.append((base + offset, length))
        if item_id not in wanted:
            continue
        if method == 1:
            if idat is None:
                raise MalformedImage("an item stored in an idat box that is not there")
            ranges = [(idat + offset, length) for offset, length in ranges]
        elif method != 0:
            raise MalformedImage("a metadata item built from other items")
        found[item_id] = ranges
    return found


def _blank(length: int, *, xmp: bool) -> bytes:
    if xmp:
        if length >= len(XMP_HEAD) + len(XMP_TAIL):
            return XMP_HEAD + b" " * (length - len(XMP_HEAD) - len(XMP_TAIL)) + XMP_TAIL
        return b" " * length
    return EMPTY_EXIF_ITEM[:length] + b"\x00" * max(0, length - len(EMPTY_EXIF_ITEM))


def blank_metadata_items(data: Buffer, out: BinaryIO) -> None:
    """Copy `data` to `out` (a seekable file) with its Exif and XMP items blanked."""
    n = len(data)
    meta = [(body, end) for kind, body, end in _boxes(data, 0, n) if kind == b"meta"]
    for offset in range(0, n, COPY_CHUNK):
        out.write(data[offset : min(offset + COPY_CHUNK, n)])
    if not meta:
        return
    body, end = meta[0]
    children = {kind: (start, stop) for kind, start, stop in _boxes(data, body + 4, end)}  # FullBox: 4 bytes
    if b"iinf" not in children or b"iloc" not in children:
        return
    items = _metadata_items(data, *children[b"iinf"])
    if not items:
        return
    idat = children[b"idat"][0] if b"idat" in children else None
    for item_id, ranges in _extents(data, *children[b"iloc"], idat, items).items():
        total = sum(length for _, length in ranges)
        filler = _blank(total, xmp=items[item_id])
        at = 0
        for offset, length in ranges:
            if offset + length > n:
                raise MalformedImage("a metadata item lies past the end of the file")
            out.seek(offset)
            out.write(filler[at : at + length])
            at += length
    out.seek(0, 2)
