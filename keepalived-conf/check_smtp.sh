#!/bin/bash
# mailrelay-ha: keepalived track script. Exit 0 when Postfix greets with "220" on HOST:PORT
# within TIMEOUT seconds, 1 otherwise.
#
# Usage: check_smtp.sh [HOST [PORT [TIMEOUT]]]   (defaults: 127.0.0.1 25 2)
#
# Why a greeting and not only "is port 25 open": a stuck Postfix (full disk, dead master) can keep
# the socket open while never answering. A frozen Postfix (queue sync) greets late but greets, so
# the timeout must stay above the longest freeze. Each check is one short SMTP session that ends
# with QUIT; Postfix logs it as a connect/disconnect from this node's own address.
#
# keepalived runs this as its script_user (never root), so it needs no privileges; bash's
# /dev/tcp keeps it free of netcat variants.
set -u

host=${1:-127.0.0.1}
port=${2:-25}
limit=${3:-2}

case $host in *[!0-9A-Fa-f.:]*|'') echo "check_smtp: bad host: $host" >&2; exit 1 ;; esac
case $port in *[!0-9]*|'') echo "check_smtp: bad port: $port" >&2; exit 1 ;; esac
case $limit in *[!0-9.]*|'') echo "check_smtp: bad timeout: $limit" >&2; exit 1 ;; esac

# The whole session (connect, greeting, QUIT) must fit in the time limit; timeout kills it if not.
exec timeout --kill-after=1 "$limit" bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    IFS= read -r greeting <&3 || exit 1
    # "220 host ESMTP" or the first line of a multi-line "220-" greeting.
    case $greeting in
        220[\ -]*|220) ;;
        *) exit 1 ;;
    esac
    printf "QUIT\r\n" >&3
    exit 0
' check_smtp "$host" "$port"
