-- Chat: rooms, members with read positions, messages with a gap-free seq per room.

CREATE TABLE rooms (
    id              bigint PRIMARY KEY DEFAULT socialhub_id(),
    kind            text NOT NULL CHECK (kind IN ('direct', 'group')),
    name            text,
    -- "<smaller id>:<larger id>" for a direct room: one room per pair.
    direct_key      text UNIQUE,
    created_by      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- The last seq given out; sends lock this row, so seq is 1, 2, 3... with no gap.
    last_seq        bigint NOT NULL DEFAULT 0,
    last_activity_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE room_members (
    room_id       bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at     timestamptz NOT NULL DEFAULT now(),
    last_read_seq bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user_idx ON room_members (user_id);

CREATE TABLE messages (
    id            bigint PRIMARY KEY DEFAULT socialhub_id(),
    room_id       bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq           bigint NOT NULL,
    sender_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body          text NOT NULL,
    client_msg_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (room_id, seq),
    -- A resent message (same client_msg_id from the same sender) is stored once.
    UNIQUE (room_id, sender_id, client_msg_id)
);
CREATE INDEX messages_room_id_idx ON messages (room_id, id DESC);

ALTER TABLE users ADD COLUMN last_seen_at timestamptz;
