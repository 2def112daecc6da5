#!/bin/sh
# Entry point of localhost/mailrelay-postgres:15 (runs as the image's postgres user).
#
# First start (no $PGDATA/PG_VERSION): initdb, then create the role $POSTGRES_USER with the
# password read from $POSTGRES_PASSWORD_FILE (a podman secret) and the database $POSTGRES_DB
# owned by it. Every start: exec postgres listening on $POSTGRES_LISTEN_ADDRESSES:$PGPORT.
# Local (unix socket, inside the container) logins use peer authentication; TCP logins need the
# password (scram-sha-256).
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
PGPORT="${PGPORT:-5432}"
POSTGRES_USER="${POSTGRES_USER:-mailrelay}"
POSTGRES_DB="${POSTGRES_DB:-mailrelay}"
POSTGRES_LISTEN_ADDRESSES="${POSTGRES_LISTEN_ADDRESSES:-127.0.0.1}"
export PGDATA PGPORT

say() { echo "mailrelay-postgres: $*" >&2; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    file="${POSTGRES_PASSWORD_FILE:-/run/secrets/mailrelay-db-password}"
    if [ ! -r "$file" ]; then
        say "no password: $file is not readable (podman secret mailrelay-db-password)"
        exit 1
    fi
    password="$(cat "$file")"
    if [ -z "$password" ]; then
        say "$file is empty"
        exit 1
    fi
    say "initialising $PGDATA"
    chmod 0700 "$PGDATA"
    initdb -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    pg_ctl -D "$PGDATA" -w -s -o "-c listen_addresses='' -k /run/postgresql" start
    # The password never goes on a command line (any user sees those in ps): psql reads the
    # file itself, and :'password' quotes it as a literal.
    psql -v ON_ERROR_STOP=1 -q -h /run/postgresql -U postgres -d postgres \
        -v user="$POSTGRES_USER" -v db="$POSTGRES_DB" -v file="$file" <<'SQL'
\set password `cat :'file'`
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user" ENCODING 'UTF8' TEMPLATE template0;
SQL
    pg_ctl -D "$PGDATA" -w -s -m fast stop
    say "created role $POSTGRES_USER and database $POSTGRES_DB"
fi

exec postgres -D "$PGDATA" -p "$PGPORT" -k /run/postgresql \
    -c listen_addresses="$POSTGRES_LISTEN_ADDRESSES" \
    -c password_encryption=scram-sha-256
