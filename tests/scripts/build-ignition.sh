#!/usr/bin/env bash
# Builds ignition-validate (the `validate` command of
# github.com/coreos/ignition/v2, the library the Machine Config Operator
# validates every MachineConfig with) from the Go module proxy at a pinned
# version and caches it outside the checkout, like the control plane. The
# tests run it on every MachineConfig the coordinator renders. Prints the
# directory holding ignition-validate as its last line.
set -euo pipefail

IGNITION_VERSION="${IGNITION_VERSION:-v2.22.0}"
CACHE_ROOT="${KATA_IGNITION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kata-operator/ignition}"
OUT="$CACHE_ROOT/ignition-$IGNITION_VERSION"

SCRIPT=build-ignition
# shellcheck source=tests/scripts/lib.sh
source "$(dirname "$0")/lib.sh"

if [[ -x "$OUT/ignition-validate" ]]; then
  echo "$OUT"
  exit 0
fi

start_build ignition-validate

echo "build-ignition: building ignition-validate from github.com/coreos/ignition/v2@$IGNITION_VERSION (first run only)" >&2
module_copy "github.com/coreos/ignition/v2@$IGNITION_VERSION" "$work/ignition"
(
  cd "$work/ignition"
  # A module's zip has no vendor/: its dependencies come from the proxy too,
  # at the versions its go.sum pins.
  GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -o "$work/ignition-validate.bin" ./validate >&2
)
mv "$work/ignition-validate.bin" "$OUT/ignition-validate"
echo "$OUT"
