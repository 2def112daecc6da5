"""Written by hand: counters that /metrics reads in constant time, and the alerts' state.

/metrics counted sync_runs with count(*) ... GROUP BY outcome on every scrape: about 17,000
rows a day per node, so each scrape got slower until retention pruned it. sync_run_totals holds
the runs per node and outcome; traffic_totals the mail the node took in, the delivery outcomes
and the rejections. Statement triggers on INSERT keep them inside the writer's own transaction,
for every writer (the job, the spool flush, tests). They are counters in Prometheus' sense: they
only grow. Retention deleting (or dropping) old rows does not take anything off, which is why
they cannot be sums over log_totals (those follow the rows retention keeps).

alert_state is one row per node and alert (app/alerts): whether its condition holds, since when, and
the figure it was judged on; alert_notices per alert and channel (email, webhook) what that
channel was last told and when, so that each channel says "started" once and "cleared" once and
a failed delivery is tried again by the next run without repeating the other channel.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-12-05T11:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "kept counters for /metrics; alert state"

# Piccolo's raw() reads braces as placeholders: none in here. The migration runs in one
# transaction: a row written while it runs waits for the trigger and is counted once.
FORWARDS = [
    """
    CREATE TABLE sync_run_totals (
        node_id varchar(32) NOT NULL,
        outcome varchar(16) NOT NULL,
        runs bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (node_id, outcome)
    )
    """,
    """
    CREATE FUNCTION sync_run_totals_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO sync_run_totals AS t (node_id, outcome, runs)
        SELECT node_id, outcome, count(*) FROM new_rows GROUP BY node_id, outcome
        ON CONFLICT (node_id, outcome) DO UPDATE SET runs = t.runs + EXCLUDED.runs;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER sync_run_totals_insert AFTER INSERT ON sync_runs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sync_run_totals_trigger()
    """,
    """
    INSERT INTO sync_run_totals (node_id, outcome, runs)
    SELECT node_id, outcome, count(*) FROM sync_runs GROUP BY node_id, outcome
    """,
    """
    CREATE TABLE traffic_totals (
        node_id varchar(32) NOT NULL,
        -- accepted (a message first seen in the log) | sent | deferred | bounced | expired
        -- (a mail_logs row of that status: one per recipient and attempt) | rejected
        kind varchar(16) NOT NULL,
        events bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (node_id, kind)
    )
    """,
    """
    CREATE FUNCTION traffic_totals_mail_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO traffic_totals AS t (node_id, kind, events)
        SELECT node_id, status, count(*) FROM new_rows GROUP BY node_id, status
        ON CONFLICT (node_id, kind) DO UPDATE SET events = t.events + EXCLUDED.events;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION traffic_totals_rows_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- TG_ARGV[0]: what a row of this table counts as.
        INSERT INTO traffic_totals AS t (node_id, kind, events)
        SELECT node_id, TG_ARGV[0], count(*) FROM new_rows GROUP BY node_id
        ON CONFLICT (node_id, kind) DO UPDATE SET events = t.events + EXCLUDED.events;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER traffic_totals_insert AFTER INSERT ON mail_logs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION traffic_totals_mail_trigger()
    """,
    """
    CREATE TRIGGER traffic_totals_insert AFTER INSERT ON rejection_logs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION traffic_totals_rows_trigger('rejected')
    """,
    # Ingestion upserts log_messages: only the rows the INSERT made are in new_rows (a queue
    # ID already known is an UPDATE), so each message counts once.
    """
    CREATE TRIGGER traffic_totals_insert AFTER INSERT ON log_messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION traffic_totals_rows_trigger('accepted')
    """,
    # The start: what the tables hold now, counted once (log_totals has no node_id).
    """
    INSERT INTO traffic_totals (node_id, kind, events)
    SELECT node_id, kind, count(*) FROM (
        SELECT node_id, status AS kind FROM mail_logs
        UNION ALL SELECT node_id, 'rejected' FROM rejection_logs
        UNION ALL SELECT node_id, 'accepted' FROM log_messages
    ) AS rows GROUP BY node_id, kind
    """,
    """
    CREATE TABLE alert_state (
        node_id varchar(32) NOT NULL,
        key varchar(64) NOT NULL,
        active boolean NOT NULL,
        -- when the condition began to hold (active) or stopped holding (not active)
        since timestamptz NOT NULL,
        -- what a person reads: English with %s places (translated where it is shown), values
        text text NOT NULL DEFAULT '',
        text_values text[] NOT NULL DEFAULT ARRAY[]::text[],
        -- the figure the condition was judged on, for the next run (e.g. a counter)
        figure double precision,
        checked_at timestamptz NOT NULL,
        PRIMARY KEY (node_id, key)
    )
    """,
    """
    CREATE TABLE alert_notices (
        node_id varchar(32) NOT NULL,
        key varchar(64) NOT NULL,
        channel varchar(16) NOT NULL,
        -- what the channel was last told: true "started", false "cleared"
        reported boolean NOT NULL DEFAULT false,
        last_sent_at timestamptz,
        last_error text NOT NULL DEFAULT '',
        PRIMARY KEY (node_id, key, channel),
        FOREIGN KEY (node_id, key) REFERENCES alert_state (node_id, key) ON DELETE CASCADE
    )
    """,
]

BACKWARDS = [
    "DROP TABLE IF EXISTS alert_notices",
    "DROP TABLE IF EXISTS alert_state",
    *(
        f"DROP TRIGGER IF EXISTS traffic_totals_insert ON {table}"
        for table in ("mail_logs", "rejection_logs", "log_messages")
    ),
    "DROP FUNCTION IF EXISTS traffic_totals_rows_trigger()",
    "DROP FUNCTION IF EXISTS traffic_totals_mail_trigger()",
    "DROP TABLE IF EXISTS traffic_totals",
    "DROP TRIGGER IF EXISTS sync_run_totals_insert ON sync_runs",
    "DROP FUNCTION IF EXISTS sync_run_totals_trigger()",
    "DROP TABLE IF EXISTS sync_run_totals",
]


class _Raw(Table):
    pass


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        for statement in FORWARDS:
            await _Raw.raw(statement)

    async def run_backwards():
        for statement in BACKWARDS:
            await _Raw.raw(statement)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
