-- Hybrid fan-out: write diffusion for single chats and small groups, read diffusion for large
-- groups (docs/fanout.md).
--
-- Write side: the diffusion a group is in, decided by the commands that change its membership
-- (with hysteresis, so a group on the boundary does not flip back and forth), and a version that
-- moves each time it flips. Both are write-side state, so the projection and the rebuild oracle
-- derive the same read side from them.
ALTER TABLE channels
    ADD COLUMN fanout     TEXT   NOT NULL DEFAULT 'write' CHECK (fanout IN ('write', 'read')),
    ADD COLUMN fanout_ver BIGINT NOT NULL DEFAULT 1,
    ADD CHECK (channel_type = 'group' OR fanout = 'write');

-- Read side: one row per group channel, whatever its diffusion, written once per message or
-- group edit. Column groups and guards as in the conversation view: the channel group by
-- `channel_info_ver`, the last-message group by `last_message_seq`.
CREATE TABLE channel_view (
    channel_id               BIGINT PRIMARY KEY,
    channel_name             TEXT   NOT NULL,
    channel_avatar           TEXT   NOT NULL,
    channel_info_ver         BIGINT NOT NULL,
    last_message_id          BIGINT,
    last_message_seq         BIGINT NOT NULL DEFAULT 0,
    last_message_type        TEXT,
    last_message_content     TEXT,
    last_message_sender_id   BIGINT,
    last_message_sender_name TEXT,
    last_message_time        BIGINT,
    updated_at               BIGINT NOT NULL
);

-- A member row carries the diffusion of its channel and the version it was computed from. In
-- read diffusion its channel and last-message groups are blank (the list reads them from
-- `channel_view`), and a newer `fanout_ver` replaces those groups whatever their own guards say.
-- Existing rows were computed in write diffusion from channels now at `fanout_ver` 1: the
-- defaults make them exactly that (writers always give both columns).
ALTER TABLE user_conversation_view
    ADD COLUMN fanout     TEXT   NOT NULL DEFAULT 'write',
    ADD COLUMN fanout_ver BIGINT NOT NULL DEFAULT 1;

-- The list's second half: an owner's open rows in read diffusion, joined with `channel_view`.
CREATE INDEX user_conversation_view_read_fanout
    ON user_conversation_view (user_id, channel_id)
    WHERE fanout = 'read' AND closed_at = 0;

-- Existing group channels get their channel row (rows written from now on keep it current).
-- Where the preview had to be guessed and the configured length is not 50, the background
-- audit finds and repairs the row.
INSERT INTO channel_view (channel_id, channel_name, channel_avatar, channel_info_ver,
                          last_message_id, last_message_seq, last_message_type,
                          last_message_content, last_message_sender_id,
                          last_message_sender_name, last_message_time, updated_at)
SELECT c.id, c.name, c.avatar, c.channel_info_ver, m.id, COALESCE(m.seq, 0), m.msg_type,
       -- The preview as the projection truncated it (the configured length is not known
       -- here): the creator's row holds it unless the creator left before the last message.
       COALESCE((SELECT v.last_message_content FROM user_conversation_view v
                  WHERE v.user_id = c.creator_id AND v.channel_id = c.id
                    AND v.last_message_seq = c.last_seq),
                left(m.content, 50)),
       m.sender_id, m.sender_name, m.created_at,
       (extract(epoch FROM now()) * 1000)::bigint
  FROM channels c
  LEFT JOIN messages m ON m.channel_id = c.id AND m.seq = c.last_seq
 WHERE c.channel_type = 'group';
