#!/usr/bin/env bash
# The relay's own CPU (user + system of `hermet serve --role cdc`, from /proc) idle and under a
# steady trickle of single-row transactions, per 100,000 changes: the quick companion of
# `hermet-bench peers` for comparing two builds (BENCHMARKS.md, "Relay CPU at light loads").
#
#   bench/relay-cpu.sh BIN [TAG] [RATES]     e.g. bench/relay-cpu.sh target/release/hermet
#
# Needs the services of scripts/services.sh (it reads their environment) and pgbench. Each run
# uses a scratch database `relay_cpu`, a slot, publication and topics named after TAG (lower case
# letters, digits, _), and removes the slot and the database afterwards. RATES defaults to
# "200 2000" (transactions per second, each an UPDATE of one users row, for 20 s); the idle
# figure is 30 s with nothing written. Extra settings go through the environment, e.g.
# HERMET_CDC__LINGER_MS=20.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh env)"
BIN=${1:?usage: bench/relay-cpu.sh BIN [TAG] [RATES]}
TAG=${2:-run}
RATES=${3:-200 2000}
[[ $TAG =~ ^[a-z0-9_]+$ ]] || { echo "TAG must be lower-case letters, digits and _" >&2; exit 2; }
ADMIN=$HERMET_DATABASE_URL
URL=${ADMIN%/*}/relay_cpu
psql "$ADMIN" -qAtc "DROP DATABASE IF EXISTS relay_cpu" -c "CREATE DATABASE relay_cpu" >/dev/null
HERMET_DATABASE_URL=$URL "$BIN" migrate >/dev/null 2>&1
psql "$URL" -qAtc "INSERT INTO users (nickname, avatar, created_at, updated_at)
                   SELECT 'u' || g, '', 0, 0 FROM generate_series(1, 500) g" >/dev/null
SCRIPT=$(mktemp)
LOG=$(mktemp)
cat > "$SCRIPT" <<'SQL'
\set id random(1, 500)
UPDATE users SET profile_ver = profile_ver + 1 WHERE id = :id;
SQL
HERMET_DATABASE_URL=$URL HERMET_SYNC_MODE=cdc HERMET_HTTP_ADDR=127.0.0.1:0 \
  HERMET_CDC__SLOT=relay_cpu_$TAG HERMET_CDC__PUBLICATION=relay_cpu_$TAG \
  HERMET_CDC__TOPIC_TEMPLATE="relay_cpu_${TAG}.{table}" HERMET_AUDIT__INTERVAL_SECS=0 \
  HERMET_METRICS_ADDR= RUST_LOG=warn "$BIN" serve --role cdc >"$LOG" 2>&1 &
PID=$!
cleanup() {
  kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  psql "$URL" -qAtc "SELECT pg_drop_replication_slot('relay_cpu_$TAG')" >/dev/null 2>&1 || true
  psql "$ADMIN" -qAtc "DROP DATABASE IF EXISTS relay_cpu" >/dev/null 2>&1 || true
  rm -f "$SCRIPT" "$LOG"
}
trap cleanup EXIT
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
secs() { echo "scale=2; ($2 - $1) / $TCK" | bc; }
sleep 8
kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
c0=$(cpu); sleep 30; c1=$(cpu)
echo "$TAG idle 30 s: $(secs "$c0" "$c1") CPU-s"
for R in $RATES; do
  c0=$(cpu)
  n=$(pgbench -n -R "$R" -T 20 -c 2 -f "$SCRIPT" "$URL" 2>/dev/null \
        | awk '/^number of transactions actually processed/ {print $NF}')
  sleep 2
  c1=$(cpu)
  echo "$TAG $R/s: $n changes, $(secs "$c0" "$c1") CPU-s, per 100k changes:" \
       "$(echo "scale=1; ($c1 - $c0) / $TCK * 100000 / $n" | bc)"
done
