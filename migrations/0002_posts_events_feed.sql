-- Posts, media, comments, likes; the transactional outbox and consumer bookkeeping;
-- notifications.

CREATE TABLE posts (
    id              bigint PRIMARY KEY DEFAULT socialhub_id(),
    author_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content         text NOT NULL,
    likes_count     integer NOT NULL DEFAULT 0 CHECK (likes_count >= 0),
    comments_count  integer NOT NULL DEFAULT 0 CHECK (comments_count >= 0),
    -- A retried create with the same Idempotency-Key finds this row (same transaction
    -- as the post itself, so there is never a key without its post or the reverse).
    idempotency_key text,
    -- Decided once, when the post is made: false when the author then had too many
    -- followers to fan out to (feed.fanout_threshold). Such posts are merged into feeds
    -- at read time, even after the author's count falls.
    fanned_out      boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX posts_author_idx ON posts (author_id, id DESC);
CREATE INDEX posts_not_fanned_out_idx ON posts (author_id, id DESC) WHERE NOT fanned_out;
CREATE UNIQUE INDEX posts_idempotency_key ON posts (author_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE media (
    id           bigint PRIMARY KEY DEFAULT socialhub_id(),
    post_id      bigint REFERENCES posts (id) ON DELETE CASCADE,
    owner_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    storage_key  text NOT NULL UNIQUE,
    content_type text NOT NULL,
    size         bigint NOT NULL,
    width        integer,
    height       integer,
    position     smallint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX media_post_idx ON media (post_id, position);

CREATE TABLE comments (
    id          bigint PRIMARY KEY DEFAULT socialhub_id(),
    post_id     bigint NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    author_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comments_post_idx ON comments (post_id, id);

CREATE TABLE likes (
    post_id    bigint NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, user_id)
);

-- Fan-out goes only to users seen recently (Mastodon: 7 days); a returning user's feed
-- is rebuilt from PostgreSQL.
ALTER TABLE users ADD COLUMN last_active_at timestamptz NOT NULL DEFAULT now();
-- The media-store key of the avatar (avatar_url is what clients see).
ALTER TABLE users ADD COLUMN avatar_key text;

-- The transactional outbox: each event is written in the transaction of the change
-- that causes it. Readers go in (xid, id) order and only below the oldest running
-- transaction's xid, so an event committed late with a small id is never skipped.
CREATE TABLE outbox (
    id          bigint PRIMARY KEY DEFAULT socialhub_id(),
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    topic       text NOT NULL,
    key         text NOT NULL,
    type        text NOT NULL,
    actor_id    bigint NOT NULL,
    data        jsonb NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_order_idx ON outbox (xid, id);

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('socialhub_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Where each outbox reader (the Kafka relay, or a consumer fed straight from the
-- outbox) has got to.
CREATE TABLE outbox_positions (
    name       text PRIMARY KEY,
    xid        xid8 NOT NULL DEFAULT '0',
    id         bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Consumers are idempotent by their writes: notifications are unique per (event, user),
-- timelines are sets.
CREATE TABLE notifications (
    id          bigint PRIMARY KEY DEFAULT socialhub_id(),
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type        text NOT NULL CHECK (type IN ('post', 'comment', 'like', 'follow', 'message', 'missed_call')),
    actor_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    post_id     bigint,
    comment_id  bigint,
    room_id     bigint,
    call_id     bigint,
    event_id    bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz,
    UNIQUE (event_id, user_id)
);
CREATE INDEX notifications_user_idx ON notifications (user_id, id DESC);
CREATE INDEX notifications_unread_idx ON notifications (user_id) WHERE read_at IS NULL;
