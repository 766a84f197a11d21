"""The janitor: a background worker that removes what failures leave behind.

- staged uploads whose request died (the process was killed mid-upload);
- media files with no row (killed between storing the files and committing the post);
- outbox events every reader is past, after a retention window (for replays and audits);
- dead letters replayed successfully, after the same window (those waiting are kept).
"""

from __future__ import annotations

import asyncio
import logging

from socialhub.errors import Unavailable
from socialhub.infra.media.base import MediaStore
from socialhub.storage.deadletters import DeadLetterStore
from socialhub.storage.outbox import OutboxStore
from socialhub.storage.posts import PostStore
from socialhub.supervisor import OutageLog, sleep_unless

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 600.0
# An upload or a post transaction never takes this long; anything older is debris.
STAGING_MAX_AGE = 3600.0
ORPHAN_MIN_AGE = 3600.0
OUTBOX_RETENTION = 7 * 86400.0
KEY_CHUNK = 500


class Janitor:
    def __init__(
        self, *, posts: PostStore, outbox: OutboxStore, media: MediaStore, dead_letters: DeadLetterStore | None = None
    ) -> None:
        self.posts = posts
        self.outbox = outbox
        self.media = media
        self.dead_letters = dead_letters

    async def run(self, stop: asyncio.Event) -> None:
        outage = OutageLog(logger, "janitor")
        while not stop.is_set():
            try:
                await self.sweep_once()
                outage.ok()
            except Unavailable as exc:
                outage.failed(exc)  # the next sweep does the work
            except Exception:
                logger.exception("janitor sweep failed")
            await sleep_unless(stop, INTERVAL_SECONDS)

    async def sweep_once(self, *, staging_age: float = STAGING_MAX_AGE, orphan_age: float = ORPHAN_MIN_AGE) -> int:
        """One pass; returns how many things were removed."""
        removed = await self.media.sweep_staging(staging_age)
        chunk: list[str] = []
        async for key in self.media.list_keys(orphan_age):
            chunk.append(key)
            if len(chunk) >= KEY_CHUNK:
                removed += await self._drop_orphans(chunk)
                chunk = []
        if chunk:
            removed += await self._drop_orphans(chunk)
        removed += await self.outbox.delete_consumed(OUTBOX_RETENTION)
        if self.dead_letters is not None:
            removed += await self.dead_letters.delete_replayed(OUTBOX_RETENTION)
        if removed:
            logger.info("janitor removed %d leftovers", removed)
        return removed

    async def _drop_orphans(self, keys: list[str]) -> int:
        known = await self.posts.get_known_media_keys(keys)
        orphans = [k for k in keys if k not in known]
        for key in orphans:
            await self.media.delete(key)
        return len(orphans)
