#!/usr/bin/env bash
# Builds the real Helm CLI for the chart tests from its Go module, helm.sh/helm/v4, at a pinned version.
#
#   tests/helm/setup.sh [DIR]
#   export MIXDOWN_HELM="$(tests/helm/setup.sh | tail -n1)"
#
# DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/mixdown/helm/v4.3.1. The last line of stdout is the
# helm binary's path; everything else goes to stderr. A second run finds the binary and returns at once.
# Building needs Go (1.26 or newer, what the module's go.mod asks for) and the Go module proxy; no
# other network access. A first build takes a few minutes on 2 cores and about 1 GB of Go caches.
set -euo pipefail

readonly MODULE=helm.sh/helm/v4
readonly VERSION=v4.3.1

cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/mixdown/helm/$VERSION"
target="${1:-$cache_dir}"

log() { echo "helm setup: $*" >&2; }
die() {
    echo "helm setup: error: $*" >&2
    exit 1
}

# The binary is only ever moved into place whole, and checked to be the pinned version, so an
# interrupted or mismatched build never looks complete.
complete() {
    local bin="$1/helm"
    [[ -x "$bin" ]] || return 1
    "$bin" version --template '{{.Version}}' 2>/dev/null | grep -qx "$VERSION"
}

need_go() {
    if ! command -v go >/dev/null 2>&1; then
        die "go is not installed (or not on PATH), and the chart tests need the helm CLI built from
$MODULE@$VERSION. Install Go 1.26 or newer (https://go.dev/dl/, or your distribution's golang package),
make sure \`go\` is on PATH, then run this script again. Or point MIXDOWN_HELM at a helm $VERSION binary."
    fi
}

build() {
    local work
    work="$(mktemp -d "${TMPDIR:-/tmp}/mixdown-helm-build.XXXXXX")"
    # Expanded now: the trap runs after this function's locals are gone (and under set -u).
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    log "building $MODULE/cmd/helm@$VERSION with $(go version) (a few minutes on 2 cores)"
    local started=$SECONDS
    # `go install module@version` builds exactly the module's own go.mod and go.sum, the dependency
    # versions Helm's maintainers release with. Helm's version string comes from ldflags in its
    # Makefile; set it the same way so `helm version` names the pinned version.
    GOBIN="$work/bin" GOFLAGS=-mod=mod CGO_ENABLED=0 \
        go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$VERSION" \
        "$MODULE/cmd/helm@$VERSION" >&2
    log "built in $((SECONDS - started)) s"
    mkdir -p "$target"
    mv -f "$work/bin/helm" "$target/.helm.part"
    mv -f "$target/.helm.part" "$target/helm"
}

main() {
    if complete "$target"; then
        log "$target/helm is $VERSION"
        echo "$target/helm"
        return
    fi
    need_go
    build
    complete "$target" || die "$target/helm was built but does not report $VERSION; see the messages above"
    target="$(cd "$target" && pwd)"
    log "ready: export MIXDOWN_HELM=$target/helm"
    echo "$target/helm"
}

main
