#!/usr/bin/env bash
# `make test`: install what is missing, start the private services, run every test of the
# workspace against them, then fuzz the HTTP API (scripts/fuzz-api.sh). Each integration test
# and the fuzzing make their own database (random name).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh
scripts/services.sh up
eval "$(scripts/services.sh env)"

# A few hundred random command sequences in the convergence property test.
export PROPTEST_CASES=${PROPTEST_CASES:-256}
cargo test --workspace --all-targets "$@"

# Property-based fuzzing of the whole HTTP API from its OpenAPI document (schemathesis against a
# `hermet serve` of its own; HERMET_FUZZ_SECONDS bounds it, 150 s by default).
scripts/fuzz-api.sh
