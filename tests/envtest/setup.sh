#!/usr/bin/env bash
# Prepares a KUBEBUILDER_ASSETS folder for the test kit's local control plane: etcd, kube-apiserver and
# kube-controller-manager side by side, the layout envtest tools expect.
#
#   tests/envtest/setup.sh [DIR]
#   export KUBEBUILDER_ASSETS="$(tests/envtest/setup.sh | tail -n1)"
#   export KUBEBUILDER_ASSETS="$(KUBE_VERSION=1.20 tests/envtest/setup.sh | tail -n1)"
#
# KUBE_VERSION picks the Kubernetes version (every version below is pinned, nothing floats):
#
#   1.34 (the default): kube-apiserver and kube-controller-manager v1.34.4, built from the Go module
#        k8s.io/kubernetes, and etcd v3.6.16, built from go.etcd.io/etcd/server/v3. Needs Go 1.26 or
#        newer on PATH and the Go module proxy, nothing else. The first build, downloads included,
#        took 533 s on 2 busy cores (the script says how long it took); its Go caches, kept in
#        ${MIXDOWN_GO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mixdown/go} for the next version bump, take
#        about 4 GB (modules 1 GB, build cache 3 GB); the three binaries 220 MB.
#   1.20: kube-apiserver and kube-controller-manager v1.20.2, and etcd 3.4 from Debian's etcd-server
#        package (/usr/bin/etcd, linked, not copied). No Go needed. The Kubernetes binaries come from,
#        first match wins: gzipped prebuilt binaries in $MIXDOWN_ENVTEST_BIN, or
#        <repo>/../shared/envtest/bin; else built from Debian's `kubernetes` source package (about 10
#        minutes on 2 cores; needs root for apt-get, a deb-src line, and about 4 GB for the Go cache).
#
# DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/mixdown/envtest/<version>, the cache: a second run
# finds the binaries there, checks them, and returns at once. The last line of stdout is the folder's
# path; everything else goes to stderr.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$script_dir/../.." && pwd)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/mixdown"

log() { echo "envtest setup: $*" >&2; }
die() {
    echo "envtest setup: error: $*" >&2
    exit 1
}

readonly KUBE_VERSION="${KUBE_VERSION:-1.34}"
case "$KUBE_VERSION" in
1.34 | v1.34.4)
    readonly VERSION=v1.34.4
    # The k8s.io/* modules that k8s.io/kubernetes replaces with its staging/ folders (a module
    # zip leaves out folders holding a go.mod of their own) are released as v0.<minor>.<patch>.
    readonly STAGING_VERSION=v0.34.4
    # Kubernetes 1.34 is released and tested with etcd 3.6.
    readonly ETCD_VERSION=v3.6.16
    ;;
1.20 | v1.20.2)
    readonly VERSION=v1.20.2
    ;;
*)
    die "KUBE_VERSION=$KUBE_VERSION is not one this script knows: use 1.34 (the default, built from Go
modules) or 1.20 (the oldest server Mixdown supports, from prebuilt binaries or Debian's source package)"
    ;;
esac
readonly BINARIES=(kube-apiserver kube-controller-manager)
cache_dir="$cache_root/envtest/$VERSION"
target="${1:-$cache_dir}"

# Complete means every binary is there and executable and, for the Go-built version, says it is the
# pinned version; files are only ever moved into place whole, so an interrupted run never leaves a
# folder that looks complete.
complete() {
    local dir="$1" bin
    for bin in etcd "${BINARIES[@]}"; do
        [[ -x "$dir/$bin" ]] || return 1
    done
    if [[ -n "${ETCD_VERSION:-}" ]]; then
        versions_match "$dir" 2>/dev/null || return 1
    fi
}

# `--version` of each binary names the pinned version.
versions_match() {
    local dir="$1" bin out
    for bin in "${BINARIES[@]}"; do
        out="$("$dir/$bin" --version 2>&1)" || return 1
        [[ "$out" == "Kubernetes $VERSION" ]] || {
            echo "$bin --version says '$out', not 'Kubernetes $VERSION'" >&2
            return 1
        }
    done
    out="$("$dir/etcd" --version 2>&1)" || return 1
    grep -qx "etcd Version: ${ETCD_VERSION#v}" <<<"$out" || {
        echo "etcd --version says '$(head -n1 <<<"$out")', not 'etcd Version: ${ETCD_VERSION#v}'" >&2
        return 1
    }
}

# Installs one binary atomically: the command's output goes beside it, then is renamed into place.
install_bin() {
    local name="$1"
    shift
    local part="$target/.$name.part"
    "$@" >"$part"
    chmod 0755 "$part"
    mv -f "$part" "$target/$name"
}

copy_from_cache() {
    local bin
    log "copying binaries from $cache_dir"
    for bin in "$@"; do
        install_bin "$bin" cat "$cache_dir/$bin"
    done
}

# ---- 1.34: built from the Go module proxy ---------------------------------------------------------

need_go() {
    command -v go >/dev/null 2>&1 || die "go is not installed (or not on PATH). KUBE_VERSION=$KUBE_VERSION builds
kube-apiserver and kube-controller-manager from k8s.io/kubernetes@$VERSION and etcd from
go.etcd.io/etcd/server/v3@$ETCD_VERSION, which needs Go 1.26 or newer (https://go.dev/dl/, or your
distribution's golang package) and the Go module proxy. Without Go, KUBE_VERSION=1.20 still works."
    local have
    have="$(go env GOVERSION)"
    have="${have#go}"
    # sort -V orders 1.9 before 1.26; the lowest of the two must be the one asked for.
    [[ "$(printf '%s\n' 1.26 "$have" | sort -V | head -n1)" == 1.26 ]] ||
        die "go is $have; building Kubernetes $VERSION and etcd $ETCD_VERSION needs Go 1.26 or newer"
}

# The environment of every go command: caches that outlive the build (the next version bump reuses
# most modules), this machine's toolchain only, no cgo (static binaries, as upstream releases them).
go_env() {
    local go_cache="${MIXDOWN_GO_CACHE:-$cache_root/go}"
    env GOMODCACHE="$go_cache/mod" GOCACHE="$go_cache/build" GOTOOLCHAIN=local CGO_ENABLED=0 \
        GOFLAGS="-modcacherw -buildvcs=false" GOWORK=off "$@"
}

# A scratch module that requires k8s.io/kubernetes and replaces each staging module with its release,
# the usual way to build Kubernetes outside its own repository. The replace list is read from the
# module's own go.mod, so it always matches the version.
kubernetes_module() {
    local dir="$1" gomod
    mkdir -p "$dir"
    gomod="$(cd "$dir" && go_env go mod download -json "k8s.io/kubernetes@$VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$VERSION from the Go module proxy"
    {
        echo "module mixdown.dev/envtest/kubernetes"
        echo
        echo "go $(sed -n 's/^go //p' "$gomod")"
        echo
        echo "require k8s.io/kubernetes $VERSION"
        echo
        echo "replace ("
        sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/k8s\.io/[a-z0-9-]*$#\t\1 => \1 '"$STAGING_VERSION"'#p' "$gomod"
        echo ")"
    } >"$dir/go.mod"
    grep -q 'k8s.io/apiserver => k8s.io/apiserver' "$dir/go.mod" ||
        die "found no staging replacements in $gomod; has k8s.io/kubernetes changed its layout?"
}

build_with_go() {
    need_go
    local work started=$SECONDS
    work="$(mktemp -d "${TMPDIR:-/tmp}/mixdown-envtest-build.XXXXXX")"
    # Expanded now: the trap runs after this function's locals are gone.
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    log "building Kubernetes $VERSION (kube-apiserver, kube-controller-manager) and etcd $ETCD_VERSION"
    log "from the Go module proxy with $(go version): about 10 minutes on 2 cores, the first time"

    # What hack/lib/version.sh stamps into a release, so that --version (and the server's
    # /version, and the emulation version it derives from it) names the release.
    local minor="${VERSION#v1.}"
    minor="${minor%%.*}"
    local build_date
    build_date="$(cd "$work" && go_env go list -m -f '{{.Time}}' "k8s.io/kubernetes@$VERSION" 2>/dev/null |
        head -n1 | sed 's/ .*//')"
    [[ -n "$build_date" ]] || build_date="$(date -u +%Y-%m-%d)"
    local ldflags="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${build_date}T00:00:00Z"
    done

    kubernetes_module "$work/kubernetes"
    (
        cd "$work/kubernetes"
        # go get resolves the dependency graph of both commands into go.mod and go.sum; every
        # version in it is the one k8s.io/kubernetes@$VERSION and its staging modules name.
        go_env go get "k8s.io/kubernetes/cmd/kube-apiserver@$VERSION" \
            "k8s.io/kubernetes/cmd/kube-controller-manager@$VERSION" >&2
        go_env go build -trimpath -ldflags "$ldflags" -o "$work/bin/" \
            k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager >&2
    ) || die "building Kubernetes $VERSION failed; see the messages above"
    log "kube-apiserver and kube-controller-manager built in $((SECONDS - started)) s"

    local etcd_started=$SECONDS
    mkdir -p "$work/etcd"
    (
        cd "$work/etcd"
        printf 'module mixdown.dev/envtest/etcd\n\ngo 1.26.0\n' >go.mod
        go_env go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
        go_env go build -trimpath -ldflags "-s -w" -o "$work/bin/etcd" go.etcd.io/etcd/server/v3 >&2
    ) || die "building etcd $ETCD_VERSION failed; see the messages above"
    log "etcd built in $((SECONDS - etcd_started)) s"

    versions_match "$work/bin" || die "the binaries built do not report the pinned versions"
    local bin
    for bin in etcd "${BINARIES[@]}"; do
        install_bin "$bin" cat "$work/bin/$bin"
    done
    log "built and checked in $((SECONDS - started)) s; Go caches: $(du -sh "${MIXDOWN_GO_CACHE:-$cache_root/go}" 2>/dev/null | cut -f1)"
}

# ---- 1.20: prebuilt, or Debian's source package ---------------------------------------------------

link_etcd() {
    local etcd
    etcd="$(command -v etcd || true)"
    if [[ -z "$etcd" && -x /usr/bin/etcd ]]; then
        etcd=/usr/bin/etcd
    fi
    if [[ -z "$etcd" ]]; then
        die "etcd is not installed. Install Debian's etcd-server package (it provides /usr/bin/etcd, 3.4):
    sudo apt-get update && sudo apt-get install -y etcd-server
then run this script again. The package also enables an etcd service that the tests do not need:
    sudo systemctl disable --now etcd   # optional"
    fi
    ln -sfn "$etcd" "$target/etcd"
}

unpack_prebuilt() {
    local bin_dir="$1" bin
    log "unpacking prebuilt binaries from $bin_dir"
    for bin in "${BINARIES[@]}"; do
        install_bin "$bin" gunzip -c "$bin_dir/$bin.gz"
    done
}

have_deb_src() {
    grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/
}

# The recipe of ../shared/envtest/README.md: Debian 12's kubernetes source package carries the full
# upstream tree with vendor/, so no module download is needed.
build_from_debian_source() {
    log "no prebuilt binaries found: building $VERSION from Debian's kubernetes source package"
    log "(about 10 minutes on 2 cores; set MIXDOWN_ENVTEST_BIN to a folder of .gz binaries to skip this)"
    if [[ "$(id -u)" -ne 0 ]]; then
        die "building needs root for apt-get. Either run this script as root, or point MIXDOWN_ENVTEST_BIN
at a folder holding kube-apiserver.gz and kube-controller-manager.gz, or use setup-envtest and export
KUBEBUILDER_ASSETS yourself."
    fi
    if ! have_deb_src; then
        log "adding a deb-src source for bookworm main (/etc/apt/sources.list.d/mixdown-deb-src.sources)"
        cat >/etc/apt/sources.list.d/mixdown-deb-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt-get update >&2
    apt-get install -y golang-go rsync make golang-github-modern-go-reflect2-dev dpkg-dev >&2

    local work
    work="$(mktemp -d "${TMPDIR:-/tmp}/mixdown-envtest-build.XXXXXX")"
    # The Go build cache is large; keep it out of the way once the binaries exist. Expanded now:
    # the trap runs after this function's locals are gone.
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    (
        cd "$work"
        # Debian 12's only kubernetes source is 1.20.5+really1.20.2 (with a Debian revision that
        # security updates may bump), so no version is pinned here; the build checks what it got.
        apt-get source --download-only kubernetes >&2
        tar xf kubernetes_*.orig.tar.*
        cd kubernetes-*/
        [[ "$(basename "$PWD")" == kubernetes-1.20.2 ]] ||
            die "Debian's kubernetes source is $(basename "$PWD"), not 1.20.2: use prebuilt binaries (MIXDOWN_ENVTEST_BIN)"
        # Go >= 1.18 crashes the apiserver with the vendored reflect2 1.0.1 (segfault in
        # mapiterinit); Debian's 1.0.2 fixes it.
        rm -rf vendor/github.com/modern-go/reflect2
        cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/
        mkdir -p .go/src/k8s.io
        ln -s ../../.. .go/src/k8s.io/kubernetes
        GOPATH="$PWD/.go" GOCACHE="$work/gocache" CGO_ENABLED=0 GOLDFLAGS="-s -w" HOME="$work" \
            make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
    )
    local bin
    for bin in "${BINARIES[@]}"; do
        install_bin "$bin" cat "$work"/kubernetes-*/_output/bin/"$bin"
    done
}

prepare_1_20() {
    # etcd first: without it the folder is useless, so fail before unpacking or building anything.
    link_etcd
    local shared_bin="${MIXDOWN_ENVTEST_BIN:-$(dirname "$repo_dir")/shared/envtest/bin}"
    if [[ "$target" != "$cache_dir" ]] && complete "$cache_dir"; then
        copy_from_cache "${BINARIES[@]}"
    elif [[ -f "$shared_bin/kube-apiserver.gz" && -f "$shared_bin/kube-controller-manager.gz" ]]; then
        unpack_prebuilt "$shared_bin"
    elif [[ -n "${MIXDOWN_ENVTEST_BIN:-}" ]]; then
        die "MIXDOWN_ENVTEST_BIN=$MIXDOWN_ENVTEST_BIN has no kube-apiserver.gz and kube-controller-manager.gz"
    else
        build_from_debian_source
    fi
}

prepare_go_built() {
    if [[ "$target" != "$cache_dir" ]] && complete "$cache_dir"; then
        copy_from_cache etcd "${BINARIES[@]}"
    else
        build_with_go
    fi
}

main() {
    if complete "$target"; then
        log "$target is complete (Kubernetes $VERSION)"
        echo "$target"
        return
    fi
    mkdir -p "$target"
    target="$(cd "$target" && pwd)"
    if [[ -n "${ETCD_VERSION:-}" ]]; then
        prepare_go_built
    else
        prepare_1_20
    fi
    complete "$target" || die "$target is still incomplete; see the messages above"
    log "ready (Kubernetes $VERSION): export KUBEBUILDER_ASSETS=$target"
    echo "$target"
}

main
