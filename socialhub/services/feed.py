"""The home feed: fan-out on write into capped per-user timelines, merged at read time
with the few accounts too big to fan out.

Timelines live behind the `Timelines` port (Redis sorted sets, or in process), as post
ids, newest `TIMELINE_CAP` kept. Like Mastodon, a post fans out only to followers
active in the last `ACTIVE_WINDOW`, and a timeline not read for that long expires; a
missing timeline is rebuilt from PostgreSQL on the next read. Pages are hydrated from
the read cache (`services.readcache`) and filtered by the viewer's follows as they
are now, so a deleted post or an unfollowed author is gone from the feed at once.
"""

from __future__ import annotations

import logging
import time

import msgspec

from socialhub.domain.events import Envelope, FollowCreated, PostCreated, PostDeleted, UnfollowCreated
from socialhub.domain.pages import PageRequest, page_of
from socialhub.domain.users import Principal
from socialhub.infra.events.base import Consumer
from socialhub.infra.kv.base import Timelines, Values
from socialhub.services.readcache import ReadCache, ViewerState
from socialhub.storage.posts import PostStore

logger = logging.getLogger(__name__)

TIMELINE_CAP = 400  # Mastodon's home feed size
ACTIVE_WINDOW = 7 * 86400.0  # Mastodon fans out to users active in the last week
# Reads fetch a few more ids than asked, since some drop out at hydration (deleted posts).
READ_SLACK = 10
FANOUT_CHUNK = 1000
# How many of a newly followed account's posts are merged into the follower's timeline:
# as many as a timeline holds. Fewer would leave a gap: their older posts would fall
# between the follower's timeline entries, where reads do not look in PostgreSQL.
FOLLOW_BACKFILL = TIMELINE_CAP
# At most one last_active_at write per user per this many seconds.
ACTIVITY_WRITE_EVERY = 3600.0
# Users this instance marked active lately, remembered to spare the values store a
# round trip per read (~60 bytes each).
MARKED_MAX = 100_000


def timeline_key(user_id: int) -> str:
    return f"tl:{user_id}"


class FeedService(Consumer):
    """The feed consumer (fan-out) and GET /feed."""

    name = "feed"

    def __init__(self, *, posts: PostStore, timelines: Timelines, values: Values, cache: ReadCache) -> None:
        self.posts = posts
        self.timelines = timelines
        self.values = values
        self.cache = cache
        self._marked: dict[int, float] = {}

    # -- writes (the consumer) --------------------------------------------------------

    async def handle(self, envelope: Envelope) -> None:
        # Ids in events are decimal strings, checked when the event was read.
        match envelope.event:
            case PostCreated(data=d):
                await self._fan_out(int(d.author_id), int(d.post_id), add=True)
            case PostDeleted(data=d):
                await self._fan_out(int(d.author_id), int(d.post_id), add=False)
            case FollowCreated(data=f):
                recent = await self.posts.get_recent_post_ids(int(f.followee_id), FOLLOW_BACKFILL, fanned_out_only=True)
                await self.timelines.add(timeline_key(int(f.follower_id)), recent, TIMELINE_CAP)
            case UnfollowCreated(data=f):
                recent = await self.posts.get_recent_post_ids(int(f.followee_id), TIMELINE_CAP)
                await self.timelines.remove(timeline_key(int(f.follower_id)), recent)

    async def _fan_out(self, author_id: int, post_id: int, *, add: bool) -> None:
        """Into the author's timeline and each active follower's (only timelines that
        exist: a missing one is rebuilt on read). Adding twice is adding once."""
        keys = [timeline_key(author_id)]
        # A post of an author with too many followers (decided when it was made) reaches
        # them at read time instead; a deletion is applied everywhere it might be.
        if not add or await self.posts.get_fanned_out(post_id):
            after = 0
            while True:
                chunk = await self.posts.get_follower_ids(author_id, ACTIVE_WINDOW, after, FANOUT_CHUNK)
                keys += [timeline_key(f) for f in chunk]
                if len(chunk) < FANOUT_CHUNK:
                    break
                after = chunk[-1]
        for key in keys:
            if add:
                await self.timelines.add(key, [post_id], TIMELINE_CAP)
            else:
                await self.timelines.remove(key, [post_id])

    # -- reads -----------------------------------------------------------------------

    async def home(self, viewer: Principal, page: PageRequest) -> msgspec.Raw:
        """A page of the viewer's home feed, encoded as JSON (a `Page` of `Post`s)."""
        uid = viewer.user_id
        await self._seen(uid)
        key = timeline_key(uid)
        want = page.limit + READ_SLACK
        ids = await self.timelines.range(key, page.before, want)
        if ids is None:
            await self._rebuild(uid)
            ids = await self.timelines.range(key, page.before, want) or []
        state = await self.cache.viewer(uid)
        # Posts of the accounts too big to fan out, merged in at read time.
        big = await self.cache.big_followees(state)

        async def make() -> tuple[bytes, list[int] | None]:
            return await self._page(uid, ids, state, big, page, want)

        if page.before is None and not big:
            # The first page, most read, is kept whole while nothing it shows changes.
            return await self.cache.first_page(uid, page.limit, ids, state, make)
        return msgspec.Raw((await make())[0])

    async def _page(
        self, uid: int, ids: list[int], state: ViewerState, big: list[int], page: PageRequest, want: int
    ) -> tuple[bytes, list[int] | None]:
        """(the page encoded, the ids of its posts when it was made of the timeline alone)."""
        merged = await self.posts.get_not_fanned_out_ids(big, page.before, page.limit) if big else []
        # Filtered by the follow graph as it is now: unfollowed authors drop out at once.
        # Without posts to merge, the timeline's newest ids that make a page are enough.
        found = await self.cache.rendered(
            [*ids, *merged] if merged else ids, state, followed_only=True, enough=0 if merged else page.limit
        )
        from_timeline = sum(1 for i in ids if i in found) if merged else len(found)
        if from_timeline < page.limit:
            # Past the timeline's end (its cap, or posts that were never fanned out), or
            # too many of its ids dropped out (deleted posts and unfollowed authors the
            # consumer has not removed yet): straight from the follow graph. (With a page
            # of the timeline's own, anything the graph could add is older than it.)
            older_than = min(ids) if ids else page.before
            graph = await self.posts.get_home_graph_ids(uid, older_than, page.limit)
            for pid, post in (await self.cache.rendered(graph, state)).items():
                found.setdefault(pid, post)
        ordered = sorted(found, reverse=True)[: page.limit]
        encoded = msgspec.json.encode(page_of([found[i] for i in ordered], ordered, page.limit))
        return encoded, ordered if not merged and from_timeline >= page.limit else None

    async def _rebuild(self, user_id: int) -> None:
        """Fill a missing timeline from PostgreSQL. It is created empty first: from then on
        the consumer adds to it every post it handles, and the query that follows finds
        every post committed before it. (Querying first would miss a post that commits
        in between with an id below the newest found, since ids are taken at insert.)"""
        key = timeline_key(user_id)
        await self.timelines.create(key, [], TIMELINE_CAP, ACTIVE_WINDOW)
        ids = await self.posts.get_home_ids(user_id, TIMELINE_CAP)
        if ids:
            await self.timelines.add(key, ids, TIMELINE_CAP)

    async def _seen(self, user_id: int) -> None:
        """Keep the user in the fan-out set and their timeline alive: once per
        `ACTIVITY_WRITE_EVERY` across instances, and no round trip to the values store
        for a user this instance marked lately."""
        now = time.monotonic()
        marked = self._marked.get(user_id)
        if marked is not None and now - marked < ACTIVITY_WRITE_EVERY:
            return
        if await self.values.set_if_absent(f"active:{user_id}", b"1", ACTIVITY_WRITE_EVERY):
            await self.posts.update_last_active(user_id)
            await self.timelines.touch(timeline_key(user_id), ACTIVE_WINDOW)
        # Only once it is done: a store that failed is asked again on the next read.
        self._marked[user_id] = now
        if len(self._marked) > MARKED_MAX:
            self._marked = {u: t for u, t in self._marked.items() if now - t < ACTIVITY_WRITE_EVERY}
            if len(self._marked) > MARKED_MAX:
                self._marked.clear()
