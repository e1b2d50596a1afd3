#!/usr/bin/env bash
# Build the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, helm) and the real node's binaries (kubelet, kube-proxy, CoreDNS and
# the sandbox's pause program) from the Go module proxy into a cache outside the repo.
#
#   e2e/cluster/build.sh              build what is missing, print the bin directory
#   e2e/cluster/build.sh --print-dir  only print the bin directory
#
# Idempotent: every binary has a <name>.version stamp beside it; a binary whose stamp
# matches the pinned version is not rebuilt, so a second run does no work.
# No Docker needed, only Go (>= the go line of the modules, 1.26 for kwok/helm).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${KUBERL_CACHE:-$HOME/.cache/kuberl}"
bin="$cache/bin-$KUBERNETES_VERSION"
src="$cache/src"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$bin"
  exit 0
fi

go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "$go" ]] || { echo "build.sh: no Go toolchain (set GO=/path/to/go)" >&2; exit 1; }

# Static binaries: no libc coupling between the build and the test machine.
export CGO_ENABLED=0
# The machines we build on are small (2 cores) and shared; never take them all.
export GOFLAGS="${GOFLAGS:-} -p=${KUBERL_BUILD_JOBS:-2} -trimpath -buildvcs=false"
# A pinned toolchain must not silently download another one.
export GOTOOLCHAIN=local
nice_cmd=(nice -n 10)

mkdir -p "$bin" "$src"

# The Go build and module caches (~7 GB for this set) live under the cache root for the
# build only and are removed once every binary is in place: the binaries are the cache.
gowork="$cache/go-build-tmp"
export GOCACHE="$gowork/cache" GOMODCACHE="$gowork/mod" GOPATH="$gowork/path"
drop_go_caches() {
  [[ -d "$gowork" ]] || return 0
  chmod -R u+w "$gowork" 2>/dev/null || true  # the module cache is read-only by design
  rm -rf "$gowork" "$src"
}

# One build at a time per cache (CI step and a test fixture may both call us): the
# second caller waits, then finds everything up to date.
exec 9>"$cache/.build.lock"
if command -v flock >/dev/null; then flock 9; fi

log() { echo "build.sh: $*" >&2; }

# up_to_date NAME VERSION: the binary exists and was built from VERSION.
up_to_date() {
  [[ -x "$bin/$1" && -f "$bin/$1.version" && "$(cat "$bin/$1.version")" == "$2" ]]
}

# install_built TMPDIR VERSION NAME...: move freshly built binaries into place, stamp last
# so an interrupted build is never mistaken for a finished one.
install_built() {
  local tmp="$1" version="$2"; shift 2
  local name
  for name in "$@"; do
    mv -f "$tmp/$name" "$bin/$name"
    echo "$version" > "$bin/$name.version"
  done
}

build_kubernetes() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
  local n missing=0
  for n in "${names[@]}"; do up_to_date "$n" "$KUBERNETES_VERSION" || missing=1; done
  (( missing )) || return 0

  log "building Kubernetes $KUBERNETES_VERSION (${names[*]})"
  local minor="${KUBERNETES_VERSION#v1.}"        # 34.4
  local staging_version="v0.$minor"              # v0.34.4
  local gomod
  gomod="$("$go" mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
            | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || { log "cannot find go.mod of k8s.io/kubernetes@$KUBERNETES_VERSION"; exit 1; }

  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
  # ./staging/… paths, which only work inside its own repo. Our wrapper replaces each of
  # them with the published module of the same release; the list comes from that
  # release's go.mod so it never drifts.
  local work="$src/kubernetes-$KUBERNETES_VERSION"
  rm -rf "$work" && mkdir -p "$work"
  {
    echo "module kuberl.local/build/kubernetes"
    echo
    echo "go $(sed -n 's/^go \(.*\)$/\1/p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*$#\1#p' "$gomod" \
      | while read -r mod; do echo "	$mod => $mod $staging_version"; done
    echo ")"
  } > "$work/go.mod"

  local pkgs=()
  for n in "${names[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$n"); done
  (
    cd "$work"
    # Resolve the dependency graph of exactly these packages and record go.sum.
    "${nice_cmd[@]}" "$go" get "${pkgs[@]/%/@$KUBERNETES_VERSION}"
    # gitVersion is what `kube-apiserver --version` and discovery report; without it the
    # binaries claim v0.0.0 and version-gated clients misbehave.
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
    ld+=" -X k8s.io/component-base/version.gitMajor=1"
    ld+=" -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
    ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
    mkdir -p out
    "${nice_cmd[@]}" "$go" build -ldflags "$ld" -o out/ "${pkgs[@]}"
  )
  install_built "$work/out" "$KUBERNETES_VERSION" "${names[@]}"
}

build_etcd() {
  up_to_date etcd "$ETCD_VERSION" && return 0
  log "building etcd $ETCD_VERSION"
  # go.etcd.io/etcd/server/v3 is itself the etcd main package, but its go.mod carries
  # replace directives, which `go install pkg@version` refuses; a wrapper module builds it.
  local work="$src/etcd-$ETCD_VERSION"
  rm -rf "$work" && mkdir -p "$work"
  printf 'module kuberl.local/build/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" > "$work/go.mod"
  (
    cd "$work"
    "${nice_cmd[@]}" "$go" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    mkdir -p out
    "${nice_cmd[@]}" "$go" build -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3
  )
  install_built "$work/out" "$ETCD_VERSION" etcd
}

# go_install NAME PACKAGE VERSION [LDFLAGS]: for modules without replace directives.
go_install() {
  local name="$1" pkg="$2" version="$3" extra="${4:-}"
  up_to_date "$name" "$version" && return 0
  log "building $name $version"
  local tmp="$src/gobin-$name"
  rm -rf "$tmp" && mkdir -p "$tmp"
  GOBIN="$tmp" "${nice_cmd[@]}" "$go" install -ldflags "-s -w $extra" "$pkg@$version"
  install_built "$tmp" "$version" "$name"
}

# CoreDNS with only the plugins the node's cluster DNS uses: its own main package links
# every plugin (cloud SDKs included), which doubles the build for nothing.
build_coredns() {
  up_to_date coredns "$COREDNS_VERSION" && return 0
  log "building CoreDNS $COREDNS_VERSION"
  local work="$src/coredns-$COREDNS_VERSION"
  rm -rf "$work" && mkdir -p "$work"
  printf 'module kuberl.local/build/coredns\n\ngo 1.26\n\nrequire github.com/coredns/coredns %s\n' \
    "$COREDNS_VERSION" > "$work/go.mod"
  cp "$here/coredns/main.go" "$work/main.go"
  (
    cd "$work"
    "${nice_cmd[@]}" "$go" mod tidy
    mkdir -p out
    "${nice_cmd[@]}" "$go" build -ldflags "-s -w" -o out/coredns .
  )
  install_built "$work/out" "$COREDNS_VERSION" coredns
}

# The sandbox ("pause") container's program, from this repository; no registry serves
# registry.k8s.io/pause here. Stamped with its source's hash so an edit rebuilds it.
build_pause() {
  local version
  version="$(sha256sum "$here/pause/main.go" | cut -c1-16)"
  up_to_date kuberl-pause "$version" && return 0
  log "building kuberl-pause"
  local work="$src/pause"
  rm -rf "$work" && mkdir -p "$work/out"
  printf 'module kuberl.local/build/pause\n\ngo 1.26\n' > "$work/go.mod"
  cp "$here/pause/main.go" "$work/main.go"
  (cd "$work" && "$go" build -ldflags "-s -w" -o out/kuberl-pause .)
  install_built "$work/out" "$version" kuberl-pause
}

start=$SECONDS
build_kubernetes
build_etcd
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
# Without this, helm version and .Capabilities.HelmVersion say "v3.22", not the release.
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_coredns
build_pause
drop_go_caches
# A version bump builds into a new bin-<version>: the old one is superseded.
for old in "$cache"/bin-*; do
  [[ "$old" == "$bin" || ! -d "$old" ]] || { log "removing superseded $old"; rm -rf "$old"; }
done
log "done in $((SECONDS - start))s; $(du -sh "$bin" | cut -f1) in $bin"
echo "$bin"
