-- Each queue ID's latest mail_logs time, kept beside the log so that the totals trigger reads
-- one row per queue ID instead of probing every day partition's (queue_id) index: on an insert
-- (ingestion, nearly every write) the statement touched only this table and the rows it added.
-- The same triggers keep it, under the same "totl" lock: an insert moves a queue ID's time
-- forward; an update or delete (rare) recounts its touched queue IDs from mail_logs; TRUNCATE
-- empties it. Dropping a day partition fires no trigger: retention deletes, in the same
-- transaction as the drop, the rows of queue IDs that have no row left (app/jobs/retention.py).
-- log_totals_rebuild() rebuilds it too. Written so that running it again changes nothing.

CREATE TABLE IF NOT EXISTS mail_log_latest (
    queue_id varchar(32) PRIMARY KEY,
    at timestamptz NOT NULL
);

LOCK TABLE mail_logs IN SHARE MODE;
SELECT pg_advisory_xact_lock(1953461356);
DELETE FROM mail_log_latest;
INSERT INTO mail_log_latest (queue_id, at) SELECT queue_id, max(at) FROM mail_logs GROUP BY 1;

CREATE OR REPLACE FUNCTION mail_log_totals_apply(gone mail_logs[], added mail_logs[])
RETURNS void LANGUAGE sql
-- Always by queue_id through its index: on a table without statistics yet (a fresh node's
-- first ingestion) the planner would otherwise scan all of mail_logs.
SET enable_seqscan = off
-- With seqscan off the statements are priced at about 1e10 and PostgreSQL JIT-compiles them:
-- 40 to 65 ms per mail_logs statement for every writer, against 1 to 8 ms without.
SET jit = off
AS $$
    WITH changed AS (
        SELECT at, status, queue_id, -1 AS sign FROM unnest(gone)
        UNION ALL
        SELECT at, status, queue_id, 1 AS sign FROM unnest(added)
    ), touched AS (
        SELECT queue_id, max(at) FILTER (WHERE sign = 1) AS added_at,
               bool_or(sign = -1) AS lost
        FROM changed GROUP BY queue_id
    ), latest AS (
        -- Each touched queue ID's latest row before and after the statement: before is the
        -- kept one; after, when the statement only added rows, the later of it and theirs,
        -- else what mail_logs holds now.
        SELECT t.queue_id, k.at AS before,
               CASE WHEN t.lost
                    THEN (SELECT max(m.at) FROM mail_logs AS m WHERE m.queue_id = t.queue_id)
                    ELSE greatest(k.at, t.added_at)
               END AS after
        FROM touched AS t LEFT JOIN mail_log_latest AS k ON k.queue_id = t.queue_id
    ), forgotten AS (
        DELETE FROM mail_log_latest
        WHERE queue_id IN (SELECT queue_id FROM latest WHERE after IS NULL)
    ), kept AS (
        INSERT INTO mail_log_latest AS k (queue_id, at)
        SELECT queue_id, after FROM latest
        WHERE after IS NOT NULL AND after IS DISTINCT FROM before
        ON CONFLICT (queue_id) DO UPDATE SET at = EXCLUDED.at
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
$$;

CREATE OR REPLACE FUNCTION mail_log_totals_trigger() RETURNS trigger LANGUAGE plpgsql
-- A statement's few hundred queue IDs are looked up in mail_log_latest one by one through its
-- key, whatever its statistics say: without them (a fresh node) PostgreSQL read all of it for
-- every batch, by a hash join or a merge join. No JIT for statements priced that high.
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET jit = off
AS $$
DECLARE
    gone mail_logs[] := ARRAY[]::mail_logs[];
    added mail_logs[] := ARRAY[]::mail_logs[];
    changes log_totals[];
BEGIN
    -- One writer of the totals at a time ("totl"): the next one sees this one's rows.
    PERFORM pg_advisory_xact_lock(1953461356);
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE log_totals SET sent = 0, deferred = 0, bounced = 0, expired = 0,
            messages = 0;
        DELETE FROM log_totals WHERE rejected = 0;
        TRUNCATE mail_log_latest;
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        -- Nearly every write (each ingestion batch): mail_log_totals_apply's insert case,
        -- reading the added rows where they are instead of copying each into an array first
        -- (which took a third of the trigger's time). A queue ID's latest row only moves
        -- forward here, and counts again only where its period changes.
        WITH added AS (
            SELECT queue_id, max(at) AS at FROM new_rows GROUP BY queue_id
        ), latest AS (
            SELECT a.queue_id, k.at AS before, greatest(k.at, a.at) AS after
            FROM added AS a LEFT JOIN mail_log_latest AS k ON k.queue_id = a.queue_id
        ), moved AS (
            SELECT log_totals_bucket(before) AS was, log_totals_bucket(after) AS now
            FROM latest WHERE before IS DISTINCT FROM after
        ), moved_on AS (
            -- An UPDATE and an INSERT rather than one upsert: a third of the time, and this
            -- is the only writer of the table while it holds the lock.
            UPDATE mail_log_latest AS k SET at = l.after FROM latest AS l
            WHERE k.queue_id = l.queue_id AND l.before < l.after
        ), first AS (
            INSERT INTO mail_log_latest (queue_id, at)
            SELECT queue_id, after FROM latest WHERE before IS NULL
        )
        SELECT array_agg(ROW(
            period_start, sent, deferred, bounced, expired, messages, 0)::log_totals)
        INTO changes
        FROM (
            SELECT log_totals_bucket(at) AS period_start,
                   count(*) FILTER (WHERE status = 'sent') AS sent,
                   count(*) FILTER (WHERE status = 'deferred') AS deferred,
                   count(*) FILTER (WHERE status = 'bounced') AS bounced,
                   count(*) FILTER (WHERE status = 'expired') AS expired,
                   0 AS messages
            FROM new_rows GROUP BY 1
            UNION ALL
            SELECT was, 0, 0, 0, 0, -1 FROM moved WHERE was IS NOT NULL AND was <> now
            UNION ALL
            SELECT now, 0, 0, 0, 0, 1 FROM moved WHERE was IS NULL OR was <> now
        ) AS deltas;
        IF changes IS NOT NULL THEN
            PERFORM log_totals_add(changes);
        END IF;
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
$$;

CREATE OR REPLACE FUNCTION log_totals_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- No writer while counting (a writer's trigger would wait for us, not we for it).
    LOCK TABLE mail_logs, rejection_logs IN SHARE MODE;
    DELETE FROM mail_log_latest;
    INSERT INTO mail_log_latest (queue_id, at)
    SELECT queue_id, max(at) FROM mail_logs GROUP BY queue_id;
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
        SELECT log_totals_bucket(at), 0, 0, 0, 0, count(*), 0
        FROM mail_log_latest GROUP BY 1
        UNION ALL
        SELECT log_totals_bucket(at), 0, 0, 0, 0, 0, count(*)
        FROM rejection_logs GROUP BY 1
    ) AS parts
    GROUP BY period_start;
END
$$;
