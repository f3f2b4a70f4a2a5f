# The two commands of the README, and a few conveniences. Everything installs what is missing
# and starts its own private PostgreSQL, Kafka and Redis (scripts/services.sh).

.PHONY: run test services-up services-down services-status lint bench-send bench-list

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

bench-send:
	scripts/with-services.sh cargo run --release -p hermet -- bench send

bench-list:
	scripts/with-services.sh cargo run --release -p hermet -- bench list

.PHONY: bench-peers
## hermet's relay side by side with Debezium (BENCHMARKS.md, "CDC relay vs Debezium").
bench-peers:
	scripts/with-services.sh cargo run --release -p hermet -- bench peers
