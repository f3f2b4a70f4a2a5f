#!/usr/bin/env bash
# `make run`: install what is missing, start the private services, build hermet and run it in
# the foreground (Ctrl-C stops it; the services keep running: `make services-down`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh
scripts/services.sh up
# `env --run`: hermet's own database `hermet` (the admin URL points at `postgres`), unless a config
# file names one.
if [[ -z ${HERMET_CONFIG:-} ]]; then
    eval "$(scripts/services.sh env --run)"
else
    eval "$(scripts/services.sh env)"
fi

# The full pipeline by default: WAL → relay → Kafka → projectors (set HERMET_SYNC_MODE to
# dual_write or async to try the others).
export HERMET_SYNC_MODE=${HERMET_SYNC_MODE:-cdc}
# A development secret, made once and kept in the (git-ignored) state folder.
STATE_DIR=${HERMET_STATE_DIR:-$ROOT/.hermet}
if [[ -z ${HERMET_JWT_SECRET:-} ]]; then
    mkdir -p "$STATE_DIR"
    [[ -s $STATE_DIR/jwt_secret ]] || head -c 48 /dev/urandom | base64 -w0 > "$STATE_DIR/jwt_secret"
    HERMET_JWT_SECRET=$(cat "$STATE_DIR/jwt_secret")
    export HERMET_JWT_SECRET
fi

# Anyone may sign up with `POST /v1/users` here; a real deployment imports its users through
# the server routes instead (`auth.open_signup` is off by default).
export HERMET_AUTH__OPEN_SIGNUP=${HERMET_AUTH__OPEN_SIGNUP:-true}
# Rate limits: the production defaults (the `[rate_limits]` section's) would throttle a test
# client hammering this server from localhost, so a development run allows thousands a second
# (a config file, or these variables set beforehand, win).
if [[ -z ${HERMET_CONFIG:-} ]]; then
    for limit in SEND:5000:10000 WRITE:10000:20000 SIGNUP:5000:10000 AUTH_FAILURE:1000:2000; do
        IFS=: read -r name rate burst <<<"$limit"
        rate_var=HERMET_RATE_LIMITS__${name}__PER_SECOND burst_var=HERMET_RATE_LIMITS__${name}__BURST
        export "$rate_var=${!rate_var:-$rate}" "$burst_var=${!burst_var:-$burst}"
    done
fi

cargo build --release -p hermet
exec target/release/hermet serve
