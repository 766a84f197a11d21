-- Sending a chat message in one round trip: ChatStore.insert_message calls this with one
-- autocommit statement instead of BEGIN, lock, lookup, insert, COMMIT.
--
-- The steps are separate statements on purpose. In READ COMMITTED each statement of a
-- VOLATILE plpgsql function takes a fresh snapshot, so the lookup that follows the room
-- lock sees a message committed by the send that held the lock before: a resend with the
-- same client_msg_id, even one racing the first send, gets the first message back and
-- burns no seq. One statement (a CTE with NOT EXISTS) would keep the snapshot it took
-- before waiting for the lock, miss that message and fail on the unique key instead.
--
-- No row for a non-member (or a room that does not exist); otherwise the message with
-- its sender's summary, and `created` false when it had been stored already.
CREATE FUNCTION socialhub_send_message(p_room_id bigint, p_sender_id bigint, p_body text, p_client_msg_id text)
RETURNS TABLE (id bigint, room_id bigint, seq bigint, body text, client_msg_id text, created_at timestamptz,
               sender_id bigint, username text, name text, avatar_url text, created boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    message_id bigint;
    new_seq bigint;
BEGIN
    -- Held until the caller's statement commits: sends in one room are serialised, so seq
    -- is 1, 2, 3... with no gap and no duplicate.
    PERFORM 1 FROM rooms r
    WHERE r.id = p_room_id
      AND EXISTS (SELECT 1 FROM room_members rm WHERE rm.room_id = r.id AND rm.user_id = p_sender_id)
    FOR UPDATE OF r;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    SELECT m.id INTO message_id FROM messages m
    WHERE m.room_id = p_room_id AND m.sender_id = p_sender_id AND m.client_msg_id = p_client_msg_id;

    IF message_id IS NULL THEN
        UPDATE rooms r SET last_seq = r.last_seq + 1, last_activity_at = now()
        WHERE r.id = p_room_id
        RETURNING r.last_seq INTO new_seq;
        INSERT INTO messages (room_id, seq, sender_id, body, client_msg_id)
        VALUES (p_room_id, new_seq, p_sender_id, p_body, p_client_msg_id)
        RETURNING messages.id INTO message_id;
        -- The sender has read what they sent.
        UPDATE room_members rm SET last_read_seq = new_seq
        WHERE rm.room_id = p_room_id AND rm.user_id = p_sender_id;
    END IF;

    RETURN QUERY
        SELECT m.id, m.room_id, m.seq, m.body, m.client_msg_id, m.created_at,
               u.id, u.username, u.name, u.avatar_url, new_seq IS NOT NULL
        FROM messages m JOIN users u ON u.id = m.sender_id
        WHERE m.id = message_id;
END
$$;
