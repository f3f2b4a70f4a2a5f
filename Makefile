# The two commands of the README, and a few conveniences. Everything installs what is missing
# and starts its own private PostgreSQL, Kafka and Redis (scripts/services.sh).

.PHONY: run test services-up services-down services-status lint bench-build \
	bench-send bench-list bench-cdc bench-modes bench-cache bench-rebuild bench-peers bench-fanout bench-auth \
	bench-send-http bench-web screenshots

## Runs hermet in the foreground on 127.0.0.1:8080 (set-up included).
run:
	scripts/run.sh

## Runs the whole test suite (set-up included).
test:
	scripts/test.sh

services-up:
	scripts/services.sh up

services-down:
	scripts/services.sh down

services-status:
	scripts/services.sh status

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## The benchmark binary and the `hermet` whose `serve` its scenarios start as child processes
## (hermet-bench runs the `hermet` of its own target directory).
bench-build:
	cargo build --release -p hermet -p hermet-bench

## One benchmark scenario (BENCHMARKS.md) with the local services, e.g.
## `make bench-send ARGS="--users 1000 --duration-secs 5"`. bench-peers: hermet's relay side by
## side with Debezium (BENCHMARKS.md, "CDC relay vs Debezium").
BENCH_SCENARIOS = send list cdc modes cache rebuild peers fanout auth send-http web
$(BENCH_SCENARIOS:%=bench-%): bench-build
	scripts/with-services.sh cargo run --release -p hermet-bench -- $(@:bench-%=%) $(ARGS)

## The README's screenshots (docs/images/*.png), taken by the web client's browser test in `cdc`
## (the same headless Chromium as the tests; `make test` itself writes nothing into the tree).
screenshots:
	scripts/install-deps.sh
	mkdir -p docs/images
	HERMET_SCREENSHOTS=$(CURDIR)/docs/images scripts/with-services.sh \
		cargo test -p hermet --test web -- --exact web_client_cdc
