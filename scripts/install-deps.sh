#!/usr/bin/env bash
# Install what hermet's local services and its Rust build need on Debian 12.
#
# Installs only what is missing, and only runs `apt-get update` when at least
# one package has to be installed, so calling it on every `services.sh up` is
# cheap. Starts no service (services.sh does that, on its own ports).
#
# It also makes the Python venv of the API fuzzer (scripts/fuzz-api.sh):
# schemathesis and its dependencies, pinned in scripts/fuzz-api-requirements.txt,
# in <state folder>/venv with Debian's python3, so the system Python stays
# untouched. The venv is (re)made only when that file changed.
#
# Env:
#   HERMET_SKIP_RUST_CHECK=1  don't fail when no cargo is found (services.sh
#                             sets it: the databases don't need Rust).
#   HERMET_STATE_DIR          state folder (default: <project root>/.hermet)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

export DEBIAN_FRONTEND=noninteractive

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Root installs directly; anyone else goes through sudo (if it exists).
SUDO=()
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "not root and no sudo: run as root"
    SUDO=(sudo --preserve-env=DEBIAN_FRONTEND)
fi

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Newest /usr/lib/postgresql/<major>/bin with a server in it; services.sh
# uses the same rule. We need >= 15 (what Debian 12 ships).
newest_pg_major() {
    local d major best=0
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/initdb && -x $d/postgres && -x $d/pg_ctl ]] || continue
        major=${d#/usr/lib/postgresql/}; major=${major%%/*}
        [[ $major =~ ^[0-9]+$ ]] && (( major > best )) && best=$major
    done
    echo "$best"
}

missing=()

# PostgreSQL server binaries (+ psql / pg_isready from the client packages).
if (( $(newest_pg_major) < 15 )) || ! command -v psql >/dev/null || ! command -v pg_isready >/dev/null; then
    missing+=(postgresql postgresql-client)
fi

# Redis server and redis-cli.
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)

# promtool checks the alert rules and the /metrics output in the tests (the
# package's Prometheus server is never started: see policy-rc.d below).
command -v promtool >/dev/null || missing+=(prometheus)

# Kafka runs on the machine's Java (broker needs 17+; Debian 12's default is 17)
# and its jars come from Maven Central through mvn.
command -v java >/dev/null || missing+=(default-jre-headless)
command -v mvn >/dev/null || missing+=(maven)

# Native build deps of the Rust crates: rdkafka builds librdkafka from its
# bundled source (cmake), with TLS/SASL/zlib/curl; openssl-sys needs pkg-config.
for p in build-essential cmake pkg-config libssl-dev libsasl2-dev zlib1g-dev libcurl4-openssl-dev; do
    pkg_installed "$p" || missing+=("$p")
done

# openssl: the JWKS tests and `hermet-bench auth` make their RSA key pairs with it.
command -v openssl >/dev/null || missing+=(openssl)

# curl and jq: the README's API walk-through uses them.
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)

# The web client's browser tests and screenshots: Debian's Chromium, headless, driven through
# its ChromeDriver (nothing is downloaded at test time).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)

# Debian's Python with venv/ensurepip, for the fuzzer's venv (below).
for p in python3 python3-venv; do
    pkg_installed "$p" || missing+=("$p")
done

if (( ${#missing[@]} )); then
    log "installing: ${missing[*]}"

    # Debian's postinst scripts would start a *system* PostgreSQL (5432) and
    # Redis (6379) that we never use. A temporary policy-rc.d (the standard
    # Debian mechanism) keeps them stopped; an existing one is left alone.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from hermet scripts/install-deps.sh\nexit 101\n' \
            | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        trap '"${SUDO[@]}" rm -f "$policy"' EXIT
    fi

    # Wait for a concurrent apt/dpkg instead of failing on its lock.
    apt_opts=(-y -q -o DPkg::Lock::Timeout=300)
    "${SUDO[@]}" apt-get "${apt_opts[@]}" update
    "${SUDO[@]}" apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}" </dev/null
else
    log "all system packages present"
fi

# Final checks, so a broken install is reported here and not later.
(( $(newest_pg_major) >= 15 )) || die "no PostgreSQL >= 15 under /usr/lib/postgresql/*/bin after install"
for c in psql pg_isready redis-server redis-cli promtool java mvn cmake pkg-config curl jq chromium chromedriver; do
    command -v "$c" >/dev/null || die "'$c' still missing after install"
done

# The fuzzer's venv. A stamp holding the requirements' checksum marks a complete install, so an
# interrupted one is made again from scratch and an unchanged one costs nothing.
STATE_DIR=${HERMET_STATE_DIR:-$ROOT/.hermet}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
VENV=${STATE_DIR%/}/venv
REQS=$ROOT/scripts/fuzz-api-requirements.txt
want=$(sha256sum "$REQS" | cut -d' ' -f1)
mkdir -p "$STATE_DIR"
exec 8>"$STATE_DIR/.venv.lock"   # one maker at a time (test.sh and services.sh both call us)
flock 8
if [[ $(cat "$VENV/.hermet-installed" 2>/dev/null) != "$want" || ! -x $VENV/bin/schemathesis ]]; then
    log "making the fuzzer's venv in $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$REQS" </dev/null \
        || die "pip install -r $REQS failed"
    "$VENV/bin/schemathesis" --version >/dev/null || die "schemathesis does not run from $VENV"
    echo "$want" > "$VENV/.hermet-installed"
else
    log "fuzzer venv up to date ($VENV)"
fi
exec 8>&-

# Rust: Debian's cargo is too old for this project, so we don't install it;
# rustup (https://rustup.rs) is the way. We only check.
if ! command -v cargo >/dev/null && [[ ! -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    msg="no Rust toolchain: 'cargo' is neither on PATH nor in ${CARGO_HOME:-$HOME/.cargo}/bin. hermet needs Rust $(sed -n 's/^rust-version = \"\(.*\)\"/\1/p' "$ROOT/Cargo.toml") or newer, and Debian's cargo package is older. Install it with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
then run this command again (the scripts find ~/.cargo/bin on their own)."
    if [[ ${HERMET_SKIP_RUST_CHECK:-0} == 1 ]]; then
        log "WARNING: $msg"
    else
        die "$msg"
    fi
fi
