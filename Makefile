# Distributed counter. `make up` runs it on docker compose, `make run` as local processes,
# `make test` runs every test that needs no docker.

COUNTER_SCALE ?= 3
PORT ?= 8080
# Test builds compile in the crash points that tests use to kill a process at a named step.
TEST_FEATURES = --features coordinator/crash-points,counter/crash-points

.PHONY: test api-fuzz openapi run status build up down logs chaos soak clean-data bench fmt lint token \
	stack-up stack-down stack-status stack-upgrade stack-rollback stack-chaos stack-upgrade-drill \
	stack-two-node

test:
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
	cargo build --workspace --bins $(TEST_FEATURES)
	cargo nextest run --workspace $(TEST_FEATURES) --no-fail-fast

# Schemathesis (installed into a virtualenv under target/) against the /openapi.json of a live local
# cluster: no 5xx, every answer as documented, and correct counts afterwards.
api-fuzz:
	cargo build --bins
	./scripts/api-fuzz.sh

# Rewrites docs/openapi.json from the code, after a deliberate change of the public API.
openapi:
	UPDATE_OPENAPI=1 cargo test -p coordinator --test openapi

# Coordinator on 127.0.0.1:$(PORT) (internal API on the next port) and 3 counters as local processes;
# data and the cluster token (created on first use) under ./data. Ctrl-C stops all. PROFILE=release
# runs optimized binaries (target/release), e.g. for an external load tool such as wrk.
PROFILE ?= debug
run:
	cargo build --bins --profile $(if $(filter debug,$(PROFILE)),dev,$(PROFILE))
	PORT=$(PORT) BIN=target/$(PROFILE) ./scripts/run-local.sh

# ---- docker compose: build, up, down, logs, chaos, clean-data ----
# The machine may have no image registry: images are FROM scratch, holding static binaries built here.
RELEASE_TARGET = x86_64-unknown-linux-gnu
RELEASE_DIR = target/$(RELEASE_TARGET)/release
# The docker build context: the two service binaries only, stripped when `strip` is there.
DOCKER_CONTEXT = target/docker-context
DC_TAG ?= latest
COMPOSE_PROJECT ?= dcounter
# Host address the coordinator's port is published on (PORT, above); 0.0.0.0 for every interface.
BIND ?= 127.0.0.1
# Where the services' data lives (bind mounts): coordinator/ and counters/slot-NN/.
VOLUMES = volumes
# The services run as the user running make, so that user owns (and can wipe) the data.
DC_USER ?= $(shell id -u):$(shell id -g)
COMPOSE = PORT=$(PORT) BIND=$(BIND) DC_TAG=$(DC_TAG) DC_USER=$(DC_USER) \
	COMPOSE_PROJECT_NAME=$(COMPOSE_PROJECT) docker-compose
# Length of the chaos drill's fault phase, in seconds (CHAOS_SEED=<n> replays a fault schedule).
CHAOS_SECS ?= 120
# The drill's fault families: kill (docker kill/start, crashes, stops), pause, disconnect (from the
# network), throttle (--cpus 0.05), diskfull (one counter's slot on a small tmpfs: needs root).
CHAOS_FAULTS ?= kill,pause,disconnect,throttle,diskfull
UP_TIMEOUT ?= 90
LOGS_FLAGS ?= -f --no-color

# Static release binaries (cargo rebuilds only what changed), then the images (docker's cache makes
# an unchanged binary a no-op). Also builds the chaos drill, a workspace binary.
build:
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target $(RELEASE_TARGET) --bins
	@mkdir -p $(DOCKER_CONTEXT)
	@for b in coordinator counter; do \
	  [ $(DOCKER_CONTEXT)/$$b -nt $(RELEASE_DIR)/$$b ] && continue; \
	  strip -o $(DOCKER_CONTEXT)/$$b $(RELEASE_DIR)/$$b 2>/dev/null || cp $(RELEASE_DIR)/$$b $(DOCKER_CONTEXT)/$$b; \
	done
	docker build -q -f docker/Dockerfile --target coordinator -t dc-coordinator:$(DC_TAG) $(DOCKER_CONTEXT)
	docker build -q -f docker/Dockerfile --target counter -t dc-counter:$(DC_TAG) $(DOCKER_CONTEXT)
	@docker image prune -f --filter label=dc.project=distributed-counter >/dev/null

# The cluster token of the compose cluster, a compose secret: created on first use, kept with the data.
TOKEN_FILE = $(VOLUMES)/cluster-token
token:
	@./scripts/cluster-token.sh $(TOKEN_FILE) >/dev/null

# Coordinator on $(BIND):$(PORT) and COUNTER_SCALE counters; on a running cluster, only what changed
# (a new image, a new scale) is recreated or added. Waits until every container is healthy.
up: build token
	@mkdir -p $(VOLUMES)/coordinator $(VOLUMES)/counters
	$(COMPOSE) up -d --no-build --remove-orphans --scale counter=$(COUNTER_SCALE)
	@echo "waiting for the containers to be healthy..."; \
	for i in $$(seq $(UP_TIMEOUT)); do \
	  ids=$$(docker ps -aq --filter label=com.docker.compose.project=$(COMPOSE_PROJECT)); \
	  bad=$$(docker inspect -f '{{.State.Health.Status}}' $$ids 2>/dev/null | grep -vcx healthy); \
	  [ -n "$$ids" ] && [ "$$bad" = 0 ] && { $(COMPOSE) ps; echo "API on http://$(BIND):$(PORT)"; exit 0; }; \
	  sleep 1; \
	done; \
	$(COMPOSE) ps; echo "containers not healthy after $(UP_TIMEOUT)s: see make logs" >&2; exit 1

# Stops and removes the containers and their network; the data stays in $(VOLUMES)/.
down:
	$(COMPOSE) down --remove-orphans

# Follows the services' logs (LOGS_FLAGS="--no-color --tail=100" prints the last lines and returns).
logs:
	$(COMPOSE) logs $(LOGS_FLAGS)

# One table: every counter's state, last applied seq, lag, failed health checks and items/s, asked
# from the coordinator's internal listener with the cluster token: inside the compose cluster's
# coordinator container when it runs, otherwise from the `make run` cluster (data/cluster-token),
# with the binary of the same PROFILE.
status:
	@if command -v docker-compose >/dev/null && [ -n "$$($(COMPOSE) ps -q coordinator 2>/dev/null)" ]; then 	  $(COMPOSE) exec -T coordinator /coordinator status; 	else 	  CLUSTER_TOKEN_FILE=data/cluster-token target/$(PROFILE)/coordinator status --url http://127.0.0.1:$$(( $(PORT) + 1 )); 	fi

# Deletes every service's data (stops the cluster first); the cluster token stays.
clean-data: down
	rm -rf $(VOLUMES)/coordinator $(VOLUMES)/counters

# Concurrent clients on the published port while containers are docker-killed and started again,
# paused, cut off the network, starved of CPU, or their disk filled (CHAOS_FAULTS), then convergence
# and history checks; one summary line, non-zero exit on any violation. Uses the cluster `make up`
# runs (and its data; the drill writes to tenants of its own).
chaos: up
	CHAOS_URL=http://127.0.0.1:$(PORT) CHAOS_PROJECT=$(COMPOSE_PROJECT) CHAOS_SECS=$(CHAOS_SECS) \
	  CHAOS_TOKEN_FILE=$(TOKEN_FILE) CHAOS_FAULTS=$(CHAOS_FAULTS) \
	  CHAOS_COUNTER_VOLUME=$(VOLUMES)/counters $(RELEASE_DIR)/chaos

# A long run (SOAK_MINUTES, 30) of writers and readers on the `make up` cluster (its counters'
# log retention lowered to SOAK_LOG_RETENTION) with a container
# killed every SOAK_FAULT_SECS (300): samples every service's RSS, open descriptors, bytes on disk and
# bounded trees every SOAK_SAMPLE_SECS (60) into target/soak/soak.csv, plots them (matplotlib, in a
# virtualenv under target/) into target/soak/soak.png, and fails if a series keeps growing. Not in CI.
SOAK_MINUTES ?= 30
# The counters' log retention for the soak's cluster: reached within minutes, so that the soak shows
# the logs bounded rather than still filling up to the default 100,000.
SOAK_LOG_RETENTION ?= 5000
SOAK_VENV = target/soak-venv
soak: export COUNTER_LOG_RETENTION = $(SOAK_LOG_RETENTION)
soak: up
	@test -x $(SOAK_VENV)/bin/python -a -f $(SOAK_VENV)/.matplotlib || { python3 -m venv $(SOAK_VENV) && \
	  $(SOAK_VENV)/bin/pip install --quiet --disable-pip-version-check "matplotlib>=3.8,<4" && \
	  touch $(SOAK_VENV)/.matplotlib; }
	SOAK_URL=http://127.0.0.1:$(PORT) SOAK_PROJECT=$(COMPOSE_PROJECT) SOAK_MINUTES=$(SOAK_MINUTES) \
	  SOAK_TOKEN_FILE=$(TOKEN_FILE) SOAK_OUT=target/soak $(RELEASE_DIR)/soak; status=$$?; \
	  $(SOAK_VENV)/bin/python scripts/soak-plot.py target/soak/soak.csv target/soak/soak.png && \
	  echo "plot: target/soak/soak.png"; exit $$status

# ---- Docker Swarm: the same images as a stack (docker-stack.yml), on one machine or several ----
# STACK names the stack (its services, volumes and secret); STACK_NETWORKING is dnsrr (task addresses,
# the public port published in host mode on the coordinator's node) or vip (virtual IPs and the
# routing mesh). The stack uses the cluster token of TOKEN_FILE as a Swarm secret.
STACK ?= dcounter
STACK_NETWORKING ?= dnsrr
# COUNTER_MAX_PER_NODE caps the counters one node runs (README, "Several machines").
COUNTER_MAX_PER_NODE ?= $(COUNTER_SCALE)
STACK_ENV = STACK=$(STACK) DC_TAG=$(DC_TAG) PORT=$(PORT) COUNTER_SCALE=$(COUNTER_SCALE) \
	COUNTER_MAX_PER_NODE=$(COUNTER_MAX_PER_NODE) \
	TOKEN_FILE=$(TOKEN_FILE) STACK_NETWORKING=$(STACK_NETWORKING) UP_TIMEOUT=$(STACK_TIMEOUT)
STACK_TIMEOUT ?= 180
# The tag `make stack-upgrade` moves the services to (the images of this checkout, tagged so).
UPGRADE_TAG ?= $(DC_TAG)-next
# Length of the Swarm chaos drill's fault phase, in seconds.
STACK_CHAOS_SECS ?= 60
# Engines of the swarm's nodes for the drills (docker -H hosts, the manager first); empty: this one.
STACK_DOCKER_HOSTS ?=

# Deploys (or updates) the stack; initializes a single-node swarm when the engine is in none, and
# says so. Waits until COUNTER_SCALE counters are in sync. Scale later with
# `docker service scale $(STACK)_counter=N`.
stack-up: build token
	$(STACK_ENV) ./scripts/stack.sh up

# Removes the stack; its volumes (the data), the secret's source file and the swarm stay.
stack-down:
	$(STACK_ENV) ./scripts/stack.sh down

# The stack's tasks, then the cluster's own view (the coordinator's status table).
stack-status:
	$(STACK_ENV) ./scripts/stack.sh status

# Rolling upgrade to this checkout's images, built under the tag UPGRADE_TAG (the running tag's images
# stay as they are): counters one task at a time, each after the previous one is back in sync, then
# the coordinator. With several nodes, every node needs the images first (a registry, or
# docker save | docker load).
stack-upgrade:
	$(MAKE) build DC_TAG=$(UPGRADE_TAG)
	$(STACK_ENV) ./scripts/stack.sh upgrade $(UPGRADE_TAG)

# Back to the images before the last upgrade, the same way (docker service rollback).
stack-rollback:
	$(STACK_ENV) ./scripts/stack.sh rollback

STACK_DRILL_ENV = CHAOS_URL=http://127.0.0.1:$(PORT) CHAOS_PLATFORM=swarm CHAOS_STACK=$(STACK) \
	CHAOS_TOKEN_FILE=$(TOKEN_FILE)
STACK_DRILL = $(STACK_DRILL_ENV) CHAOS_DOCKER_HOSTS=$(STACK_DOCKER_HOSTS) $(RELEASE_DIR)/chaos

# The chaos drill on the stack: task containers killed and stopped (Swarm restarts them), a worker
# node drained and reactivated when there is one; the same checks and summary line as make chaos.
stack-chaos: stack-up
	CHAOS_SECS=$(STACK_CHAOS_SECS) $(STACK_DRILL)

# The two-node drill (root, Linux, iproute2): a second Docker engine on this machine, in a network
# namespace of its own, joins the swarm as a worker; the counters must spread over both nodes, come
# back in sync when the worker is drained, and pass the Swarm chaos drill across both (STACK_CHAOS_SECS,
# worker drains included). The second engine is removed afterwards (scripts/second-node.sh down).
stack-two-node: stack-up
	CHAOS_SECS=$(STACK_CHAOS_SECS) $(STACK_ENV) ./scripts/two-node-drill.sh env $(STACK_DRILL_ENV) $(RELEASE_DIR)/chaos

# The rolling upgrade drill, twice under the drill's write load, each followed by the drill's checks
# (nothing lost, phantom or partial; replicas identical): the counters upgraded to UPGRADE_TAG and
# rolled back, while every write must be acknowledged; then the whole stack upgraded and rolled back
# (the coordinator's restarts refuse writes for a moment).
stack-upgrade-drill: stack-up
	docker tag dc-coordinator:$(DC_TAG) dc-coordinator:$(UPGRADE_TAG)
	docker tag dc-counter:$(DC_TAG) dc-counter:$(UPGRADE_TAG)
	CHAOS_ALL_ACKNOWLEDGED=true CHAOS_DURING="$(STACK_ENV) ./scripts/stack.sh upgrade $(UPGRADE_TAG) counters \
	  && $(STACK_ENV) ./scripts/stack.sh rollback counters" $(STACK_DRILL)
	CHAOS_DURING="$(STACK_ENV) ./scripts/stack.sh upgrade $(UPGRADE_TAG) \
	  && $(STACK_ENV) ./scripts/stack.sh rollback" $(STACK_DRILL)

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets $(TEST_FEATURES) -- -D warnings

# One table of throughput, latency and cost of fresh local release clusters of 3 and 5 counters, next
# to a durable Redis where redis-server is installed, then a counter kill under load (BENCHMARKS.md).
# BENCH_SECS (10) per run, BENCH_RUNS (3) runs per row (medians), BENCH_BIG_TENANT (1000000) items.
# Same build as `make run PROFILE=release`; the services' data goes to target/bench-tmp (a disk).
BENCH_TMP = $(CURDIR)/target/bench-tmp
bench:
	cargo build --release --bins
	@mkdir -p $(BENCH_TMP)
	TMPDIR=$(BENCH_TMP) ./target/release/bench
