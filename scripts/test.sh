#!/usr/bin/env bash
# `make test`: install what is missing, start the private services, run every test of the
# workspace against them. Each integration test makes its own database (random name).
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
