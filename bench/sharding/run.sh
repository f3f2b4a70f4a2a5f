#!/usr/bin/env bash
# Sharding benchmark for the read side (user_conversation_view):
#   (A) PARTITION BY HASH (user_id), SHARDS partitions, vs
#   (B) SHARDS plain tables user_conversation_view_<k>, k = user_id % SHARDS.
# Operations: the conversation-list query, and a ~200-row fan-out UPDATE batch.
# See docs/sharding.md for the method and the results.
#
# Usage: HERMET_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/sharding/run.sh
#
# Needs: psql, pgbench (PostgreSQL >= 15 client), python3 (summary only),
# a superuser URL. Creates and finally drops the database hermet_sharding_bench.
#
# Env (defaults in brackets):
#   BENCH_USERS [50000]       users; ~21 conversations each on average (power law)
#   BENCH_SHARDS [256]        shards / hash partitions
#   BENCH_ROUNDS [3]          rounds; each round runs every case once, the
#                             order of variants reversed every other round
#   BENCH_DURATION [20]       seconds per pgbench run
#   BENCH_LIST_CLIENTS ["4 16"]   client counts for the list query
#   BENCH_FANOUT_CLIENTS ["1 4"]  client counts for the fan-out
#   BENCH_FANOUT [200]        rows per fan-out batch
#   BENCH_BATCHES [1000]      pre-generated fan-out batches
#   BENCH_LIST_VARIANTS ["A B A_generic"]
#   BENCH_FANOUT_VARIANTS ["A B A_local B_pipe"]
#       A          (A), default plan_cache_mode (auto)
#       A_generic  (A), plan_cache_mode=force_generic_plan for the session
#       A_local    (A), fan-out only: SET LOCAL plan_cache_mode = force_generic_plan
#                  inside the fan-out transaction (one more statement)
#       A_any      (A), fan-out statement with an extra `v.user_id = ANY($users)`
#                  (not run by default: it does not prune, see docs/sharding.md)
#       B          (B), one statement per shard touched, sequential round trips
#       B_pipe     (B), the same statements in one pipeline (pgbench \startpipeline)
#   BENCH_EXPLAIN_REPS [50]   EXPLAIN ANALYZE repetitions for planning times
#   BENCH_OUT [mktemp -d]     where results.tsv, pgbench outputs and explain.txt go
#   BENCH_KEEP_DB [0]         1: don't drop the database at the end
#   BENCH_REUSE_DB [0]        1: reuse an already loaded database (skip loading)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${HERMET_DATABASE_URL:?set HERMET_DATABASE_URL to a superuser URL, e.g. postgres://postgres@127.0.0.1:5432/postgres}"
USERS=${BENCH_USERS:-50000}
SHARDS=${BENCH_SHARDS:-256}
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-20}
LIST_CLIENTS=${BENCH_LIST_CLIENTS:-"4 16"}
FANOUT_CLIENTS=${BENCH_FANOUT_CLIENTS:-"1 4"}
FANOUT=${BENCH_FANOUT:-200}
BATCHES=${BENCH_BATCHES:-1000}
LIST_VARIANTS=${BENCH_LIST_VARIANTS:-"A B A_generic"}
FANOUT_VARIANTS=${BENCH_FANOUT_VARIANTS:-"A B A_local B_pipe"}
EXPLAIN_REPS=${BENCH_EXPLAIN_REPS:-50}
OUT=${BENCH_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/hermet-sharding.XXXXXX")}
KEEP_DB=${BENCH_KEEP_DB:-0}
REUSE_DB=${BENCH_REUSE_DB:-0}
DB=hermet_sharding_bench

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

(( USERS >= SHARDS )) || die "BENCH_USERS must be >= BENCH_SHARDS"
(( SHARDS >= 8 )) || die "BENCH_SHARDS must be >= 8 (explain.sql uses shard 7)"
(( SHARDS <= 500 )) || die "BENCH_SHARDS > 500 does not fit the fan-out batch row (1600 columns max)"

# pgbench/psql: PATH first, else the newest /usr/lib/postgresql/<major>/bin.
find_tool() {
    local t=$1 d
    if command -v "$t" >/dev/null 2>&1; then command -v "$t"; return; fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x $d/$t ]] && { echo "$d/$t"; return; }
    done
    die "$t not found (install postgresql-client / postgresql-contrib)"
}
PSQL=$(find_tool psql)
PGBENCH=$(find_tool pgbench)
command -v python3 >/dev/null || die "python3 is needed for the summary"

# URL of the scratch database: same server/credentials, other database name.
if [[ $HERMET_DATABASE_URL =~ ^(postgres(ql)?://[^/?]*)(/[^?]*)?(\?.*)?$ ]]; then
    BENCH_URL="${BASH_REMATCH[1]}/$DB${BASH_REMATCH[4]}"
else
    die "HERMET_DATABASE_URL must be a postgres:// URL"
fi

psql_admin() { "$PSQL" "$HERMET_DATABASE_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_bench() { "$PSQL" "$BENCH_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }

cleanup() {
    if [[ $KEEP_DB != 1 ]]; then
        log "dropping database $DB"
        psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    fi
}

mkdir -p "$OUT/logs"
SCRIPTS="$OUT/scripts"
"$HERE/gen_scripts.sh" "$SCRIPTS" "$USERS" "$SHARDS"
log "output in $OUT"

# ------------------------------------------------------------------ load
exists=$(psql_admin -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'")
trap cleanup EXIT
if [[ $REUSE_DB == 1 && $exists == 1 ]]; then
    log "reusing loaded database $DB"
else
    [[ $exists == 1 ]] && psql_admin -c "DROP DATABASE $DB WITH (FORCE)"
    psql_admin -c "CREATE DATABASE $DB"
    log "loading: $USERS users, $SHARDS shards, both layouts (takes a few minutes)"
    t0=$SECONDS
    psql_bench -v users="$USERS" -v shards="$SHARDS" -v batches="$BATCHES" -v fanout="$FANOUT" -f "$HERE/setup.sql"
    log "VACUUM ANALYZE"
    psql_bench -c "VACUUM ANALYZE"
    log "loaded in $(( SECONDS - t0 )) s"
fi
PREWARM=1
psql_bench -c "CREATE EXTENSION IF NOT EXISTS pg_prewarm" 2>/dev/null || { PREWARM=0; log "pg_prewarm not available: runs start without prewarming"; }

# ------------------------------------------------------------------ environment
{
    echo "== machine"
    echo "nproc: $(nproc)"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "pgbench: $("$PGBENCH" --version)"
    psql_bench -At -F ': ' <<'SQL'
SELECT 'server', version();
SELECT name, current_setting(name) FROM pg_settings
 WHERE name IN ('shared_buffers', 'max_connections', 'max_locks_per_transaction', 'synchronous_commit',
                'fsync', 'max_wal_size', 'jit', 'plan_cache_mode', 'work_mem') ORDER BY name;
SQL
    echo "== data"
    psql_bench -At -F ': ' <<'SQL'
WITH per_user AS (SELECT user_id, count(*) AS n FROM a.user_conversation_view GROUP BY user_id)
SELECT 'rows per layout', sum(n)::text FROM per_user
UNION ALL SELECT 'users', count(*)::text FROM per_user
UNION ALL SELECT 'rows per user: avg / p50 / p99 / max',
  round(avg(n), 1) || ' / ' || percentile_disc(0.5) WITHIN GROUP (ORDER BY n) || ' / '
  || percentile_disc(0.99) WITHIN GROUP (ORDER BY n) || ' / ' || max(n) FROM per_user
UNION ALL SELECT 'users with >= 200 rows', count(*) FILTER (WHERE n >= 200)::text FROM per_user
UNION ALL SELECT 'listed rows (closed_at = 0 AND NOT is_hidden)', count(*)::text FROM a.user_conversation_view WHERE closed_at = 0 AND NOT is_hidden
UNION ALL SELECT 'avg width of a row (bytes)', round(avg(pg_column_size(v.*)))::text FROM a.user_conversation_view v
UNION ALL SELECT 'fan-out batch: avg rows / avg shards touched', round(avg(n), 1) || ' / ' || round(avg(shards_touched), 1) FROM fanout_batch;
SELECT 'size ' || n.nspname || ' (heap / indexes)',
       pg_size_pretty(sum(pg_table_size(c.oid)) FILTER (WHERE c.relkind = 'r')) || ' / ' ||
       pg_size_pretty(sum(pg_relation_size(c.oid)) FILTER (WHERE c.relkind = 'i'))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('a', 'b') GROUP BY n.nspname ORDER BY n.nspname;
SQL
} | tee "$OUT/environment.txt"
FANOUT_ROWS=$(psql_bench -Atc "SELECT round(avg(n), 2) FROM fanout_batch")

# ------------------------------------------------------------------ planning
log "EXPLAIN: planning times and run-time pruning"
EXPLAIN_TMP="$OUT/explain_plan.tmp" CONDENSE_AWK="$HERE/condense_plan.awk" psql_bench -v users="$USERS" -v shards="$SHARDS" -v reps="$EXPLAIN_REPS" \
    -v explain_tmp="$OUT/explain_plan.tmp" -f "$HERE/explain.sql" > "$OUT/explain.txt"
rm -f "$OUT/explain_plan.tmp"
cat "$OUT/explain.txt"

# ------------------------------------------------------------------ runs
printf 'round\top\tvariant\tclients\ttps\tlat_avg_ms\tp50_ms\tp99_ms\tfailed\tretried\twal_kb_per_tx\tfpi_per_tx\tload1\n' > "$OUT/results.tsv"

prepare_run() { # $1 = schema to prewarm
    if (( PREWARM )); then
        psql_bench -Atc "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = '$1' AND c.relkind IN ('r', 'i')" > /dev/null
    fi
    psql_bench -c "CHECKPOINT"
}

run_case() { # round op variant clients
    local round=$1 op=$2 variant=$3 clients=$4 schema pgopts="" args=()
    local tag="r${round}_${op}_${variant}_c${clients}"
    case $op/$variant in
        list/A)          args=(-f "$SCRIPTS/list_a.sql") ;;
        list/A_generic)  args=(-f "$SCRIPTS/list_a.sql"); pgopts="-c plan_cache_mode=force_generic_plan" ;;
        list/B)          read -r -a args < "$SCRIPTS/list_b.args" || true ;;  # no trailing newline
        fanout/A)        args=(-f "$SCRIPTS/fanout_a.sql") ;;
        fanout/A_generic) args=(-f "$SCRIPTS/fanout_a.sql"); pgopts="-c plan_cache_mode=force_generic_plan" ;;
        fanout/A_any)    args=(-f "$SCRIPTS/fanout_a_any.sql") ;;
        fanout/A_local)  args=(-f "$SCRIPTS/fanout_a_local.sql") ;;
        fanout/B)        args=(-f "$SCRIPTS/fanout_b.sql") ;;
        fanout/B_pipe)   args=(-f "$SCRIPTS/fanout_b_pipe.sql") ;;
        *) die "unknown case $op/$variant" ;;
    esac
    schema=$(tr '[:upper:]' '[:lower:]' <<< "${variant:0:1}")
    prepare_run "$schema"
    local threads=$(( clients < 2 ? clients : 2 ))
    log "round $round: $op $variant, $clients clients, ${DURATION}s"
    local wal0 wal1
    wal0=$(psql_bench -Atc "SELECT wal_bytes || ' ' || wal_fpi FROM pg_stat_wal")
    PGOPTIONS="$pgopts" "$PGBENCH" -n -M prepared -c "$clients" -j "$threads" -T "$DURATION" \
        -D users="$USERS" -D batches="$BATCHES" --max-tries=10 --failures-detailed \
        -l --log-prefix="$OUT/logs/$tag" "${args[@]}" "$BENCH_URL" > "$OUT/$tag.out" 2>&1 \
        || { cat "$OUT/$tag.out" >&2; die "pgbench failed ($tag)"; }
    wal1=$(psql_bench -Atc "SELECT wal_bytes || ' ' || wal_fpi FROM pg_stat_wal")
    local load1; load1=$(cut -d' ' -f1 /proc/loadavg)
    local tps lat failed retried pct ntx walpt
    tps=$(awk '/^tps = / {print $3; exit}' "$OUT/$tag.out")
    lat=$(awk '/^latency average = / {print $4; exit}' "$OUT/$tag.out")
    failed=$(awk -F'[:(]' '/^number of failed transactions/ {gsub(/ /, "", $2); print $2; exit}' "$OUT/$tag.out")
    retried=$(awk -F'[:(]' '/^number of transactions retried/ {gsub(/ /, "", $2); print $2; exit}' "$OUT/$tag.out")
    # per-transaction log: field 3 = latency in us (or "failed")
    pct=$(cat "$OUT/logs/$tag".* | awk '$3 ~ /^[0-9]+$/ {print $3}' | sort -n |
          awk '{a[NR] = $1} END {if (NR == 0) {print "NA\tNA"; exit}
               i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1;
               printf "%.3f\t%.3f", a[i50] / 1000, a[i99] / 1000}')
    rm -f "$OUT/logs/$tag".*
    ntx=$(awk '/^number of transactions actually processed: / {print $6; exit}' "$OUT/$tag.out")
    # WAL written during the run (whole server: includes autovacuum), per transaction
    walpt=$(awk -v a="$wal0" -v b="$wal1" -v n="${ntx:-0}" 'BEGIN {split(a, x, " "); split(b, y, " ");
            if (n > 0) printf "%.1f\t%.1f", (y[1] - x[1]) / 1024 / n, (y[2] - x[2]) / n; else printf "NA\tNA"}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$op" "$variant" "$clients" "$tps" "$lat" "$pct" \
        "${failed:-0}" "${retried:-0}" "$walpt" "$load1" >> "$OUT/results.tsv"
    log "  -> tps $tps, avg ${lat} ms, p50/p99 $(tr '\t' '/' <<< "$pct") ms, failed ${failed:-0}, retried ${retried:-0}, WAL/tx $(tr '\t' '/' <<< "$walpt") KiB/FPI, load $load1"
}

reverse() { local out="" w; for w in $1; do out="$w $out"; done; echo "$out"; }

for (( round = 1; round <= ROUNDS; round++ )); do
    log "round $round/$ROUNDS: VACUUM ANALYZE"
    psql_bench -c "VACUUM ANALYZE"
    lv=$LIST_VARIANTS fv=$FANOUT_VARIANTS
    if (( round % 2 == 0 )); then lv=$(reverse "$lv"); fv=$(reverse "$fv"); fi
    for c in $LIST_CLIENTS; do
        for v in $lv; do run_case "$round" list "$v" "$c"; done
    done
    for c in $FANOUT_CLIENTS; do
        for v in $fv; do run_case "$round" fanout "$v" "$c"; done
    done
done

# ------------------------------------------------------------------ summary
python3 "$HERE/summarize.py" "$OUT/results.tsv" "$FANOUT_ROWS" | tee "$OUT/summary.txt"
log "raw results: $OUT/results.tsv; pgbench outputs: $OUT/*.out; plans: $OUT/explain.txt"
