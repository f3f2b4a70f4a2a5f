#!/usr/bin/env bash
# Debezium's PostgreSQL connector on Kafka Connect (standalone): the original design's CDC
# pipeline (方案2), as the baseline `hermet-bench peers` measures hermet's relay against.
#
#   bench/peers/debezium/debezium.sh fetch             fetch the pinned jars (Maven Central, via mvn)
#   bench/peers/debezium/debezium.sh connector-config  print the connector config (JSON, the seed's shape)
#   bench/peers/debezium/debezium.sh run               write the configs, then exec Kafka Connect
#                                                      standalone in the foreground (the JVM keeps
#                                                      this pid, so its RSS/CPU can be read from /proc)
#   bench/peers/debezium/debezium.sh classpath         print the runtime classpath (for debugging)
#   bench/peers/debezium/debezium.sh clean             delete the run folder of DBZ_NAME (offsets, configs)
#
# Connects to the project's private PostgreSQL and Kafka (`eval "$(scripts/services.sh env)"`).
# Everything it writes lives under the git-ignored state folder ($HERMET_STATE_DIR, default
# <project root>/.hermet) in peers/debezium/: jars in libs/ (Connect runtime) and
# plugins/debezium-connector-postgres/ (the connector, isolated as Connect loads plugins),
# one folder per run name under runs/ (configs, offsets file, log).
#
# Env (all optional):
#   HERMET_DATABASE_URL     postgres://user[:password]@host:port/db of the server; the database
#                           name is replaced by DBZ_DATABASE when that is set
#   HERMET_KAFKA_BROKERS    bootstrap servers (127.0.0.1:59092)
#   DBZ_DATABASE            database to capture (default: the URL's, else "hermet")
#   DBZ_NAME                run name: folder under runs/, connector name (default: hermet-dbz)
#   DBZ_TOPIC_PREFIX        Debezium's topic.prefix (default: hermet_dbz). Topics are routed like
#                           hermet's, `<table>.changed`, but under this prefix so they never
#                           collide with hermet's: `<prefix>.<table>.changed`
#   DBZ_SLOT / DBZ_PUBLICATION  its own slot and publication (hermet_dbz_slot / hermet_dbz_pub)
#   DBZ_TABLES              captured tables, comma-separated, schema public
#                           (default: hermet's five write-side tables)
#   DBZ_REST_PORT           Connect's REST listener on 127.0.0.1 (58083)
#   DBZ_OFFSET_FLUSH_MS     offset.flush.interval.ms (10000, as Kafka's connect-standalone.properties)
#   DBZ_HEAP_OPTS           JVM heap (-Xms256M -Xmx2G, as Kafka's connect-standalone.sh)
#   DBZ_EXTRA_CONFIG        extra connector properties, "k=v,k=v" (e.g. poll.interval.ms=10)
#   DBZ_FRESH=1             `run`: delete the run folder's offsets first (start from a snapshot)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/../../.." && pwd)
STATE_DIR=${HERMET_STATE_DIR:-$ROOT/.hermet}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
DIR=$STATE_DIR/peers/debezium

# Pinned. Debezium 3.6.1.Final is the newest release Maven Central serves in full here; it is
# built and tested against Kafka 4.3.0 (debezium-build-parent's version.kafka), so the Connect
# runtime is 4.3.0 too. A 4.3 client talks to the project's 4.4.0 broker (Kafka keeps clients
# and brokers compatible across minor versions).
DEBEZIUM_VERSION=3.6.1.Final
CONNECT_VERSION=4.3.0
LOG4J_VERSION=2.25.5   # the log4j2 of scripts/services.sh; Connect 4.3 logs through slf4j 1.7

LIBS=$DIR/libs
PLUGINS=$DIR/plugins
PLUGIN=$PLUGINS/debezium-connector-postgres

die() { printf 'debezium: ERROR: %s\n' "$*" >&2; exit 1; }

# Fetch one dependency set: $1 = folder, $2 = pom name, stdin = <dependencies> body.
# Refetched only when the pom changes (version bump), like scripts/services.sh does.
fetch_set() {
    local out=$1 name=$2 deps pom sum
    deps=$(cat)
    mkdir -p "$DIR/poms" "$DIR/log"
    pom=$DIR/poms/$name.xml
    cat >"$pom" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by bench/peers/debezium/debezium.sh -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>hermet.local</groupId>
  <artifactId>$name</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
$deps
  </dependencies>
</project>
EOF
    sum=$(sha256sum <"$pom" | cut -d' ' -f1)
    if [[ -f $out/.complete && $(cat "$out/.complete") == "$sum" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "no mvn (apt-get install maven)"
    printf 'debezium: fetching %s into %s\n' "$name" "$out" >&2
    rm -rf "$out.tmp"
    mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$out.tmp" >"$DIR/log/mvn-$name.log" 2>&1 </dev/null || {
        tail -n 40 "$DIR/log/mvn-$name.log" >&2
        die "mvn could not fetch $name (log: $DIR/log/mvn-$name.log)"
    }
    echo "$sum" >"$out.tmp/.complete"
    rm -rf "$out"
    mv "$out.tmp" "$out"
}

cmd_fetch() {
    # The Connect worker: runtime, JSON converter, the transforms (RegexRouter), logging.
    fetch_set "$LIBS" connect-runtime <<EOF
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId><version>$CONNECT_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-json</artifactId><version>$CONNECT_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-transforms</artifactId><version>$CONNECT_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$LOG4J_VERSION</version></dependency>
EOF
    # The connector as Debezium packages its plugin archive: without the Kafka and slf4j jars,
    # which the worker provides (Connect's plugin isolation loads those from the worker).
    fetch_set "$PLUGIN" debezium-connector-postgres <<EOF
    <dependency>
      <groupId>io.debezium</groupId><artifactId>debezium-connector-postgres</artifactId><version>$DEBEZIUM_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.slf4j</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>
EOF
}

# ---------------------------------------------------------------- configuration

DATABASE_URL=${HERMET_DATABASE_URL:-postgres://postgres@127.0.0.1:55432/hermet}
BROKERS=${HERMET_KAFKA_BROKERS:-127.0.0.1:59092}
NAME=${DBZ_NAME:-hermet-dbz}
PREFIX=${DBZ_TOPIC_PREFIX:-hermet_dbz}
SLOT=${DBZ_SLOT:-hermet_dbz_slot}
PUBLICATION=${DBZ_PUBLICATION:-hermet_dbz_pub}
TABLES=${DBZ_TABLES:-users,channels,channel_members,friendships,messages}
REST_PORT=${DBZ_REST_PORT:-58083}
OFFSET_FLUSH_MS=${DBZ_OFFSET_FLUSH_MS:-10000}
RUN_DIR=$DIR/runs/$NAME

[[ $NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "DBZ_NAME must be letters, digits, . _ -"
[[ $PREFIX =~ ^[A-Za-z0-9_-]+$ ]] || die "DBZ_TOPIC_PREFIX must be letters, digits, _ -"

# postgres://user[:password]@host[:port][/db][?…] → the parts Debezium wants.
parse_url() {
    local rest=${DATABASE_URL#*://} auth hostport
    [[ $DATABASE_URL == postgres://* || $DATABASE_URL == postgresql://* ]] ||
        die "HERMET_DATABASE_URL must be a postgres:// URL"
    rest=${rest%%\?*}
    if [[ $rest == *@* ]]; then auth=${rest%%@*}; rest=${rest#*@}; else auth=postgres; fi
    DB_USER=${auth%%:*}
    DB_PASSWORD=""
    [[ $auth == *:* ]] && DB_PASSWORD=${auth#*:}
    hostport=${rest%%/*}
    DB_HOST=${hostport%:*}
    DB_PORT=5432
    [[ $hostport == *:* ]] && DB_PORT=${hostport##*:}
    DB_NAME=hermet
    [[ $rest == */* && -n ${rest#*/} ]] && DB_NAME=${rest#*/}
    DB_NAME=${DBZ_DATABASE:-$DB_NAME}
}

# The seed's connector config (方案2), with what differs from it on purpose:
# - table.include.list: hermet's five write-side tables (the seed lists its older table names);
# - topic.prefix / slot.name / publication.name: this run's own, so nothing collides with hermet;
# - the route keeps the seed's `$1.changed` but under the prefix: `<prefix>.<table>.changed`;
# - publication.autocreate.mode=filtered: a missing publication is created for the captured
#   tables only (Debezium's default, all_tables, would publish every table of the database);
# - key/value converters are the JSON converter without schemas (in the worker config below):
#   the record shape hermet's relay writes, so both put the same bytes per change on Kafka.
# JSON string literal of $1 (backslash, quote and control characters escaped).
json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

cmd_connector_config() {
    parse_url
    local include="" t k v kv
    local -a tabs extra
    IFS=, read -ra tabs <<<"$TABLES"
    for t in "${tabs[@]}"; do include+="${include:+,}public.$t"; done
    # key, value pairs in order; DBZ_EXTRA_CONFIG may add keys or override them.
    local -a pairs=(
        connector.class io.debezium.connector.postgresql.PostgresConnector
        tasks.max 1
        database.hostname "$DB_HOST"
        database.port "$DB_PORT"
        database.user "$DB_USER"
        database.password "$DB_PASSWORD"
        database.dbname "$DB_NAME"
        table.include.list "$include"
        topic.prefix "$PREFIX"
        plugin.name pgoutput
        slot.name "$SLOT"
        publication.name "$PUBLICATION"
        publication.autocreate.mode filtered
        transforms route
        transforms.route.type org.apache.kafka.connect.transforms.RegexRouter
        transforms.route.regex "$PREFIX\\.public\\.(.*)"
        transforms.route.replacement "$PREFIX.\$1.changed"
    )
    IFS=, read -ra extra <<<"${DBZ_EXTRA_CONFIG:-}"
    for kv in "${extra[@]}"; do
        [[ -n $kv ]] || continue
        [[ $kv == *=* ]] || die "DBZ_EXTRA_CONFIG: '$kv' is not key=value"
        k=${kv%%=*}
        v=${kv#*=}
        local i found=0
        for ((i = 0; i < ${#pairs[@]}; i += 2)); do
            if [[ ${pairs[i]} == "$k" ]]; then pairs[i + 1]=$v; found=1; fi
        done
        ((found)) || pairs+=("$k" "$v")
    done
    printf '{\n  "name": %s,\n  "config": {\n' "$(json_str "$NAME")"
    local n=${#pairs[@]}
    for ((i = 0; i < n; i += 2)); do
        printf '    %s: %s%s\n' "$(json_str "${pairs[i]}")" "$(json_str "${pairs[i + 1]}")" \
            "$( ((i + 2 < n)) && echo ,)"
    done
    printf '  }\n}\n'
}

write_configs() {
    mkdir -p "$RUN_DIR"
    [[ ${DBZ_FRESH:-0} == 1 ]] && rm -f "$RUN_DIR/offsets.dat"
    cmd_connector_config >"$RUN_DIR/connector.json"
    # Worker: as Kafka's config/connect-standalone.properties, plus a REST port of our own (the
    # default 8083 may be taken) and the plugin folder.
    cat >"$RUN_DIR/worker.properties" <<EOF
# Written by bench/peers/debezium/debezium.sh on every run.
bootstrap.servers=$BROKERS
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter.schemas.enable=false
offset.storage.file.filename=$RUN_DIR/offsets.dat
offset.flush.interval.ms=$OFFSET_FLUSH_MS
plugin.path=$PLUGINS
listeners=http://127.0.0.1:$REST_PORT
EOF
    cat >"$RUN_DIR/log4j2.properties" <<EOF
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.reflections.name = org.reflections
logger.reflections.level = error
EOF
}

cmd_run() {
    [[ -f $LIBS/.complete && -f $PLUGIN/.complete ]] || cmd_fetch
    command -v java >/dev/null || die "no java (Java 17+ is needed)"
    write_configs
    cd "$RUN_DIR"
    # JVM options of Kafka's bin/connect-standalone.sh and kafka-run-class.sh.
    # shellcheck disable=SC2086  # word splitting of the JVM options is intended
    exec java ${DBZ_HEAP_OPTS:--Xms256M -Xmx2G} \
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$RUN_DIR/log4j2.properties" \
        -cp "$LIBS/*" org.apache.kafka.connect.cli.ConnectStandalone \
        "$RUN_DIR/worker.properties" "$RUN_DIR/connector.json"
}

case ${1:-} in
fetch) cmd_fetch ;;
connector-config) cmd_connector_config ;;
run) cmd_run ;;
classpath) echo "$LIBS/*" ;;
clean) rm -rf "$RUN_DIR" ;;
*)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
