"""ReadCache: what feed and post reads need, held in process so that a page is served
without PostgreSQL.

Three things are cached:

- **posts**, by id: their public view (content, author, media, counters) and that
  view already encoded as JSON, with `liked` false and with `liked` true;
- **viewers**: whom a user follows and which posts they liked (the `LIKED_WINDOW`
  newest posts they liked; the rare older post is asked of PostgreSQL);
- **big authors**: the accounts that have posts never fanned out (merged into their
  followers' feeds at read time).

Every change that alters one of them (a like, a comment, an edit or deletion, a
follow, a profile edit, a post that is not fanned out) is committed first, then
dropped here and announced on the pub/sub port, so every instance drops it within
milliseconds; the writer's own instance drops it before the write returns, so a
client reads its own writes. A fill that was running while its key was dropped does
not store what it read. What pub/sub cannot promise is covered as the SessionGuard
covers it: while the broker is down the cache is bypassed and emptied when it is
back, and every entry is re-read after `TTL` at the latest (an instance that died
between its commit and its announcement).

Why one module of ~470 lines: its correctness rests on a few shared pieces (the fill
guard, the health bypass, the TTL, the kept pages indexed by the posts they show) that
every cached kind uses; the tests remove each safety net in turn against this one
module. Split by kind, each part would need the others' invalidation rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import msgspec

from socialhub.domain.posts import Post, PostRecord
from socialhub.errors import Unavailable
from socialhub.infra.pubsub.base import PubSub, Subscription
from socialhub.storage.posts import ViewerRecord

logger = logging.getLogger(__name__)

CHANNEL = "cache.invalidate"
# The safety net for an announcement lost in flight; not the primary mechanism.
TTL = 60.0
# How many of a viewer's likes are held (those of the newest posts): a feed shows recent
# posts, and a page that reaches below them asks PostgreSQL. Bounds a viewer's entry to
# some 15 KB.
LIKED_WINDOW = 200


class PostReads(Protocol):
    """What the cache reads when it misses (`storage.posts.PostStore`)."""

    async def get_post_records(self, ids: Sequence[int]) -> list[PostRecord]:
        """The posts among `ids` that exist."""
        ...

    async def get_viewer(self, user_id: int, liked_window: int) -> ViewerRecord:
        """Whom the user follows, and the ids of the newest `liked_window` posts they liked
        (newest first)."""
        ...

    async def get_liked_among(self, user_id: int, post_ids: Sequence[int]) -> list[int]:
        """The ids among `post_ids` that the user liked."""
        ...

    async def get_big_authors(self) -> list[int]:
        """Every account with a post that was not fanned out."""
        ...


PageMaker = Callable[[], Awaitable[tuple[bytes, list[int] | None]]]
"""Makes a first feed page: (the page encoded as JSON, the ids of the posts it shows, or
None when it is not to be kept: it was not made of the timeline alone)."""


class Invalidation(msgspec.Struct, frozen=True, omit_defaults=True):
    """What changed: posts (by id), authors (their profile, shown in their posts),
    viewers (their follows or likes), and accounts that now have posts not fanned out."""

    posts: list[int] = []
    authors: list[int] = []
    viewers: list[int] = []
    big_authors: list[int] = []


_encode = msgspec.json.Encoder().encode


class _Post:
    """A post as anyone sees it: its view, and that view already encoded as JSON with
    `liked` false and true, so that a feed page is these bytes put together."""

    __slots__ = ("author_id", "expires_at", "json", "json_liked", "view")

    def __init__(self, view: Post, author_id: int, expires_at: float) -> None:
        self.view = view
        self.json = msgspec.Raw(_encode(view))
        self.json_liked = msgspec.Raw(_encode(msgspec.structs.replace(view, liked=True)))
        self.author_id = author_id
        self.expires_at = expires_at


class ViewerState:
    """Whom the viewer follows, and the posts they liked: every one with an id at or
    above `floor` (below it, PostgreSQL is asked)."""

    __slots__ = ("expires_at", "floor", "followees", "liked", "user_id")

    def __init__(
        self, user_id: int, followees: frozenset[int], liked: frozenset[int], floor: int, expires_at: float
    ) -> None:
        self.user_id = user_id
        self.followees = followees
        self.liked = liked
        self.floor = floor
        self.expires_at = expires_at


class _Page:
    """A viewer's first feed page, encoded, and what it was made from: the timeline ids
    read then and the viewer's state object. Valid while both are the same and none of
    its posts was dropped (dropping a post drops the pages that show it)."""

    __slots__ = ("expires_at", "ids", "json", "limit", "posts", "viewer")

    def __init__(
        self, limit: int, ids: list[int], viewer: ViewerState, posts: list[int], json: msgspec.Raw, expires_at: float
    ) -> None:
        self.limit = limit
        self.ids = ids
        self.viewer = viewer
        self.posts = posts
        self.json = json
        self.expires_at = expires_at


class _Fills:
    """Keys dropped while a fill was reading them, so that the fill does not store what
    it read. Kept only while some fill is running."""

    def __init__(self) -> None:
        self.seq = 0
        self.running = 0
        self.dropped: dict[tuple[str, int], int] = {}
        self.all_dropped_at = 0

    def drop(self, kind: str, key: int) -> None:
        self.seq += 1
        if self.running:
            self.dropped[(kind, key)] = self.seq

    def drop_all(self) -> None:
        self.seq += 1
        self.all_dropped_at = self.seq

    def begin(self) -> int:
        self.running += 1
        return self.seq

    def fresh(self, since: int, *keys: tuple[str, int]) -> bool:
        """Whether nothing of `keys` was dropped since the fill began."""
        if self.all_dropped_at > since:
            return False
        return all(self.dropped.get(k, 0) <= since for k in keys)

    def end(self) -> None:
        self.running -= 1
        if not self.running:
            self.dropped.clear()


class ReadCache:
    def __init__(self, posts: PostReads, pubsub: PubSub, media_base: str, *, max_posts: int, max_viewers: int) -> None:
        self.store = posts
        self.pubsub = pubsub
        self.media_base = media_base
        self.max_posts = max_posts
        self.max_viewers = max_viewers
        # Oldest stored first out: a hit costs no bookkeeping, and every entry is stored
        # again within `TTL` when it is still read.
        self._posts: dict[int, _Post] = {}
        self._by_author: dict[int, set[int]] = {}
        self._viewers: OrderedDict[int, ViewerState] = OrderedDict()
        # First feed pages by viewer (as many as viewers), and which pages show a post.
        self._pages: dict[int, _Page] = {}
        self._pages_of: dict[int, set[int]] = {}
        self._fills = _Fills()
        self._big: frozenset[int] = frozenset()
        self._big_announced: set[int] = set()
        self._big_expires_at = 0.0
        self._big_lock = asyncio.Lock()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self.pubsub.on_reset(self._on_reset)
        self._subscription = await self.pubsub.subscribe(CHANNEL, self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    @property
    def _usable(self) -> bool:
        # While the broker is down, other instances' announcements may be missed.
        return self._subscription is not None and self.pubsub.healthy

    # -- reads ------------------------------------------------------------------------

    async def posts(self, ids: Iterable[int], viewer: ViewerState, *, followed_only: bool = False) -> dict[int, Post]:
        """The posts that exist among `ids`, as this viewer sees them (with `liked`); with
        `followed_only`, only those by the viewer or by someone they follow now."""
        entries, liked = await self._entries(ids, viewer, followed_only)
        replace = msgspec.structs.replace
        return {pid: replace(e.view, liked=True) if pid in liked else e.view for pid, e in entries.items()}

    async def rendered(
        self, ids: Iterable[int], viewer: ViewerState, *, followed_only: bool = False, enough: int = 0
    ) -> dict[int, msgspec.Raw]:
        """`posts`, each already encoded as JSON. With `enough`, the ids are looked at in
        their order and the lookup may stop once that many were found in the cache with
        none missing before them (a feed page of the newest ids)."""
        entries, liked = await self._entries(ids, viewer, followed_only, enough)
        return {pid: e.json_liked if pid in liked else e.json for pid, e in entries.items()}

    async def _entries(
        self, ids: Iterable[int], viewer: ViewerState, followed_only: bool, enough: int = 0
    ) -> tuple[dict[int, _Post], frozenset[int]]:
        """The entries that exist among `ids` (filtered as `posts` says), and the ids
        among them that the viewer liked."""
        now = time.monotonic()
        uid, followees = viewer.user_id, viewer.followees
        cache = self._posts if self._usable else None
        entries: dict[int, _Post] = {}
        missing: list[int] = []
        if cache is None:
            missing = list(ids)
        else:
            get = cache.get
            for pid in ids:
                entry = get(pid)
                if entry is None or entry.expires_at <= now:
                    missing.append(pid)
                    continue
                if not followed_only or entry.author_id == uid or entry.author_id in followees:
                    entries[pid] = entry
                    if len(entries) == enough and not missing:
                        break
        if missing:
            for pid, entry in (await self._fill_posts(missing, now, store=cache is not None)).items():
                if not followed_only or entry.author_id == uid or entry.author_id in followees:
                    entries[pid] = entry
        liked = viewer.liked
        if viewer.floor:
            below = [pid for pid in entries if pid < viewer.floor]
            if below:
                liked = liked | frozenset(await self.store.get_liked_among(viewer.user_id, below))
        return entries, liked

    async def _fill_posts(self, ids: list[int], now: float, *, store: bool) -> dict[int, _Post]:
        fills = self._fills
        since = fills.begin()
        try:
            records = await self.store.get_post_records(ids)
            entries = {r.id: _Post(Post.of(r, self.media_base), int(r.author.id), now + TTL) for r in records}
            if store and self.max_posts:
                for pid, entry in entries.items():
                    if fills.fresh(since, ("post", pid), ("author", entry.author_id)):
                        self._put_post(pid, entry)
        finally:
            fills.end()
        return entries

    def _put_post(self, pid: int, entry: _Post) -> None:
        posts = self._posts
        old = posts.pop(pid, None)
        if old is not None:
            self._unindex(pid, old.author_id)
            self._drop_pages_showing(pid)
        posts[pid] = entry
        self._by_author.setdefault(entry.author_id, set()).add(pid)
        while len(posts) > self.max_posts:
            old_id = next(iter(posts))
            self._unindex(old_id, posts.pop(old_id).author_id)
            self._drop_pages_showing(old_id)

    def _unindex(self, pid: int, author_id: int) -> None:
        ids = self._by_author.get(author_id)
        if ids is not None:
            ids.discard(pid)
            if not ids:
                del self._by_author[author_id]

    async def viewer(self, user_id: int) -> ViewerState:
        """Whom the user follows and what they liked lately."""
        now = time.monotonic()
        usable = self._usable
        state = self._viewers.get(user_id) if usable else None
        if state is not None and state.expires_at > now:
            self._viewers.move_to_end(user_id)
            return state
        fills = self._fills
        since = fills.begin()
        try:
            viewer = await self.store.get_viewer(user_id, LIKED_WINDOW)
            liked = viewer.liked_post_ids
            # `liked` is newest first: with a full window, older likes are not known here.
            floor = liked[-1] if len(liked) >= LIKED_WINDOW else 0
            state = ViewerState(user_id, frozenset(viewer.followee_ids), frozenset(liked), floor, now + TTL)
            if usable and self.max_viewers and fills.fresh(since, ("viewer", user_id)):
                self._viewers[user_id] = state
                self._viewers.move_to_end(user_id)
                while len(self._viewers) > self.max_viewers:
                    self._viewers.popitem(last=False)
        finally:
            fills.end()
        return state

    async def big_followees(self, viewer: ViewerState) -> list[int]:
        """The accounts the viewer follows that may have posts not fanned out."""
        if not viewer.followees:
            return []
        if not self._usable:
            return list(viewer.followees)
        if time.monotonic() >= self._big_expires_at:
            async with self._big_lock:
                if time.monotonic() >= self._big_expires_at:
                    started = time.monotonic()
                    self._big_announced = set()
                    listed = await self.store.get_big_authors()
                    # Accounts announced while the list was read stay in.
                    self._big = frozenset(listed) | self._big_announced
                    self._big_expires_at = started + TTL
        big, followees = self._big, viewer.followees
        if not big:
            return []
        small, large = (big, followees) if len(big) < len(followees) else (followees, big)
        return [a for a in small if a in large]

    async def first_page(
        self, user_id: int, limit: int, ids: list[int], viewer: ViewerState, make: PageMaker
    ) -> msgspec.Raw:
        """The viewer's first feed page of `limit` posts, made of the timeline `ids` read
        now and this viewer state: as kept, if it was made of the same and none of its
        posts changed since; otherwise the page `make()` makes, kept for the next read
        when `make` names the posts it shows and nothing it was made of was dropped while
        it ran. (Only a viewer who follows no big account has a first page kept: one who
        does sees posts merged at read time.)"""
        kept = self._kept_page(user_id, limit, ids, viewer)
        if kept is not None:
            return kept
        fills = self._fills
        since = fills.begin()
        try:
            encoded, shown = await make()
            if shown is not None:
                self._keep_page(since, user_id, limit, ids, viewer, shown, encoded)
        finally:
            fills.end()
        return msgspec.Raw(encoded)

    def _kept_page(self, user_id: int, limit: int, ids: list[int], viewer: ViewerState) -> msgspec.Raw | None:
        """The viewer's first feed page as kept, if it was made from these timeline ids
        and this viewer state and none of its posts changed since."""
        kept = self._pages.get(user_id)
        if (
            kept is None
            or kept.viewer is not viewer
            or kept.limit != limit
            or kept.ids != ids
            or kept.expires_at <= time.monotonic()
            or not self._usable
        ):
            return None
        return kept.json

    def _keep_page(
        self, since: int, user_id: int, limit: int, ids: list[int], viewer: ViewerState, posts: list[int], json: bytes
    ) -> None:
        """Keep a first page made since the fill that began at `since`, unless something
        it was made of was dropped meanwhile."""
        if not self.max_viewers or not self._usable or self._viewers.get(user_id) is not viewer:
            return
        fills = self._fills
        if not fills.fresh(since, ("viewer", user_id)):
            return
        expires_at = viewer.expires_at
        for pid in posts:
            entry = self._posts.get(pid)
            if entry is None or not fills.fresh(since, ("post", pid), ("author", entry.author_id)):
                return
            expires_at = min(expires_at, entry.expires_at)
        self._drop_page(user_id)
        self._pages[user_id] = _Page(limit, ids, viewer, posts, msgspec.Raw(json), expires_at)
        for pid in posts:
            self._pages_of.setdefault(pid, set()).add(user_id)
        while len(self._pages) > self.max_viewers:
            self._drop_page(next(iter(self._pages)))

    def _drop_page(self, user_id: int) -> None:
        kept = self._pages.pop(user_id, None)
        if kept is None:
            return
        for pid in kept.posts:
            viewers = self._pages_of.get(pid)
            if viewers is not None:
                viewers.discard(user_id)
                if not viewers:
                    del self._pages_of[pid]

    def _drop_pages_showing(self, post_id: int) -> None:
        for user_id in list(self._pages_of.get(post_id, ())):
            self._drop_page(user_id)

    # -- changes -----------------------------------------------------------------------

    async def changed(self, change: Invalidation) -> None:
        """Apply here, then tell every other instance. Call after the change committed."""
        self._apply(change)
        try:
            await self.pubsub.publish(CHANNEL, msgspec.json.encode(change))
        except Unavailable:
            # The others bypass their caches while the broker is down and empty them when
            # it is back.
            logger.warning("could not announce a cache invalidation; the broker is down")

    def _apply(self, change: Invalidation) -> None:
        fills = self._fills
        for pid in change.posts:
            fills.drop("post", pid)
            entry = self._posts.pop(pid, None)
            if entry is not None:
                self._unindex(pid, entry.author_id)
            self._drop_pages_showing(pid)
        for author in change.authors:
            fills.drop("author", author)
            for pid in self._by_author.pop(author, ()):
                self._posts.pop(pid, None)
                self._drop_pages_showing(pid)
        for uid in change.viewers:
            fills.drop("viewer", uid)
            self._viewers.pop(uid, None)
            self._drop_page(uid)
        if change.big_authors:
            # (Kept pages need nothing: a page is looked up only for a viewer who follows
            # no big account.)
            self._big_announced.update(change.big_authors)
            self._big = self._big | frozenset(change.big_authors)

    async def _on_message(self, channel: str, payload: bytes) -> None:
        try:
            change = msgspec.json.decode(payload, type=Invalidation)
        except msgspec.DecodeError:
            logger.warning("malformed cache invalidation ignored")
            return
        self._apply(change)

    async def _on_reset(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget everything (and what running fills read)."""
        self._fills.drop_all()
        self._posts.clear()
        self._by_author.clear()
        self._viewers.clear()
        self._pages.clear()
        self._pages_of.clear()
        self._big_expires_at = 0.0
