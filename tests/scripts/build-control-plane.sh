#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kubectl from the Go module proxy at pinned versions and
# caches them outside the checkout, so a clean clone (and CI on the same
# machine) reuses them. Prints the directory holding both binaries as its last
# line. A changed pin builds into a new directory; a missing binary is built
# on its own.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE_ROOT="${KATA_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kata-operator/control-plane}"
OUT="$CACHE_ROOT/kube-$KUBE_VERSION-etcd-$ETCD_VERSION"

SCRIPT=build-control-plane
# shellcheck source=tests/scripts/lib.sh
source "$(dirname "$0")/lib.sh"

if [[ -x "$OUT/kube-apiserver" && -x "$OUT/etcd" && -x "$OUT/kubectl" ]]; then
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null 2>&1 || fail "Go is not installed (needed once to build etcd and kube-apiserver; install Go 1.24 or newer)"

# Fail at once, naming the proxy, when modules cannot be fetched.
mkdir -p "$CACHE_ROOT"
if ! probe_err=$(timeout 60 go list -m "k8s.io/kubernetes@$KUBE_VERSION" 2>&1); then
  fail "cannot reach the Go module proxy ($(go env GOPROXY)) to fetch k8s.io/kubernetes@$KUBE_VERSION: $probe_err"
fi

work="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

mkdir -p "$OUT"

build_etcd() {
echo "build-control-plane: building etcd $ETCD_VERSION (first run only)" >&2
mkdir -p "$work/etcd"
cd "$work/etcd"
cat >go.mod <<GOMOD
module kataoperator.local/etcd

go 1.24
GOMOD
cat >main.go <<'GO'
// etcd's own entry point, built from its published server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
go mod tidy >&2
go build -trimpath -o "$work/etcd.bin" . >&2
mv "$work/etcd.bin" "$OUT/etcd"
}

build_kubernetes() {
echo "build-control-plane: building kube-apiserver and kubectl $KUBE_VERSION (first run only, several minutes)" >&2
mkdir -p "$work/apiserver"
cd "$work/apiserver"
kube_scratch_module kube-apiserver
go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" >&2
go get "k8s.io/kubernetes/cmd/kubectl@$KUBE_VERSION" >&2
for cmd in kube-apiserver kubectl; do
  go build -trimpath -ldflags "$(kube_ldflags)" -o "$work/$cmd.bin" "k8s.io/kubernetes/cmd/$cmd" >&2
done
mv "$work/kube-apiserver.bin" "$OUT/kube-apiserver"
mv "$work/kubectl.bin" "$OUT/kubectl"
}

[[ -x "$OUT/etcd" ]] || build_etcd
[[ -x "$OUT/kube-apiserver" && -x "$OUT/kubectl" ]] || build_kubernetes
echo "$OUT"
