"""Previews of images for feeds: WebP copies at a few widths and a blurhash, made once.

A feed of ten photos must not download ten 10 MB originals (Mastodon makes a "small"
copy of every image for the same reason). For every image Pillow can read, at upload:

- one WebP per width of `media.preview_widths` (400 and 1200 by default), each capped at
  the image's own width and never upscaled: a 300 px image gets one 300 px preview, an
  800 px image a 400 and an 800. They are stored in the media store under keys of their
  own, beside the original, and given in the media object (`preview_url`: the smallest;
  `previews`: every width, for a srcset);
- a blurhash (4 x 3 components, as Mastodon), shown while the preview loads.

An animated GIF or WebP gets previews of its first frame. Video and audio get none.

Where the work runs:

- an image of at most INLINE_PIXELS is done in the request, from the upload's cleaned
  temp file, in the decode pool: its previews are committed to the store before the
  post's transaction, their rows written in it, and deleted again if it fails, like
  the original (all-or-nothing);
- a larger one is not on the request's path: its media row is written with
  `previews_pending` in the post's transaction, and `run` (a supervised worker) makes
  it from the stored original, woken as the post commits. Durability is the row: if
  the process dies first, the row is still pending, and the worker of any instance
  takes it on its next poll (a claim is a lease of CLAIM_LEASE seconds, so a claim
  by a dead process lapses). Objects stored by a worker that died before recording
  them have no row: the janitor's orphan sweep takes them.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import blurhash
import msgspec
from PIL import Image, ImageOps

from socialhub.domain.posts import NewPreview
from socialhub.errors import Unavailable
from socialhub.infra.media.base import MediaStore, UploadedFile, new_media_key
from socialhub.services.readcache import Invalidation, ReadCache
from socialhub.services.scrubber import PILLOW_FORMATS
from socialhub.storage.previews import PendingImage, PreviewStore
from socialhub.supervisor import OutageLog

logger = logging.getLogger(__name__)

# 2 MP (e.g. 1600 x 1250, a phone's "large" share size): the work grows with the pixels
# decoded, and a photo at full camera resolution (12-50 MP) is what must stay off the
# request; anything over this goes to the worker. Not measured by a bench/ run yet.
INLINE_PIXELS = 2_000_000
# WebP at 80: Mastodon's and Google's recommended trade of size against artefacts.
WEBP_QUALITY = 80
# The blurhash is computed on a thumbnail this wide (the hash holds 4 x 3 cosines: more
# pixels change nothing visible and cost pure-Python time).
BLURHASH_WIDTH = 32
BLURHASH_COMPONENTS = (4, 3)
# The worker: how often it looks for pending images without being woken, how long a
# claim lasts (far above one image's work), and how many it takes at once.
POLL_SECONDS = 30.0
CLAIM_LEASE = 300.0
BATCH = 4
COPY_BYTES = 1 << 20
# Previews are made in a pool of their own, so they never hold up the upload checks.
PREVIEW_WORKERS = 1

_pool = ThreadPoolExecutor(max_workers=PREVIEW_WORKERS, thread_name_prefix="image-preview")


class Rendered(msgspec.Struct, frozen=True):
    """What `render` made: (temp file at offset 0, width, height) per preview, and the hash."""

    files: list[tuple[BinaryIO, int, int]]
    blurhash: str

    def close(self) -> None:
        for f, _, _ in self.files:
            f.close()


def preview_widths(width: int, wanted: Sequence[int]) -> list[int]:
    """The widths to make for an image `width` px wide: each wanted one capped at `width`, once."""
    return sorted({min(w, width) for w in wanted})


def _blurhash(image: Image.Image) -> str:
    thumb = image.convert("RGB")
    thumb.thumbnail((BLURHASH_WIDTH, BLURHASH_WIDTH))
    raw, (w, h) = thumb.tobytes(), thumb.size
    rows = [[raw[i : i + 3] for i in range(y * w * 3, (y + 1) * w * 3, 3)] for y in range(h)]
    x, y = BLURHASH_COMPONENTS
    return str(blurhash.encode(rows, components_x=x, components_y=y))


def render(source: BinaryIO, content_type: str, wanted: Sequence[int]) -> Rendered | None:
    """Previews and blurhash of the image in `source` (blocking: run it in the pool); None
    when Pillow cannot decode this type (HEIC) or the image turns out unreadable."""
    expected = PILLOW_FORMATS.get(content_type)
    if expected is None:
        return None
    files: list[tuple[BinaryIO, int, int]] = []
    try:
        with Image.open(source, formats=[expected]) as im:
            if expected == "JPEG" and wanted:
                # libjpeg scales by 1/2..1/8 while decoding: no more pixels than the
                # largest preview needs are ever decoded.
                im.draft("RGB", (max(wanted), max(wanted) * im.height // max(im.width, 1)))
            # Shown as the EXIF orientation says (the stored original keeps the tag).
            shown = ImageOps.exif_transpose(im)
            frame = shown if shown.mode in ("RGB", "RGBA") else shown.convert("RGBA" if _has_alpha(shown) else "RGB")
            for width in preview_widths(frame.width, wanted):
                height = max(1, round(frame.height * width / frame.width))
                scaled = frame if width == frame.width else frame.resize((width, height), Image.Resampling.LANCZOS)
                out = tempfile.TemporaryFile()
                files.append((out, width, height))
                scaled.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
                out.seek(0)
            hashed = _blurhash(frame)
    except Exception:
        for f, _, _ in files:
            f.close()
        # The upload passed the scrubber's checks; a decoder that still fails here costs
        # the image its previews, never the post.
        logger.warning("could not make previews of a %s image", content_type, exc_info=True)
        return None
    return Rendered(files=files, blurhash=hashed)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


class PreviewService:
    """Makes previews (see the module docstring): inline for small uploads, else in `run`."""

    def __init__(self, *, media: MediaStore, store: PreviewStore, cache: ReadCache, widths: Sequence[int]) -> None:
        self.media = media
        self.store = store
        self.cache = cache
        self.widths = tuple(widths)
        self._wake = asyncio.Event()

    def wants(self, f: UploadedFile) -> bool:
        """Whether `f` gets previews at all (an image Pillow reads, previews configured)."""
        return bool(self.widths) and f.kind == "image" and f.content_type in PILLOW_FORMATS and f.width is not None

    def inline(self, f: UploadedFile) -> bool:
        """Whether `f`'s previews are made in the request (small) or by the worker."""
        return f.source is not None and (f.width or 0) * (f.height or 0) <= INLINE_PIXELS

    async def make(self, source: BinaryIO, content_type: str) -> tuple[list[NewPreview], str] | None:
        """Render and store the previews of the image in `source`; (previews, blurhash).

        The objects are committed to the store; the caller records them or deletes them
        (`delete`). None when the image gets no previews."""
        loop = asyncio.get_running_loop()
        source.seek(0)
        rendered = await loop.run_in_executor(_pool, render, source, content_type, self.widths)
        if rendered is None:
            return None
        stored: list[NewPreview] = []
        try:
            for file, width, height in rendered.files:
                staged = await self.media.stage()
                try:
                    while chunk := await asyncio.to_thread(file.read, COPY_BYTES):
                        await staged.write(chunk)
                    key = new_media_key()
                    await self.media.commit(staged, key, "image/webp")
                finally:
                    await staged.discard()
                stored.append(NewPreview(storage_key=key, width=width, height=height))
        except BaseException:
            await self.delete([p.storage_key for p in stored])
            raise
        finally:
            rendered.close()
        return stored, rendered.blurhash

    async def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                await self.media.delete(key)
            except Exception:
                logger.warning("could not delete preview %s; the orphan sweep will", key, exc_info=True)

    def wake(self) -> None:
        """Pending images were just committed: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """The worker: previews of pending images, until `stop`."""
        outage = OutageLog(logger, "previews")
        while not stop.is_set():
            try:
                while await self.work_once():
                    pass
                outage.ok()
            except Unavailable as exc:
                outage.failed(exc)  # the next poll does the work
            except Exception:
                logger.exception("preview worker round failed")
            self._wake.clear()
            await self._sleep(stop)

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Until the next poll, a wake-up, or `stop`."""
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def work_once(self) -> int:
        """Claim up to BATCH pending images and make their previews; how many were claimed."""
        claimed = await self.store.claim_pending(CLAIM_LEASE, BATCH)
        for image in claimed:
            await self._make_pending(image)
        return len(claimed)

    async def _make_pending(self, image: PendingImage) -> None:
        stored = await self.media.open(image.storage_key)
        previews: list[NewPreview] = []
        hashed: str | None = None
        if stored is not None:
            with tempfile.TemporaryFile() as local:
                async for chunk in stored.read(0, stored.size):
                    await asyncio.to_thread(local.write, chunk)
                made = await self.make(local, image.content_type)
            if made is not None:
                previews, hashed = made
        recorded = await self.store.insert_previews(image.media_id, hashed, previews)
        if not recorded:
            # The post was deleted meanwhile.
            await self.delete([p.storage_key for p in previews])
            return
        if image.post_id is not None:
            await self.cache.changed(Invalidation(posts=[image.post_id]))
