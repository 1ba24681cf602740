# Distributed counter. `make up` runs it on docker compose, `make run` as local processes,
# `make test` runs every test that needs no docker.

COUNTER_SCALE ?= 3
PORT ?= 8080
# Test builds compile in the crash points that tests use to kill a process at a named step.
TEST_FEATURES = --features coordinator/crash-points,counter/crash-points

.PHONY: test run build up down logs chaos bench fmt lint

test:
	cargo build --workspace --bins $(TEST_FEATURES)
	cargo nextest run --workspace $(TEST_FEATURES) --no-fail-fast

# Coordinator on 127.0.0.1:$(PORT) and 3 counters as local processes; data under ./data. Ctrl-C stops all.
run:
	cargo build --bins
	PORT=$(PORT) ./scripts/run-local.sh

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets $(TEST_FEATURES) -- -D warnings
