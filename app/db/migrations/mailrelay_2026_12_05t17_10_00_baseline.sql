-- The whole schema of mailrelay-ha, as one script: read it top to bottom.
--
-- Run by mailrelay_2026_12_05t17_10_00_baseline.py in one transaction on a fresh database.
-- It makes exactly what the sixteen migrations before it made (the last build with them:
-- commit f10e9f9 on main); the Piccolo table classes in app/db/tables.py describe the same
-- tables to the app.
--
-- Conventions kept from Piccolo, which made most of these tables first:
-- - every column Piccolo made is NOT NULL with a default ('' for text, 0 for numbers, the
--   current time for timestamps) unless it is nullable; a nullable varchar defaults to NULL
--   explicitly. The app always writes these columns itself: the defaults only fill in for a
--   hand-written INSERT.
-- - a column declared with `index=True` has an index named <table>_<column>; a unique column a
--   constraint named <table>_<column>_key; a foreign key is nullable and cascades on update and
--   delete.
-- Tables written by hand (log_totals, the kept counters, the alerts) have no such defaults.
--
-- No grants: the app connects as the database's owner. No seed rows: `mailrelay
-- create-first-admin` makes the first account.


-- ===========================================================================================
-- Users and authentication (app/auth)
-- ===========================================================================================

-- A person who logs in to the GUI. (`user` is reserved in PostgreSQL.)
CREATE TABLE app_users (
    id serial PRIMARY KEY,
    username varchar(64) NOT NULL DEFAULT '' UNIQUE,
    password_hash text NOT NULL DEFAULT '',                 -- argon2
    role varchar(16) NOT NULL DEFAULT '',                   -- admin | operator | readonly
    language varchar(8) DEFAULT NULL,                       -- NULL: follow the browser
    must_change_password boolean NOT NULL DEFAULT true,
    failed_logins integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_login_at timestamptz
);

-- A server-side login session: the cookie holds a random token, this table its SHA-256.
CREATE TABLE user_sessions (
    id serial PRIMARY KEY,
    token_hash varchar(64) NOT NULL DEFAULT '' UNIQUE,
    "user" integer REFERENCES app_users (id) ON UPDATE CASCADE ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_seen_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    source_ip varchar(45) NOT NULL DEFAULT ''
);
CREATE INDEX user_sessions_user ON user_sessions ("user");

-- Failed logins per username ("user:NAME") and per source network ("net:ADDRESS/PREFIX"), as
-- a score that drains with time (app/auth/throttle.py).
CREATE TABLE login_throttle (
    key varchar(200) NOT NULL DEFAULT '' PRIMARY KEY,
    score double precision NOT NULL DEFAULT 0.0,
    updated_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- A user's enrolled second factor: an authenticator app (TOTP) or a WebAuthn security key.
CREATE TABLE second_factors (
    id serial PRIMARY KEY,
    "user" integer REFERENCES app_users (id) ON UPDATE CASCADE ON DELETE CASCADE,
    kind varchar(16) NOT NULL DEFAULT '',                   -- totp | webauthn
    name varchar(64) NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_used_at timestamptz,
    -- TOTP: the secret (Fernet ciphertext under the node's key) and the last time step a code
    -- was accepted for (no replay of that step or an earlier one).
    totp_secret_enc text,
    totp_last_step bigint,
    -- WebAuthn: credential ID and COSE public key (base64url), the authenticator's counter.
    credential_id text UNIQUE,
    public_key text,
    sign_count bigint NOT NULL DEFAULT 0
);
CREATE INDEX second_factors_user ON second_factors ("user");

-- Single-use recovery codes: SHA-256 of a per-code salt and the code, never the code.
CREATE TABLE recovery_codes (
    id serial PRIMARY KEY,
    "user" integer REFERENCES app_users (id) ON UPDATE CASCADE ON DELETE CASCADE,
    salt varchar(32) NOT NULL DEFAULT '',
    code_hash varchar(64) NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    used_at timestamptz
);
CREATE INDEX recovery_codes_user ON recovery_codes ("user");

-- Whether users of a role must have a second factor (no row: not required).
CREATE TABLE second_factor_policy (
    role varchar(16) NOT NULL DEFAULT '' PRIMARY KEY,
    required boolean NOT NULL DEFAULT false,
    changed_by varchar(64) NOT NULL DEFAULT '',
    changed_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Second-factor state of one login session: the step still missing after the password and
-- the WebAuthn ceremony or TOTP enrolment in progress.
CREATE TABLE session_second_factor (
    id serial PRIMARY KEY,
    session integer UNIQUE
        REFERENCES user_sessions (id) ON UPDATE CASCADE ON DELETE CASCADE,
    stage varchar(8) DEFAULT NULL,                          -- verify | enrol | NULL
    challenge text,                                         -- base64url
    challenge_for varchar(16) DEFAULT NULL,                 -- register | authenticate
    challenge_at timestamptz,
    totp_pending_enc text                                   -- shown, not yet confirmed
);

-- Per user, when the next guessable second-factor attempt is free (a generic cell rate
-- algorithm: a burst is allowed, the budget refills with time).
CREATE TABLE second_factor_throttle (
    id serial PRIMARY KEY,
    "user" integer UNIQUE REFERENCES app_users (id) ON UPDATE CASCADE ON DELETE CASCADE,
    next_free_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);


-- ===========================================================================================
-- Relay configuration (app/config): what Postfix is told
-- ===========================================================================================

-- A domain that may appear in the envelope sender (the whitelist), in punycode.
CREATE TABLE sender_domains (
    id serial PRIMARY KEY,
    name varchar(253) NOT NULL DEFAULT '' UNIQUE,
    comment text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Where mail from one sender domain is relayed, and how.
CREATE TABLE relay_routes (
    id serial PRIMARY KEY,
    sender_domain integer UNIQUE
        REFERENCES sender_domains (id) ON UPDATE CASCADE ON DELETE CASCADE,
    host varchar(253) NOT NULL DEFAULT '',
    port integer NOT NULL DEFAULT 25,
    tls_mode varchar(8) NOT NULL DEFAULT 'may',             -- none | may | encrypt | verify
    auth_user varchar(255) DEFAULT NULL,
    auth_password_enc text                                  -- Fernet; never shown again
);

-- A client network (CIDR) that may relay through us.
CREATE TABLE trusted_networks (
    id serial PRIMARY KEY,
    cidr varchar(43) NOT NULL DEFAULT '' UNIQUE,
    comment text NOT NULL DEFAULT ''
);


-- ===========================================================================================
-- Configuration versions and the audit log
-- ===========================================================================================

-- An immutable, numbered snapshot of the whole relay configuration.
CREATE TABLE config_versions (
    id serial PRIMARY KEY,
    number integer NOT NULL DEFAULT 0 UNIQUE,
    snapshot jsonb NOT NULL DEFAULT '{}',
    checksum varchar(64) NOT NULL DEFAULT '',
    author varchar(64) NOT NULL DEFAULT '',
    comment text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Which config version each node's Postfix runs, and since when.
CREATE TABLE applied_versions (
    node_id varchar(32) NOT NULL DEFAULT '' PRIMARY KEY,
    number integer NOT NULL DEFAULT 0,
    applied_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    reported_at timestamptz          -- on the master: when a slave last reported; NULL for itself
);

-- Who did what, when and from where; config changes carry their before and after.
CREATE TABLE audit_log (
    id serial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    actor varchar(64) NOT NULL DEFAULT '',
    action varchar(64) NOT NULL DEFAULT '',
    target text NOT NULL DEFAULT '',
    source_ip varchar(45) NOT NULL DEFAULT '',
    outcome varchar(16) NOT NULL DEFAULT 'ok',              -- ok | denied | failed
    before jsonb,
    after jsonb
);
CREATE INDEX audit_log_action ON audit_log (action);
CREATE INDEX audit_log_actor ON audit_log (actor);
CREATE INDEX audit_log_at ON audit_log (at);


-- ===========================================================================================
-- API tokens
-- ===========================================================================================

-- A bearer token for the API; only its SHA-256 is stored.
CREATE TABLE api_tokens (
    id serial PRIMARY KEY,
    name varchar(64) NOT NULL DEFAULT '' UNIQUE,
    token_hash varchar(64) NOT NULL DEFAULT '' UNIQUE,
    kind varchar(16) NOT NULL DEFAULT 'read',               -- read | write | cluster
    created_by varchar(64) NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_used_at timestamptz,
    revoked boolean NOT NULL DEFAULT false,
    allowed_networks text NOT NULL DEFAULT '',              -- space-separated CIDRs; '': any
    expires_at timestamptz,                                 -- NULL: never
    last_used_ip varchar(45) DEFAULT NULL
);


-- ===========================================================================================
-- Cluster: locks, VRRP events, queue sync and takeover (app/cluster, app/replication)
-- ===========================================================================================

-- A lease: one holder at a time until it expires; the fencing token grows on every grant.
CREATE TABLE cluster_locks (
    name varchar(64) NOT NULL DEFAULT '' PRIMARY KEY,
    holder varchar(64) NOT NULL DEFAULT '',
    fencing_token bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- One VRRP state change of one node, in the order keepalived reported them (order by id).
CREATE TABLE vrrp_events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,      -- when the event reader read it
    node_id varchar(32) NOT NULL DEFAULT '',
    instance varchar(64) NOT NULL DEFAULT '',
    state varchar(16) NOT NULL DEFAULT '',                  -- MASTER | BACKUP | FAULT | STOP
    priority integer NOT NULL DEFAULT 0
);
CREATE INDEX vrrp_events_at ON vrrp_events (at);
CREATE INDEX vrrp_events_node_id ON vrrp_events (node_id);

-- One queue-sync run of the active node: what it copied, how long Postfix was frozen.
CREATE TABLE sync_runs (
    id bigserial PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    node_id varchar(32) NOT NULL DEFAULT '',
    peer varchar(64) NOT NULL DEFAULT '',
    outcome varchar(16) NOT NULL DEFAULT '',                -- ok | skipped | conflict | failed
    detail text NOT NULL DEFAULT '',
    duration_seconds double precision NOT NULL DEFAULT 0.0,
    freeze_seconds double precision NOT NULL DEFAULT 0.0,
    freeze_mode varchar(8) NOT NULL DEFAULT 'freeze',       -- freeze | stop | none
    files integer NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    fencing_token bigint
);
CREATE INDEX sync_runs_started_at ON sync_runs (started_at);

-- A message this node took over from its peer's replica when it became MASTER: the peer's
-- queue ID, so that the peer, when it returns, drops exactly these.
CREATE TABLE queue_imports (
    id bigserial PRIMARY KEY,
    node_id varchar(32) NOT NULL DEFAULT '',
    original_queue_id varchar(32) NOT NULL DEFAULT '',
    imported_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    transition varchar(64) NOT NULL DEFAULT ''              -- "MASTER 100 at <time>"
);
CREATE INDEX queue_imports_imported_at ON queue_imports (imported_at);
CREATE INDEX queue_imports_original_queue_id ON queue_imports (original_queue_id);


-- ===========================================================================================
-- Postfix's log, ingested (app/jobs/ingest.py): mail_logs and rejection_logs
-- ===========================================================================================

-- How far ingestion has read a log file: survives restarts and rotation.
CREATE TABLE log_cursors (
    source varchar(255) NOT NULL DEFAULT '' PRIMARY KEY,
    inode bigint NOT NULL DEFAULT 0,
    "position" bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- What the log said about a queued message before its deliveries, so that each delivery line
-- becomes one complete mail_logs row.
CREATE TABLE log_messages (
    id bigserial PRIMARY KEY,
    node_id varchar(32) NOT NULL DEFAULT '',
    queue_id varchar(32) NOT NULL DEFAULT '',
    message_id text NOT NULL DEFAULT '',
    sender text NOT NULL DEFAULT '',
    size bigint,
    client text NOT NULL DEFAULT '',
    first_seen_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX log_messages_first_seen_at ON log_messages (first_seen_at);
-- One context row per node and queue ID: ingestion upserts on it.
CREATE UNIQUE INDEX log_messages_node_queue_id ON log_messages (node_id, queue_id);

-- The two log tables are partitioned by UTC day on `at`: retention (app/jobs/retention.py)
-- drops a whole day as one partition instead of deleting its rows one by one. PostgreSQL wants
-- the partition key in every unique index, hence the primary key (id, at); nothing references
-- these ids.

-- One recipient outcome of one message.
CREATE TABLE mail_logs (
    id bigserial,
    at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    node_id varchar(32) NOT NULL DEFAULT '',
    queue_id varchar(32) NOT NULL DEFAULT '',
    message_id text NOT NULL DEFAULT '',
    sender text NOT NULL DEFAULT '',
    recipient text NOT NULL DEFAULT '',
    relay text NOT NULL DEFAULT '',
    status varchar(16) NOT NULL DEFAULT '',                 -- sent | deferred | bounced | expired
    delay_seconds double precision,
    dsn varchar(16) NOT NULL DEFAULT '',
    size bigint,
    client text NOT NULL DEFAULT '',
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE INDEX mail_logs_at ON mail_logs (at);
CREATE INDEX mail_logs_queue_id ON mail_logs (queue_id);
CREATE INDEX mail_logs_message_id ON mail_logs (message_id);
-- Message tracking shows the newest 200 rows of one address or domain: (address, at) and
-- (domain, at) find them directly; with (at) alone PostgreSQL walked the whole table backwards
-- for an address without recent mail (4.9 s at 10 million rows). The domain expressions must
-- stay as app/reports.py writes them, or these indexes are not used. No index on (sender),
-- (recipient) or (status) alone: each ingested row updates every index, and no reader needs
-- them.
CREATE INDEX mail_logs_sender_at ON mail_logs (sender, at);
CREATE INDEX mail_logs_recipient_at ON mail_logs (recipient, at);
CREATE INDEX mail_logs_sender_domain_at ON mail_logs (lower(split_part(sender, '@', -1)), at);
CREATE INDEX mail_logs_recipient_domain_at
    ON mail_logs (lower(split_part(recipient, '@', -1)), at);

-- An SMTP transaction Postfix refused before queueing (NOQUEUE reject).
CREATE TABLE rejection_logs (
    id bigserial,
    at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    node_id varchar(32) NOT NULL DEFAULT '',
    client text NOT NULL DEFAULT '',
    sender text NOT NULL DEFAULT '',
    recipient text NOT NULL DEFAULT '',
    reason text NOT NULL DEFAULT '',
    code smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE INDEX rejection_logs_at ON rejection_logs (at);
CREATE INDEX rejection_logs_sender ON rejection_logs (sender);
CREATE INDEX rejection_logs_recipient ON rejection_logs (recipient);

-- The day partitions: <table>_pYYYYMMDD for today (UTC) and the 7 days after it (retention's
-- AHEAD_DAYS; its daily run keeps making them ahead), and a DEFAULT partition. A row for a
-- day without its own partition (the retention timer stopped for a week, a log line from far
-- back) lands in the default one and is never refused; retention's next run makes that day's
-- partition and moves the rows into it. The bounds are whole UTC days, 24 hours each
-- whatever the session's time zone.
DO $$
DECLARE
    parent text;
    day timestamptz;
BEGIN
    FOREACH parent IN ARRAY ARRAY['mail_logs', 'rejection_logs'] LOOP
        FOR day IN
            SELECT generate_series(date_trunc('day', now(), 'UTC'),
                                   date_trunc('day', now(), 'UTC') + interval '7 days',
                                   interval '24 hours')
        LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           parent || '_p' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'),
                           parent, day, day + interval '24 hours');
        END LOOP;
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', parent || '_default', parent);
    END LOOP;
END
$$;


-- ===========================================================================================
-- Five-minute totals of the log tables, for the dashboard (app/reports.py)
-- ===========================================================================================
--
-- The dashboard shows, for the last hour, 24 hours and the retention window, the messages
-- accepted (distinct queue IDs), the recipients delivered, deferred and bounced, the
-- rejections, and a 24-hour chart. Counted from the log tables on every view that took 13.5 s
-- at 10 million rows; log_totals holds them per five minutes (UTC) instead.
--
-- `messages` counts the queue IDs whose latest mail_logs row falls in those five minutes: a
-- queue ID counts once, where its latest row is, so the sum of `messages` since T is the
-- number of distinct queue IDs with a row since T.
--
-- Statement triggers keep the totals exact for every writer (ingestion, retention, tests, an
-- operator's manual DELETE or UPDATE) inside the writer's own transaction. An advisory lock
-- ("totl", 1953461356; retention takes it too) lets one writer at a time update them, so that
-- two writers never read a queue ID's latest row past each other. TRUNCATE of a log table
-- zeroes its columns. log_totals_rebuild() recounts everything, e.g. after a bulk load made
-- with the triggers off. Dropping a day partition fires no trigger: retention forgets the
-- periods of dropped days itself.

CREATE TABLE log_totals (
    period_start timestamptz PRIMARY KEY,
    sent bigint NOT NULL DEFAULT 0,
    deferred bigint NOT NULL DEFAULT 0,
    bounced bigint NOT NULL DEFAULT 0,
    expired bigint NOT NULL DEFAULT 0,
    -- queue IDs whose latest mail_logs row is in these five minutes
    messages bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0
);

-- The period of a row: the same in every time zone; app/reports.py cuts its periods at the
-- same five-minute boundaries.
CREATE FUNCTION log_totals_bucket(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin('5 minutes', at, TIMESTAMPTZ '2000-01-01 00:00:00+00');

-- Adds signed changes per period; periods left at zero everywhere go.
CREATE FUNCTION log_totals_add(changes log_totals[]) RETURNS void LANGUAGE sql AS $$
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
$$;

-- The change one mail_logs statement made: its rows gone and added, by status, and each
-- touched queue ID's latest row moving from one period to another.
CREATE FUNCTION mail_log_totals_apply(gone mail_logs[], added mail_logs[])
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
$$;

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
$$;

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
$$;

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
$$;

CREATE TRIGGER log_totals_insert AFTER INSERT ON mail_logs
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION mail_log_totals_trigger();
CREATE TRIGGER log_totals_update AFTER UPDATE ON mail_logs
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION mail_log_totals_trigger();
CREATE TRIGGER log_totals_delete AFTER DELETE ON mail_logs
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION mail_log_totals_trigger();
CREATE TRIGGER log_totals_truncate AFTER TRUNCATE ON mail_logs
FOR EACH STATEMENT EXECUTE FUNCTION mail_log_totals_trigger();

CREATE TRIGGER log_totals_insert AFTER INSERT ON rejection_logs
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION rejection_log_totals_trigger();
CREATE TRIGGER log_totals_update AFTER UPDATE ON rejection_logs
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION rejection_log_totals_trigger();
CREATE TRIGGER log_totals_delete AFTER DELETE ON rejection_logs
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION rejection_log_totals_trigger();
CREATE TRIGGER log_totals_truncate AFTER TRUNCATE ON rejection_logs
FOR EACH STATEMENT EXECUTE FUNCTION rejection_log_totals_trigger();


-- ===========================================================================================
-- Kept counters for /metrics (app/cluster/status.py)
-- ===========================================================================================
--
-- /metrics reads these in constant time instead of counting rows on every scrape. They are
-- counters in Prometheus' sense: they only grow. Retention deleting (or dropping) old rows
-- takes nothing off, which is why they cannot be sums over log_totals. Statement triggers on
-- INSERT keep them inside the writer's own transaction, for every writer.

-- Queue-sync runs per node and outcome.
CREATE TABLE sync_run_totals (
    node_id varchar(32) NOT NULL,
    outcome varchar(16) NOT NULL,
    runs bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (node_id, outcome)
);

CREATE FUNCTION sync_run_totals_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sync_run_totals AS t (node_id, outcome, runs)
    SELECT node_id, outcome, count(*) FROM new_rows GROUP BY node_id, outcome
    ON CONFLICT (node_id, outcome) DO UPDATE SET runs = t.runs + EXCLUDED.runs;
    RETURN NULL;
END
$$;

CREATE TRIGGER sync_run_totals_insert AFTER INSERT ON sync_runs
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION sync_run_totals_trigger();

-- The mail a node took in, the delivery outcomes and the rejections.
CREATE TABLE traffic_totals (
    node_id varchar(32) NOT NULL,
    -- accepted (a message first seen in the log) | sent | deferred | bounced | expired
    -- (a mail_logs row of that status: one per recipient and attempt) | rejected
    kind varchar(16) NOT NULL,
    events bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (node_id, kind)
);

CREATE FUNCTION traffic_totals_mail_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO traffic_totals AS t (node_id, kind, events)
    SELECT node_id, status, count(*) FROM new_rows GROUP BY node_id, status
    ON CONFLICT (node_id, kind) DO UPDATE SET events = t.events + EXCLUDED.events;
    RETURN NULL;
END
$$;

CREATE FUNCTION traffic_totals_rows_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TG_ARGV[0]: what a row of this table counts as.
    INSERT INTO traffic_totals AS t (node_id, kind, events)
    SELECT node_id, TG_ARGV[0], count(*) FROM new_rows GROUP BY node_id
    ON CONFLICT (node_id, kind) DO UPDATE SET events = t.events + EXCLUDED.events;
    RETURN NULL;
END
$$;

CREATE TRIGGER traffic_totals_insert AFTER INSERT ON mail_logs
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION traffic_totals_mail_trigger();
CREATE TRIGGER traffic_totals_insert AFTER INSERT ON rejection_logs
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION traffic_totals_rows_trigger('rejected');
-- Ingestion upserts log_messages: only the rows an INSERT made are in new_rows (a queue ID
-- already known is an UPDATE), so each message counts once.
CREATE TRIGGER traffic_totals_insert AFTER INSERT ON log_messages
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION traffic_totals_rows_trigger('accepted');


-- ===========================================================================================
-- Alerts (app/alerts)
-- ===========================================================================================

-- One row per node and alert: whether its condition holds, since when, and the figure it
-- was judged on.
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
);

-- Per alert and channel (email, webhook): what that channel was last told and when, so that
-- each channel says "started" once and "cleared" once, and a failed delivery is tried again
-- by the next run without repeating the other channel.
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
);
