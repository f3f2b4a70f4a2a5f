-- Planning/execution time of the two statements under (A) and (B), with
-- custom plans, generic plans and the default (auto) plan cache mode, through
-- PREPARE/EXECUTE (i.e. real bind parameters), plus one full EXPLAIN ANALYZE
-- text per case showing whether partitions are pruned at run time.
--
-- psql variables: users, shards, reps
\set ON_ERROR_STOP on
\pset pager off
SET client_min_messages = warning;

-- EXPLAIN (ANALYZE) `reps` times, each rep in its own transaction (so relation
-- locks are taken afresh each time, as for a real client); each rep formats `q`
-- with a random user id (list) or a random fan-out batch (update; rolled back).
CREATE TEMP TABLE explain_times (id serial, label text, rep int, planning_ms numeric, execution_ms numeric,
                                 generic bool, pruned text);
CREATE PROCEDURE pg_temp.measure(label text, q text, reps int, users int, batches int, is_update bool)
LANGUAGE plpgsql AS $$
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
    EXECUTE 'EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) ' || stmt INTO j;
    IF is_update THEN ROLLBACK; END IF;  -- undo the update (j survives)
    INSERT INTO explain_times (label, rep, planning_ms, execution_ms, generic, pruned)
    VALUES (label, i, (j->0->>'Planning Time')::numeric, (j->0->>'Execution Time')::numeric,
            j::text LIKE '%$1%', substring(j::text FROM '"Subplans Removed": ([0-9]+)'));
    COMMIT;
  END LOOP;
END $$;

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
CALL pg_temp.measure('A list, custom plan',  'EXECUTE list_a(%s)', :reps, :users, :batches, false);
CALL pg_temp.measure('B list, custom plan',  'EXECUTE list_b7(' || current_setting('bench.shards') || ' * (%s / ' || current_setting('bench.shards') || ') + 7)', :reps, :users, :batches, false);
CALL pg_temp.measure('A fan-out, custom plan', 'EXECUTE fan_a(%1$L, %2$L, %3$L, %4$s)', :reps, :users, :batches, true);
CALL pg_temp.measure('B fan-out, shard-7 statement only, custom plan', 'EXECUTE fan_b7(%5$L, %6$L, %3$L, %4$s)', :reps, :users, :batches, true);
SET plan_cache_mode = force_generic_plan;
CALL pg_temp.measure('A list, generic plan', 'EXECUTE list_a(%s)', :reps, :users, :batches, false);
CALL pg_temp.measure('B list, generic plan', 'EXECUTE list_b7(' || current_setting('bench.shards') || ' * (%s / ' || current_setting('bench.shards') || ') + 7)', :reps, :users, :batches, false);
CALL pg_temp.measure('A fan-out, generic plan', 'EXECUTE fan_a(%1$L, %2$L, %3$L, %4$s)', :reps, :users, :batches, true);
CALL pg_temp.measure('B fan-out, shard-7 statement only, generic plan', 'EXECUTE fan_b7(%5$L, %6$L, %3$L, %4$s)', :reps, :users, :batches, true);

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
CALL pg_temp.measure('A list, auto', 'EXECUTE list_a(%s)', :reps, :users, :batches, false);
CALL pg_temp.measure('B list, auto', 'EXECUTE list_b7(' || current_setting('bench.shards') || ' * (%s / ' || current_setting('bench.shards') || ') + 7)', :reps, :users, :batches, false);
CALL pg_temp.measure('A fan-out, auto', 'EXECUTE fan_a(%1$L, %2$L, %3$L, %4$s)', :reps, :users, :batches, true);
CALL pg_temp.measure('B fan-out, shard-7 statement only, auto', 'EXECUTE fan_b7(%5$L, %6$L, %3$L, %4$s)', :reps, :users, :batches, true);

SELECT label AS statement,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY planning_ms)::numeric, 3) AS plan_ms_median,
       round(percentile_cont(0.9) WITHIN GROUP (ORDER BY planning_ms)::numeric, 3) AS plan_ms_p90,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY execution_ms)::numeric, 3) AS exec_ms_median,
       count(*) FILTER (WHERE generic) || '/' || count(*) AS reps_generic,
       coalesce(max(pruned), '-') AS subplans_removed
FROM explain_times GROUP BY label ORDER BY min(id);

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
