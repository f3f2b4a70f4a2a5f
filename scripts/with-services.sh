#!/usr/bin/env bash
# Run a command with hermet's local services up and HERMET_* set:
#   scripts/with-services.sh cargo test --workspace
# Starts (or reuses) the services, exports the env that points at them (or at
# external ones, see services.sh), then becomes the command, so its exit code
# is the command's. The services keep running afterwards.
set -euo pipefail

(($# > 0)) || { echo "usage: $0 COMMAND [ARGS]..." >&2; exit 2; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Progress to stderr: keep the command's stdout clean.
"$SCRIPT_DIR/services.sh" up >&2
eval "$("$SCRIPT_DIR/services.sh" env)"
exec "$@"
