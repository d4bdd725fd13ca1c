# Shared by the build scripts (sourced, not run). Each sets SCRIPT before
# sourcing, for its messages.

fail() { echo "$SCRIPT: $*" >&2; exit 1; }

# module_copy MODULE@VERSION DEST: the module's source from the Go module
# proxy, copied to DEST writable (the module cache is read-only).
module_copy() {
  local dir
  dir="$(go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')" || dir=""
  [[ -d "$dir" ]] || fail "cannot fetch $1 from the Go module proxy ($(go env GOPROXY))"
  cp -r "$dir" "$2"
  chmod -R u+w "$2"
}

# start_build WHAT: checks for Go and makes $work, a scratch directory under
# $CACHE_ROOT removed on exit; $OUT is created too.
start_build() {
  command -v go >/dev/null 2>&1 || fail "Go is not installed (needed once to build $1; install Go 1.24 or newer)"
  mkdir -p "$CACHE_ROOT" "$OUT"
  work="$(mktemp -d "$CACHE_ROOT/build.XXXXXX")"
  trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
}

# install_packages WHY COMMAND:PACKAGE...: installs from the system's
# packages (as root, with apt-get) each PACKAGE whose COMMAND is missing.
# Without root it says which tests will be reported skipped (WHY) instead.
install_packages() {
  local why="$1" missing=() pair
  shift
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ "$(id -u)" != 0 ]]; then
    echo "$SCRIPT: ${missing[*]} not installed and not root: $why will be skipped" >&2
    return 0
  fi
  echo "$SCRIPT: installing ${missing[*]} from the system's packages" >&2
  if ! apt-get install -y -qq "${missing[@]}" >&2; then
    apt-get update -qq >&2 || true
    apt-get install -y -qq "${missing[@]}" >&2 ||
      fail "could not install the package(s) ${missing[*]} (apt-get install ${missing[*]})"
  fi
}
