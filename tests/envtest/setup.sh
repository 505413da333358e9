#!/usr/bin/env bash
# Prepares a KUBEBUILDER_ASSETS folder for the test kit's local control plane: etcd, kube-apiserver and
# kube-controller-manager side by side, the layout envtest tools expect.
#
#   tests/envtest/setup.sh [DIR]
#   export KUBEBUILDER_ASSETS="$(tests/envtest/setup.sh | tail -n1)"
#
# DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/mixdown/envtest/v1.20.2. The last line of stdout is the
# folder's path; everything else goes to stderr. Where the binaries come from, first match wins:
#   1. DIR (or the cache folder) is already complete: nothing to do;
#   2. gzipped prebuilt binaries in $MIXDOWN_ENVTEST_BIN, or <repo>/../shared/envtest/bin;
#   3. built from Debian's `kubernetes` source package (about 10 minutes on 2 cores; needs root for
#      apt-get, a deb-src line, and about 4 GB for the Go cache).
# etcd always comes from Debian's `etcd-server` package (/usr/bin/etcd); it is linked, not copied.
set -euo pipefail

readonly VERSION=v1.20.2
readonly BINARIES=(kube-apiserver kube-controller-manager)

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$script_dir/../.." && pwd)"
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/mixdown/envtest/$VERSION"
target="${1:-$cache_dir}"

log() { echo "envtest setup: $*" >&2; }
die() {
    echo "envtest setup: error: $*" >&2
    exit 1
}

# Complete means every binary is there and executable; files are only ever moved into place whole,
# so an interrupted run never leaves a folder that looks complete.
complete() {
    local dir="$1" bin
    for bin in etcd "${BINARIES[@]}"; do
        [[ -x "$dir/$bin" ]] || return 1
    done
}

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

# Installs one binary atomically: the command's output goes beside it, then is renamed into place.
install_bin() {
    local name="$1"
    shift
    local part="$target/.$name.part"
    "$@" >"$part"
    chmod 0755 "$part"
    mv -f "$part" "$target/$name"
}

unpack_prebuilt() {
    local bin_dir="$1" bin
    log "unpacking prebuilt binaries from $bin_dir"
    for bin in "${BINARIES[@]}"; do
        install_bin "$bin" gunzip -c "$bin_dir/$bin.gz"
    done
}

copy_from_cache() {
    local bin
    log "copying binaries from $cache_dir"
    for bin in "${BINARIES[@]}"; do
        install_bin "$bin" cat "$cache_dir/$bin"
    done
}

have_deb_src() {
    grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/
}

# The recipe of ../shared/envtest/README.md: Debian 12's kubernetes source package carries the full
# upstream tree with vendor/, so no module download is needed.
build_from_source() {
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
    # The Go build cache is large; keep it out of the way once the binaries exist.
    trap 'rm -rf "$work"' EXIT
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

main() {
    if complete "$target"; then
        log "$target is complete"
        echo "$target"
        return
    fi
    mkdir -p "$target"
    target="$(cd "$target" && pwd)"
    # etcd first: without it the folder is useless, so fail before unpacking or building anything.
    link_etcd

    local shared_bin="${MIXDOWN_ENVTEST_BIN:-$(dirname "$repo_dir")/shared/envtest/bin}"
    if [[ "$target" != "$cache_dir" ]] && complete "$cache_dir"; then
        copy_from_cache
    elif [[ -f "$shared_bin/kube-apiserver.gz" && -f "$shared_bin/kube-controller-manager.gz" ]]; then
        unpack_prebuilt "$shared_bin"
    elif [[ -n "${MIXDOWN_ENVTEST_BIN:-}" ]]; then
        die "MIXDOWN_ENVTEST_BIN=$MIXDOWN_ENVTEST_BIN has no kube-apiserver.gz and kube-controller-manager.gz"
    else
        build_from_source
    fi

    complete "$target" || die "$target is still incomplete; see the messages above"
    log "ready: export KUBEBUILDER_ASSETS=$target"
    echo "$target"
}

main
