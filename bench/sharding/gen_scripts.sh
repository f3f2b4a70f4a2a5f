#!/usr/bin/env bash
# Writes the pgbench scripts for both layouts into DIR.
#   usage: gen_scripts.sh DIR USERS SHARDS
# Files:
#   list_a.sql                 (A) list query, uid = random(1, users)
#   list_b_<s>.sql, list_b.args (B) list query; pgbench allows at most 128 -f
#                              scripts, so script s serves shards s, s+128, ...
#                              (picked uniformly inside), weighted by how many
#                              shards it serves; uid = shards * random(..) + k
#   fetch.sql                  fetch of one pre-generated fan-out batch (both
#                              fan-out scripts start with exactly this)
#   fanout_a.sql               (A) one UPDATE ... FROM UNNEST for the whole batch
#   fanout_a_any.sql           (A) same, plus `v.user_id = ANY($users)` so the
#                              planner/executor can prune partitions
#   fanout_a_local.sql         (A) same as fanout_a.sql, preceded by
#                              SET LOCAL plan_cache_mode = force_generic_plan
#   fanout_b.sql               (B) one UPDATE per shard touched, sequentially
#   fanout_b_pipe.sql          (B) same, in one pgbench pipeline (one round trip)
set -euo pipefail
dir=$1 users=$2 shards=$3
mkdir -p "$dir"

cols='user_id, channel_id, conversation_type, channel_name, channel_avatar, channel_info_ver, peer_user_id, peer_nickname, peer_avatar, peer_profile_ver, remark_name, remark_ver, last_message_id, last_message_seq, last_message_type, last_message_content, last_message_sender_id, last_message_sender_name, last_message_time, read_seq, is_pinned, is_muted, hidden_at_seq, opened_at, closed_at, settings_ver, unread_count, is_hidden, activity_at, updated_at'
where='WHERE user_id = :uid AND closed_at = 0 AND NOT is_hidden ORDER BY is_pinned DESC, activity_at DESC, channel_id DESC LIMIT 50;'

# ---- list query
cat > "$dir/list_a.sql" <<EOF
\\set uid random(1, $users)
SELECT $cols FROM a.user_conversation_view $where
EOF

nscripts=$(( shards < 128 ? shards : 128 ))
: > "$dir/list_b.args"
for (( s = 0; s < nscripts; s++ )); do
    f="$dir/list_b_$s.sql"
    ks=()
    for (( k = s; k < shards; k += nscripts )); do ks+=("$k"); done
    m=${#ks[@]}
    {
        echo "\\set h random(0, $(( m - 1 )))"
        for (( i = 0; i < m; i++ )); do
            k=${ks[$i]}
            qlo=$(( k == 0 ? 1 : 0 )); qhi=$(( (users - k) / shards ))
            if (( i == 0 )); then echo "\\if :h = $i"; else echo "\\elif :h = $i"; fi
            echo "\\set uid $shards * random($qlo, $qhi) + $k"
            echo "SELECT $cols FROM b.user_conversation_view_$k $where"
        done
        echo "\\endif"
    } > "$f"
    printf -- '-f %s@%d ' "$f" "$m" >> "$dir/list_b.args"
done

# ---- fan-out
fetch='SELECT *, (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS t FROM fanout_batch WHERE id = :b \gset'
set_='SET last_message_seq = v.last_message_seq + 1, last_message_content = :content, last_message_time = :t, updated_at = :t'

printf '%s\n%s\n' '\set b random(1, :batches)' "$fetch" > "$dir/fetch.sql"

{
    cat "$dir/fetch.sql"
    echo 'BEGIN;'
    echo "UPDATE a.user_conversation_view v $set_ FROM UNNEST(:users::bigint[], :channels::bigint[]) AS u(user_id, channel_id) WHERE v.user_id = u.user_id AND v.channel_id = u.channel_id;"
    echo 'COMMIT;'
} > "$dir/fanout_a.sql"

{
    cat "$dir/fetch.sql"
    echo 'BEGIN;'
    echo "UPDATE a.user_conversation_view v $set_ FROM UNNEST(:users::bigint[], :channels::bigint[]) AS u(user_id, channel_id) WHERE v.user_id = u.user_id AND v.channel_id = u.channel_id AND v.user_id = ANY(:users::bigint[]);"
    echo 'COMMIT;'
} > "$dir/fanout_a_any.sql"

{
    cat "$dir/fetch.sql"
    echo 'BEGIN;'
    echo 'SET LOCAL plan_cache_mode = force_generic_plan;'
    echo "UPDATE a.user_conversation_view v $set_ FROM UNNEST(:users::bigint[], :channels::bigint[]) AS u(user_id, channel_id) WHERE v.user_id = u.user_id AND v.channel_id = u.channel_id;"
    echo 'COMMIT;'
} > "$dir/fanout_a_local.sql"

gen_b() { # $1 = pipeline (0/1)
    cat "$dir/fetch.sql"
    (( $1 )) && echo '\startpipeline'
    echo 'BEGIN;'
    for (( k = 0; k < shards; k++ )); do
        echo "\\if :n_$k > 0"
        echo "UPDATE b.user_conversation_view_$k v $set_ FROM UNNEST(:u_$k::bigint[], :c_$k::bigint[]) AS u(user_id, channel_id) WHERE v.user_id = u.user_id AND v.channel_id = u.channel_id;"
        echo '\endif'
    done
    echo 'COMMIT;'
    (( $1 )) && echo '\endpipeline'
    return 0
}
gen_b 0 > "$dir/fanout_b.sql"
gen_b 1 > "$dir/fanout_b_pipe.sql"
