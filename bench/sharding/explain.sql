-- Planning/execution time of the two statements under (A) and (B), with
-- custom plans, generic plans and the default (auto) plan cache mode, through
-- PREPARE/EXECUTE (i.e. real bind parameters), plus one full EXPLAIN ANALYZE
-- text per case showing whether partitions are pruned at run time.
--
-- psql variables: users, shards, reps
\set ON_ERROR_STOP on
\pset pager off
SET client_min_messages = warning;

-- EXPLAIN (ANALYZE) `reps` times; each rep formats `q` with a random user id
-- (list) or a random fan-out batch (update), inside a rolled-back subtransaction
-- for updates. Returns one row per rep.
CREATE FUNCTION pg_temp.times(q text, reps int, users int, batches int, is_update bool,
                              OUT rep int, OUT planning_ms numeric, OUT execution_ms numeric, OUT generic bool,
                              OUT pruned text)
RETURNS SETOF record LANGUAGE plpgsql AS $$
DECLARE j json; stmt text; fb record; uid bigint;
BEGIN
  FOR i IN 1..reps LOOP
    IF is_update THEN
      -- a random batch touching shard 7 (so the (B) statement for shard 7 has work)
      SELECT * INTO fb FROM fanout_batch WHERE n_7 > 0 AND id >= 1 + floor(random() * batches)::int ORDER BY id LIMIT 1;
      IF NOT FOUND THEN SELECT * INTO fb FROM fanout_batch WHERE n_7 > 0 ORDER BY id LIMIT 1; END IF;
      stmt := format(q, fb.users, fb.channels, fb.content, (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
                     fb.u_7, fb.c_7);
    ELSE
      uid := 1 + floor(random() * users)::bigint;
      stmt := format(q, uid);
    END IF;
    BEGIN
      EXECUTE 'EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) ' || stmt INTO j;
      IF is_update THEN RAISE SQLSTATE 'P0001' USING MESSAGE = 'rollback'; END IF;
    EXCEPTION WHEN raise_exception THEN NULL;  -- undo the update, keep j
    END;
    rep := i;
    planning_ms := (j->0->>'Planning Time')::numeric;
    execution_ms := (j->0->>'Execution Time')::numeric;
    generic := j::text LIKE '%$1%';
    pruned := substring(j::text FROM '"Subplans Removed": ([0-9]+)');
    RETURN NEXT;
  END LOOP;
END $$;

CREATE FUNCTION pg_temp.summary(label text, q text, reps int, users int, batches int, is_update bool)
RETURNS TABLE (statement text, plan_ms_median numeric, plan_ms_p90 numeric, exec_ms_median numeric,
               reps_generic text, subplans_removed text)
LANGUAGE sql AS $$
  SELECT label,
         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY planning_ms)::numeric, 3),
         round(percentile_cont(0.9) WITHIN GROUP (ORDER BY planning_ms)::numeric, 3),
         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY execution_ms)::numeric, 3),
         count(*) FILTER (WHERE generic) || '/' || count(*),
         coalesce(max(pruned), '-')
  FROM pg_temp.times(q, reps, users, batches, is_update)
$$;

SELECT set_config('bench.shards', :'shards', false) \g /dev/null
SELECT count(*) AS batches FROM fanout_batch \gset
-- a user of average size for the single EXPLAIN texts
SELECT user_id AS uid FROM a.user_conversation_view GROUP BY user_id HAVING count(*) = 20 ORDER BY user_id LIMIT 1 \gset

\set listcols 'user_id, channel_id, conversation_type, channel_name, channel_avatar, channel_info_ver, peer_user_id, peer_nickname, peer_avatar, peer_profile_ver, remark_name, remark_ver, last_message_id, last_message_seq, last_message_type, last_message_content, last_message_sender_id, last_message_sender_name, last_message_time, read_seq, is_pinned, is_muted, hidden_at_seq, opened_at, closed_at, settings_ver, unread_count, is_hidden, activity_at, updated_at'

PREPARE list_a(bigint) AS
  SELECT :listcols FROM a.user_conversation_view
  WHERE user_id = $1 AND closed_at = 0 AND NOT is_hidden
  ORDER BY is_pinned DESC, activity_at DESC, channel_id DESC LIMIT 50;
-- (B): the statement the client would prepare for shard 7; run only with users of shard 7.
PREPARE list_b7(bigint) AS
  SELECT :listcols FROM b.user_conversation_view_7
  WHERE user_id = $1 AND closed_at = 0 AND NOT is_hidden
  ORDER BY is_pinned DESC, activity_at DESC, channel_id DESC LIMIT 50;
PREPARE fan_a(bigint[], bigint[], text, bigint) AS
  UPDATE a.user_conversation_view v
     SET last_message_seq = v.last_message_seq + 1, last_message_content = $3, last_message_time = $4, updated_at = $4
    FROM UNNEST($1, $2) AS u(user_id, channel_id)
   WHERE v.user_id = u.user_id AND v.channel_id = u.channel_id;
PREPARE fan_b7(bigint[], bigint[], text, bigint) AS
  UPDATE b.user_conversation_view_7 v
     SET last_message_seq = v.last_message_seq + 1, last_message_content = $3, last_message_time = $4, updated_at = $4
    FROM UNNEST($1, $2) AS u(user_id, channel_id)
   WHERE v.user_id = u.user_id AND v.channel_id = u.channel_id;

\echo
\echo '== planning / execution time (ms), medians over' :reps 'EXPLAIN ANALYZE EXECUTE each =='
\echo '   (fan-out: one whole ~200-row batch for (A); (B) would run ~140 per-shard statements like list_b7)'
SET plan_cache_mode = force_custom_plan;
SELECT * FROM pg_temp.summary('A list, custom plan',  'EXECUTE list_a(%s)', :reps, :users, :batches, false)
UNION ALL
SELECT * FROM pg_temp.summary('B list, custom plan',  'EXECUTE list_b7(' || current_setting('bench.shards') || ' * (%s / ' || current_setting('bench.shards') || ') + 7)', :reps, :users, :batches, false)
UNION ALL
SELECT * FROM pg_temp.summary('A fan-out, custom plan', 'EXECUTE fan_a(%1$L, %2$L, %3$L, %4$s)', :reps, :users, :batches, true)
UNION ALL
SELECT * FROM pg_temp.summary('B fan-out, shard-7 statement only, custom plan', 'EXECUTE fan_b7(%5$L, %6$L, %3$L, %4$s)', :reps, :users, :batches, true);
SET plan_cache_mode = force_generic_plan;
SELECT * FROM pg_temp.summary('A list, generic plan', 'EXECUTE list_a(%s)', :reps, :users, :batches, false)
UNION ALL
SELECT * FROM pg_temp.summary('B list, generic plan', 'EXECUTE list_b7(' || current_setting('bench.shards') || ' * (%s / ' || current_setting('bench.shards') || ') + 7)', :reps, :users, :batches, false)
UNION ALL
SELECT * FROM pg_temp.summary('A fan-out, generic plan', 'EXECUTE fan_a(%1$L, %2$L, %3$L, %4$s)', :reps, :users, :batches, true)
UNION ALL
SELECT * FROM pg_temp.summary('B fan-out, shard-7 statement only, generic plan', 'EXECUTE fan_b7(%5$L, %6$L, %3$L, %4$s)', :reps, :users, :batches, true);

-- auto: fresh statements, so the 5-custom-plans-then-decide logic starts over
RESET plan_cache_mode;
DEALLOCATE list_a; DEALLOCATE list_b7; DEALLOCATE fan_a; DEALLOCATE fan_b7;
PREPARE list_a(bigint) AS
  SELECT :listcols FROM a.user_conversation_view
  WHERE user_id = $1 AND closed_at = 0 AND NOT is_hidden
  ORDER BY is_pinned DESC, activity_at DESC, channel_id DESC LIMIT 50;
PREPARE list_b7(bigint) AS
  SELECT :listcols FROM b.user_conversation_view_7
  WHERE user_id = $1 AND closed_at = 0 AND NOT is_hidden
  ORDER BY is_pinned DESC, activity_at DESC, channel_id DESC LIMIT 50;
PREPARE fan_a(bigint[], bigint[], text, bigint) AS
  UPDATE a.user_conversation_view v
     SET last_message_seq = v.last_message_seq + 1, last_message_content = $3, last_message_time = $4, updated_at = $4
    FROM UNNEST($1, $2) AS u(user_id, channel_id)
   WHERE v.user_id = u.user_id AND v.channel_id = u.channel_id;
PREPARE fan_b7(bigint[], bigint[], text, bigint) AS
  UPDATE b.user_conversation_view_7 v
     SET last_message_seq = v.last_message_seq + 1, last_message_content = $3, last_message_time = $4, updated_at = $4
    FROM UNNEST($1, $2) AS u(user_id, channel_id)
   WHERE v.user_id = u.user_id AND v.channel_id = u.channel_id;
SELECT * FROM pg_temp.summary('A list, auto', 'EXECUTE list_a(%s)', :reps, :users, :batches, false)
UNION ALL
SELECT * FROM pg_temp.summary('B list, auto', 'EXECUTE list_b7(' || current_setting('bench.shards') || ' * (%s / ' || current_setting('bench.shards') || ') + 7)', :reps, :users, :batches, false)
UNION ALL
SELECT * FROM pg_temp.summary('A fan-out, auto', 'EXECUTE fan_a(%1$L, %2$L, %3$L, %4$s)', :reps, :users, :batches, true)
UNION ALL
SELECT * FROM pg_temp.summary('B fan-out, shard-7 statement only, auto', 'EXECUTE fan_b7(%5$L, %6$L, %3$L, %4$s)', :reps, :users, :batches, true);

\echo
\echo '== EXPLAIN ANALYZE, (A) list, generic plan (bind parameter): run-time pruning? =='
SET plan_cache_mode = force_generic_plan;
EXPLAIN (ANALYZE, SUMMARY ON) EXECUTE list_a(:uid);
\echo '== EXPLAIN ANALYZE, (A) list, custom plan =='
SET plan_cache_mode = force_custom_plan;
EXPLAIN (ANALYZE, SUMMARY ON) EXECUTE list_a(:uid);
\echo '== EXPLAIN ANALYZE (A) fan-out, custom plan (one batch; per-partition lines condensed) =='
SELECT users AS fb_users, channels AS fb_channels FROM fanout_batch WHERE id = 1 \gset
BEGIN;
EXPLAIN (ANALYZE, SUMMARY ON) EXECUTE fan_a(:'fb_users', :'fb_channels', 'x', 1) \g :explain_tmp
ROLLBACK;
\! awk -f "$CONDENSE_AWK" "$EXPLAIN_TMP"
\echo '== EXPLAIN ANALYZE (A) fan-out, generic plan (one batch; per-partition lines condensed) =='
SET plan_cache_mode = force_generic_plan;
BEGIN;
EXPLAIN (ANALYZE, SUMMARY ON) EXECUTE fan_a(:'fb_users', :'fb_channels', 'x', 1) \g :explain_tmp
ROLLBACK;
\! awk -f "$CONDENSE_AWK" "$EXPLAIN_TMP"
RESET plan_cache_mode;
