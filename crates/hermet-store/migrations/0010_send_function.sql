-- The send command as one statement: `hermet_send`. `src/send.rs` owns it and calls it; its
-- module docs say why a send is a function and which guarantees that keeps.
--
-- Two statements run inside, in this order, each with a snapshot of its own (a VOLATILE
-- function takes a fresh snapshot per statement under READ COMMITTED):
--
-- 1. The channel lock (`FOR UPDATE`): sends and membership changes of one channel are
--    serialized, as for every command. No row: the channel does not exist, and the function
--    answers no row.
-- 2. The checks and the writes, after the lock was granted, so they see membership and
--    friendship as every earlier writer of the channel left them. The sender's user row is
--    locked `FOR SHARE` (a rename waits for the send, or the send waits for the rename and
--    copies the new name). Only for an active member and, in a single chat, a friend of the
--    peer: the channel's `last_seq` moves on, the message is stored and the sender's read
--    position moves past it.
--
-- It always answers one row for an existing channel: the channel as locked, the sender's
-- nickname (NULL: no such user), whether the single-chat friendship holds (true in a group),
-- the sender's member row (NULL: none), then the rows written (all NULL when the checks
-- failed; `own_row` also when the read position did not move). Whole rows of the tables, so
-- the caller picks the columns it decodes and a column added later needs no change here.
CREATE FUNCTION hermet_send(
    p_channel BIGINT, p_now BIGINT, p_sender BIGINT, p_type TEXT, p_content TEXT)
RETURNS TABLE (
    before_row  channels,
    sender_name TEXT,
    is_friend   BOOLEAN,
    member_row  channel_members,
    after_row   channels,
    message_row messages,
    own_row     channel_members)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    locked channels;
BEGIN
    SELECT * INTO locked FROM channels c WHERE c.id = p_channel FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH me AS (
             SELECT u.nickname FROM users u WHERE u.id = p_sender FOR SHARE),
         mem AS (
             SELECT m AS r FROM channel_members m
              WHERE m.channel_id = p_channel AND m.user_id = p_sender),
         peer AS (
             SELECT CASE WHEN locked.pair_low = p_sender THEN locked.pair_high
                         WHEN locked.pair_high = p_sender THEN locked.pair_low END AS id
              WHERE locked.channel_type = 'single'),
         gate AS (
             SELECT (SELECT me.nickname FROM me) AS nickname,
                    NOT EXISTS (SELECT 1 FROM peer WHERE peer.id IS NOT NULL)
                    OR EXISTS (SELECT 1 FROM friendships f, peer
                                WHERE f.user_id = p_sender AND f.friend_id = peer.id
                                  AND f.status = 'active') AS friends,
                    EXISTS (SELECT 1 FROM mem WHERE (mem.r).left_at IS NULL) AS active),
         ch AS (
             UPDATE channels c SET last_seq = c.last_seq + 1, updated_at = p_now
              WHERE c.id = p_channel
                AND (SELECT g.nickname IS NOT NULL AND g.friends AND g.active FROM gate g)
             RETURNING c AS r),
         msg AS (
             INSERT INTO messages AS mm
                    (channel_id, seq, sender_id, sender_name, msg_type, content, created_at)
             SELECT p_channel, (ch.r).last_seq, p_sender, (SELECT g.nickname FROM gate g),
                    p_type, p_content, p_now
               FROM ch
             RETURNING mm AS r),
         own AS (
             UPDATE channel_members m SET read_seq = (ch.r).last_seq FROM ch
              WHERE m.channel_id = p_channel AND m.user_id = p_sender
                AND m.read_seq < (ch.r).last_seq
             RETURNING m AS r)
    SELECT locked, gate.nickname, gate.friends, mem.r, ch.r, msg.r, own.r
      FROM gate LEFT JOIN mem ON true LEFT JOIN ch ON true LEFT JOIN msg ON true
           LEFT JOIN own ON true;
END
$$;
