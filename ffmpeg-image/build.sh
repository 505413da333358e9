#!/usr/bin/env bash
# Builds Mixdown's images with podman, without any registry: the worker (ffmpeg-image/Dockerfile),
# the operator (operator/Dockerfile) and the API (api/Dockerfile).
#
#   ffmpeg-image/build.sh                  the worker image: cargo build --release, base image if
#                                          missing, image
#   ffmpeg-image/build.sh --component all  all three images, from one cargo build
#   ffmpeg-image/build.sh --component operator --component api
#                                          the images named (worker, operator, api or all; also
#                                          comma-separated: --component operator,api)
#   ffmpeg-image/build.sh --skip-cargo     reuse the binaries in target/release as they are
#   ffmpeg-image/build.sh --base-only      only make the base image (needs root), nothing else
#   ffmpeg-image/build.sh --rebuild-base   debootstrap the base image again (e.g. for updates)
#   ffmpeg-image/build.sh --print-run-flags
#                                          print the podman flags the worker image test runs it with
#
# Every image is tagged twice: localhost/mixdown-<component>:$TAG (default dev, what the tests and
# the local run use) and localhost/mixdown-<component>:<workspace version> (the chart's
# appVersion, so an install that names no tag finds the image).
#
# Environment:
#   TAG            first tag of every image         (default dev)
#   REPOSITORY     prefix of every image name       (default localhost, so localhost/mixdown-api)
#   IMAGE          full name of the worker image    (default $REPOSITORY/mixdown-worker:$TAG)
#   BASE_IMAGE     base image to build on  (default localhost/debian:bookworm-slim, made here)
#   DEBIAN_MIRROR  where debootstrap and apt fetch packages (default http://deb.debian.org/debian)
#   CONTAINERS_CONF  podman settings       (default ffmpeg-image/podman/containers.conf)
#
# Layers are cached: only the binary's layer is rebuilt while the base image stays, and the operator
# and API images share their package layer. Earlier builds stay behind as untagged images;
# `podman image prune` removes them.
#
# Why it works this way:
# - No registry is reachable, so the base image is made locally: debootstrap --variant=minbase
#   bookworm into a temporary directory, trimmed like the official slim image, then `podman import`.
#   That needs root (debootstrap creates device nodes and chowns files); run the script as root.
# - No Rust toolchain can be fetched into a build container, so the release binaries are built on
#   this machine (Debian 12, the same glibc as the image) and copied in. Only the image's binary is
#   sent as its build context. One `cargo build --release` builds every binary asked for, with the
#   features resolved over all three packages every time, so shared dependencies are compiled
#   once whichever images are built.
# - Podman needs runc and the cgroupfs manager on these machines, and ulimits it is allowed to set;
#   ffmpeg-image/podman/containers.conf says so, and the same settings are also passed as flags.
#
# Running it like a Job does (the image test uses exactly these flags, see --print-run-flags):
#   CONTAINERS_CONF=ffmpeg-image/podman/containers.conf \
#   podman --runtime runc --cgroup-manager cgroupfs run --rm \
#     --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=1g,mode=1777 --network host \
#     --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
#     -e ... localhost/mixdown-worker:dev [ARGS]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

TAG=${TAG:-dev}
REPOSITORY=${REPOSITORY:-localhost}
IMAGE=${IMAGE:-$REPOSITORY/mixdown-worker:$TAG}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm-slim}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/podman/containers.conf}

# Global podman flags: the config file above says the same, but a caller's own CONTAINERS_CONF
# must not be able to bring crun or systemd cgroups back.
podman_global=(--runtime runc --cgroup-manager cgroupfs)
ulimits=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
# What a Pod gives the worker: a read-only root, an emptyDir for scratch, the node's network (the
# test's S3 server listens on loopback).
run_flags=(--read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=1g,mode=1777 --network host "${ulimits[@]}")

skip_cargo=false
rebuild_base=false
base_only=false
components=()

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while (($#)); do
  case $1 in
    --component|--component=*)
      if [[ $1 == --component ]]; then
        (($# >= 2)) || die "--component needs a value: worker, operator, api or all"
        value=$2
        shift
      else
        value=${1#--component=}
      fi
      IFS=, read -ra names <<<"$value"
      for name in "${names[@]}"; do
        case $name in
          worker|operator|api) components+=("$name") ;;
          all) components+=(worker operator api) ;;
          *) die "unknown component: $name (worker, operator, api or all)" ;;
        esac
      done ;;
    --skip-cargo) skip_cargo=true ;;
    --rebuild-base) rebuild_base=true ;;
    --base-only) base_only=true ;;
    --print-run-flags)
      printf 'CONTAINERS_CONF=%q podman %s run --rm %s %s\n' \
        "$CONTAINERS_CONF" "${podman_global[*]}" "${run_flags[*]}" "$IMAGE"
      exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

# Without --component: the worker alone, as before components existed. Each one once, in this order.
((${#components[@]})) || components=(worker)
ordered=()
for name in worker operator api; do
  for asked in "${components[@]}"; do
    if [[ $asked == "$name" ]]; then
      ordered+=("$name")
      break
    fi
  done
done
components=("${ordered[@]}")

# Per component: its binary, Dockerfile and first tag.
binary_of() { echo "mixdown-$1"; }
dockerfile_of() {
  case $1 in
    worker) echo "$here/Dockerfile" ;;
    *) echo "$root/$1/Dockerfile" ;;
  esac
}
image_of() {
  case $1 in
    worker) echo "$IMAGE" ;;
    *) echo "$REPOSITORY/mixdown-$1:$TAG" ;;
  esac
}

# Time since the start of a step, in whole seconds.
elapsed() { echo $((SECONDS - $1))s; }

# Debian installs runc and debootstrap in /usr/sbin, which a non-root PATH often lacks.
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }

check_prerequisites() {
  local missing=()
  for tool in podman runc; do
    have "$tool" || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    die "missing ${missing[*]}; install with: apt-get install podman runc debootstrap"
  fi
  if ! $skip_cargo && ! $base_only; then
    have cargo || die "cargo not found: install a Rust toolchain, or pass --skip-cargo with the binaries already in target/release"
  fi
}

# One cargo invocation for every component asked for. Features are resolved over all three
# packages whichever binaries are asked for (`--bin` only picks what is built), so building the
# worker alone and then all three reuses every artifact instead of rebuilding shared dependencies
# with another feature set.
build_binaries() {
  local bins=() name
  for name in "${components[@]}"; do
    bins+=(--bin "$(binary_of "$name")")
  done
  local cargo_args=(build --release -p mixdown-worker -p mixdown-operator -p mixdown-api "${bins[@]}")
  if $skip_cargo; then
    log "skipping cargo (--skip-cargo)"
  else
    log "cargo ${cargo_args[*]}"
    local t=$SECONDS
    (cd "$root" && cargo "${cargo_args[@]}")
    log "binaries built in $(elapsed "$t")"
  fi
  local target=${CARGO_TARGET_DIR:-target}
  [[ $target == /* ]] || target=$root/$target # relative to the workspace, as cargo reads it
  release_dir=$target/release
  for name in "${components[@]}"; do
    [[ -x $release_dir/$(binary_of "$name") ]] \
      || die "$release_dir/$(binary_of "$name") not found: run without --skip-cargo"
  done
}

# debootstrap minbase, trimmed the way the official bookworm-slim image is, imported as an image.
make_base_image() {
  if podman "${podman_global[@]}" image exists "$BASE_IMAGE" && ! $rebuild_base; then
    log "base image $BASE_IMAGE exists (--rebuild-base to make it again)"
    return
  fi
  [[ $BASE_IMAGE == localhost/* ]] \
    || die "base image $BASE_IMAGE is missing and cannot be pulled; pull it yourself, or leave BASE_IMAGE unset to build one here"
  have debootstrap || die "debootstrap is needed to make the base image $BASE_IMAGE; install with: apt-get install debootstrap"
  ((EUID == 0)) || die "making the base image needs root (debootstrap creates device nodes and files owned by other users): run this script as root once, or set BASE_IMAGE to an existing image"

  local t=$SECONDS rootfs
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/mixdown-rootfs.XXXXXX")
  # The tree holds root-owned files and device nodes: remove it however the script ends.
  trap "rm -rf --one-file-system '$rootfs'" EXIT

  log "debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR"
  PATH=$PATH:/usr/sbin debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >&2

  # The same sources as the official image: updates and security fixes reach `apt-get install`.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Like the slim image: no docs, man pages or translations from later installs, no cached .debs.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  # ...and the same for what debootstrap already installed. Copyright files stay.
  find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/lintian/* "$rootfs"/var/log/* "$rootfs"/tmp/*
  # Written by debootstrap from the build machine; a container gets its own.
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"

  log "podman import as $BASE_IMAGE"
  tar --numeric-owner --xattrs -C "$rootfs" -c . \
    | podman "${podman_global[@]}" import \
        --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$BASE_IMAGE" >/dev/null
  rm -rf --one-file-system "$rootfs"
  trap - EXIT
  log "base image made in $(elapsed "$t")"
}

# Builds one component's image from a context holding only its binary; tags it twice.
build_image() {
  local name=$1 t=$SECONDS context image binary version_image
  image=$(image_of "$name")
  binary=$(binary_of "$name")
  version_image="${image%:*}:$version"
  # Only the binary is sent to the builder.
  context=$(mktemp -d "${TMPDIR:-/tmp}/mixdown-context.XXXXXX")
  trap "rm -rf '$context'" EXIT
  cp "$release_dir/$binary" "$context/$binary"

  # The version and revision go in as --label too: podman's layer cache does not notice a changed
  # build argument that only a LABEL uses, and would keep the previous build's labels.
  log "podman build $image and $version_image (FROM $BASE_IMAGE, revision $revision)"
  # --network host: apt-get inside the build reaches the Debian mirror the way this machine does.
  podman "${podman_global[@]}" build \
    --pull=never \
    --network host \
    "${ulimits[@]}" \
    --file "$(dockerfile_of "$name")" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "VERSION=$version" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$revision" \
    --tag "$image" \
    --tag "$version_image" \
    "$context"
  rm -rf "$context"
  trap - EXIT
  local size
  size=$(podman "${podman_global[@]}" image inspect --format '{{.Size}}' "$image")
  summary+=("$image ($version_image): $((size / 1000 / 1000)) MB ($size bytes), image built in $(elapsed "$t")")
}

check_prerequisites
total=$SECONDS
if $base_only; then
  make_base_image
  exit 0
fi
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
revision=$(git -C "$root" describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
build_binaries
make_base_image
summary=()
for name in "${components[@]}"; do
  build_image "$name"
done

for line in "${summary[@]}"; do
  log "$line"
done
log "total $(elapsed "$total")"
if [[ " ${components[*]} " == *" worker "* ]]; then
  log "run the worker like its test does: $(basename "$0") --print-run-flags"
fi
