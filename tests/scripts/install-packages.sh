#!/usr/bin/env bash
# Installs the system packages the tests use that no build script brings:
# the linter shellcheck, which checks the must-gather script; for the real node's tests
# buildah (which builds the node's images straight into CRI-O's storage: no
# registry is reachable from the tests), jq (which mends the container specs
# Debian 12's crun refuses), the CNI plugins and busybox-static (the `chroot`
# in the node-agent's test image). As root, with apt-get;
# without root the tests that need them are reported skipped.
set -euo pipefail

SCRIPT=install-packages
# shellcheck source=tests/scripts/lib.sh
source "$(dirname "$0")/lib.sh"

install_packages "the shellcheck lint of the must-gather script" shellcheck:shellcheck
install_packages "the real-node tests" buildah:buildah jq:jq \
  /usr/lib/cni/bridge:containernetworking-plugins /bin/busybox:busybox-static
