#!/usr/bin/env bash
# Builds what a real Kubernetes node needs beside the control plane: the
# kubelet, kube-scheduler and kube-controller-manager at the control plane's
# Kubernetes version (from the Go module proxy, as build-control-plane.sh
# builds kube-apiserver) and a static `pause` for the pods' infra image, and
# caches them outside the checkout. The system packages a node also needs
# come from install-packages.sh. Prints the directory holding the binaries as its last line. A changed pin
# builds into a new directory; a missing binary is built on its own.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
CACHE_ROOT="${KATA_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kata-operator/node}"
OUT="$CACHE_ROOT/kube-$KUBE_VERSION"
COMMANDS=(kubelet kube-scheduler kube-controller-manager)

SCRIPT=build-node
# shellcheck source=tests/scripts/lib.sh
source "$(dirname "$0")/lib.sh"

missing=()
for cmd in "${COMMANDS[@]}"; do
  [[ -x "$OUT/$cmd" ]] || missing+=("$cmd")
done
if [[ ${#missing[@]} -eq 0 && -x "$OUT/pause" ]]; then
  echo "$OUT"
  exit 0
fi

start_build "the kubelet, kube-scheduler and kube-controller-manager"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

if [[ ${#missing[@]} -gt 0 ]]; then
  mkdir -p "$work/node"
  cd "$work/node"
  kube_scratch_module kube-node
  for cmd in "${missing[@]}"; do
    echo "build-node: building $cmd $KUBE_VERSION (first run only, minutes)" >&2
    go get "k8s.io/kubernetes/cmd/$cmd@$KUBE_VERSION" >&2
    start=$SECONDS
    go build -trimpath -ldflags "$(kube_ldflags)" -o "$work/$cmd.bin" "k8s.io/kubernetes/cmd/$cmd" >&2
    echo "build-node: $cmd built in $((SECONDS - start)) s" >&2
    mv "$work/$cmd.bin" "$OUT/$cmd"
  done
fi

if [[ ! -x "$OUT/pause" ]]; then
  # The infra image's process: it only has to sleep until told to stop.
  # Built here rather than pulled (registry.k8s.io/pause) because the tests
  # reach no registry.
  mkdir -p "$work/pause"
  cd "$work/pause"
  printf 'module kataoperator.local/pause\n\ngo 1.24\n' >go.mod
  cat >main.go <<'GO'
// pause: the process of a pod's infra container; it waits for SIGTERM or
// SIGINT and exits 0.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
GO
  go build -trimpath -ldflags "-s -w" -o "$work/pause.bin" . >&2
  mv "$work/pause.bin" "$OUT/pause"
fi

echo "$OUT"
