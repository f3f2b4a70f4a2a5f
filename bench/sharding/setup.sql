-- Builds both layouts of user_conversation_view in the scratch database.
--
-- psql variables (run.sh passes them):
--   users    number of users (ids 1..users)
--   shards   number of shards / hash partitions (256)
--   batches  number of pre-generated fan-out batches
--   fanout   rows per fan-out batch (200)
--
-- Schema a: PARTITION BY HASH (user_id), :shards partitions, indexes on the parent.
-- Schema b: :shards plain tables b.user_conversation_view_<k>, k = user_id % :shards.
-- Both receive exactly the same rows, inserted in the same (random) order.
\set ON_ERROR_STOP on
\set QUIET on
SET client_min_messages = warning;
SELECT set_config('bench.shards', :'shards', false) \g /dev/null

DROP SCHEMA IF EXISTS a CASCADE;
DROP SCHEMA IF EXISTS b CASCADE;
DROP TABLE IF EXISTS ucv_template, ucv_src, fanout_rows, fanout_batch;
CREATE SCHEMA a;
CREATE SCHEMA b;

-- ---------------------------------------------------------------- the table
-- Template: the production DDL minus the two indexes (built after loading).
CREATE TABLE ucv_template (
  user_id BIGINT NOT NULL, channel_id BIGINT NOT NULL, conversation_type TEXT NOT NULL,
  channel_name TEXT NOT NULL DEFAULT '', channel_avatar TEXT NOT NULL DEFAULT '', channel_info_ver BIGINT NOT NULL DEFAULT 1,
  peer_user_id BIGINT, peer_nickname TEXT, peer_avatar TEXT, peer_profile_ver BIGINT NOT NULL DEFAULT 0,
  remark_name TEXT NOT NULL DEFAULT '', remark_ver BIGINT NOT NULL DEFAULT 0,
  last_message_id BIGINT, last_message_seq BIGINT NOT NULL DEFAULT 0, last_message_type TEXT, last_message_content TEXT,
  last_message_sender_id BIGINT, last_message_sender_name TEXT, last_message_time BIGINT,
  read_seq BIGINT NOT NULL DEFAULT 0, is_pinned BOOLEAN NOT NULL DEFAULT false, is_muted BOOLEAN NOT NULL DEFAULT false,
  hidden_at_seq BIGINT, opened_at BIGINT NOT NULL, closed_at BIGINT NOT NULL DEFAULT 0, settings_ver BIGINT NOT NULL DEFAULT 1,
  unread_count BIGINT GENERATED ALWAYS AS (GREATEST(last_message_seq - read_seq, 0)) STORED,
  is_hidden BOOLEAN GENERATED ALWAYS AS (hidden_at_seq IS NOT NULL AND last_message_seq <= hidden_at_seq) STORED,
  activity_at BIGINT GENERATED ALWAYS AS (COALESCE(last_message_time, opened_at)) STORED,
  updated_at BIGINT NOT NULL
);

-- (A) declarative hash partitioning
CREATE TABLE a.user_conversation_view (LIKE ucv_template INCLUDING ALL) PARTITION BY HASH (user_id);
DO $$
DECLARE n int := current_setting('bench.shards')::int;
BEGIN
  FOR k IN 0..n-1 LOOP
    EXECUTE format('CREATE TABLE a.user_conversation_view_p%s PARTITION OF a.user_conversation_view
                    FOR VALUES WITH (MODULUS %s, REMAINDER %s)', k, n, k);
  END LOOP;
END $$;

-- (B) one plain table per shard
DO $$
DECLARE n int := current_setting('bench.shards')::int;
BEGIN
  FOR k IN 0..n-1 LOOP
    EXECUTE format('CREATE TABLE b.user_conversation_view_%s (LIKE ucv_template INCLUDING ALL)', k);
  END LOOP;
END $$;

-- ---------------------------------------------------------------- the data
-- Per user a power-law number of conversations: Pareto(x_min = 7.5, alpha = 1.5),
-- floored, capped at 2000 -> min 7, mean ~21, a few hundred users with several
-- hundred rows. channel_id = user_id * 10000 + j (j = 0..cnt-1), so every user
-- owns channel ids u*10000 + 0..6 (used by the fan-out batches).
SELECT setseed(0.4242) \g /dev/null
CREATE TABLE ucv_src AS
WITH u AS (
  SELECT uid, LEAST(2000, floor(7.5 * power(1.0 - random(), -1.0 / 1.5)))::int AS cnt
  FROM generate_series(1::bigint, :users) AS uid
), r AS (
  SELECT uid, j, random() < 0.3 AS g,
         md5(random()::text) AS h1, md5(random()::text) AS h2, md5(random()::text) AS h3,
         md5(random()::text) || md5(random()::text) AS h4,
         random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5,
         random() AS r6, random() AS r7, random() AS r8,
         1 + floor(random() * 5000)::bigint AS seq,
         1760000000000 - floor(random() * 90 * 86400000)::bigint AS t,
         random() AS ord
  FROM u, generate_series(0, u.cnt - 1) AS j
)
SELECT uid AS user_id,
       uid * 10000 + j AS channel_id,
       CASE WHEN g THEN 'group' ELSE 'direct' END AS conversation_type,
       CASE WHEN g THEN 'Group ' || substr(h1, 1, 6 + floor(r1 * 12)::int) ELSE '' END AS channel_name,
       CASE WHEN g THEN 'https://cdn.example.com/g/' || substr(h1, 1, 24) || '.jpg' ELSE '' END AS channel_avatar,
       1 + floor(r2 * 5)::bigint AS channel_info_ver,
       CASE WHEN g THEN NULL ELSE 1 + floor(r3 * :users)::bigint END AS peer_user_id,
       CASE WHEN g THEN NULL ELSE substr(h2, 1, 6 + floor(r4 * 9)::int) END AS peer_nickname,
       CASE WHEN g THEN NULL ELSE 'https://cdn.example.com/u/' || substr(h2, 9, 24) || '.jpg' END AS peer_avatar,
       CASE WHEN g THEN 0 ELSE 1 + floor(r5 * 4)::bigint END AS peer_profile_ver,
       CASE WHEN r6 < 0.1 THEN substr(h3, 1, 8) ELSE '' END AS remark_name,
       CASE WHEN r6 < 0.1 THEN 1 ELSE 0 END AS remark_ver,
       uid * 100000000 + seq AS last_message_id,
       seq AS last_message_seq,
       CASE WHEN r7 < 0.9 THEN 'text' ELSE 'image' END AS last_message_type,
       left(h4, 20 + floor(r7 * 41)::int) AS last_message_content,
       CASE WHEN g THEN 1 + floor(r8 * :users)::bigint ELSE 1 + floor(r3 * :users)::bigint END AS last_message_sender_id,
       substr(h3, 9, 6 + floor(r4 * 9)::int) AS last_message_sender_name,
       t AS last_message_time,
       CASE WHEN r8 < 0.7 THEN seq ELSE GREATEST(0, seq - 1 - floor(r8 * 30)::bigint) END AS read_seq,
       r1 < 0.02 AS is_pinned,
       r2 < 0.05 AS is_muted,
       CASE WHEN r5 < 0.03 THEN seq END AS hidden_at_seq,
       t - floor(r6 * 30 * 86400000)::bigint AS opened_at,
       CASE WHEN r4 < 0.02 THEN t ELSE 0 END AS closed_at,
       1 + floor(r3 * 3)::bigint AS settings_ver,
       t AS updated_at,
       ord,
       (uid % current_setting('bench.shards')::int)::int AS shard
FROM r;
CREATE INDEX ON ucv_src (shard, ord);

-- Same rows, same random physical order, in both layouts.
INSERT INTO a.user_conversation_view
  (user_id, channel_id, conversation_type, channel_name, channel_avatar, channel_info_ver,
   peer_user_id, peer_nickname, peer_avatar, peer_profile_ver, remark_name, remark_ver,
   last_message_id, last_message_seq, last_message_type, last_message_content,
   last_message_sender_id, last_message_sender_name, last_message_time,
   read_seq, is_pinned, is_muted, hidden_at_seq, opened_at, closed_at, settings_ver, updated_at)
SELECT user_id, channel_id, conversation_type, channel_name, channel_avatar, channel_info_ver,
   peer_user_id, peer_nickname, peer_avatar, peer_profile_ver, remark_name, remark_ver,
   last_message_id, last_message_seq, last_message_type, last_message_content,
   last_message_sender_id, last_message_sender_name, last_message_time,
   read_seq, is_pinned, is_muted, hidden_at_seq, opened_at, closed_at, settings_ver, updated_at
FROM ucv_src ORDER BY ord;

DO $$
DECLARE n int := current_setting('bench.shards')::int;
BEGIN
  FOR k IN 0..n-1 LOOP
    EXECUTE format($f$
      INSERT INTO b.user_conversation_view_%s
        (user_id, channel_id, conversation_type, channel_name, channel_avatar, channel_info_ver,
         peer_user_id, peer_nickname, peer_avatar, peer_profile_ver, remark_name, remark_ver,
         last_message_id, last_message_seq, last_message_type, last_message_content,
         last_message_sender_id, last_message_sender_name, last_message_time,
         read_seq, is_pinned, is_muted, hidden_at_seq, opened_at, closed_at, settings_ver, updated_at)
      SELECT user_id, channel_id, conversation_type, channel_name, channel_avatar, channel_info_ver,
         peer_user_id, peer_nickname, peer_avatar, peer_profile_ver, remark_name, remark_ver,
         last_message_id, last_message_seq, last_message_type, last_message_content,
         last_message_sender_id, last_message_sender_name, last_message_time,
         read_seq, is_pinned, is_muted, hidden_at_seq, opened_at, closed_at, settings_ver, updated_at
      FROM ucv_src WHERE shard = %s ORDER BY ord$f$, k, k);
  END LOOP;
END $$;

-- ---------------------------------------------------------------- indexes
ALTER TABLE a.user_conversation_view ADD PRIMARY KEY (user_id, channel_id);
CREATE INDEX user_conversation_view_list_idx ON a.user_conversation_view
  (user_id, is_pinned DESC, activity_at DESC, channel_id DESC) WHERE closed_at = 0 AND NOT is_hidden;
DO $$
DECLARE n int := current_setting('bench.shards')::int;
BEGIN
  FOR k IN 0..n-1 LOOP
    EXECUTE format('ALTER TABLE b.user_conversation_view_%s ADD PRIMARY KEY (user_id, channel_id)', k);
    EXECUTE format('CREATE INDEX user_conversation_view_%s_list_idx ON b.user_conversation_view_%s
                    (user_id, is_pinned DESC, activity_at DESC, channel_id DESC) WHERE closed_at = 0 AND NOT is_hidden', k, k);
  END LOOP;
END $$;

-- ---------------------------------------------------------------- fan-out batches
-- :batches batches of ~:fanout distinct random users; for each, one of its
-- channels u*10000 + 0..6. One wide row per batch holds the whole batch sorted
-- by (user_id, channel_id) for (A) and, per shard k, the shard's slice
-- (n_k, u_k, c_k) for (B). Both pgbench scripts fetch the same whole row.
SELECT setseed(0.1717) \g /dev/null
CREATE TABLE fanout_rows AS
SELECT b AS batch_id, x.user_id, x.user_id * 10000 + floor(random() * 7)::bigint AS channel_id
FROM generate_series(1, :batches) AS b
CROSS JOIN LATERAL (
  SELECT DISTINCT 1 + floor(random() * :users)::bigint AS user_id
  FROM generate_series(1, :fanout + :fanout / 5 + 5) AS i
  WHERE b > 0                     -- correlate: re-evaluate per batch
  LIMIT :fanout
) AS x;

DO $$
DECLARE
  n int := current_setting('bench.shards')::int;
  cols text := '';
BEGIN
  FOR k IN 0..n-1 LOOP
    cols := cols || format(
      ', count(*) FILTER (WHERE user_id %% %1$s = %2$s) AS n_%2$s'
      ', coalesce((array_agg(user_id ORDER BY user_id, channel_id) FILTER (WHERE user_id %% %1$s = %2$s))::text, ''{}'') AS u_%2$s'
      ', coalesce((array_agg(channel_id ORDER BY user_id, channel_id) FILTER (WHERE user_id %% %1$s = %2$s))::text, ''{}'') AS c_%2$s',
      n, k);
  END LOOP;
  EXECUTE 'CREATE TABLE fanout_batch AS SELECT batch_id AS id, count(*) AS n'
       || ', (array_agg(user_id ORDER BY user_id, channel_id))::text AS users'
       || ', (array_agg(channel_id ORDER BY user_id, channel_id))::text AS channels'
       || ', ''fan-out '' || left(md5(batch_id::text) || md5(random()::text), 32) AS content'
       || ', count(DISTINCT user_id % ' || n || ') AS shards_touched'
       || cols || ' FROM fanout_rows GROUP BY batch_id';
END $$;
ALTER TABLE fanout_batch ADD PRIMARY KEY (id);

DROP TABLE ucv_template;
DROP TABLE ucv_src;

