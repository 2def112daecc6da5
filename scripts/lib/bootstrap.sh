# shellcheck shell=bash
# Bootstrap a development / CI machine (Debian 12, usually as root, no stdin).
#
# Source this file, then call `bootstrap`. It is idempotent and quiet: when
# everything is already in place it only runs a few fast checks.
#
#   . scripts/lib/bootstrap.sh
#   bootstrap
#
# After it returns: the Debian packages below are installed, `uv` is on PATH,
# the project venv is synced from uv.lock, static/vendor/htmx.min.js is present
# and verified, and PG_BIN points at the newest PostgreSQL bin directory.

# Debian packages the project needs: the database, the browser for GUI tests, the
# relay itself and the tools its tests talk to it with.
BOOTSTRAP_APT_PACKAGES=(
    postgresql
    postgresql-contrib
    chromium
    ca-certificates
    curl
    nodejs
    npm
    postfix
    libsasl2-modules
    swaks
    # swaks --tls needs it; apt-get here skips recommends, which is where swaks names it.
    libnet-ssleay-perl
    pflogsumm
    openssl
    iproute2
    # scripts/lab partition: a firewall between the two nodes' namespaces.
    iptables
    util-linux
    systemd
    # The two-node lab: nodes boot on overlays of this machine's root, so everything
    # scripts/install-node needs must be installed here (the nodes have no internet).
    systemd-container
    keepalived
    rsync
    # scripts/install-node rotates Postfix's log with it.
    logrotate
    openssh-server
    openssh-client
    python3
    python3-venv
    # `scripts/lab up --debian 13` builds its node root with it (scripts/lab_debian13.py).
    debootstrap
    # promtool: the tests check and unit-test scripts/prometheus/mailrelay-rules.yml.
    # (The package's own Prometheus server is not started: no systemd here.)
    prometheus
    # A disk that stalls Postfix's commit of a queue file, made by delaying that system
    # call (tests/integration/test_shadow_postfix.py).
    strace
)

BOOTSTRAP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# htmx is vendored from the npm registry at the version the app pins in
# app/web/assets.py, and verified by the same SRI hash the pages use for the
# CDN copy (https://cdn.jsdelivr.net/npm/htmx.org@VERSION/dist/htmx.min.js).
_bootstrap_pin() {
    sed -n "s/^$1 = \"\(.*\)\"$/\1/p" "$BOOTSTRAP_ROOT/app/web/assets.py"
}
HTMX_VERSION="$(_bootstrap_pin HTMX_VERSION)"
HTMX_SRI="$(_bootstrap_pin HTMX_SRI)"

_bootstrap_log() {
    printf 'bootstrap: %s\n' "$*" >&2
}

_bootstrap_die() {
    printf 'bootstrap: ERROR: %s\n' "$*" >&2
    exit 1
}

# Run a command with its output captured; show the output only on failure.
_bootstrap_quiet() {
    local log rc=0
    log="$(mktemp)"
    "$@" >"$log" 2>&1 || rc=$?
    if ((rc != 0)); then
        printf 'bootstrap: command failed (exit %s): %s\n' "$rc" "$*" >&2
        tail -n 40 "$log" >&2
    fi
    rm -f "$log"
    return "$rc"
}

_bootstrap_sudo() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        _bootstrap_die "need root (or sudo) to run: $*"
    fi
}

# Print the packages of BOOTSTRAP_APT_PACKAGES that are neither installed nor
# provided by an installed package (e.g. NodeSource's nodejs provides npm).
_bootstrap_missing_packages() {
    local installed provided pkg
    installed="$(dpkg-query -W -f='${db:Status-Status} ${Package}\n' 2>/dev/null |
        awk '$1 == "installed" { print $2 }')"
    provided="$(dpkg-query -W -f='${db:Status-Status}\t${Provides}\n' 2>/dev/null |
        awk -F '\t' '$1 == "installed" && $2 != "" { print $2 }' |
        tr ',' '\n' | sed -e 's/([^)]*)//g' -e 's/:any//' -e 's/[[:space:]]//g')"
    for pkg in "${BOOTSTRAP_APT_PACKAGES[@]}"; do
        if ! grep -qxF -- "$pkg" <<<"$installed" && ! grep -qxF -- "$pkg" <<<"$provided"; then
            printf '%s\n' "$pkg"
        fi
    done
}

_bootstrap_apt() {
    local -a missing
    mapfile -t missing < <(_bootstrap_missing_packages)
    ((${#missing[@]} == 0)) && return 0

    _bootstrap_log "installing Debian packages: ${missing[*]}"
    local -a apt=(apt-get -q -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
    local attempt
    # apt-get update takes the lists lock, which DPkg::Lock::Timeout does not cover:
    # retry while another apt run (e.g. a background install) holds it.
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if _bootstrap_quiet _bootstrap_sudo "${apt[@]}" update; then
            break
        fi
        ((attempt == 10)) && _bootstrap_die "apt-get update failed"
        _bootstrap_log "apt-get update failed, retrying in 30 s"
        sleep 30
    done

    # Keep maintainer scripts from starting services (postgresql, later postfix...)
    # on the bare host: there is no systemd, tests start their own instances.
    local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
    # Postfix asks how it should be configured; the product configures it, not debconf.
    if command -v debconf-set-selections >/dev/null 2>&1; then
        echo "postfix postfix/main_mailer_type select No configuration" |
            _bootstrap_sudo debconf-set-selections
    fi
    if [[ ! -e $policy ]] && ((EUID == 0)); then
        printf '#!/bin/sh\n# mailrelay-ha bootstrap (temporary)\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created_policy=1
    fi
    _bootstrap_quiet _bootstrap_sudo env DEBIAN_FRONTEND=noninteractive \
        "${apt[@]}" install -y --no-install-recommends "${missing[@]}" </dev/null || rc=$?
    if ((created_policy)); then
        rm -f "$policy"
    fi
    ((rc == 0)) || _bootstrap_die "apt-get install failed: ${missing[*]}"
}

_bootstrap_uv() {
    if command -v uv >/dev/null 2>&1; then
        return 0
    fi
    _bootstrap_log "installing uv from PyPI"
    local py
    py="$(command -v python3 || true)"
    [[ -n $py ]] || _bootstrap_die "python3 not found; cannot install uv"
    if ! _bootstrap_quiet "$py" -m pip install --quiet --disable-pip-version-check uv; then
        # Debian's system python is "externally managed" (PEP 668).
        _bootstrap_quiet "$py" -m pip install --quiet --disable-pip-version-check \
            --break-system-packages uv || _bootstrap_die "pip install uv failed"
    fi
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash >/dev/null 2>&1 || true
    fi
    if ! command -v uv >/dev/null 2>&1; then
        local scripts
        scripts="$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
        PATH="$scripts:$PATH"
        export PATH
    fi
    command -v uv >/dev/null 2>&1 || _bootstrap_die "uv installed but not found on PATH"
}

_bootstrap_uv_sync() {
    (cd "$BOOTSTRAP_ROOT" && _bootstrap_quiet uv sync --frozen --all-extras) ||
        _bootstrap_die "uv sync --frozen failed"
}

# SRI form of a file's sha384: "sha384-<base64>".
_bootstrap_sri384() {
    local digest
    if command -v openssl >/dev/null 2>&1; then
        digest="$(openssl dgst -sha384 -binary "$1" | openssl base64 -A)"
    else
        digest="$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha384(open(sys.argv[1], "rb").read()).digest()).decode())' "$1")"
    fi
    printf 'sha384-%s\n' "$digest"
}

_bootstrap_htmx() {
    local dest="$BOOTSTRAP_ROOT/static/vendor/htmx.min.js"
    if [[ -f $dest ]] && [[ "$(_bootstrap_sri384 "$dest")" == "$HTMX_SRI" ]]; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || _bootstrap_die "npm not found; cannot fetch htmx.org"
    _bootstrap_log "fetching htmx.org@$HTMX_VERSION from the npm registry"
    local tmp rc=0
    tmp="$(mktemp -d)"
    (
        cd "$tmp" &&
            _bootstrap_quiet env npm_config_update_notifier=false npm_config_fund=false \
                npm_config_audit=false npm pack --silent "htmx.org@$HTMX_VERSION" &&
            tar -xzf "htmx.org-$HTMX_VERSION.tgz" package/dist/htmx.min.js
    ) || rc=$?
    if ((rc != 0)); then
        rm -rf "$tmp"
        _bootstrap_die "could not fetch htmx.org@$HTMX_VERSION with npm pack"
    fi
    local got
    got="$(_bootstrap_sri384 "$tmp/package/dist/htmx.min.js")"
    if [[ $got != "$HTMX_SRI" ]]; then
        rm -rf "$tmp"
        _bootstrap_die "htmx.org@$HTMX_VERSION dist/htmx.min.js hash mismatch:
  expected $HTMX_SRI
  got      $got"
    fi
    mkdir -p "$(dirname "$dest")"
    install -m 0644 "$tmp/package/dist/htmx.min.js" "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
    rm -rf "$tmp"
}

_bootstrap_pg_bin() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null |
        sort -V | tail -n 1)"
    [[ -n $dir && -x $dir/pg_ctl ]] ||
        _bootstrap_die "no PostgreSQL bin directory under /usr/lib/postgresql/*/bin"
    PG_BIN="$dir"
    export PG_BIN
}

bootstrap() {
    _bootstrap_apt
    _bootstrap_uv
    _bootstrap_uv_sync
    _bootstrap_htmx
    _bootstrap_pg_bin
}
