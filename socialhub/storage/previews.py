"""SQL for the previews of images (services/previews.py): the worker's claims on pending
images, and recording what it made."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from socialhub.domain.posts import NewPreview
from socialhub.storage.database import Database


class PendingImage(msgspec.Struct, frozen=True):
    media_id: int
    post_id: int | None
    storage_key: str
    content_type: str


class PreviewStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim_pending(self, lease_seconds: float, limit: int) -> list[PendingImage]:
        """Up to `limit` images waiting for previews, claimed for `lease_seconds` (another
        worker skips them until the lease lapses), oldest first."""
        rows = await self.db.fetch(
            """UPDATE media SET previews_claimed_at = now()
               WHERE id IN (SELECT id FROM media
                            WHERE previews_pending
                              AND (previews_claimed_at IS NULL
                                   OR previews_claimed_at < now() - make_interval(secs => $1))
                            ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING id, post_id, storage_key, content_type""",
            lease_seconds,
            limit,
        )
        return [
            PendingImage(media_id=r["id"], post_id=r["post_id"], storage_key=r["storage_key"],
                         content_type=r["content_type"])
            for r in rows
        ]  # fmt: skip

    async def insert_previews(self, media_id: int, blurhash: str | None, previews: Sequence[NewPreview]) -> bool:
        """Record the previews and blurhash of an image and end its pending state, in one
        statement; False when the image is gone (its post was deleted)."""
        done: bool | None = await self.db.fetchval(
            """WITH m AS (UPDATE media SET blurhash = $2, previews_pending = false, previews_claimed_at = NULL
                          WHERE id = $1 RETURNING id),
                    p AS (INSERT INTO media_previews (storage_key, media_id, width, height)
                          SELECT k, m.id, w, h FROM m, unnest($3::text[], $4::int[], $5::int[]) AS u(k, w, h))
               SELECT EXISTS (SELECT 1 FROM m)""",
            media_id,
            blurhash,
            [p.storage_key for p in previews],
            [p.width for p in previews],
            [p.height for p in previews],
        )
        return bool(done)
