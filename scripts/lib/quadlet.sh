# shellcheck shell=bash
# The real Quadlet generator, for checking podman/*.container|.volume|.network on a
# bookworm machine (podman 4.3.1 has no Quadlet; it came with 4.4).
#
# Debian trixie's podman package ships the generator as usr/libexec/podman/quadlet, a
# binary that needs only libc. We download that package with apt from a trixie source
# that lives ONLY in a private apt directory (the host's /etc/apt and its package lists
# are not touched), unpack it with dpkg-deb -x and keep the binary, under the git-ignored
#
#   .cache/quadlet/quadlet-<package version>   and the symlink .cache/quadlet/quadlet
#
# Usage:
#   . scripts/lib/quadlet.sh && quadlet_path        # prints the binary's path (fetches once)
#   bash scripts/lib/quadlet.sh                     # the same, as a command
#   bash scripts/lib/quadlet.sh -dryrun -user       # runs quadlet on podman/ (QUADLET_UNIT_DIRS)
#
# Environment: QUADLET_CACHE_DIR (default <repo>/.cache/quadlet), QUADLET_DEBIAN_MIRROR
# (default http://deb.debian.org/debian), QUADLET_SUITE (default trixie).

QUADLET_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
QUADLET_CACHE_DIR="${QUADLET_CACHE_DIR:-$QUADLET_REPO_ROOT/.cache/quadlet}"
QUADLET_DEBIAN_MIRROR="${QUADLET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
QUADLET_SUITE="${QUADLET_SUITE:-trixie}"

_quadlet_log() {
    printf 'quadlet.sh: %s\n' "$*" >&2
}

# Download trixie's podman .deb into $1 with a private apt configuration.
_quadlet_download_deb() {
    local work=$1 keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -r $keyring ]] || {
        _quadlet_log "missing $keyring (Debian package debian-archive-keyring)"
        return 1
    }
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
    printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$QUADLET_DEBIAN_MIRROR" \
        "$QUADLET_SUITE" >"$work/sources.list"
    # Everything apt writes goes to $work: lists, caches, downloads. The host's dpkg status
    # is only read (apt-get download resolves no dependencies).
    local -a apt=(
        apt-get -q
        -o "Dir::Etc::sourcelist=$work/sources.list"
        -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::lists=$work/lists"
        -o "Dir::Cache=$work/cache"
        -o "Dir::Cache::archives=$work/cache/archives"
        -o "APT::Get::List-Cleanup=0"
        -o "APT::Architecture=amd64"
        -o "APT::Architectures=amd64"
        -o "Acquire::Languages=none"
    )
    if ! "${apt[@]}" update >"$work/update.log" 2>&1; then
        _quadlet_log "apt-get update of the private $QUADLET_SUITE source failed:"
        tail -n 20 "$work/update.log" >&2
        return 1
    fi
    # apt-get download drops its privileges to _apt when root: let it write there.
    chmod 0777 "$work/debs"
    if ! (cd "$work/debs" && "${apt[@]}" download podman) >"$work/download.log" 2>&1; then
        _quadlet_log "apt-get download podman ($QUADLET_SUITE) failed:"
        tail -n 20 "$work/download.log" >&2
        return 1
    fi
}

# Print the path of the cached quadlet binary; fetch it first when it is not cached.
quadlet_path() {
    local link="$QUADLET_CACHE_DIR/quadlet"
    if [[ -x $link ]] && "$link" -version >/dev/null 2>&1; then
        readlink -f "$link"
        return 0
    fi
    local arch
    arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
    if [[ $arch != amd64 && $arch != x86_64 ]]; then
        _quadlet_log "only amd64 is supported here, not $arch"
        return 1
    fi
    mkdir -p "$QUADLET_CACHE_DIR"
    local work rc=0
    work="$(mktemp -d "$QUADLET_CACHE_DIR/fetch.XXXXXX")"
    _quadlet_log "fetching Debian $QUADLET_SUITE's podman package for its quadlet generator"
    _quadlet_download_deb "$work" || rc=$?
    if ((rc == 0)); then
        local deb version
        deb="$(find "$work/debs" -name 'podman_*.deb' | head -n 1)"
        if [[ -z $deb ]]; then
            _quadlet_log "apt-get download left no podman_*.deb"
            rc=1
        else
            version="$(dpkg-deb -f "$deb" Version)"
            dpkg-deb -x "$deb" "$work/root" || rc=$?
            if ((rc == 0)) && [[ -x $work/root/usr/libexec/podman/quadlet ]]; then
                install -m 0755 "$work/root/usr/libexec/podman/quadlet" \
                    "$QUADLET_CACHE_DIR/quadlet-$version"
                ln -sfn "quadlet-$version" "$link"
                _quadlet_log "cached quadlet from podman $version"
            else
                _quadlet_log "no usr/libexec/podman/quadlet in $(basename "$deb")"
                rc=1
            fi
        fi
    fi
    rm -rf "$work"
    ((rc == 0)) || return "$rc"
    if ! "$link" -version >/dev/null 2>&1; then
        _quadlet_log "the cached quadlet binary does not run here"
        return 1
    fi
    readlink -f "$link"
}

# Run quadlet with QUADLET_UNIT_DIRS=<repo>/podman (unless already set) and the given args.
quadlet_run() {
    local bin
    bin="$(quadlet_path)" || return 1
    QUADLET_UNIT_DIRS="${QUADLET_UNIT_DIRS:-$QUADLET_REPO_ROOT/podman}" "$bin" "$@"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    if (($# == 0)); then
        quadlet_path
    else
        quadlet_run "$@"
    fi
fi
