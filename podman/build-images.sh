#!/usr/bin/env bash
# Build the three local images the quadlets run, without any container registry:
#
#   localhost/debian-bookworm-base:latest   debootstrap --variant=minbase bookworm, podman import
#   localhost/mailrelay-web:latest          podman/Containerfile (the app, non-root)
#   localhost/mailrelay-postgres:15         podman/Containerfile.postgres (Debian's postgresql-15)
#
# Usage: podman/build-images.sh [--base-only] [--no-web] [--no-postgres]
#
# Run as root (debootstrap needs it). The debootstrap root file system is cached as a tarball
# under .cache/images/ (git-ignored) so later runs only `podman import` it; podman's own layer
# cache makes an unchanged app rebuild take seconds. Remove .cache/images/ to rebuild from scratch.
#
# Environment:
#   PODMAN_GLOBAL_ARGS  podman's global flags (default, for hosts where crun fails on hybrid
#                       cgroups: "--runtime /usr/sbin/runc --cgroup-manager cgroupfs"; set it
#                       empty on a normal cgroup v2 host)
#   PODMAN_ULIMIT       default "nofile=10000:10000" (the hard nofile limit here is 20000)
#   DEBIAN_MIRROR       default http://deb.debian.org/debian
#   HOST_CA_BUNDLE      CA bundle trusted for HTTPS during the build (PyPI), default
#                       /etc/ssl/certs/ca-certificates.crt of this host; not kept in the images
#   MAILRELAY_IMAGE_CACHE  default <repo>/.cache/images
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${MAILRELAY_IMAGE_CACHE:-$ROOT/.cache/images}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
BASE_IMAGE=localhost/debian-bookworm-base:latest
WEB_IMAGE=localhost/mailrelay-web:latest
PG_IMAGE=localhost/mailrelay-postgres:15
# Bump when the way the base is made changes, so the cached tarball is rebuilt.
BASE_RECIPE=1
BASE_TARBALL="$CACHE/debian-$SUITE-minbase-r$BASE_RECIPE.tar.gz"

if [[ -v PODMAN_GLOBAL_ARGS ]]; then
    read -r -a GLOBAL <<<"$PODMAN_GLOBAL_ARGS"
else
    GLOBAL=(--runtime /usr/sbin/runc --cgroup-manager cgroupfs)
fi
ULIMIT="${PODMAN_ULIMIT:-nofile=10000:10000}"
HOST_CA_BUNDLE="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

build_base=1 build_web=1 build_pg=1
for arg in "$@"; do
    case $arg in
    --base-only) build_web=0 build_pg=0 ;;
    --no-web) build_web=0 ;;
    --no-postgres) build_pg=0 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build-images.sh: unknown argument: $arg" >&2
        exit 2
        ;;
    esac
done

log() { printf 'build-images: %s\n' "$*" >&2; }
die() {
    printf 'build-images: ERROR: %s\n' "$*" >&2
    exit 1
}
pm() { podman "${GLOBAL[@]}" "$@"; }

# Debian packages this script needs; installed when missing and we are root.
ensure_tools() {
    # uidmap, catatonit: rootless podman (newuidmap, the pause process); the plugins: podman
    # 4.3's network backend, even for --network host.
    local -a missing=() want=(podman runc debootstrap uidmap catatonit containernetworking-plugins)
    local pkg
    for pkg in "${want[@]}"; do
        dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed ||
            missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || die "missing Debian packages (need root to install): ${missing[*]}"
    log "installing Debian packages: ${missing[*]}"
    # podman's maintainer scripts would try to start its (systemd) services: forbid that.
    local policy=/usr/sbin/policy-rc.d created=0 rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && created=1
    fi
    local -a apt=(apt-get -q -o DPkg::Lock::Timeout=600)
    # runc is named, so apt takes it for podman's "crun | runc" (crun fails on hybrid cgroups).
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
        "${missing[@]}" </dev/null >/dev/null 2>&1; then
        "${apt[@]}" update >/dev/null 2>&1 || true # stale package lists: refresh once, retry
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
            "${missing[@]}" </dev/null >/dev/null || rc=$?
    fi
    ((created)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get install ${missing[*]} failed"
}

image_exists() { pm image exists "$1"; }

make_base_tarball() {
    ((EUID == 0)) || die "debootstrap needs root (or put $BASE_TARBALL in place)"
    mkdir -p "$CACHE"
    local work
    work="$(mktemp -d "$CACHE/debootstrap.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    log "debootstrap --variant=minbase $SUITE (about a minute; cached afterwards)"
    local started=$SECONDS
    if ! debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$work/root" "$MIRROR" \
        >"$work/debootstrap.log" 2>&1; then
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed (full log above)"
    fi
    cat >"$work/root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
    # Images stay small and reproducible: no downloaded packages, no package lists, no man pages.
    cat >"$work/root/etc/apt/apt.conf.d/90mailrelay-image" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
    cat >"$work/root/etc/dpkg/dpkg.cfg.d/90mailrelay-image" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
EOF
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* \
        "$work/root/var/log/"*.log "$work/root/etc/hostname"
    : >"$work/root/etc/resolv.conf"
    tar --numeric-owner --xattrs -C "$work/root" -cf - . | gzip -1 >"$BASE_TARBALL.part"
    mv "$BASE_TARBALL.part" "$BASE_TARBALL"
    rm -rf "$work"
    trap - EXIT
    log "base root file system cached: $BASE_TARBALL ($((SECONDS - started)) s)"
}

build_base_image() {
    if image_exists "$BASE_IMAGE" &&
        [[ "$(pm image inspect -f '{{index .Labels "mailrelay.base-recipe"}}' "$BASE_IMAGE" 2>/dev/null)" == "$BASE_RECIPE" ]]; then
        log "$BASE_IMAGE is present"
        return 0
    fi
    [[ -s $BASE_TARBALL ]] || make_base_tarball
    log "podman import $BASE_TARBALL -> $BASE_IMAGE"
    pm import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL mailrelay.base-recipe=$BASE_RECIPE" \
        --change 'CMD ["/bin/bash"]' \
        "$BASE_TARBALL" "$BASE_IMAGE" >/dev/null
}

# The app image's build context: only what the Containerfile copies (no .venv, .git, caches).
stage_web_context() {
    local ctx=$1 item
    for item in app templates static postfix-conf pyproject.toml uv.lock README.md; do
        [[ -e $ROOT/$item ]] || die "missing $item in $ROOT"
        cp -a "$ROOT/$item" "$ctx/"
    done
    find "$ctx" -name __pycache__ -type d -prune -exec rm -rf {} +
    cp "$ROOT/podman/Containerfile" "$ROOT/podman/healthcheck.py" "$ctx/"
}

build() {
    local tag=$1 file=$2 ctx=$3 started=$SECONDS previous
    previous="$(pm image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
    local -a extra=()
    # HTTPS from RUN steps (PyPI) trusts what this host trusts (it may sit behind a
    # TLS-inspecting proxy whose CA is only in the host's bundle). Build stage only.
    if [[ -r $HOST_CA_BUNDLE ]]; then
        extra+=(-v "$HOST_CA_BUNDLE:/run/build-ca.crt:ro" --build-arg BUILD_CA_BUNDLE=/run/build-ca.crt)
    fi
    log "building $tag"
    # RUN steps use the host's network (apt and PyPI; no bridge/CNI needed to build).
    # --format docker: OCI images cannot carry HEALTHCHECK or STOPSIGNAL.
    pm build --network host --ulimit "$ULIMIT" --layers --pull=never --format docker \
        "${extra[@]}" -f "$file" -t "$tag" "$ctx" >"$CACHE/build-${tag//[\/:]/_}.log" 2>&1 || {
        tail -n 40 "$CACHE/build-${tag//[\/:]/_}.log" >&2
        die "podman build $tag failed (log: $CACHE/build-${tag//[\/:]/_}.log)"
    }
    log "built $tag ($((SECONDS - started)) s)"
    # The image this tag named before is now unnamed: remove it (its final layers hold a full
    # copy of the venv). The layer cache of the build stages stays.
    local now
    now="$(pm image inspect --format '{{.Id}}' "$tag")"
    if [[ -n $previous && $previous != "$now" ]]; then
        pm rmi "$previous" >/dev/null 2>&1 || true
    fi
}

main() {
    ensure_tools
    mkdir -p "$CACHE"
    ((build_base)) && build_base_image
    local -a pids=()
    local ctx=""
    if ((build_web)); then
        ctx="$(mktemp -d "$CACHE/web-context.XXXXXX")"
        stage_web_context "$ctx"
        build "$WEB_IMAGE" "$ctx/Containerfile" "$ctx" &
        pids+=($!)
    fi
    if ((build_pg)); then
        build "$PG_IMAGE" "$ROOT/podman/Containerfile.postgres" "$ROOT/podman" &
        pids+=($!)
    fi
    local pid rc=0
    for pid in "${pids[@]}"; do
        wait "$pid" || rc=1
    done
    [[ -n $ctx ]] && rm -rf "$ctx"
    ((rc == 0)) || die "an image build failed"
    log "done"
}

main
