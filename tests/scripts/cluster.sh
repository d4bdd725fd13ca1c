#!/usr/bin/env bash
# cluster.sh up|down: a local control plane in the background, for developing
# against with kubectl and `cargo run`. State lives in .cluster/ at the top of
# the checkout. `up` prints the kubeconfig path as its last line.
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
state="$top/.cluster"

case "${1:-}" in
up)
  if [[ -f "$state/pid" ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    cat "$state/ready"; echo
    exit 0
  fi
  bin_dir="$(bash "$top/tests/scripts/build-control-plane.sh" | tail -n 1)"
  (cd "$top" && cargo build --quiet -p kata-tests --bin local-cluster)
  rm -rf "$state"; mkdir -p "$state"
  KATA_CONTROL_PLANE_BIN_DIR="$bin_dir" nohup "$top/target/debug/local-cluster" "$state" \
    >"$state/local-cluster.log" 2>&1 </dev/null &
  echo $! >"$state/pid"
  for _ in $(seq 1 600); do
    [[ -f "$state/ready" ]] && break
    if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
      echo "cluster-up: the control plane failed to start:" >&2
      tail -n 40 "$state/local-cluster.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  [[ -f "$state/ready" ]] || { echo "cluster-up: not ready after 120s; see $state/local-cluster.log" >&2; exit 1; }
  cat "$state/ready"; echo
  ;;
down)
  if [[ -f "$state/pid" ]]; then
    pid="$(cat "$state/pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$state"
  echo "cluster-down: stopped and removed $state"
  ;;
*)
  echo "usage: cluster.sh up|down" >&2; exit 2 ;;
esac
