# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

CONTROL_PLANE_BUILD := tests/scripts/build-control-plane.sh
CRIO_BUILD := tests/scripts/build-crio.sh
PROMTOOL_BUILD := tests/scripts/build-promtool.sh
IGNITION_BUILD := tests/scripts/build-ignition.sh
NODE_BUILD := tests/scripts/build-node.sh

.PHONY: release-fixture demo test lint build-tests tools unit-and-integration run-tests cluster-up cluster-down control-plane crio promtool ignition packages node bench-health bench-attack bench-rollout generate

## The whole system on this machine (see README): a local control plane in
## .cluster/, the MCO simulator, the coordinator and three node-agents; a
## KataConfig rolled out as you watch. In a terminal it runs until Ctrl-C
## (which stops every process and keeps .cluster/; `make cluster-down` removes
## it); otherwise, or with DEMO_FLAGS=--ci, it exits once the system converged.
##
## `make demo REAL_NODE=1` (root and /dev/kvm): a real kubelet and CRI-O are
## the node instead, with a `kata` pod shown Pending. It changes this machine
## while it runs (cgroups, a bridge, CRI-O's stand-in shim), so it is never
## the default; everything is removed when it ends. Only then are the node's
## binaries built (tests/scripts/build-node.sh, build-crio.sh).
demo: control-plane
ifeq ($(REAL_NODE),1)
	@if [[ "$$(id -u)" != 0 ]]; then \
		echo "make demo REAL_NODE=1: the real node needs root (it runs a kubelet and CRI-O and changes cgroups, mounts and links)" >&2; exit 2; fi
	@if [[ ! -e /dev/kvm ]]; then \
		echo "make demo REAL_NODE=1: this machine has no /dev/kvm" >&2; exit 2; fi
	@bash $(CRIO_BUILD) >/dev/null
	@bash tests/scripts/install-packages.sh
	@bash $(NODE_BUILD) >/dev/null
	@KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" \
		KATA_CRIO_BIN_DIR="$$(bash $(CRIO_BUILD) | tail -n 1)" \
		KATA_NODE_BIN_DIR="$$(bash $(NODE_BUILD) | tail -n 1)" \
		cargo run --quiet -p kata-tests --bin demo -- --real-node $(DEMO_FLAGS)
else
	@cargo build --quiet -p kata-node-agent --bin node-agent
	@KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" \
		cargo run --quiet -p kata-tests --bin demo -- --state-dir .cluster $(DEMO_FLAGS)
endif

## Every check CI runs: formatting, lints, and all tests against a real control plane.
## The tools the tests run (Go builds, cached after the first time) build
## beside the Rust compile, two jobs at a time: on a fresh machine each alone
## leaves a core idle much of the time.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target build-tests tools
	@$(MAKE) --no-print-directory run-tests

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

control-plane:
	@bash $(CONTROL_PLANE_BUILD) >/dev/null

## CRI-O (and crictl) from the Go module proxy, conmon and crun from the
## system's packages: the real runtime the node-agent's verdicts are tested
## against.
crio:
	@bash $(CRIO_BUILD) >/dev/null

## Prometheus's promtool, which checks our metrics and alerting rules.
promtool:
	@bash $(PROMTOOL_BUILD) >/dev/null

## The Ignition validator (ignition-validate), which checks every
## MachineConfig the coordinator renders.
ignition:
	@bash $(IGNITION_BUILD) >/dev/null

## System packages the tests use that no build script brings (shellcheck;
## buildah, jq and the CNI plugins for the real node).
## After crio, which installs conmon and crun: one apt-get at a time.
packages: crio
	@bash tests/scripts/install-packages.sh

## A real node's binaries: the kubelet, kube-scheduler and
## kube-controller-manager at the control plane's version (Go module proxy),
## a static pause (the system packages a node needs come with packages).
node:
	@bash $(NODE_BUILD) >/dev/null

## Everything the tests run besides our own code.
tools: control-plane crio promtool ignition packages node

## The test binaries, compiled without running them (after the lints, which
## hold cargo's lock meanwhile), and the release node-agent the real node's
## test builds its image from.
build-tests: lint
	cargo test --workspace --no-run
	cargo build --release -p kata-node-agent --bin node-agent

unit-and-integration: tools
	@$(MAKE) --no-print-directory run-tests

## Runs every test, the tools built (`make tools`).
run-tests:
	KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" \
		KATA_CRIO_BIN_DIR="$$(bash $(CRIO_BUILD) | tail -n 1)" \
		KATA_PROMTOOL_BIN_DIR="$$(bash $(PROMTOOL_BUILD) | tail -n 1)" \
		KATA_IGNITION_BIN_DIR="$$(bash $(IGNITION_BUILD) | tail -n 1)" \
		KATA_NODE_BIN_DIR="$$(bash $(NODE_BUILD) | tail -n 1)" \
		cargo test --workspace --no-fail-fast

## Regenerates every checked-in artifact made from the code: the CRD, the
## coordinator's RBAC, the API reference and the OLM bundle's copies: the CRD,
## and each document of the monitoring and network policy manifests OLM can
## install (one a file, without the namespace OLM assigns). The drift tests
## fail, naming this target, when one is stale.
generate:
	cargo run --quiet -p kata-coordinator --bin coordinator -- crd > deploy/base/kataconfig-crd.yaml
	cargo run --quiet -p kata-coordinator --bin coordinator -- profile-crd > deploy/base/kataruntimeprofile-crd.yaml
	cargo run --quiet -p kata-coordinator --bin coordinator -- rbac > deploy/base/rbac-coordinator.yaml
	cp deploy/base/kataconfig-crd.yaml bundle/manifests/kataconfiguration.openshift.io_kataconfigs.yaml
	cp deploy/base/kataruntimeprofile-crd.yaml bundle/manifests/kataconfiguration.openshift.io_kataruntimeprofiles.yaml
	awk -v n=0 '/^---$$/ { d++; next } d == n && $$0 != "  namespace: kata-operator"' deploy/monitoring/service-monitor.yaml > bundle/manifests/kata-coordinator_monitoring.coreos.com_v1_servicemonitor.yaml
	awk -v n=1 '/^---$$/ { d++; next } d == n && $$0 != "  namespace: kata-operator"' deploy/monitoring/service-monitor.yaml > bundle/manifests/kata-operator-prometheus_rbac.authorization.k8s.io_v1_role.yaml
	awk -v n=2 '/^---$$/ { d++; next } d == n && $$0 != "  namespace: kata-operator"' deploy/monitoring/service-monitor.yaml > bundle/manifests/kata-operator-prometheus_rbac.authorization.k8s.io_v1_rolebinding.yaml
	awk -v n=0 '/^---$$/ { d++; next } d == n && $$0 != "  namespace: kata-operator"' deploy/monitoring/prometheus-rule.yaml > bundle/manifests/kata-operator_monitoring.coreos.com_v1_prometheusrule.yaml
	awk -v n=0 '/^---$$/ { d++; next } d == n && $$0 != "  namespace: kata-operator"' deploy/base/network-policy.yaml > bundle/manifests/kata-coordinator_networking.k8s.io_v1_networkpolicy.yaml
	awk -v n=1 '/^---$$/ { d++; next } d == n && $$0 != "  namespace: kata-operator"' deploy/base/network-policy.yaml > bundle/manifests/kata-node-agent_networking.k8s.io_v1_networkpolicy.yaml
	UPDATE_DOCS=1 cargo test --quiet -p kata-coordinator --test generated api_reference

## What this build's coordinator leaves in a cluster, as the fixture later
## versions' upgrade tests load (run at a release's commit; RELEASE=vX.Y.Z).
release-fixture: control-plane
	@KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" \
		cargo run --quiet -p kata-tests --bin release-fixture -- $(RELEASE)
	@mkdir -p tests/fixtures/releases/$(RELEASE)/proto/kata/health/v1
	@git show $(RELEASE):proto/proto/kata/health/v1/health.proto \
		> tests/fixtures/releases/$(RELEASE)/proto/kata/health/v1/health.proto
	@mkdir -p tests/fixtures/releases/$(RELEASE)/deploy
	@for file in node-agent.yaml node-agent-pod-policy.yaml; do \
		git show $(RELEASE):deploy/base/$$file > tests/fixtures/releases/$(RELEASE)/deploy/$$file; done

## Benchmarks (print figures; not part of `make test`).
## NODE_SHAPE: openshift (the default: Nodes shaped like an OpenShift
## worker's, about 16 KiB, tests/fixtures/nodes) or bare (name and role only).
AGENTS ?= 1000
NODE_SHAPE ?= openshift
bench-health: control-plane
	cargo build --release -p kata-coordinator
	KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" AGENTS=$(AGENTS) NODE_SHAPE=$(NODE_SHAPE) cargo bench -p kata-tests --bench health_scale

## The health channel under attack, with 1,000 simulated agents checked in:
## junk bearers, handshakes never finished, idle sockets, 16 MiB messages;
## per attack the coordinator's peak RSS, its TokenReviews, a fresh agent's
## first check-in and the runtime labels (see docs/BENCHMARKS.md).
bench-attack: control-plane
	cargo build --release -p kata-coordinator
	KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" cargo bench -p kata-tests --bench attack

## Install and uninstall of NODES workers (1000 by default) through the MCO
## simulator: rollouts per node, API requests by verb, reconciles, RSS.
## STEADY_SECONDS, CHURN_SECONDS and UNRELATED_PODS tune the phases.
NODES ?= 1000
bench-rollout: control-plane
	cargo build --release -p kata-coordinator
	KATA_CONTROL_PLANE_BIN_DIR="$$(bash $(CONTROL_PLANE_BUILD) | tail -n 1)" NODES=$(NODES) NODE_SHAPE=$(NODE_SHAPE) cargo bench -p kata-tests --bench rollout

cluster-up:
	@bash tests/scripts/cluster.sh up

cluster-down:
	@bash tests/scripts/cluster.sh down
