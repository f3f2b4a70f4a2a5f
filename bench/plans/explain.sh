#!/usr/bin/env bash
# Query plans of the two list reads (docs/query-plans.md): a scratch database with the real
# schema (`hermet migrate`, 256 shards), both views filled with synthetic rows
# (BENCH_USERS users, ~20 conversations and ~10 contacts each), then EXPLAIN (ANALYZE, BUFFERS)
# of the list statements of crates/hermet-store/src/views.rs: on the partitioned parent as a custom
# and as a generic plan (prepared statements switch to the generic plan after five executions),
# then on the owner's partition, which is what hermet runs (crates/hermet-store/src/shard.rs).
#
# Usage: eval "$(scripts/services.sh env)"; cargo build -p hermet; bench/plans/explain.sh > out.txt
set -euo pipefail
: "${HERMET_DATABASE_URL:?set HERMET_DATABASE_URL (eval \"\$(scripts/services.sh env)\")}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
USERS=${BENCH_USERS:-100000}
HERMET=${HERMET_BIN:-$ROOT/target/debug/hermet}
DB=hermet_plans_$$
ADMIN=$HERMET_DATABASE_URL
URL=${ADMIN%/*}/$DB

cleanup() { psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT

psql -q "$ADMIN" -c "CREATE DATABASE $DB" >/dev/null
HERMET_DATABASE_URL=$URL HERMET_SHARDS=256 "$HERMET" migrate >/dev/null 2>&1
echo "seeding $USERS users" >&2
psql -q -v ON_ERROR_STOP=1 "$URL" -v users="$USERS" <<'SQL' >&2
INSERT INTO user_conversation_view (user_id, channel_id, conversation_type, channel_name,
       channel_avatar, channel_info_ver, last_message_id, last_message_seq, last_message_type,
       last_message_content, last_message_sender_id, last_message_sender_name, last_message_time,
       read_seq, opened_at, settings_ver, updated_at, is_pinned)
SELECT u, u * 64 + i, 'group', 'group ' || (u * 64 + i), '', 1, u * 64 + i, 10 + i, 'text',
       left(md5((u * 64 + i)::text), 30), u, 'member', 1700000000000 + ((u * 7919 + i * 104729) % 100000000),
       i, 1, 1, 1700000000000, i = 1
  FROM generate_series(1, :users) u
 CROSS JOIN LATERAL generate_series(1, 4 + ((u * 37) % 33)) i;
INSERT INTO user_contact_view (user_id, contact_id, contact_nickname, contact_avatar,
       contact_info_ver, remark_name, group_name, is_starred, friendship_ver, updated_at)
SELECT u, (u + i * 7) % :users + 1, 'nick ' || md5(((u + i * 7) % :users)::text), '', 1, '', '',
       i % 9 = 0, 1, 1700000000000
  FROM generate_series(1, :users) u
 CROSS JOIN LATERAL generate_series(1, 2 + ((u * 13) % 17)) i
ON CONFLICT DO NOTHING;
VACUUM ANALYZE user_conversation_view;
VACUUM ANALYZE user_contact_view;
SQL
psql -q "$URL" -At -c "SELECT 'user_conversation_view rows: ' || count(*) FROM user_conversation_view"
psql -q "$URL" -At -c "SELECT 'user_contact_view rows: ' || count(*) FROM user_contact_view"
for mode in force_custom_plan force_generic_plan; do
    echo
    echo "== plan_cache_mode = $mode"
    psql -q -v ON_ERROR_STOP=1 "$URL" <<SQL
SET plan_cache_mode = $mode;
PREPARE conv(bigint, bigint) AS
SELECT channel_id, conversation_type, conversation_name, conversation_avatar,
    peer_user_id, last_message_id, last_message_seq, last_message_type, last_message_content,
    last_message_sender_id, last_message_sender_name, last_message_time, unread_count,
    is_pinned, is_muted, activity_at FROM user_conversation_view
 WHERE user_id = \$1 AND closed_at = 0 AND NOT is_hidden
 ORDER BY is_pinned DESC, activity_at DESC, channel_id DESC
 LIMIT \$2;
PREPARE contacts(bigint, bigint) AS
SELECT contact_id, contact_nickname, contact_avatar, remark_name, group_name, is_starred
  FROM user_contact_view
 WHERE user_id = \$1 AND deleted_at = 0
 ORDER BY is_starred DESC, contact_nickname, contact_id
 LIMIT \$2;
\echo '-- conversation list, first page (user 4242, limit 50)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) EXECUTE conv(4242, 51);
\echo '-- contact list (user 4242, limit 200)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) EXECUTE contacts(4242, 200);
SQL
done
CONV_PART=$(psql -q "$URL" -At -c "SELECT tableoid::regclass FROM user_conversation_view WHERE user_id = 4242 LIMIT 1")
CONT_PART=$(psql -q "$URL" -At -c "SELECT tableoid::regclass FROM user_contact_view WHERE user_id = 4242 LIMIT 1")
echo
echo "== owner's partition ($CONV_PART, $CONT_PART), as hermet runs it: cached generic plan"
psql -q -v ON_ERROR_STOP=1 "$URL" <<SQL
SET plan_cache_mode = force_generic_plan;
PREPARE conv(bigint, bigint) AS
SELECT channel_id, conversation_type, conversation_name, conversation_avatar,
    peer_user_id, last_message_id, last_message_seq, last_message_type, last_message_content,
    last_message_sender_id, last_message_sender_name, last_message_time, unread_count,
    is_pinned, is_muted, activity_at FROM $CONV_PART
 WHERE user_id = \$1 AND closed_at = 0 AND NOT is_hidden
 ORDER BY is_pinned DESC, activity_at DESC, channel_id DESC
 LIMIT \$2;
PREPARE contacts(bigint, bigint) AS
SELECT contact_id, contact_nickname, contact_avatar, remark_name, group_name, is_starred
  FROM $CONT_PART
 WHERE user_id = \$1 AND deleted_at = 0
 ORDER BY is_starred DESC, contact_nickname, contact_id
 LIMIT \$2;
-- the first execution builds the cached plan; the explained one reuses it
\o /dev/null
EXECUTE conv(4242, 51);
EXECUTE contacts(4242, 200);
\o
\echo '-- conversation list, first page (user 4242, limit 50)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) EXECUTE conv(4242, 51);
\echo '-- contact list (user 4242, limit 200)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) EXECUTE contacts(4242, 200);
SQL
