-- The `cdc` send as one statement that also answers its commit's LSN: the procedure
-- `hermet_send_committed`. `src/send.rs` owns it and calls it; its module docs say why.
--
-- It runs `hermet_send` (migration 10: the channel lock, then the checks and the writes), keeps
-- the columns a `cdc` send answers, commits, and only then reads `pg_current_wal_insert_lsn()`,
-- which is past the commit record: the read-your-writes position. A procedure may commit only
-- when it is called on its own (not inside a transaction block, not behind other statements
-- before the same `Sync`); the store calls it so, and any error before the commit rolls the
-- whole send back.
--
-- The answer is one row. `o_channel_type` NULL: no such channel (nothing written). Otherwise the
-- sender's nickname (NULL: no such user), whether the single-chat friendship holds (true in a
-- group), the sender's member key and `left_at` (NULL key: not a member), then the message's id,
-- seq and time (NULL: refused, nothing written), and the LSN as text.
--
-- `hermet_send` stays: `dual_write` and `async` call it inside their transactions, and servers
-- of the previous version call it during a rolling upgrade.
CREATE PROCEDURE hermet_send_committed(
    p_channel BIGINT, p_now BIGINT, p_sender BIGINT, p_type TEXT, p_content TEXT,
    OUT o_channel_type TEXT, OUT o_sender_name TEXT, OUT o_is_friend BOOLEAN,
    OUT o_member_user BIGINT, OUT o_member_left_at BIGINT,
    OUT o_message_id BIGINT, OUT o_seq BIGINT, OUT o_created_at BIGINT, OUT o_lsn TEXT)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT (s.before_row).channel_type, s.sender_name, s.is_friend,
           (s.member_row).user_id, (s.member_row).left_at,
           (s.message_row).id, (s.message_row).seq, (s.message_row).created_at
      INTO o_channel_type, o_sender_name, o_is_friend, o_member_user, o_member_left_at,
           o_message_id, o_seq, o_created_at
      FROM hermet_send(p_channel, p_now, p_sender, p_type, p_content) AS s;
    COMMIT;
    o_lsn := pg_current_wal_insert_lsn()::text;
END
$$;
