-- Ids: 41 bits of milliseconds since 2020-01-01 (socialhub/ids.py EPOCH_MS), then 22 bits
-- of one global sequence: unique across instances, ordered by creation.
CREATE SEQUENCE socialhub_id_seq CYCLE;

CREATE FUNCTION socialhub_id() RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT ((floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1577836800000) << 22)
           | (nextval('socialhub_id_seq') % 4194304)
$$;

CREATE TABLE users (
    id              bigint PRIMARY KEY DEFAULT socialhub_id(),
    username        text NOT NULL,
    email           text NOT NULL,
    name            text NOT NULL,
    bio             text NOT NULL DEFAULT '',
    avatar_url      text,
    password_hash   text NOT NULL,
    followers_count integer NOT NULL DEFAULT 0 CHECK (followers_count >= 0),
    following_count integer NOT NULL DEFAULT 0 CHECK (following_count >= 0),
    posts_count     integer NOT NULL DEFAULT 0 CHECK (posts_count >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Usernames and emails are unique regardless of case; both are looked up lower-cased.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- One row per signed-in device. Access tokens (JWT) carry the session id, so revoking
-- the row stops them; the refresh token chain lives in refresh_tokens.
CREATE TABLE sessions (
    id            bigint PRIMARY KEY DEFAULT socialhub_id(),
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoke_reason text,
    user_agent    text NOT NULL DEFAULT '',
    ip            text NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;

-- Refresh tokens are stored as SHA-256 of 256 random bits. A token is used once; a row
-- with used_at set that is presented again is a replay and revokes the session.
CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    session_id  bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);

-- Password-reset codes: HMAC of the 6 digits (keyed by the server secret), a deadline
-- and a try counter. A new request replaces the previous code of that user.
CREATE TABLE password_resets (
    user_id     bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    otp_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    spent_at    timestamptz
);

-- Follows are soft-deleted, as the original system did: unfollow sets deleted_at, a new
-- follow revives the row with a new id (the id orders follower lists, newest first).
CREATE TABLE follows (
    follower_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followee_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id          bigint NOT NULL DEFAULT socialhub_id(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    PRIMARY KEY (follower_id, followee_id),
    CHECK (follower_id <> followee_id)
);
CREATE INDEX follows_followee_idx ON follows (followee_id, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX follows_follower_idx ON follows (follower_id, id DESC) WHERE deleted_at IS NULL;
