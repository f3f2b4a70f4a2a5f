#!/usr/bin/env bash
# Private local PostgreSQL, Kafka and Redis for hermet's development and tests.
#
#   scripts/services.sh up [postgres|kafka|redis]...    start (default: all), wait until ready
#   scripts/services.sh down [postgres|kafka|redis]...  stop (default: all)
#   scripts/services.sh status                          up/down per service; non-zero if one is down
#   scripts/services.sh env                             export lines: eval "$(scripts/services.sh env)"
#   scripts/services.sh env --run                       the same for the CLI next to `make run`: its
#       database (`hermet`, not the admin database `postgres`), its sync mode, target/release on PATH
#   scripts/services.sh kafka-run CLASS [ARGS]...       run a Kafka tool class, e.g.
#       scripts/services.sh kafka-run org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:59092 --list
#
# Every instance is our own: own data dirs, pid and log files under the state
# folder, own ports on 127.0.0.1 only, so a system PostgreSQL/Redis on the
# machine (or a second checkout with another state folder and ports) is never
# touched. `up` and `down` are idempotent.
#
# Env:
#   HERMET_STATE_DIR              state folder (default: <project root>/.hermet)
#   HERMET_PG_PORT                PostgreSQL port (55432)
#   HERMET_KAFKA_PORT             Kafka broker port (59092)
#   HERMET_KAFKA_CONTROLLER_PORT  Kafka KRaft controller port (59093)
#   HERMET_REDIS_PORT             Redis port (56379)
#   HERMET_DATABASE_URL / HERMET_KAFKA_BROKERS / HERMET_REDIS_URL
#       when set to anything but our own local address, that service is
#       external: we neither start nor stop it, and `env` passes it through.
#   HERMET_UP_TIMEOUT             seconds to wait for each service (pg 60, redis 30, kafka 180)
#   HERMET_KAFKA_JAVA_OPTS        JVM options of the broker (-Xms256m -Xmx768m)
#   HERMET_SKIP_INSTALL=1         don't run install-deps.sh before `up`
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

STATE_DIR=${HERMET_STATE_DIR:-$ROOT/.hermet}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR   # pids/paths must not depend on cwd
STATE_DIR=${STATE_DIR%/}

PG_PORT=${HERMET_PG_PORT:-55432}
KAFKA_PORT=${HERMET_KAFKA_PORT:-59092}
KAFKA_CONTROLLER_PORT=${HERMET_KAFKA_CONTROLLER_PORT:-59093}
REDIS_PORT=${HERMET_REDIS_PORT:-56379}

# Pinned: the newest 4.x that Maven Central served when this was written.
KAFKA_VERSION=4.4.0
SCALA_VERSION=2.13
LOG4J_VERSION=2.25.5   # same log4j2 as kafka-server 4.4.0 depends on

# Our own addresses. A HERMET_* URL equal to one of these is "ours", not
# external: after `eval "$(services.sh env)"` the variables are set, and a
# later `services.sh up` must still manage the local instances.
LOCAL_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
LOCAL_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
LOCAL_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

SERVICES=(postgres redis kafka)   # start order; stopped in reverse

# ---------------------------------------------------------------- helpers

log() { printf '%s\n' "$*"; }
warn() { printf 'services: %s\n' "$*" >&2; }
die() { warn "ERROR: $*"; exit 1; }

# die, showing the end of a service's log(s) so the cause is visible right
# away. $1: log file, or several separated by ':'.
die_with_log() {
    local logfiles logfile
    IFS=: read -ra logfiles <<<"$1"; shift
    warn "ERROR: $*"
    for logfile in "${logfiles[@]}"; do
        [[ -s $logfile ]] || continue
        warn "---- last 40 lines of $logfile ----"
        tail -n 40 "$logfile" >&2 || true
        warn "----"
    done
    exit 1
}

# Something accepting TCP connections on 127.0.0.1:$1?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Refuse to start on a port that someone else already holds: the new server
# would die with a bind error, or worse we'd report a foreign server as ours.
require_free_port() {
    ! port_open "$2" || die "$1: port 127.0.0.1:$2 is already in use by another process (set the HERMET_*_PORT variable to use another port)"
}

# Process $1 is alive and its command line contains $2.
pid_matches() {
    local pid=$1 needle=$2
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$needle"
}

# Process $1 exists and has not exited (a zombie has). Only for a child this
# script has just started: right after the fork its command line is still
# this script's, so pid_matches would call it dead until the exec.
pid_alive() {
    local pid=$1 stat
    [[ $pid =~ ^[0-9]+$ ]] && stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# SIGTERM, wait up to $3 seconds, then SIGKILL.
stop_pid() {
    local name=$1 pid=$2 grace=$3 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < grace * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    warn "$name did not stop within ${grace}s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
}

# wait_ready NAME TIMEOUT LOGFILE ALIVE_FN CHECK_CMD...
# Polls CHECK_CMD until it succeeds; fails early if ALIVE_FN says the process died.
wait_ready() {
    local name=$1 timeout=$2 logfile=$3 alive=$4; shift 4
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        "$alive" || die_with_log "$logfile" "$name exited during startup"
        ((SECONDS < deadline)) || die_with_log "$logfile" "$name not ready after ${timeout}s"
        sleep 0.5
    done
}

# Hide a password in a URL before printing it.
mask_url() { sed -E 's#(//[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# Is the service replaced by an external one? (see the header)
is_external() {
    case $1 in
    # Any database of our own server is local (`env --run` names `hermet` instead of `postgres`).
    postgres) [[ -n ${HERMET_DATABASE_URL:-} && ${HERMET_DATABASE_URL%/*} != "${LOCAL_DATABASE_URL%/*}" ]] ;;
    kafka) [[ -n ${HERMET_KAFKA_BROKERS:-} && $HERMET_KAFKA_BROKERS != "$LOCAL_KAFKA_BROKERS" ]] ;;
    redis) [[ -n ${HERMET_REDIS_URL:-} && $HERMET_REDIS_URL != "$LOCAL_REDIS_URL" ]] ;;
    esac
}

external_desc() {
    case $1 in
    postgres) echo "HERMET_DATABASE_URL=$(mask_url "$HERMET_DATABASE_URL")" ;;
    kafka) echo "HERMET_KAFKA_BROKERS=$HERMET_KAFKA_BROKERS" ;;
    redis) echo "HERMET_REDIS_URL=$(mask_url "$HERMET_REDIS_URL")" ;;
    esac
}

# ---------------------------------------------------------------- PostgreSQL

# Newest installed server >= 15 (Debian layout: /usr/lib/postgresql/<major>/bin).
pg_bin() {
    local d major best=0
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/initdb && -x $d/postgres && -x $d/pg_ctl ]] || continue
        major=${d#/usr/lib/postgresql/}; major=${major%%/*}
        [[ $major =~ ^[0-9]+$ ]] && ((major > best)) && best=$major
    done
    ((best >= 15)) || die "postgres: no PostgreSQL >= 15 in /usr/lib/postgresql/*/bin (run scripts/install-deps.sh)"
    echo "/usr/lib/postgresql/$best/bin"
}

# initdb and postgres refuse to run as root: as root, run them as the
# `postgres` system user (created by Debian's package). From / so that an
# unreadable cwd (e.g. /root) doesn't cause warnings.
as_pg() {
    if ((EUID == 0)); then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Can the postgres user reach (traverse) directory $1 and all its parents?
pg_user_can_reach() {
    ((EUID != 0)) || as_pg test -x "$1"
}

# Where the cluster lives: normally <state>/pg. When the postgres user cannot
# traverse the state folder (e.g. the project is under /root, mode 700), it
# goes to a postgres-owned folder /var/tmp/hermet-<hash of state path>/pg,
# and <state>/pg becomes a symlink to it.
pg_paths() {
    local local_dir=$STATE_DIR/pg
    PG_ALT_BASE=/var/tmp/hermet-$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-12)
    if [[ -L $local_dir ]]; then
        PG_DIR=$(readlink -f "$local_dir")
    elif [[ -d $local_dir ]] || [[ ! -d $STATE_DIR ]] || pg_user_can_reach "$STATE_DIR"; then
        PG_DIR=$local_dir
    else
        PG_DIR=$PG_ALT_BASE/pg
    fi
    PG_DATA=$PG_DIR/data
    PG_LOGFILE=$PG_DIR/log/postgres.log
    # Unix socket in our own folder (not /var/run/postgresql: no clash with a
    # system instance). Socket paths are limited to ~107 bytes; for a deep
    # checkout use the short folder instead.
    PG_SOCK_DIR=$PG_DIR/run
    if ((${#PG_SOCK_DIR} + 20 > 100)); then
        PG_SOCK_DIR=$PG_ALT_BASE/run
    fi
}

pg_running() {
    [[ -f $PG_DATA/PG_VERSION ]] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }

# mkdir owned by postgres (when root)
pg_mkdir() {
    mkdir -p "$@"
    ((EUID != 0)) || chown postgres:postgres "$@"
}

# Write stdin to $1 as the postgres user, only if the content changed.
# Returns 0 if the file was changed.
pg_write_file() {
    local content
    content=$(cat)
    if [[ -f $1 ]] && [[ $(cat "$1") == "$content" ]]; then
        return 1
    fi
    printf '%s\n' "$content" | as_pg tee "$1" >/dev/null
}

pg_up() {
    PG_BIN=$(pg_bin)
    pg_paths
    if [[ $PG_DIR != "$STATE_DIR/pg" ]]; then
        pg_mkdir "$PG_ALT_BASE"
        chmod 700 "$PG_ALT_BASE"
        [[ -e $STATE_DIR/pg ]] || ln -s "$PG_DIR" "$STATE_DIR/pg"
        log "postgres: state folder not reachable by the postgres user; cluster lives in $PG_DIR"
    fi
    if [[ $PG_SOCK_DIR == "$PG_ALT_BASE"/* ]]; then
        pg_mkdir "$PG_ALT_BASE"
    fi
    pg_mkdir "$PG_DIR" "$PG_DIR/log" "$PG_SOCK_DIR"

    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        log "postgres: creating cluster in $PG_DATA ($("$PG_BIN/postgres" --version))"
        # trust auth: a private dev/test instance reachable only on loopback.
        as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --no-locale \
            >"$PG_DIR/log/initdb.log" 2>&1 ||
            die_with_log "$PG_DIR/log/initdb.log" "postgres: initdb failed"
        # Our settings live in hermet.conf (rewritten on every `up`).
        printf "\n# hermet: our settings (scripts/services.sh)\ninclude = 'hermet.conf'\n" |
            as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
    fi

    local changed=0
    pg_write_file "$PG_DATA/hermet.conf" <<EOF && changed=1
# Written by scripts/services.sh on every 'up'; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK_DIR'
max_connections = 300
shared_buffers = 256MB
# logical decoding / replication for the outbox and CDC paths
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_wal_size = 2GB
# a slot nobody reads (relay down, mode switched away from cdc) keeps WAL without bound; past
# this it is invalidated instead (README Operations, "Inactive replication slots")
max_slot_wal_keep_size = 4GB
# durable on purpose: tests exercise crash behaviour
fsync = on
synchronous_commit = on
full_page_writes = on
# 256 hash partitions per read-side table (plus their indexes, fsm and vm forks) are thousands
# of files, more than the default 1,000 descriptors a backend keeps open: a projector or audit
# backend that touches every partition would keep closing and reopening them. (At the
# benchmarks' 1,000 users no difference in open() calls was measured.) The soft fd limit is
# raised to match when the server starts.
max_files_per_process = 8000
EOF
    pg_write_file "$PG_DATA/pg_hba.conf" <<'EOF' && changed=1
# Written by scripts/services.sh. Private loopback-only instance: trust.
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
local   replication  all                 trust
host    replication  all   127.0.0.1/32  trust
EOF

    if pg_running; then
        ((changed == 0)) || warn "postgres: config changed while running; apply with: $0 down postgres && $0 up postgres"
        log "postgres: already running"
    else
        require_free_port postgres "$PG_PORT"
        log "postgres: starting on 127.0.0.1:$PG_PORT"
        # 9>&- : don't hand our lock fd to the daemon (it would keep the lock).
        # runuser resets the soft fd limit, so it is raised inside (see max_files_per_process).
        as_pg sh -c 'n=$(ulimit -Hn); case $n in unlimited) n=8192 ;; esac
            [ "$n" -gt 8192 ] && n=8192; ulimit -Sn "$n"; exec "$@"' sh \
            "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOGFILE" -s -w -t "${HERMET_UP_TIMEOUT:-60}" start 9>&- ||
            die_with_log "$PG_LOGFILE" "postgres: failed to start"
    fi
    wait_ready postgres "${HERMET_UP_TIMEOUT:-60}" "$PG_LOGFILE" pg_running pg_ready
    # The visibility tests hold commits with a synchronous standby that never comes
    # (ALTER SYSTEM); one killed half-way would leave every later commit waiting.
    if [[ -n $(as_pg "$PG_BIN/psql" "$LOCAL_DATABASE_URL" -Atc \
        "SELECT 1 FROM pg_file_settings WHERE name IN ('synchronous_standby_names', 'synchronous_commit') AND sourcefile LIKE '%postgresql.auto.conf'" 2>/dev/null) ]]; then
        log "postgres: clearing a synchronous standby left by an interrupted test"
        for sql in "ALTER SYSTEM RESET synchronous_standby_names" "ALTER SYSTEM RESET synchronous_commit" \
            "SELECT pg_reload_conf()"; do
            as_pg "$PG_BIN/psql" "$LOCAL_DATABASE_URL" -qAtc "$sql" >/dev/null
        done
    fi
    log "postgres: ready ($LOCAL_DATABASE_URL, data $PG_DATA)"
}

pg_down() {
    PG_BIN=$(pg_bin)
    pg_paths
    if pg_running; then
        log "postgres: stopping"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -s -w -t 60 stop ||
            die_with_log "$PG_LOGFILE" "postgres: failed to stop"
    fi
    log "postgres: down"
}

pg_status() {
    PG_BIN=$(pg_bin)
    pg_paths
    if pg_running && pg_ready; then
        log "postgres: up   127.0.0.1:$PG_PORT  (data $PG_DATA)"
    else
        log "postgres: down"
        return 1
    fi
}

# ---------------------------------------------------------------- Redis

REDIS_DIR=$STATE_DIR/redis
REDIS_PIDFILE=$REDIS_DIR/redis.pid
REDIS_LOGFILE=$REDIS_DIR/log/redis.log

redis_pid() { cat "$REDIS_PIDFILE" 2>/dev/null || true; }
redis_running() { pid_matches "$(redis_pid)" redis-server; }
redis_ready() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

redis_up() {
    mkdir -p "$REDIS_DIR/log"
    if redis_running; then
        log "redis: already running"
    else
        rm -f "$REDIS_PIDFILE"
        require_free_port redis "$REDIS_PORT"
        log "redis: starting on 127.0.0.1:$REDIS_PORT"
        # No persistence: a cache/presence store; tests start from empty.
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" \
            --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOGFILE" \
            --save '' --appendonly no 9>&- ||
            die_with_log "$REDIS_LOGFILE" "redis: failed to start"
        # --daemonize returns before the pid file is written
        local i
        for ((i = 0; i < 50; i++)); do [[ -s $REDIS_PIDFILE ]] && break; sleep 0.1; done
    fi
    wait_ready redis "${HERMET_UP_TIMEOUT:-30}" "$REDIS_LOGFILE" redis_running redis_ready
    log "redis: ready ($LOCAL_REDIS_URL)"
}

redis_down() {
    if redis_running; then
        log "redis: stopping"
        stop_pid redis "$(redis_pid)" 30
    fi
    rm -f "$REDIS_PIDFILE"
    log "redis: down"
}

redis_status() {
    if redis_running && redis_ready; then
        log "redis: up   127.0.0.1:$REDIS_PORT"
    else
        log "redis: down"
        return 1
    fi
}

# ---------------------------------------------------------------- Kafka

KAFKA_DIR=$STATE_DIR/kafka
KAFKA_LIBS=$KAFKA_DIR/libs
KAFKA_CONF=$KAFKA_DIR/config
KAFKA_DATA=$KAFKA_DIR/data
KAFKA_LOGDIR=$KAFKA_DIR/log
KAFKA_LOGFILE=$KAFKA_LOGDIR/server.log
KAFKA_PIDFILE=$KAFKA_DIR/kafka.pid

kafka_pid() { cat "$KAFKA_PIDFILE" 2>/dev/null || true; }
# The pid must be *our* broker (pid files go stale, pids get reused).
kafka_running() { pid_matches "$(kafka_pid)" "kafka.Kafka $KAFKA_CONF/server.properties"; }
kafka_started() { pid_alive "$(kafka_pid)"; }

require_java17() {
    command -v java >/dev/null || die "kafka: no java (run scripts/install-deps.sh)"
    local v
    v=$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/p')
    local major=${v%% *}
    [[ $major == 1 ]] && major=${v##* }   # "1.8.0" style
    if ! [[ $major =~ ^[0-9]+$ ]] || ((major < 17)); then
        die "kafka: the Kafka $KAFKA_VERSION broker needs Java >= 17, found: $(java -version 2>&1 | head -1)"
    fi
}

# Run a Kafka class on the downloaded jars; tools log warnings to stderr only.
kafka_java() {
    [[ -f $KAFKA_LIBS/.complete ]] || die "kafka: jars not downloaded yet (run: $0 up kafka)"
    java -Xmx512m -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_CONF/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

# The official Kafka jars from Maven Central, fetched by mvn into libs/
# (cached in ~/.m2). Refetched only when the pom changes (version bump).
kafka_fetch() {
    mkdir -p "$KAFKA_DIR" "$KAFKA_LOGDIR"
    cat >"$KAFKA_DIR/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scripts/services.sh: the jars of a local Kafka broker + tools. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>hermet.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- broker (kafka.Kafka) and storage format tool (kafka.tools.StorageTool) -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_$SCALA_VERSION</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- TopicCommand, ConsoleProducer, ConsoleConsumer, ... -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- Kafka logs through slf4j 1.7; route it to log4j2 (file config below) -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
    local sum
    sum=$(sha256sum <"$KAFKA_DIR/pom.xml" | cut -d' ' -f1)
    if [[ -f $KAFKA_LIBS/.complete && $(cat "$KAFKA_LIBS/.complete") == "$sum" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "kafka: no mvn (run scripts/install-deps.sh)"
    log "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central (first time can take minutes)"
    rm -rf "$KAFKA_LIBS.tmp"
    mvn -B -q -f "$KAFKA_DIR/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" \
        >"$KAFKA_LOGDIR/mvn.log" 2>&1 </dev/null ||
        die_with_log "$KAFKA_LOGDIR/mvn.log" "kafka: mvn could not fetch the Kafka jars"
    echo "$sum" >"$KAFKA_LIBS.tmp/.complete"
    rm -rf "$KAFKA_LIBS"
    mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
}

kafka_write_config() {
    mkdir -p "$KAFKA_CONF" "$KAFKA_DATA" "$KAFKA_LOGDIR"
    # Single node, KRaft, combined broker+controller. Static voter list, so a
    # changed controller port only needs a restart (no quorum reconfiguration).
    cat >"$KAFKA_CONF/server.properties.new" <<EOF
# Written by scripts/services.sh on every 'up'; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
EOF
    if cmp -s "$KAFKA_CONF/server.properties.new" "$KAFKA_CONF/server.properties"; then
        rm "$KAFKA_CONF/server.properties.new"
    else
        mv "$KAFKA_CONF/server.properties.new" "$KAFKA_CONF/server.properties"
        ! kafka_running || warn "kafka: config changed while running; apply with: $0 down kafka && $0 up kafka"
    fi

    # Broker: INFO to a size-capped file.
    cat >"$KAFKA_CONF/log4j2.properties" <<EOF
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $KAFKA_LOGFILE
appender.file.filePattern = $KAFKA_LOGFILE.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 100MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
EOF
    # Tools (TopicCommand etc.): only warnings, on stderr.
    cat >"$KAFKA_CONF/tools-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = err
EOF
    # Admin client settings of the readiness check: fail fast, don't hang 60s.
    cat >"$KAFKA_CONF/tools.properties" <<'EOF'
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

kafka_ready() {
    port_open "$KAFKA_PORT" &&
        timeout 30 java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_CONF/tools-log4j2.properties" \
            -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand \
            --bootstrap-server "$LOCAL_KAFKA_BROKERS" --command-config "$KAFKA_CONF/tools.properties" --list
}

kafka_up() {
    require_java17
    kafka_fetch
    kafka_write_config
    local alive=kafka_running
    if kafka_running; then
        log "kafka: already running"
    else
        rm -f "$KAFKA_PIDFILE"
        require_free_port kafka "$KAFKA_PORT"
        require_free_port kafka-controller "$KAFKA_CONTROLLER_PORT"
        if [[ ! -f $KAFKA_DATA/meta.properties ]]; then
            local cluster_id
            cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid)
            log "kafka: formatting storage in $KAFKA_DATA (cluster id $cluster_id)"
            kafka_java kafka.tools.StorageTool format -t "$cluster_id" \
                -c "$KAFKA_CONF/server.properties" >"$KAFKA_LOGDIR/format.log" 2>&1 ||
                die_with_log "$KAFKA_LOGDIR/format.log" "kafka: storage format failed"
        fi
        log "kafka: starting on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)"
        # setsid+nohup: detach from our terminal/session so the broker outlives
        # this script and a Ctrl-C in the caller's shell. JVM-level errors
        # (before log4j is up) land in stdout.log.
        echo "=== $(date '+%F %T') scripts/services.sh: starting broker ===" >>"$KAFKA_LOGDIR/stdout.log"
        # shellcheck disable=SC2086  # word splitting of the JVM options is intended
        nohup setsid java ${HERMET_KAFKA_JAVA_OPTS:--Xms256m -Xmx768m} \
            -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$KAFKA_CONF/log4j2.properties" \
            -Dkafka.logs.dir="$KAFKA_LOGDIR" \
            -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF/server.properties" \
            >>"$KAFKA_LOGDIR/stdout.log" 2>&1 </dev/null 9>&- &
        echo $! >"$KAFKA_PIDFILE"
        alive=kafka_started
    fi
    # stdout.log has JVM-level errors from before log4j was up
    wait_ready kafka "${HERMET_UP_TIMEOUT:-180}" "$KAFKA_LOGDIR/stdout.log:$KAFKA_LOGFILE" "$alive" kafka_ready
    log "kafka: ready ($LOCAL_KAFKA_BROKERS)"
}

kafka_down() {
    if kafka_running; then
        log "kafka: stopping"
        # SIGTERM = controlled shutdown (flushes logs, clean KRaft shutdown).
        stop_pid kafka "$(kafka_pid)" 60
    fi
    rm -f "$KAFKA_PIDFILE"
    log "kafka: down"
}

kafka_status() {
    if kafka_running && port_open "$KAFKA_PORT"; then
        log "kafka: up   127.0.0.1:$KAFKA_PORT  (Kafka $KAFKA_VERSION, pid $(kafka_pid))"
    else
        log "kafka: down"
        return 1
    fi
}

# ---------------------------------------------------------------- commands

# Serialise up/down of this state folder (e.g. two `make test` at once).
take_lock() {
    mkdir -p "$STATE_DIR"
    exec 9>>"$STATE_DIR/.lock"
    flock -w 600 9 || die "another services.sh up/down is running for $STATE_DIR"
}

select_services() {
    local s
    if (($# == 0)); then
        printf '%s\n' "${SERVICES[@]}"
        return
    fi
    for s in "$@"; do
        case $s in
        postgres | kafka | redis) echo "$s" ;;
        pg | postgresql) echo postgres ;;
        *) die "unknown service '$s' (postgres, kafka, redis)" ;;
        esac
    done
}

cmd_up() {
    local todo s started=$SECONDS
    todo=$(select_services "$@")
    take_lock
    if [[ ${HERMET_SKIP_INSTALL:-0} != 1 ]]; then
        HERMET_SKIP_RUST_CHECK=1 "$SCRIPT_DIR/install-deps.sh" 9>&-
    fi
    for s in "${SERVICES[@]}"; do
        grep -qx "$s" <<<"$todo" || continue
        if is_external "$s"; then
            log "$s: using external $(external_desc "$s")"
            continue
        fi
        case $s in
        postgres) pg_up ;;
        redis) redis_up ;;
        kafka) kafka_up ;;
        esac
    done
    log "services up in $((SECONDS - started))s; state in $STATE_DIR"
    log "use them with: eval \"\$($0 env)\""
}

cmd_down() {
    local todo s i
    todo=$(select_services "$@")
    take_lock
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        s=${SERVICES[i]}
        grep -qx "$s" <<<"$todo" || continue
        if is_external "$s"; then
            log "$s: external, not stopping it ($(external_desc "$s"))"
            continue
        fi
        case $s in
        postgres) pg_down ;;
        redis) redis_down ;;
        kafka) kafka_down ;;
        esac
    done
}

cmd_status() {
    local s rc=0
    for s in "${SERVICES[@]}"; do
        if is_external "$s"; then
            log "$s: external ($(external_desc "$s"))"
            continue
        fi
        case $s in
        postgres) pg_status || rc=1 ;;
        redis) redis_status || rc=1 ;;
        kafka) kafka_status || rc=1 ;;
        esac
    done
    return $rc
}

cmd_env() {
    local db=$LOCAL_DATABASE_URL brokers=$LOCAL_KAFKA_BROKERS redis=$LOCAL_REDIS_URL
    is_external postgres && db=$HERMET_DATABASE_URL
    is_external kafka && brokers=$HERMET_KAFKA_BROKERS
    is_external redis && redis=$HERMET_REDIS_URL
    case ${1:-} in
    '') ;;
    --run)
        # The admin URL points at the `postgres` database (tests make their own databases from
        # it); `make run` serves from a database of its own, `hermet` on the same server.
        db=${db%/*}/hermet
        printf 'export PATH=%q:"$PATH"\n' "$ROOT/target/release"
        # `make run`'s default mode, so `hermet admin status` reports what is running.
        printf 'export HERMET_SYNC_MODE="${HERMET_SYNC_MODE:-cdc}"\n'
        ;;
    *) die "usage: $0 env [--run]" ;;
    esac
    printf 'export HERMET_DATABASE_URL=%q\n' "$db"
    printf 'export HERMET_KAFKA_BROKERS=%q\n' "$brokers"
    printf 'export HERMET_REDIS_URL=%q\n' "$redis"
}

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

main() {
    (($# > 0)) || usage
    local cmd=$1; shift
    case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status ;;
    env) cmd_env "$@" ;;
    kafka-run)
        (($# > 0)) || die "usage: $0 kafka-run CLASS [ARGS]..."
        kafka_java "$@"
        ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
    esac
}

main "$@"
