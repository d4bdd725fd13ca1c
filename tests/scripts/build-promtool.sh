#!/usr/bin/env bash
# Builds Prometheus's promtool from the Go module proxy at a pinned version
# and caches it outside the checkout, like the control plane. The tests use it
# to check live /metrics scrapes (`promtool check metrics`) and the alerting
# rules (`promtool check rules`, `promtool test rules`). Prints the directory
# holding promtool as its last line.
set -euo pipefail

# Module v0.316.0 is Prometheus 3.16.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
CACHE_ROOT="${KATA_PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kata-operator/promtool}"
OUT="$CACHE_ROOT/prometheus-$PROMETHEUS_VERSION"

SCRIPT=build-promtool
# shellcheck source=tests/scripts/lib.sh
source "$(dirname "$0")/lib.sh"

if [[ -x "$OUT/promtool" ]]; then
  echo "$OUT"
  exit 0
fi

start_build promtool

echo "build-promtool: building promtool from github.com/prometheus/prometheus@$PROMETHEUS_VERSION (first run only)" >&2
module_copy "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" "$work/prometheus"
(
  cd "$work/prometheus"
  # The repository has a go.work for its own development; build the module alone.
  GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -o "$work/promtool.bin" ./cmd/promtool >&2
)
mv "$work/promtool.bin" "$OUT/promtool"
echo "$OUT"
