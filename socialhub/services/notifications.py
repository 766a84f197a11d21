"""Notifications: made by the consumer from events, read through the notify routes,
and pushed on the user's live channel the moment they are stored."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec

from socialhub.domain.events import CommentCreated, Envelope, FollowCreated, LikeCreated, PostCreated
from socialhub.domain.live import encode_user_event, user_channel
from socialhub.domain.notifications import NewNotification, Notification
from socialhub.domain.pages import Page, PageRequest, page_of
from socialhub.domain.protocol import NotificationFrame
from socialhub.domain.users import Principal
from socialhub.errors import SocialhubError
from socialhub.infra.events.base import Consumer
from socialhub.infra.pubsub.base import PubSub
from socialhub.storage.notifications import NotificationStore

logger = logging.getLogger(__name__)


# How many ids one mark-read request may name. Our choice: ten pages of the largest list
# page (MAX_LIMIT, 100), and a bound on the array one statement is handed.
MAX_MARK_READ = 1000


class UnreadCount(msgspec.Struct, frozen=True):
    count: int


def notification_for(envelope: Envelope) -> NewNotification | None:
    """Who an event notifies, if anyone. Nobody hears of their own action, except the
    author's `post` notification ("your post is out"), which the original system sent."""
    # Ids in events are decimal strings, checked when the event was read.
    actor = int(envelope.event.actor_id)
    match envelope.event:
        case PostCreated(data=p):
            return NewNotification(user_id=actor, type="post", actor_id=actor, post_id=int(p.post_id))
        case CommentCreated(data=c):
            target = int(c.post_author_id)
            if target == actor:
                return None
            return NewNotification(
                user_id=target, type="comment", actor_id=actor, post_id=int(c.post_id), comment_id=int(c.comment_id)
            )
        case LikeCreated(data=lk):
            target = int(lk.post_author_id)
            return None if target == actor else NewNotification(target, "like", actor, post_id=int(lk.post_id))
        case FollowCreated(data=f):
            return NewNotification(user_id=int(f.followee_id), type="follow", actor_id=actor)
    return None


class NotificationService(Consumer):
    """The notifications consumer and the notify routes' rules."""

    name = "notifications"

    def __init__(self, *, store: NotificationStore, pubsub: PubSub) -> None:
        self.store = store
        self.pubsub = pubsub

    async def handle(self, envelope: Envelope) -> None:
        new = notification_for(envelope)
        if new is None:
            return
        await self.notify(new, envelope.event.event_id)

    async def notify(self, new: NewNotification, event_id: int | None = None) -> Notification | None:
        """Store a notification (once per event and user) and push it live."""
        # (event_id, user_id) is unique: a second delivery of the event inserts nothing.
        record = await self.store.insert_notification(new, event_id)
        if record is None:
            return None
        view = Notification.of(record)
        try:
            await self.pubsub.publish(user_channel(new.user_id), encode_user_event(NotificationFrame(view)))
        except SocialhubError:
            # Stored is what counts; the live push is best effort (clients list on reconnect).
            logger.warning("could not push notification %s live", record.id)
        return view

    async def notify_all(self, news: Sequence[NewNotification]) -> None:
        """Store notifications that belong to no event in one statement, and push each live."""
        for record in await self.store.insert_notifications(news):
            view = Notification.of(record)
            try:
                await self.pubsub.publish(user_channel(record.user_id), encode_user_event(NotificationFrame(view)))
            except SocialhubError:
                logger.warning("could not push notification %s live", record.id)

    async def page(self, viewer: Principal, page: PageRequest) -> Page[Notification]:
        records = await self.store.get_page_and_mark_read(viewer.user_id, page.before, page.limit)
        return page_of([Notification.of(r) for r in records], [r.id for r in records], page.limit)

    async def unread_count(self, viewer: Principal) -> UnreadCount:
        return UnreadCount(count=await self.store.get_unread_count(viewer.user_id))

    async def mark_read(self, viewer: Principal, ids: list[int] | None) -> None:
        """Mark the viewer's notifications among `ids` read; all of them when `ids` is None."""
        await self.store.update_read(viewer.user_id, ids)
