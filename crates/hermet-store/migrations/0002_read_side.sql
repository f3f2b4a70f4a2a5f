-- Read side: per-user denormalized views and the reverse indexes that find the rows embedding a
-- user's profile. Each table is hash-partitioned by its owner (views) or by the embedded user
-- (reverse indexes); the partitions ("shards") are created by hermet_ensure_shards(n) with the
-- configured count. See docs/sharding.md for why partitions and not one table per shard.
--
-- Column groups carry the write-side version they were computed from; the view store keeps a
-- group only when the incoming version is newer. Columns that are functions of other columns are
-- GENERATED, so they cannot disagree with their inputs.

CREATE TABLE user_conversation_view (
    user_id                  BIGINT  NOT NULL,
    channel_id               BIGINT  NOT NULL,
    conversation_type        TEXT    NOT NULL,
    -- channel group (groups), guarded by channel_info_ver
    channel_name             TEXT    NOT NULL DEFAULT '',
    channel_avatar           TEXT    NOT NULL DEFAULT '',
    channel_info_ver         BIGINT  NOT NULL DEFAULT 0,
    -- peer group (single chats), guarded by peer_profile_ver
    peer_user_id             BIGINT,
    peer_nickname            TEXT,
    peer_avatar              TEXT,
    peer_profile_ver         BIGINT  NOT NULL DEFAULT 0,
    -- remark group (single chats), guarded by remark_ver
    remark_name              TEXT    NOT NULL DEFAULT '',
    remark_ver               BIGINT  NOT NULL DEFAULT 0,
    -- last-message group, guarded by last_message_seq
    last_message_id          BIGINT,
    last_message_seq         BIGINT  NOT NULL DEFAULT 0,
    last_message_type        TEXT,
    last_message_content     TEXT,
    last_message_sender_id   BIGINT,
    last_message_sender_name TEXT,
    last_message_time        BIGINT,
    -- monotonic
    read_seq                 BIGINT  NOT NULL DEFAULT 0,
    -- membership and settings group, guarded by settings_ver
    is_pinned                BOOLEAN NOT NULL DEFAULT false,
    is_muted                 BOOLEAN NOT NULL DEFAULT false,
    hidden_at_seq            BIGINT,
    opened_at                BIGINT  NOT NULL DEFAULT 0,
    closed_at                BIGINT  NOT NULL DEFAULT 0,
    settings_ver             BIGINT  NOT NULL DEFAULT 0,
    -- derived
    conversation_name        TEXT GENERATED ALWAYS AS (
        CASE WHEN conversation_type = 'single'
             THEN COALESCE(NULLIF(remark_name, ''), peer_nickname, '')
             ELSE channel_name END) STORED,
    conversation_avatar      TEXT GENERATED ALWAYS AS (
        CASE WHEN conversation_type = 'single' THEN COALESCE(peer_avatar, '')
             ELSE channel_avatar END) STORED,
    conversation_info_ver    BIGINT GENERATED ALWAYS AS (
        CASE WHEN conversation_type = 'single' THEN peer_profile_ver
             ELSE channel_info_ver END) STORED,
    unread_count             BIGINT GENERATED ALWAYS AS (GREATEST(last_message_seq - read_seq, 0)) STORED,
    is_hidden                BOOLEAN GENERATED ALWAYS AS (
        hidden_at_seq IS NOT NULL AND last_message_seq <= hidden_at_seq) STORED,
    -- list order: newest message first; a conversation without one sorts by when it opened
    activity_at              BIGINT GENERATED ALWAYS AS (COALESCE(last_message_time, opened_at)) STORED,
    updated_at               BIGINT  NOT NULL,
    PRIMARY KEY (user_id, channel_id)
) PARTITION BY HASH (user_id);

-- The conversation list is one range scan of this index on the owner's partition.
CREATE INDEX user_conversation_view_list
    ON user_conversation_view (user_id, is_pinned DESC, activity_at DESC, channel_id DESC)
    WHERE closed_at = 0 AND NOT is_hidden;

CREATE TABLE user_contact_view (
    user_id          BIGINT  NOT NULL,
    contact_id       BIGINT  NOT NULL,
    -- profile group, guarded by contact_info_ver
    contact_nickname TEXT    NOT NULL,
    contact_avatar   TEXT    NOT NULL,
    contact_info_ver BIGINT  NOT NULL,
    -- friendship group, guarded by friendship_ver
    remark_name      TEXT    NOT NULL,
    group_name       TEXT    NOT NULL,
    is_starred       BOOLEAN NOT NULL,
    -- 0 while the friendship is active: rows are kept so their version guards survive
    deleted_at       BIGINT  NOT NULL DEFAULT 0,
    friendship_ver   BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    PRIMARY KEY (user_id, contact_id)
) PARTITION BY HASH (user_id);

CREATE INDEX user_contact_view_list
    ON user_contact_view (user_id, is_starred DESC, contact_nickname, contact_id)
    WHERE deleted_at = 0;

-- Insert-only: an entry stays when a friendship ends, so the (closed) rows it points to keep
-- receiving profile changes and stay equal to a rebuild.
CREATE TABLE conversation_reverse_index (
    peer_user_id  BIGINT NOT NULL,
    owner_user_id BIGINT NOT NULL,
    channel_id    BIGINT NOT NULL,
    PRIMARY KEY (peer_user_id, owner_user_id, channel_id)
) PARTITION BY HASH (peer_user_id);

CREATE TABLE contact_reverse_index (
    contact_user_id BIGINT NOT NULL,
    owner_user_id   BIGINT NOT NULL,
    PRIMARY KEY (contact_user_id, owner_user_id)
) PARTITION BY HASH (contact_user_id);

CREATE TABLE hermet_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Creates the shards once; refuses a different count later (changing it means a rebuild).
CREATE FUNCTION hermet_ensure_shards(n INT) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    existing TEXT;
    t TEXT;
BEGIN
    IF n < 1 OR n > 4096 THEN
        RAISE EXCEPTION 'shard count must be between 1 and 4096, got %', n;
    END IF;
    SELECT value INTO existing FROM hermet_meta WHERE key = 'shards';
    IF existing IS NOT NULL THEN
        IF existing::INT <> n THEN
            RAISE EXCEPTION 'the read side has % shards, the configuration asks for %', existing, n
                USING ERRCODE = 'HM001';
        END IF;
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['user_conversation_view', 'user_contact_view',
                             'conversation_reverse_index', 'contact_reverse_index'] LOOP
        FOR i IN 0 .. n - 1 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS %s, REMAINDER %s)',
                           t || '_' || i, t, n, i);
        END LOOP;
    END LOOP;
    INSERT INTO hermet_meta (key, value) VALUES ('shards', n::TEXT);
END;
$$;
