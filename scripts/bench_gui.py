"""The `gui` part of scripts/bench: latency of the dashboard, message tracking and audit pages
over a database the size of a busy relay's retention window.

A private PostgreSQL (tests/pgcluster.py) gets the app's migrations and generated rows, made by
PostgreSQL itself (INSERT ... SELECT FROM generate_series); `mailrelay serve` runs in its own
process over HTTPS, and concurrent logged-in clients in this process time each request from
sending it to the last byte of the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from bench import ROOT, save, svg_bars, table

RETENTION_DAYS = 14
USERNAME = "bench"
# A throwaway user of a throwaway database; its first password must be changed at first login.
FIRST_PASSWORD = secrets.token_urlsafe(16)
PASSWORD = secrets.token_urlsafe(16)

# One row per recipient outcome, 2.5 rows per message (recipients alternate 3 and 2), evenly
# over the retention window up to now. Per message (n): sender from 8 local parts x 40 app
# domains, skewed (app0 sends about 30 % of the mail, app39 under 1 %), its client, size and
# Message-ID; per row: recipient (300 destination domains, skewed), status (90 % sent, 6 %
# deferred, 3.5 % bounced, 0.5 % expired) with a matching relay, dsn and delay. random() is
# seeded per chunk, so a run is repeatable.
MAIL_LOGS_SQL = """
INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, relay, status,
                       delay_seconds, dsn, size, client)
SELECT msg_at + make_interval(secs => r3 * 2),
       'a',
       '4f' || upper(lpad(to_hex(n), 8, '0')) || 'z' || to_hex(n % 4096),
       to_char(msg_at, 'YYYYMMDDHH24MISS') || '.' || n || '@app' || dom || '.example.com',
       (ARRAY['alerts', 'noreply', 'billing', 'reports', 'monitoring', 'invoices', 'hr',
              'ci'])[1 + n % 8] || '@app' || dom || '.example.com',
       'u' || floor(r2 * 200000)::int || '@dest' || floor(300 * r3 ^ 3)::int || '.example',
       CASE WHEN status = 'sent' OR (status = 'deferred' AND r2 >= 0.5)
                THEN 'smtp' || dom % 5 || '.relay.example.net[203.0.113.' || 10 + dom % 5
                     || ']:587'
            WHEN status = 'deferred' THEN 'none'
            WHEN status = 'bounced'
                THEN 'mx.dest' || floor(300 * r3 ^ 3)::int || '.example[198.51.100.'
                     || floor(r3 * 250)::int || ']:25'
            ELSE '' END,
       status,
       CASE status WHEN 'sent' THEN 0.3 + r2 * 4 WHEN 'deferred' THEN 30 + r2 * 3000
                   WHEN 'bounced' THEN 0.5 + r2 ELSE 432000 END,
       CASE status WHEN 'sent' THEN '2.0.0' WHEN 'deferred' THEN '4.4.1'
                   WHEN 'bounced' THEN '5.1.1' ELSE '4.4.7' END,
       floor(1500 * exp(7 * ((n * 2246822519) % 4294967296) / 4294967296.0))::bigint,
       'app' || dom || '.example.com[10.20.' || dom || '.' || 10 + n % 20 || ']'
FROM (
    SELECT n, r2, r3,
           $3::timestamptz + make_interval(secs => n * $4::float8) AS msg_at,
           floor(40 * (((n * 2654435761) % 4294967296) / 4294967296.0) ^ 3)::int AS dom,
           CASE WHEN r1 < 0.90 THEN 'sent' WHEN r1 < 0.96 THEN 'deferred'
                WHEN r1 < 0.995 THEN 'bounced' ELSE 'expired' END AS status
    FROM (SELECT i * 2 / 5 AS n, random() AS r1, random() AS r2, random() AS r3
          FROM generate_series($1::bigint, $2::bigint - 1) AS i) AS draws
) AS messages
"""

# An application that stopped sending 12 days ago: its last 2 days in the window, to one partner
# domain. Searching for it is what an operator does when its mail "never arrived".
STOPPED_SQL = """
INSERT INTO mail_logs (at, node_id, queue_id, message_id, sender, recipient, relay, status,
                       delay_seconds, dsn, size, client)
SELECT $2::timestamptz + make_interval(secs => i * $3::float8),
       'a',
       '4e' || upper(lpad(to_hex(i), 8, '0')) || 'z1',
       'batch.' || i || '@legacy.example.com',
       'batch@legacy.example.com',
       'u' || i % 5000 || '@legacy-partner.example',
       'smtp0.relay.example.net[203.0.113.10]:587',
       'sent', 0.8, '2.0.0', 24000,
       'legacy.example.com[10.20.99.10]'
FROM generate_series(0, $1::bigint - 1) AS i
"""

# NOQUEUE rejects: mostly relay attempts from outside, some refused sender domains.
REJECTION_LOGS_SQL = """
INSERT INTO rejection_logs (at, node_id, client, sender, recipient, reason, code)
SELECT $2::timestamptz + make_interval(secs => i * $3::float8 + r),
       'a',
       CASE WHEN r < 0.7 THEN 'unknown[198.51.100.' || i % 250 || ']'
            ELSE 'app' || i % 40 || '.example.com[10.20.' || i % 40 || '.' || 10 + i % 20 || ']'
       END,
       CASE WHEN r < 0.7 THEN 'spam' || i % 997 || '@bulk' || i % 13 || '.example'
            ELSE 'x' || i % 50 || '@unlisted' || i % 7 || '.example' END,
       'user' || i % 5000 || '@dest' || i % 300 || '.example',
       CASE WHEN r < 0.7 THEN 'Relay access denied'
            ELSE 'Sender domain not allowed on this relay' END,
       CASE WHEN r < 0.7 THEN 554 ELSE 553 END
FROM (SELECT i, random() AS r FROM generate_series(0, $1::bigint - 1) AS i) AS draws
"""

# A year of audit entries from a dozen people: mostly logins, then configuration changes (with
# their before and after), applies, queue actions, route tests and refusals.
AUDIT_LOG_SQL = """
INSERT INTO audit_log (at, actor, action, target, source_ip, outcome, before, after)
SELECT now() - make_interval(secs => ($1 - i) * $2::float8),
       (ARRAY['admin', 'alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi',
              'ivan', 'judy', 'cli'])[1 + i % 12],
       action,
       CASE WHEN action LIKE 'domain.%' OR action = 'route.set' OR action = 'route.test'
                THEN 'app' || i % 40 || '.example.com'
            WHEN action = 'network.add' THEN '10.20.' || i % 40 || '.0/24'
            WHEN action LIKE 'queue.%' THEN '4f' || upper(lpad(to_hex(i), 8, '0')) || 'z1'
            WHEN action = 'access.denied' THEN 'POST /routes'
            ELSE '' END,
       '10.9.' || i % 4 || '.' || 20 + i % 30,
       CASE WHEN action = 'login' AND r2 < 0.08 THEN 'failed'
            WHEN action = 'access.denied' THEN 'denied' ELSE 'ok' END,
       CASE WHEN action IN ('route.set', 'domain.delete')
                THEN jsonb_build_object('lines', jsonb_build_array(
                    'route app' || i % 40 || '.example.com smtp' || i % 5
                    || '.relay.example.net:587 tls=encrypt')) END,
       CASE WHEN action IN ('route.set', 'domain.add', 'network.add')
                THEN jsonb_build_object('lines', jsonb_build_array(
                    'route app' || i % 40 || '.example.com smtp' || (i + 1) % 5
                    || '.relay.example.net:587 tls=verify'), 'version', i / 10) END
FROM (
    SELECT i, r2,
           CASE WHEN r1 < 0.60 THEN 'login' WHEN r1 < 0.70 THEN 'route.set'
                WHEN r1 < 0.75 THEN 'domain.add' WHEN r1 < 0.78 THEN 'domain.delete'
                WHEN r1 < 0.81 THEN 'network.add' WHEN r1 < 0.86 THEN 'config.apply'
                WHEN r1 < 0.91 THEN 'queue.hold' WHEN r1 < 0.95 THEN 'route.test'
                WHEN r1 < 0.97 THEN 'access.denied' WHEN r1 < 0.99 THEN 'password.change'
                ELSE 'token.create' END AS action
    FROM (SELECT i, random() AS r1, random() AS r2
          FROM generate_series(0, $1::bigint - 1) AS i) AS draws
) AS entries
"""

INDEXES_SQL = (
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
    "AND tablename = ANY($1::text[]) AND indexname NOT LIKE '%pkey'"
)


@dataclass
class Sizes:
    mail_logs: int
    rejection_logs: int
    audit_log: int
    clients: int
    requests: int  # per page, spread over the clients

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls(200_000, 10_000, 20_000, clients=8, requests=80)
        return cls(10_000_000, 500_000, 100_000, clients=8, requests=160)


@dataclass
class Page:
    name: str
    path: str
    marker: str  # in every answer: the page shows what it is measured for
    label: str  # under its bars in the chart (about 12 characters fit)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _lap(event: str, started: float) -> float:
    """Seconds since `started`, also printed: a 10M-row run takes minutes; show where it is."""
    seconds = time.perf_counter() - started
    print(f"  {event}: {seconds:.1f} s", flush=True)
    return seconds


# -- data -------------------------------------------------------------------------------------


async def _spread(conns: list[asyncpg.Connection], statements: list[str]) -> None:
    """Run independent statements, each connection taking the next one when it is free."""
    pending = list(statements)

    async def worker(conn: asyncpg.Connection) -> None:
        while pending:
            await conn.execute(pending.pop(0))

    await asyncio.gather(*(worker(conn) for conn in conns))


# The tables the pages read that a run fills; another checkout's schema gets the same rows.
FILLED = ["mail_logs", "rejection_logs", "audit_log"]


async def _bulk_load(
    dsn: str, fill: Callable[[list[asyncpg.Connection]], Awaitable[None]]
) -> dict[str, float]:
    """Fill FILLED fast: their secondary indexes (the app's own, as its migrations made them)
    are dropped for `fill` and built again afterwards from their definitions; the triggers that
    keep log_totals are off during `fill` and the totals are counted once (log_totals_rebuild(),
    as the migration does); then VACUUM ANALYZE, which autovacuum would long have done on a
    running node."""
    # One connection per core: each INSERT ... SELECT or CREATE INDEX keeps one core busy.
    conns = [await asyncpg.connect(dsn) for _ in range(max(2, os.cpu_count() or 2))]
    timings: dict[str, float] = {}
    try:
        for conn in conns:
            await conn.execute("SET maintenance_work_mem = '512MB'")
            # No user triggers (we are the superuser of a throwaway cluster).
            await conn.execute("SET session_replication_role = replica")
        indexes = await conns[0].fetch(INDEXES_SQL, FILLED)
        for index in indexes:
            await conns[0].execute(f'DROP INDEX "{index["indexname"]}"')

        started = time.perf_counter()
        await fill(conns)
        timings["insert_s"] = _lap("rows inserted", started)

        started = time.perf_counter()
        # A partitioned table's index reads "ON ONLY", which would build it on no partition.
        await _spread(conns, [index["indexdef"].replace(" ON ONLY ", " ON ") for index in indexes])
        timings["indexes_s"] = _lap("indexes built", started)

        started = time.perf_counter()
        await conns[0].execute("SELECT log_totals_rebuild()")
        timings["totals_s"] = _lap("log_totals rebuilt", started)

        started = time.perf_counter()
        await _spread(conns, [f"VACUUM ANALYZE {name}" for name in [*FILLED, "log_totals"]])
        timings["vacuum_analyze_s"] = _lap("vacuum analyze", started)
    finally:
        for conn in conns:
            await conn.close()
    return timings


async def generate(dsn: str, sizes: Sizes, days: int = RETENTION_DAYS) -> dict[str, float]:
    """Fill the log tables with `days` of a relay's mail up to now (_bulk_load)."""

    async def fill(conns: list[asyncpg.Connection]) -> None:
        span = days * 86400 - 600  # the oldest row is 10 minutes inside the window
        start = await conns[0].fetchval("SELECT now() - make_interval(secs => $1)", span)
        stopped = sizes.mail_logs // 200
        current = sizes.mail_logs - stopped
        step = span / (current * 2 // 5 + 1)
        chunk = -(-current // len(conns))

        async def mail_chunk(conn: asyncpg.Connection, lo: int) -> None:
            await conn.execute("SELECT setseed($1)", lo / current)
            await conn.execute(MAIL_LOGS_SQL, lo, min(lo + chunk, current), start, step)

        await asyncio.gather(*(mail_chunk(conn, k * chunk) for k, conn in enumerate(conns)))
        await conns[0].execute(STOPPED_SQL, stopped, start, 2 * 86400 / stopped)
        await conns[0].execute("SELECT setseed(0.5)")
        await conns[0].execute(
            REJECTION_LOGS_SQL, sizes.rejection_logs, start, span / sizes.rejection_logs
        )
        await conns[0].execute(AUDIT_LOG_SQL, sizes.audit_log, 365 * 86400 / sizes.audit_log)

    return await _bulk_load(dsn, fill)


COLUMNS_SQL = (
    "SELECT column_name FROM information_schema.columns "
    "WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position"
)


async def copy_rows(source_dsn: str, target_dsn: str) -> dict[str, float]:
    """The rows of FILLED, ids included, from one database into another whose schema another
    checkout's migrations made (before the day partitions the log tables were plain): in the
    columns both have, as text (a column's type may differ, serial against bigserial), each
    table in id ranges, one per connection (_bulk_load)."""

    async def fill(targets: list[asyncpg.Connection]) -> None:
        sources = [await asyncpg.connect(source_dsn) for _ in targets]
        try:
            for name in FILLED:
                wanted = {row[0] for row in await sources[0].fetch(COLUMNS_SQL, name)}
                columns = [
                    row[0] for row in await targets[0].fetch(COLUMNS_SQL, name)
                    if row[0] in wanted
                ]  # fmt: skip
                low, high = await sources[0].fetchrow(
                    f"SELECT min(id), max(id) FROM {name}"  # noqa: S608
                )
                if low is None:
                    continue
                step = (high - low) // len(targets) + 1
                await asyncio.gather(
                    *(
                        _copy_range(source, target, name, columns, low + k * step, step)
                        for k, (source, target) in enumerate(zip(sources, targets, strict=True))
                    )
                )
                counts = [
                    await conn.fetchval(f"SELECT count(*) FROM {name}")  # noqa: S608
                    for conn in (sources[0], targets[0])
                ]
                if counts[0] != counts[1]:
                    raise RuntimeError(f"{name}: {counts[1]} of {counts[0]} rows copied")
                # The app adds audit entries: its ids must follow the copied ones.
                await targets[0].execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), {high})"
                )
        finally:
            for source in sources:
                await source.close()

    return await _bulk_load(target_dsn, fill)


async def _copy_range(
    source: asyncpg.Connection,
    target: asyncpg.Connection,
    name: str,
    columns: list[str],
    first: int,
    count: int,
) -> None:
    """The rows of `name` with ids from `first` to first + count - 1, streamed from one COPY
    into the other."""
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
    names = ", ".join(columns)

    async def read() -> None:
        try:
            await source.copy_from_query(
                f"SELECT {names} FROM {name} WHERE id >= $1 AND id < $2",  # noqa: S608
                first,
                first + count,
                output=chunks.put,
            )
        finally:
            await chunks.put(None)

    async def stream() -> AsyncIterator[bytes]:
        while (chunk := await chunks.get()) is not None:
            yield chunk

    async with asyncio.TaskGroup() as both:  # one failing stops the other
        both.create_task(read())
        both.create_task(target.copy_to_table(name, source=stream(), columns=columns))


async def search_targets(dsn: str) -> dict[str, str]:
    """What the tracking searches look for: the busiest sender, the application that stopped
    sending (its address, its domain, its partner's domain), and one message (recipient,
    Message-ID, queue ID) from the middle of the window."""
    conn = await asyncpg.connect(dsn)
    try:
        busy = await conn.fetchval(
            "SELECT sender FROM mail_logs GROUP BY sender ORDER BY count(*) DESC LIMIT 1"
        )
        middle = await conn.fetchrow(
            "SELECT recipient, queue_id, message_id FROM mail_logs "
            "WHERE id >= (SELECT (min(id) + max(id)) / 2 FROM mail_logs) ORDER BY id LIMIT 1"
        )
    finally:
        await conn.close()
    return {
        "busy sender": busy,
        "stopped sender": "batch@legacy.example.com",
        "stopped sender domain": "@legacy.example.com",
        "stopped recipient domain": "@legacy-partner.example",
        "recipient": middle["recipient"],
        "Message-ID": middle["message_id"],
        "queue ID": middle["queue_id"],
    }


# Which search field each target goes in, and its label in the chart.
FIELDS = {
    "busy sender": ("sender", "busy sender"),
    "stopped sender": ("sender", "old sender"),
    "stopped sender domain": ("sender", "@old sender"),
    "stopped recipient domain": ("recipient", "@old rcpt"),
    "recipient": ("recipient", "recipient"),
    "Message-ID": ("message_id", "Message-ID"),
    "queue ID": ("queue_id", "queue ID"),
}


def pages(targets: dict[str, str]) -> list[Page]:
    tracking = [
        Page(
            f"tracking: {name}",
            f"/tracking?{httpx.QueryParams({FIELDS[name][0]: value})}",
            '<tr class="',
            FIELDS[name][1],
        )
        for name, value in targets.items()
    ]
    return [
        Page("dashboard", "/", 'class="tile"', "dashboard"),
        *tracking,
        Page("audit", "/audit", '<tr class="', "audit"),
        Page("audit: action filter", "/audit?action=route", '<tr class="', "audit filter"),
    ]


# -- the server and its clients ---------------------------------------------------------------


def node_env(dsn: str, workdir: Path) -> dict[str, str]:
    """A master node's settings, and nothing from the caller's environment but PATH: no agent
    listens on AGENT_SOCKET, so the dashboard says Postfix is unreachable (one failed connect,
    as on a host where only the GUI runs)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": dsn,
        "PICCOLO_CONF": "app.piccolo_conf",
        "STATE_DIR": str(workdir / "state"),
        "CLUSTER_MODE": "master",
        "NODE_ID": "a",
        "RETENTION_DAYS": str(RETENTION_DAYS),
        "HTMX_SOURCE": "local",
        "AGENT_SOCKET": str(workdir / "agent.sock"),
        "POSTFIX_LOG_FILE": str(workdir / "postfix.log"),
        "HTTPS_HOST": "127.0.0.1",
        "HTTPS_PORT": str(_free_port()),
    }


def cli(env: dict[str, str], *args: str, stdin: str | None = None, checkout: Path = ROOT) -> None:
    """`mailrelay ARGS` of `checkout`."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env | {"PYTHONPATH": str(checkout)},
        cwd=checkout,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mailrelay {args[0]} failed:\n{result.stdout}{result.stderr}")


@contextlib.contextmanager
def serving(
    env: dict[str, str], workdir: Path, checkout: Path = ROOT
) -> Iterator[tuple[str, ssl.SSLContext]]:
    """`mailrelay serve` of `checkout` in its own process; yields its URL and a context that
    trusts its self-signed certificate (made at start in STATE_DIR)."""
    log_file = workdir / "serve.log"
    with log_file.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            env=env | {"PYTHONPATH": str(checkout)},
            cwd=checkout,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"https://127.0.0.1:{env['HTTPS_PORT']}"
    cert = Path(env["STATE_DIR"]) / "tls" / "node.crt"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mailrelay serve did not start:\n{log_file.read_text()}")
            with contextlib.suppress(httpx.HTTPError, OSError, ssl.SSLError):
                context = ssl.create_default_context(cafile=str(cert))
                if httpx.get(url + "/healthz", verify=context, timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url, context
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def _form(client: httpx.AsyncClient, path: str, data: dict[str, str]) -> httpx.Response:
    if "__Host-csrftoken" not in client.cookies:
        await client.get("/login")
    return await client.post(
        path, data=data, headers={"x-csrftoken": client.cookies["__Host-csrftoken"]}
    )


async def first_login(url: str, context: ssl.SSLContext) -> None:
    """The new user's first login and the password change it forces, as a person does them."""
    async with httpx.AsyncClient(base_url=url, verify=context) as client:
        answer = await _form(client, "/login", {"username": USERNAME, "password": FIRST_PASSWORD})
        if answer.headers.get("location") != "/password":
            raise RuntimeError(f"first login: {answer.status_code} {answer.text[:300]}")
        answer = await _form(
            client,
            "/password",
            {
                "current_password": FIRST_PASSWORD,
                "new_password": PASSWORD,
                "new_password_again": PASSWORD,
            },
        )
        if answer.status_code != 303:
            raise RuntimeError(f"password change: {answer.status_code} {answer.text[:300]}")


async def logged_in(url: str, context: ssl.SSLContext) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=url, verify=context, timeout=600)
    answer = await _form(client, "/login", {"username": USERNAME, "password": PASSWORD})
    if answer.status_code != 303 or answer.headers.get("location") != "/":
        await client.aclose()
        raise RuntimeError(f"login: {answer.status_code} {answer.text[:300]}")
    return client


async def timed_get(client: httpx.AsyncClient, page: Page) -> float:
    started = time.perf_counter()
    answer = await client.get(page.path)
    seconds = time.perf_counter() - started  # the whole page has been read
    if answer.status_code != 200 or page.marker not in answer.text:
        raise RuntimeError(f"{page.path}: {answer.status_code} {answer.text[:500]}")
    return seconds


def latency_summary(latencies: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in latencies)
    return {
        "p50_ms": statistics.median(ms),
        "p95_ms": statistics.quantiles(ms, n=20, method="inclusive")[18],
        "max_ms": ms[-1],
    }


async def load_page(
    clients: list[httpx.AsyncClient], page: Page, requests: int
) -> tuple[list[float], float]:
    """`requests` loads of one page between the clients, each client sending its next request
    as soon as it has read its previous answer. Returns the latencies and the wall time."""
    latencies: list[float] = []
    left = requests

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            latencies.append(await timed_get(client, page))

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(client) for client in clients))
    return latencies, time.perf_counter() - started


async def measure_pages(
    url: str, context: ssl.SSLContext, measured: list[Page], sizes: Sizes
) -> list[dict[str, Any]]:
    """Per page: every client loads it once (warm-up, and a check that it shows what it
    should), then the clients load it `sizes.requests` times between them, each as soon as its
    previous answer is read."""
    await first_login(url, context)
    clients = [await logged_in(url, context) for _ in range(sizes.clients)]
    results = []
    try:
        for page in measured:
            await asyncio.gather(*(timed_get(client, page) for client in clients))
            latencies, wall = await load_page(clients, page, sizes.requests)
            result = {
                "page": page.name,
                "label": page.label,
                "path": page.path,
                "requests": len(latencies),
                **latency_summary(latencies),
                "requests_per_s": len(latencies) / wall,
            }
            print(
                f"  {page.name}: p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms",
                flush=True,
            )
            results.append(result)
    finally:
        for client in clients:
            await client.aclose()
    return results


# Per page, each server in this order, twice: each runs first as often as last, so that drift on
# a shared machine falls on both.
SIDE_BY_SIDE_ORDER = (0, 1, 1, 0) * 2


async def side_by_side(
    servers: dict[str, tuple[str, ssl.SSLContext]], measured: list[Page], sizes: Sizes
) -> list[dict[str, Any]]:
    """Two servers (whose user has had its first login) page by page, alternated: per page
    and server, `sizes.requests` requests in quarters, each after a warm-up of the page.
    Per page: its name, label and, per server, its requests and latency_summary."""
    names = list(servers)
    clients: dict[str, list[httpx.AsyncClient]] = {}
    try:
        for name, (url, context) in servers.items():
            clients[name] = [await logged_in(url, context) for _ in range(sizes.clients)]
        results = []
        for page in measured:
            latencies: dict[str, list[float]] = {name: [] for name in names}
            for name in (names[index] for index in SIDE_BY_SIDE_ORDER):
                await asyncio.gather(*(timed_get(c, page) for c in clients[name]))
                got, _ = await load_page(clients[name], page, sizes.requests // 4)
                latencies[name] += got
            row: dict[str, Any] = {"page": page.name, "label": page.label}
            for name, values in latencies.items():
                row[name] = {"requests": len(values), **latency_summary(values)}
            print(
                f"  {page.name}: p95 "
                + ", ".join(f"{row[name]['p95_ms']:.0f} ms {name}" for name in names),
                flush=True,
            )
            results.append(row)
        return results
    finally:
        for each in clients.values():
            for client in each:
                await client.aclose()


async def measure_queries(dsn: str, targets: dict[str, str], runs: int) -> list[dict[str, Any]]:
    """The app's own query functions behind the pages, called alone from this process, one at a
    time: what the database costs, without HTTP, sessions and templates."""
    os.environ["DATABASE_URL"] = dsn  # read when app.piccolo_conf is first imported
    os.environ["PICCOLO_CONF"] = "app.piccolo_conf"
    from app import reports
    from app.db import pool
    from app.piccolo_conf import DB

    queries: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("dashboard: kpi_tiles (1 h, 24 h, retention)", lambda: reports.kpi_tiles(RETENTION_DAYS)),
        ("dashboard: hourly_traffic (24 h)", reports.hourly_traffic),
        ("dashboard: recent_rejects", reports.recent_rejects),
        *(
            (
                f"tracking: {name}",
                lambda name=name, value=value: reports.search_messages(**{FIELDS[name][0]: value}),
            )
            for name, value in targets.items()
        ),
        ("audit: audit_entries", lambda: reports.audit_entries(limit=51)),
        ("audit: action filter", lambda: reports.audit_entries(action="route", limit=51)),
    ]
    await pool.start_for_pages(min_size=1, max_size=1)  # as the web app's
    results = []
    try:
        for name, query in queries:
            await query()
            latencies = []
            for _ in range(runs):
                started = time.perf_counter()
                await query()
                latencies.append(time.perf_counter() - started)
            summary = latency_summary(latencies)
            results.append({"query": name, "runs": runs, **summary})
            print(f"  {name}: p50 {_ms(summary['p50_ms'])} ms", flush=True)
    finally:
        await DB.close_connection_pool()
    return results


# -- the part ---------------------------------------------------------------------------------


def terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    print("bench gui: terminated, cleaning up", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def bench_gui(quick: bool, before: Path | None = None) -> None:
    """The pages and the queries alone; with `before` (a checkout), its server beside this
    one's, each on a database its own migrations made holding the same rows, the two
    alternated page by page (side_by_side)."""
    from tests.pgcluster import PostgresCluster

    # A plain `kill` ends the run through the finally blocks: no server or cluster left behind.
    signal.signal(signal.SIGTERM, terminated)
    sizes = Sizes.for_run(quick)
    workdir = Path(tempfile.mkdtemp(prefix="bench-gui-"))
    cluster = PostgresCluster()
    try:
        cluster.start()
        dsn = cluster.create_database("bench_gui")
        env = node_env(dsn, workdir)
        print(f"generating {sizes.mail_logs:,} mail_logs rows", flush=True)
        setup = ready_database(env, lambda: generate(dsn, sizes))
        targets = asyncio.run(search_targets(dsn))
        measured = pages(targets)
        print(f"{sizes.clients} clients, {sizes.requests} requests per page", flush=True)
        if before is None:
            with serving(env, workdir) as (url, context):
                page_results = asyncio.run(measure_pages(url, context, measured, sizes))
        else:
            before = before.resolve()
            (workdir / "before").mkdir()
            before_dsn = cluster.create_database("bench_gui_before")
            before_env = node_env(before_dsn, workdir / "before")
            print(f"the same rows in the schema of {before}", flush=True)
            setup["before"] = ready_database(before_env, lambda: copy_rows(dsn, before_dsn), before)
            with contextlib.ExitStack() as stack:
                # In this order: side_by_side starts each page with the first, before.
                servers = {
                    "before": stack.enter_context(serving(before_env, workdir / "before", before)),
                    "now": stack.enter_context(serving(env, workdir)),
                }
                page_results = asyncio.run(side_by_side_new_users(servers, measured, sizes))
        print("the queries alone", flush=True)
        query_results = asyncio.run(measure_queries(dsn, targets, runs=5))
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(sizes, setup, targets, page_results, query_results, before)


def ready_database(
    env: dict[str, str],
    fill: Callable[[], Awaitable[dict[str, float]]],
    checkout: Path = ROOT,
) -> dict[str, Any]:
    """A database ready for `checkout`'s server: its migrations, the day partitions of the
    window (as the daily timer makes them), the rows `fill` loads, the bench's user. Returns
    fill's timings and the whole time."""
    started = time.perf_counter()
    cli(env, "migrate", checkout=checkout)
    cli(env, "retention", checkout=checkout)
    timings: dict[str, Any] = asyncio.run(fill())
    cli(env, "create-user", USERNAME, "--role", "readonly", "--password-stdin",
        stdin=FIRST_PASSWORD + "\n", checkout=checkout)  # fmt: skip
    timings["total_s"] = time.perf_counter() - started
    return timings


async def side_by_side_new_users(
    servers: dict[str, tuple[str, ssl.SSLContext]], measured: list[Page], sizes: Sizes
) -> list[dict[str, Any]]:
    """side_by_side of servers with a database each, whose user has not logged in yet."""
    for url, context in servers.values():
        await first_login(url, context)
    return await side_by_side(servers, measured, sizes)


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def report(
    sizes: Sizes,
    setup: dict[str, float],
    targets: dict[str, str],
    page_results: list[dict[str, Any]],
    query_results: list[dict[str, Any]],
    before: Path | None = None,
) -> None:
    title = (
        f"GUI pages over HTTPS with {sizes.mail_logs:,} mail_logs, {sizes.rejection_logs:,} "
        f"rejection_logs and {sizes.audit_log:,} audit_log rows; {sizes.clients} concurrent "
        "clients in another process than the server"
    )
    if before is None:
        text = table(
            title,
            ["page", "requests", "p50 ms", "p95 ms", "max ms", "requests/s"],
            [
                [r["page"], r["requests"], _ms(r["p50_ms"]), _ms(r["p95_ms"]), _ms(r["max_ms"]),
                 f"{r['requests_per_s']:.1f}"]
                for r in page_results
            ],
        )  # fmt: skip
        bars = {name: [r[f"{name}_ms"] for r in page_results] for name in ("p50", "p95")}
    else:
        text = table(
            f"{title}; the server of {before} (before) and of this checkout (now), each on a "
            "database its own migrations made holding the same rows, each page on each in the "
            "order before, now, now, before, twice",
            ["page", "requests each", "before p50 ms", "before p95 ms", "now p50 ms",
             "now p95 ms", "p95 now / before"],
            [
                [r["page"], r["now"]["requests"], _ms(r["before"]["p50_ms"]),
                 _ms(r["before"]["p95_ms"]), _ms(r["now"]["p50_ms"]), _ms(r["now"]["p95_ms"]),
                 f"{r['now']['p95_ms'] / r['before']['p95_ms']:.2f}"]
                for r in page_results
            ],
        )  # fmt: skip
        bars = {
            f"p95 {name}": [r[name]["p95_ms"] for r in page_results] for name in ("before", "now")
        }
    text += "\n\n" + table(
        "The query code behind the pages, alone (one call at a time, no HTTP or templates)",
        ["query", "runs", "p50 ms", "max ms"],
        [[r["query"], r["runs"], _ms(r["p50_ms"]), _ms(r["max_ms"])] for r in query_results],
    )
    text += (
        f"\n\ndata made in {setup['total_s']:.0f} s: insert {setup['insert_s']:.0f} s, "
        f"indexes {setup['indexes_s']:.0f} s, log_totals {setup['totals_s']:.0f} s, "
        f"vacuum analyze {setup['vacuum_analyze_s']:.0f} s"
    )
    if "before" in setup:
        text += (
            f"; the same rows in the before checkout's schema in {setup['before']['total_s']:.0f}"
            f" s (copy {setup['before']['insert_s']:.0f} s, indexes "
            f"{setup['before']['indexes_s']:.0f} s)"
        )
    data = {
        "rows": {
            "mail_logs": sizes.mail_logs,
            "rejection_logs": sizes.rejection_logs,
            "audit_log": sizes.audit_log,
        },
        "clients": sizes.clients,
        "requests_per_page": sizes.requests,
        "setup": setup,
        "targets": targets,
        "pages": page_results,
        "before": str(before) if before else None,
        "queries_alone": query_results,
    }
    chart = svg_bars(
        f"GUI page latency, {sizes.mail_logs:,} mail_logs rows, {sizes.clients} clients",
        [r["label"] for r in page_results],
        bars,
        "ms",
    )
    save("gui", data, chart, text)
