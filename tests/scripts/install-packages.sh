#!/usr/bin/env bash
# Installs the system packages the tests use that no build script brings:
# shellcheck, which lints the must-gather script. As root, with apt-get;
# without root the tests that need them are reported skipped.
set -euo pipefail

SCRIPT=install-packages
# shellcheck source=tests/scripts/lib.sh
source "$(dirname "$0")/lib.sh"

install_packages "the shellcheck lint of the must-gather script" shellcheck:shellcheck
