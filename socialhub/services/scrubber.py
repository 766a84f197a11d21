"""Uploaded images: metadata removed, then checked with Pillow, before they are stored.

`scrub_image` runs in a small thread pool of its own (decoding is CPU-bound and takes
memory, so at most DECODE_WORKERS images are worked on at once, whatever the number of
uploads; the event loop never waits on it). It takes the spooled upload (an anonymous
temp file), writes the image without its metadata (imagemeta / isobmff: no re-encoding)
into another temp file, and opens that with Pillow: it must be the sniffed format,
within MAX_IMAGE_PIXELS, and decode to its end. It answers the cleaned file with its
size as displayed.

It is a service, unlike the format code it drives (`domain.imagemeta`,
`domain.isobmff`: pure byte rewriting): it owns a thread pool and temp files, decodes,
and holds the policy of what is refused and with which error.

Refusals: an image Pillow cannot read (truncated, damaged, not what its first bytes
said) is 415 `unsupported_media_type`, like any file that is not an accepted image; an
image over MAX_IMAGE_PIXELS (a decompression bomb, or a photo larger than any camera
makes) is 422 `validation_error` on its field.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import msgspec
from PIL import Image, UnidentifiedImageError

from socialhub.domain.imagemeta import EXIF_ORIENTATION, MalformedImage, strip
from socialhub.domain.isobmff import blank_metadata_items
from socialhub.errors import SocialhubError, UnsupportedMediaType, invalid

# 2^26 = 8192 x 8192, 67 megapixels: over the full-resolution output of phone cameras up
# to 64 MP (9248 x 6936); their 108-200 MP modes give files well past the 10 MB upload
# cap anyway. Pillow's own default (~89 MP, a 24-bit image of 256 MiB) is set a little
# lower so that its bomb check and ours agree; decoding an RGBA PNG at the limit takes
# 256 MiB, which DECODE_WORKERS bounds.
MAX_IMAGE_PIXELS = 1 << 26
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Images decoded at once, in the process. The host's cores are shared with the event
# loop; two keep uploads moving without letting a burst of big PNGs take ~1 GiB.
DECODE_WORKERS = 2
# JPEGs are checked at 1/8 scale (libjpeg's DCT scaling): every byte of the entropy-coded
# data is still read, so truncation and damage show, with 1/64 of the memory.
JPEG_CHECK_SCALE = 8
# The sniffed type -> Pillow's name for the format (HEIC/HEIF: no decoder in Pillow).
PILLOW_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/avif": "AVIF",
}
ISOBMFF_TYPES = frozenset(("image/avif", "image/heic", "image/heif"))
# EXIF orientations 5-8 turn the image by 90°: shown, its width is the stored height.
TRANSPOSED = frozenset((5, 6, 7, 8))

logger = logging.getLogger(__name__)

_decoders = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="image-scrub")


class ScrubbedImage(msgspec.Struct, frozen=True):
    """The cleaned image (a temp file at offset 0, the caller closes it) and its size as shown."""

    file: BinaryIO
    width: int | None
    height: int | None


async def scrub_image(spool: BinaryIO, content_type: str, *, field: str, label: str) -> ScrubbedImage:
    """Strip and check the spooled image; see the module docstring.

    Takes ownership of `spool` (closed when done, even if the caller is cancelled).
    Raises UnsupportedMediaType or ValidationFailed.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoders, _scrub, spool, content_type, field, label)


def _scrub(spool: BinaryIO, content_type: str, field: str, label: str) -> ScrubbedImage:
    with contextlib.closing(spool):
        out = tempfile.TemporaryFile()
        try:
            _strip_into(spool, out, content_type, label)
            out.flush()
            out.seek(0)
            size = _check(out, content_type, field, label)
            out.seek(0)
        except BaseException:
            out.close()
            raise
    return ScrubbedImage(out, *size) if size else ScrubbedImage(out, None, None)


def _strip_into(spool: BinaryIO, out: BinaryIO, content_type: str, label: str) -> None:
    spool.flush()
    try:
        with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if content_type in ISOBMFF_TYPES:
                blank_metadata_items(data, out)
            else:
                strip(data, out, content_type)
    except MalformedImage as exc:
        raise UnsupportedMediaType(f"{label} is not a readable image: {exc}") from None


def _check(file: BinaryIO, content_type: str, field: str, label: str) -> tuple[int, int] | None:
    """(width, height) as shown, after Pillow read the image whole; None when Pillow cannot read the type."""
    expected = PILLOW_FORMATS.get(content_type)
    if expected is None:
        return None
    try:
        with Image.open(file, formats=[expected]) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise invalid(field, f"{label} is over {MAX_IMAGE_PIXELS} pixels")
            if expected == "JPEG":
                im.draft(im.mode, (width // JPEG_CHECK_SCALE, height // JPEG_CHECK_SCALE))
            im.load()
            orientation = im.getexif().get(EXIF_ORIENTATION)
    except SocialhubError:
        raise
    except Image.DecompressionBombError:
        raise invalid(field, f"{label} is over {MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnsupportedMediaType(f"{label} is not a readable {expected} image: {exc}") from None
    except Exception as exc:
        # Pillow's decoders meet hostile bytes with many kinds of error (struct.error,
        # IndexError, ...): every one means the same to the client.
        logger.info("Pillow refused an upload: %r", exc)
        raise UnsupportedMediaType(f"{label} is not a readable {expected} image") from None
    return (height, width) if orientation in TRANSPOSED else (width, height)
