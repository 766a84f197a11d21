-- Voice and video calls: the signaling record. Deadlines live here so that a ring
-- timeout holds even when the instance that started the ring dies.

CREATE TABLE calls (
    id                bigint PRIMARY KEY DEFAULT socialhub_id(),
    room_id           bigint REFERENCES rooms (id) ON DELETE SET NULL,
    caller_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    callee_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    media             text NOT NULL CHECK (media IN ('audio', 'video')),
    state             text NOT NULL CHECK (state IN ('ringing', 'active', 'ended')),
    end_reason        text,
    -- The sockets on each end (random per connection, not stored anywhere else):
    -- signaling after the answer goes to these two only.
    caller_socket_id  bigint NOT NULL,
    callee_socket_id  bigint,
    ring_deadline     timestamptz NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    answered_at       timestamptz,
    ended_at          timestamptz,
    CHECK (caller_id <> callee_id)
);
CREATE INDEX calls_caller_idx ON calls (caller_id, id DESC);
CREATE INDEX calls_callee_idx ON calls (callee_id, id DESC);
CREATE INDEX calls_live_idx ON calls (ring_deadline) WHERE state <> 'ended';

-- One live call per user: a row per party while the call is not ended. A second call
-- for a party fails on the primary key: that party is busy.
CREATE TABLE call_parties (
    user_id bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    call_id bigint NOT NULL REFERENCES calls (id) ON DELETE CASCADE
);
CREATE INDEX call_parties_call_idx ON call_parties (call_id);
