# shellcheck shell=bash
# The ssh side of queue sync, as scripts/install-node writes it: what this node lets its peer
# do with the peer's sync key, and which host key it expects of the peer. Each function only
# prints (or fails with a message naming the setting): install-node puts the output in place,
# and tests call the functions without touching the host.
#
#   . scripts/lib/sync-ssh.sh
#   sync_authorized_keys REPLICA PEER_NODE_IP SYNC_PEER_PUBKEY   # the authorized_keys line
#   sync_known_hosts PEER_NODE_IP SYNC_PEER_HOST_KEY             # the pinned known_hosts line
#   sync_rrsync_options                                          # e.g. "-wo -munge"
#
# Environment: RRSYNC (default /usr/bin/rrsync).

# What the installed rrsync supports of write-only (-wo: the peer can put files into the
# replica, never read them back) and munged links (-munge: rsync's --munge-links, so a symlink
# the peer sends cannot point anywhere on this node). Both came with rsync 3.2.3's rrsync
# (Debian 12 has 3.2.7); an older rrsync gets neither option rather than a refused login.
sync_rrsync_options() {
    local help options=()
    help="$(SSH_ORIGINAL_COMMAND='' "${RRSYNC:-/usr/bin/rrsync}" -help 2>&1 || true)"
    [[ $help =~ (^|[^a-z-])-wo([^a-z-]|$) ]] && options+=(-wo)
    [[ $help =~ (^|[^a-z-])-munge([^a-z-]|$) ]] && options+=(-munge)
    printf '%s' "${options[*]}"
}

_sync_address() {
    [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || $1 =~ ^[0-9a-fA-F:]*:[0-9a-fA-F:.]*$ ]] || {
        echo "install-node: PEER_NODE_IP is not an IP address: '$1' (queue sync needs it)" >&2
        return 1
    }
}

_sync_ed25519() {
    # _sync_ed25519 SETTING VALUE: the key without its comment, or an error naming the setting.
    local key
    read -r -a key <<<"$2"
    [[ ${#key[@]} -ge 2 && ${key[0]} == ssh-ed25519 && ${key[1]} =~ ^[A-Za-z0-9+/]+=*$ ]] || {
        echo "install-node: $1 is not one ssh-ed25519 public key" >&2
        return 1
    }
    printf '%s %s' "${key[0]}" "${key[1]}"
}

# The peer's sync key may log in only from the peer's address, only to run rrsync into the
# replica (write-only, links munged), with no pty, forwarding or agent (restrict).
sync_authorized_keys() {
    local replica="$1" peer="$2" key options
    _sync_address "$peer" || return 1
    key="$(_sync_ed25519 SYNC_PEER_PUBKEY "$3")" || return 1
    options="$(sync_rrsync_options)"
    printf 'from="%s",command="/usr/bin/rrsync %s%s",restrict %s mailrelay-queue-sync\n' \
        "$peer" "${options:+$options }" "$replica" "$key"
}

# The peer's host key, pinned: the agent's ssh uses only this file (StrictHostKeyChecking=yes),
# so a first connection is never trusted on sight.
sync_known_hosts() {
    local peer="$1" key
    _sync_address "$peer" || return 1
    key="$(_sync_ed25519 SYNC_PEER_HOST_KEY "$2")" || return 1
    printf '%s %s\n' "$peer" "$key"
}
