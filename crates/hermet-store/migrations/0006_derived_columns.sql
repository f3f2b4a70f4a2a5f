-- The conversation view's derived columns become plain columns that every writer fills through
-- the functions below, instead of stored generated columns.
--
-- Why: PostgreSQL prepares a stored generated column's expression again for every partition a
-- statement writes, in every statement (parse, plan and compile, six expressions here). A
-- projector batch writes rows on nearly all 256 partitions, so that set-up was about a fifth of
-- its upsert: 38.7 ms against 31.5 ms for the same 1,500 rows without generated columns
-- (BENCHMARKS.md, "Generated columns"). The functions are plain SQL expressions, which the
-- planner inlines: they cost what the generation expressions cost, once per statement.
--
-- The rules stay in one place, here. The rebuild oracle computes the same values on its own
-- (hermet-store `oracle::EXPECTED_CONVERSATIONS`), so the audit still checks them.

CREATE FUNCTION hermet_conversation_name(conversation_type TEXT, channel_name TEXT,
                                         remark_name TEXT, peer_nickname TEXT)
    RETURNS TEXT LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN conversation_type = 'single'
                THEN COALESCE(NULLIF(remark_name, ''), peer_nickname, '')
                ELSE channel_name END;

CREATE FUNCTION hermet_conversation_avatar(conversation_type TEXT, channel_avatar TEXT,
                                           peer_avatar TEXT)
    RETURNS TEXT LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN conversation_type = 'single' THEN COALESCE(peer_avatar, '')
                ELSE channel_avatar END;

CREATE FUNCTION hermet_conversation_info_ver(conversation_type TEXT, channel_info_ver BIGINT,
                                             peer_profile_ver BIGINT)
    RETURNS BIGINT LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN conversation_type = 'single' THEN peer_profile_ver
                ELSE channel_info_ver END;

CREATE FUNCTION hermet_unread_count(last_message_seq BIGINT, read_seq BIGINT)
    RETURNS BIGINT LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN GREATEST(last_message_seq - read_seq, 0);

CREATE FUNCTION hermet_is_hidden(hidden_at_seq BIGINT, last_message_seq BIGINT)
    RETURNS BOOLEAN LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN hidden_at_seq IS NOT NULL AND last_message_seq <= hidden_at_seq;

-- List order: newest message first; a conversation without one sorts by when it opened.
CREATE FUNCTION hermet_activity_at(last_message_time BIGINT, opened_at BIGINT)
    RETURNS BIGINT LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN COALESCE(last_message_time, opened_at);

-- Existing values are kept; only their upkeep moves to the writers. None of the rules can give
-- NULL, so NOT NULL makes a writer that forgets a derived column fail instead of storing a hole.
ALTER TABLE user_conversation_view
    ALTER COLUMN conversation_name DROP EXPRESSION,
    ALTER COLUMN conversation_avatar DROP EXPRESSION,
    ALTER COLUMN conversation_info_ver DROP EXPRESSION,
    ALTER COLUMN unread_count DROP EXPRESSION,
    ALTER COLUMN is_hidden DROP EXPRESSION,
    ALTER COLUMN activity_at DROP EXPRESSION,
    ALTER COLUMN conversation_name SET NOT NULL,
    ALTER COLUMN conversation_avatar SET NOT NULL,
    ALTER COLUMN conversation_info_ver SET NOT NULL,
    ALTER COLUMN unread_count SET NOT NULL,
    ALTER COLUMN is_hidden SET NOT NULL,
    ALTER COLUMN activity_at SET NOT NULL;
