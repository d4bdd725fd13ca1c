# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

CONTROL_PLANE_BUILD := tests/scripts/build-control-plane.sh

.PHONY: demo test lint unit-and-integration cluster-up cluster-down control-plane bench-health

## The whole system on this machine (see README): a local control plane in
## .cluster/, the MCO simulator, the coordinator and three node-agents; a
## KataConfig rolled out as you watch. In a terminal it runs until Ctrl-C
## (which stops every process and keeps .cluster/; `make cluster-down` removes
## it); otherwise, or with DEMO_FLAGS=--ci, it exits once the system converged.
demo: control-plane
	@cargo build --quiet -p kata-node-agent --bin node-agent
	@KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" \
		cargo run --quiet -p kata-tests --bin demo -- --state-dir .cluster $(DEMO_FLAGS)

## Every check CI runs: formatting, lints, and all tests against a real control plane.
test: lint unit-and-integration

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

control-plane:
	@bash $(CONTROL_PLANE_BUILD) >/dev/null

unit-and-integration: control-plane
	KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" cargo test --workspace --no-fail-fast

## Benchmarks (print figures; not part of `make test`).
AGENTS ?= 1000
bench-health: control-plane
	cargo build --release -p kata-coordinator
	KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" AGENTS=$(AGENTS) cargo bench -p kata-tests --bench health_scale

cluster-up:
	@bash tests/scripts/cluster.sh up

cluster-down:
	@bash tests/scripts/cluster.sh down
