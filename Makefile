# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

CONTROL_PLANE_BUILD := tests/scripts/build-control-plane.sh

.PHONY: demo test lint unit-and-integration cluster-up cluster-down control-plane bench-health

## The whole system on this machine (see README).
demo: cluster-up
	@echo
	@echo "The local control plane is up. Reach it with:"
	@echo "  export KUBECONFIG=$$(cat .cluster/ready)"
	@echo "  kubectl get --raw /readyz   # or: cargo run -p kata-coordinator -- --help"
	@echo "Stop it with: make cluster-down"

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
