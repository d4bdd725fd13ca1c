#!/usr/bin/env bash
# Builds CRI-O (crio and pinns) and crictl from the Go module proxy at pinned
# versions and caches them outside the checkout, like the control plane.
# Installs conmon and crun from the system's packages when they are missing
# (as root). Prints the directory holding crio, pinns and crictl as its last
# line. A changed pin builds into a new directory.
set -euo pipefail

CRIO_VERSION="${CRIO_VERSION:-v1.36.3}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.37.0}"
CACHE_ROOT="${KATA_CRIO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kata-operator/crio}"
OUT="$CACHE_ROOT/crio-$CRIO_VERSION-crictl-$CRICTL_VERSION"

SCRIPT=build-crio
# shellcheck source=tests/scripts/lib.sh
source "$(dirname "$0")/lib.sh"

install_packages "the CRI-O tests" conmon:conmon crun:crun

if [[ -x "$OUT/crio" && -x "$OUT/pinns" && -x "$OUT/crictl" ]]; then
  echo "$OUT"
  exit 0
fi

start_build CRI-O

if [[ ! -x "$OUT/crio" || ! -x "$OUT/pinns" ]]; then
  echo "build-crio: building CRI-O $CRIO_VERSION (first run only, about 5 minutes)" >&2
  module_copy "github.com/cri-o/cri-o@$CRIO_VERSION" "$work/cri-o"
  (
    cd "$work/cri-o"
    GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath \
      -tags "containers_image_openpgp containers_image_ostree_stub exclude_graphdriver_btrfs exclude_graphdriver_devicemapper" \
      -o "$work/crio.bin" ./cmd/crio >&2
    make -C pinns >&2
  )
  mv "$work/crio.bin" "$OUT/crio"
  cp "$work/cri-o/bin/pinns" "$OUT/pinns"
fi

if [[ ! -x "$OUT/crictl" ]]; then
  echo "build-crio: building crictl $CRICTL_VERSION (first run only)" >&2
  module_copy "sigs.k8s.io/cri-tools@$CRICTL_VERSION" "$work/cri-tools"
  (
    cd "$work/cri-tools"
    CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -o "$work/crictl.bin" ./cmd/crictl >&2
  )
  mv "$work/crictl.bin" "$OUT/crictl"
fi

echo "$OUT"
