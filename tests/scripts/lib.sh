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

# kube_scratch_module NAME: writes, in the current directory, the go.mod of a
# scratch module requiring k8s.io/kubernetes $KUBE_VERSION, from which
# `go build k8s.io/kubernetes/cmd/<x>` builds that release's commands.
# k8s.io/kubernetes points its staging modules at ./staging; as a dependency
# each needs a replace to the published v0.x of the same release. The list
# comes from that release's own go.mod.
kube_scratch_module() {
  local kube_gomod staging_version
  kube_gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  [[ -f "$kube_gomod" ]] || fail "could not download go.mod of k8s.io/kubernetes@$KUBE_VERSION"
  staging_version="v0.${KUBE_VERSION#v1.}"
  {
    echo "module kataoperator.local/$1"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging/' "$kube_gomod" |
      awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } >go.mod
  grep -q '^replace k8s.io/api ' go.mod || fail "no staging replace lines found in $kube_gomod"
}

# kube_ldflags: the link flags that stamp $KUBE_VERSION into a Kubernetes
# command, as its own release build does (the kubelet reports it on its Node;
# the API server's version skew checks read it).
kube_ldflags() {
  local minor="${KUBE_VERSION#v1.}"
  minor="${minor%%.*}"
  echo "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
}
