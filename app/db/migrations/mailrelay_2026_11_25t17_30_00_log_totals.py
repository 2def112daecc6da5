"""Written by hand: five-minute totals of mail_logs and rejection_logs, kept by the database.

The dashboard shows, for the last hour, 24 hours and the whole retention window, how many
messages were accepted (distinct queue IDs), how many recipients were delivered, deferred and
bounced, how many transactions were rejected, and a 24-hour chart. Counted from the log tables
on every page view, that read the whole of mail_logs: 13.5 s for the retention tile alone at
10 million rows (scripts/bench gui).

log_totals holds per five minutes (UTC) the mail_logs rows of each status, the rejection_logs
rows, and `messages`: the queue IDs whose latest mail_logs row falls in those five minutes. A
queue ID counts once, where its latest row is, so the sum of `messages` since T is the number
of distinct queue IDs with a row since T, exactly what count(DISTINCT queue_id) gave.

Statement triggers keep the totals exact for every writer (ingestion, retention, tests, an
operator's manual DELETE or UPDATE) inside the writer's own transaction. An advisory lock lets
one writer at a time update them, so that two writers never read a queue ID's latest row past
each other. TRUNCATE of a log table zeroes its columns. log_totals_rebuild() recounts
everything: this migration uses it, and so can a bulk load made with the triggers off.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-25T17:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "five-minute totals of the log tables for the dashboard"

# Piccolo's raw() reads braces as placeholders: no '{}' array literals in here.
# The bucket of a row: date_bin('5 minutes', at, '2000-01-01 00:00+00'), the same in every
# time zone. app/reports.py cuts its periods at the same five-minute boundaries.
FORWARDS = [
    """
    CREATE TABLE log_totals (
        period_start timestamptz PRIMARY KEY,
        sent bigint NOT NULL DEFAULT 0,
        deferred bigint NOT NULL DEFAULT 0,
        bounced bigint NOT NULL DEFAULT 0,
        expired bigint NOT NULL DEFAULT 0,
        -- queue IDs whose latest mail_logs row is in these five minutes
        messages bigint NOT NULL DEFAULT 0,
        rejected bigint NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE FUNCTION log_totals_bucket(at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_bin('5 minutes', at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    """,
    """
    CREATE FUNCTION log_totals_add(
        changes log_totals[]
    ) RETURNS void LANGUAGE sql AS $$
        INSERT INTO log_totals AS t
            (period_start, sent, deferred, bounced, expired, messages, rejected)
        SELECT period_start, sum(sent), sum(deferred), sum(bounced), sum(expired),
               sum(messages), sum(rejected)
        FROM unnest(changes) GROUP BY period_start
        ON CONFLICT (period_start) DO UPDATE SET
            sent = t.sent + EXCLUDED.sent,
            deferred = t.deferred + EXCLUDED.deferred,
            bounced = t.bounced + EXCLUDED.bounced,
            expired = t.expired + EXCLUDED.expired,
            messages = t.messages + EXCLUDED.messages,
            rejected = t.rejected + EXCLUDED.rejected;
        -- Periods that retention emptied go.
        DELETE FROM log_totals WHERE sent = 0 AND deferred = 0 AND bounced = 0
            AND expired = 0 AND messages = 0 AND rejected = 0;
    $$
    """,
    """
    CREATE FUNCTION mail_log_totals_apply(gone mail_logs[], added mail_logs[])
    RETURNS void LANGUAGE sql
    -- Always by queue_id through its index: on a table without statistics yet (a fresh node's
    -- first ingestion) the planner would otherwise scan all of mail_logs.
    SET enable_seqscan = off
    AS $$
        WITH changed AS (
            SELECT at, status, queue_id, -1 AS sign FROM unnest(gone)
            UNION ALL
            SELECT at, status, queue_id, 1 AS sign FROM unnest(added)
        ), added_ids AS (
            SELECT queue_id, array_agg(id) AS ids FROM unnest(added) GROUP BY queue_id
        ), gone_latest AS (
            SELECT queue_id, max(at) AS at FROM unnest(gone) GROUP BY queue_id
        ), latest AS (
            -- Each touched queue ID's latest row before and after the statement: after is
            -- what the table holds now; before leaves out the added rows, takes the gone ones.
            SELECT q.queue_id,
                   greatest(
                       max(m.at) FILTER (
                           WHERE m.id <> ALL (coalesce(a.ids, ARRAY[]::bigint[]))),
                       max(g.at)
                   ) AS before,
                   max(m.at) AS after
            FROM (SELECT DISTINCT queue_id FROM changed) AS q
            LEFT JOIN mail_logs AS m ON m.queue_id = q.queue_id
            LEFT JOIN added_ids AS a ON a.queue_id = q.queue_id
            LEFT JOIN gone_latest AS g ON g.queue_id = q.queue_id
            GROUP BY q.queue_id
        )
        SELECT log_totals_add(array_agg(ROW(
            period_start, sent, deferred, bounced, expired, messages, 0)::log_totals))
        FROM (
            SELECT log_totals_bucket(at) AS period_start,
                   coalesce(sum(sign) FILTER (WHERE status = 'sent'), 0) AS sent,
                   coalesce(sum(sign) FILTER (WHERE status = 'deferred'), 0) AS deferred,
                   coalesce(sum(sign) FILTER (WHERE status = 'bounced'), 0) AS bounced,
                   coalesce(sum(sign) FILTER (WHERE status = 'expired'), 0) AS expired,
                   0 AS messages
            FROM changed GROUP BY 1
            UNION ALL
            SELECT log_totals_bucket(before), 0, 0, 0, 0, -1
            FROM latest WHERE before IS NOT NULL
            UNION ALL
            SELECT log_totals_bucket(after), 0, 0, 0, 0, 1
            FROM latest WHERE after IS NOT NULL
        ) AS deltas
        HAVING count(*) > 0;
    $$
    """,
    """
    CREATE FUNCTION mail_log_totals_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        gone mail_logs[] := ARRAY[]::mail_logs[];
        added mail_logs[] := ARRAY[]::mail_logs[];
    BEGIN
        -- One writer of the totals at a time ("totl"): the next one sees this one's rows.
        PERFORM pg_advisory_xact_lock(1953461356);
        IF TG_OP = 'TRUNCATE' THEN
            UPDATE log_totals SET sent = 0, deferred = 0, bounced = 0, expired = 0,
                messages = 0;
            DELETE FROM log_totals WHERE rejected = 0;
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            SELECT coalesce(array_agg(o::mail_logs), gone) INTO gone FROM old_rows AS o;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            SELECT coalesce(array_agg(n::mail_logs), added) INTO added FROM new_rows AS n;
        END IF;
        PERFORM mail_log_totals_apply(gone, added);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION rejection_log_totals_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        changes log_totals[] := ARRAY[]::log_totals[];
    BEGIN
        PERFORM pg_advisory_xact_lock(1953461356);
        IF TG_OP = 'TRUNCATE' THEN
            UPDATE log_totals SET rejected = 0;
            DELETE FROM log_totals WHERE sent = 0 AND deferred = 0 AND bounced = 0
                AND expired = 0 AND messages = 0;
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            SELECT changes || coalesce(array_agg(ROW(
                log_totals_bucket(o.at), 0, 0, 0, 0, 0, -1)::log_totals), ARRAY[]::log_totals[])
            INTO changes FROM old_rows AS o;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            SELECT changes || coalesce(array_agg(ROW(
                log_totals_bucket(n.at), 0, 0, 0, 0, 0, 1)::log_totals), ARRAY[]::log_totals[])
            INTO changes FROM new_rows AS n;
        END IF;
        IF cardinality(changes) > 0 THEN
            PERFORM log_totals_add(changes);
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION log_totals_rebuild() RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        -- No writer while counting (a writer's trigger would wait for us, not we for it).
        LOCK TABLE mail_logs, rejection_logs IN SHARE MODE;
        DELETE FROM log_totals;
        INSERT INTO log_totals
            (period_start, sent, deferred, bounced, expired, messages, rejected)
        SELECT period_start, sum(sent), sum(deferred), sum(bounced), sum(expired),
               sum(messages), sum(rejected)
        FROM (
            SELECT log_totals_bucket(at) AS period_start,
                   count(*) FILTER (WHERE status = 'sent') AS sent,
                   count(*) FILTER (WHERE status = 'deferred') AS deferred,
                   count(*) FILTER (WHERE status = 'bounced') AS bounced,
                   count(*) FILTER (WHERE status = 'expired') AS expired,
                   0 AS messages, 0 AS rejected
            FROM mail_logs GROUP BY 1
            UNION ALL
            SELECT log_totals_bucket(latest), 0, 0, 0, 0, count(*), 0
            FROM (SELECT max(at) AS latest FROM mail_logs GROUP BY queue_id) AS q GROUP BY 1
            UNION ALL
            SELECT log_totals_bucket(at), 0, 0, 0, 0, 0, count(*)
            FROM rejection_logs GROUP BY 1
        ) AS parts
        GROUP BY period_start;
    END
    $$
    """,
    """
    CREATE TRIGGER log_totals_insert AFTER INSERT ON mail_logs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mail_log_totals_trigger()
    """,
    """
    CREATE TRIGGER log_totals_update AFTER UPDATE ON mail_logs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mail_log_totals_trigger()
    """,
    """
    CREATE TRIGGER log_totals_delete AFTER DELETE ON mail_logs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mail_log_totals_trigger()
    """,
    """
    CREATE TRIGGER log_totals_truncate AFTER TRUNCATE ON mail_logs
    FOR EACH STATEMENT EXECUTE FUNCTION mail_log_totals_trigger()
    """,
    """
    CREATE TRIGGER log_totals_insert AFTER INSERT ON rejection_logs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rejection_log_totals_trigger()
    """,
    """
    CREATE TRIGGER log_totals_update AFTER UPDATE ON rejection_logs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rejection_log_totals_trigger()
    """,
    """
    CREATE TRIGGER log_totals_delete AFTER DELETE ON rejection_logs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rejection_log_totals_trigger()
    """,
    """
    CREATE TRIGGER log_totals_truncate AFTER TRUNCATE ON rejection_logs
    FOR EACH STATEMENT EXECUTE FUNCTION rejection_log_totals_trigger()
    """,
    "SELECT log_totals_rebuild()",
]

BACKWARDS = [
    *(
        f"DROP TRIGGER IF EXISTS log_totals_{event} ON {table}"
        for table in ("mail_logs", "rejection_logs")
        for event in ("insert", "update", "delete", "truncate")
    ),
    "DROP FUNCTION IF EXISTS log_totals_rebuild()",
    "DROP FUNCTION IF EXISTS rejection_log_totals_trigger()",
    "DROP FUNCTION IF EXISTS mail_log_totals_trigger()",
    "DROP FUNCTION IF EXISTS mail_log_totals_apply(mail_logs[], mail_logs[])",
    "DROP FUNCTION IF EXISTS log_totals_add(log_totals[])",
    "DROP FUNCTION IF EXISTS log_totals_bucket(timestamptz)",
    "DROP TABLE IF EXISTS log_totals",
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
