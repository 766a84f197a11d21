"""Posts, media, comments: stored records and their public views (SPEC, Objects)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from msgspec import UNSET, UnsetType

from socialhub.domain.time import rfc3339
from socialhub.domain.users import UserSummary

# Mastodon allows 500 characters; the original system had no cap. A long-form limit
# that still keeps one post well inside a JSON body.
MAX_POST_CHARS = 5000
# Our choice: a comment is a reply, not an article (Mastodon has no separate limit, a
# reply being a post); shorter than a post, long enough for a paragraph or three.
MAX_COMMENT_CHARS = 2000
# Printable ASCII, like Stripe's keys: enough for UUIDs and ULIDs.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"


class PreviewRecord(msgspec.Struct, frozen=True):
    """A WebP preview of an image (services/previews.py)."""

    key: str
    width: int
    height: int


class MediaRecord(msgspec.Struct, frozen=True):
    id: int
    storage_key: str
    content_type: str
    size: int
    width: int | None = None
    height: int | None = None
    blurhash: str | None = None
    previews: list[PreviewRecord] | None = None
    """Narrowest first; None (or empty) when the file has none, or none yet."""


class PostRecord(msgspec.Struct, frozen=True):
    """A post as anyone sees it (author, media, counters); whether a viewer liked it is
    theirs, added when it is shown to them."""

    id: int
    author: UserSummary
    content: str
    media: list[MediaRecord]
    created_at: datetime
    likes_count: int
    comments_count: int


class PreviewView(msgspec.Struct, frozen=True):
    url: str
    width: int
    height: int


class MediaView(msgspec.Struct, frozen=True):
    """A file of a post. Images also carry `preview_url` (a WebP copy for feeds, at most
    400 px wide by default, never wider than the image), `previews` (every preview width,
    narrowest first, for a srcset) and `blurhash` (a placeholder to show while loading);
    absent for video and audio, and for a large image in the moments its previews are
    still being made."""

    id: str
    url: str
    content_type: str
    size: int
    width: int | UnsetType = UNSET
    height: int | UnsetType = UNSET
    preview_url: str | UnsetType = UNSET
    blurhash: str | UnsetType = UNSET
    previews: list[PreviewView] | UnsetType = UNSET

    @classmethod
    def of(cls, m: MediaRecord, media_base: str) -> MediaView:
        previews = [PreviewView(f"{media_base}/media/{p.key}", p.width, p.height) for p in m.previews or ()]
        return cls(
            id=str(m.id),
            url=f"{media_base}/media/{m.storage_key}",
            content_type=m.content_type,
            size=m.size,
            width=m.width if m.width is not None else UNSET,
            height=m.height if m.height is not None else UNSET,
            preview_url=previews[0].url if previews else UNSET,
            blurhash=m.blurhash if m.blurhash is not None else UNSET,
            previews=previews if previews else UNSET,
        )


class Post(msgspec.Struct, frozen=True):
    id: str
    author: UserSummary
    content: str
    media: list[MediaView]
    created_at: str
    likes_count: int
    comments_count: int
    liked: bool

    @classmethod
    def of(cls, p: PostRecord, media_base: str) -> Post:
        """The view with `liked` false; a viewer's own likes are marked when shown to them."""
        return cls(
            id=str(p.id),
            author=p.author,
            content=p.content,
            media=[MediaView.of(m, media_base) for m in p.media],
            created_at=rfc3339(p.created_at),
            likes_count=p.likes_count,
            comments_count=p.comments_count,
            liked=False,
        )


class CommentRecord(msgspec.Struct, frozen=True):
    id: int
    post_id: int
    author: UserSummary
    content: str
    created_at: datetime


class Comment(msgspec.Struct, frozen=True):
    id: str
    post_id: str
    author: UserSummary
    content: str
    created_at: str

    @classmethod
    def of(cls, c: CommentRecord) -> Comment:
        return cls(
            id=str(c.id), post_id=str(c.post_id), author=c.author, content=c.content, created_at=rfc3339(c.created_at)
        )


class LikeState(msgspec.Struct, frozen=True):
    liked: bool
    likes_count: int


class NewPreview(msgspec.Struct, frozen=True):
    """A preview already committed to the media store, to be recorded with its image."""

    storage_key: str
    width: int
    height: int


class NewMedia(msgspec.Struct, frozen=True):
    """A file already committed to the media store, to be attached to a new post, with
    its previews when they were made in the request, or `previews_pending` when the
    preview worker is to make them."""

    storage_key: str
    content_type: str
    size: int
    width: int | None
    height: int | None
    blurhash: str | None = None
    previews: list[NewPreview] = []
    previews_pending: bool = False

    @property
    def keys(self) -> list[str]:
        """Every object stored for this file: the file and its previews."""
        return [self.storage_key, *(p.storage_key for p in self.previews)]
