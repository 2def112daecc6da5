"""The product's tables, as the app reads and writes them. Column comments say what an operator
would ask about them; the schema itself, with the tables written by hand (log_totals, the kept
counters, the alerts), is app/db/migrations/mailrelay_2026_12_05t17_10_00_baseline.sql."""

from piccolo.columns import (
    JSONB,
    BigInt,
    BigSerial,
    Boolean,
    DoublePrecision,
    ForeignKey,
    Integer,
    Serial,
    SmallInt,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.base import OnDelete
from piccolo.table import Table


class AppUser(Table, tablename="app_users"):
    """A person who logs in to the GUI. (`user` is reserved in PostgreSQL.)"""

    id = Serial(primary_key=True)
    username = Varchar(length=64, unique=True)
    password_hash = Text()
    role = Varchar(length=16)  # admin | operator | readonly
    language = Varchar(length=8, null=True, default=None)  # None: follow the browser
    must_change_password = Boolean(default=True)
    failed_logins = Integer(default=0)
    locked_until = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    last_login_at = Timestamptz(null=True, default=None)


class UserSession(Table, tablename="user_sessions"):
    """A server-side login session; the cookie holds a random token, the table its SHA-256."""

    id = Serial(primary_key=True)
    token_hash = Varchar(length=64, unique=True)
    user = ForeignKey(references=AppUser, on_delete=OnDelete.cascade, index=True)
    created_at = Timestamptz()
    last_seen_at = Timestamptz()
    source_ip = Varchar(length=45)


class LoginThrottle(Table, tablename="login_throttle"):
    """Recent failed logins per username and per source network, as a score that drains with time
    (app/auth/throttle.py); a row whose score has drained is worth nothing and may be deleted."""

    key = Varchar(length=200, primary_key=True)  # "user:NAME" or "net:ADDRESS/PREFIX"
    score = DoublePrecision(default=0.0)
    updated_at = Timestamptz()


class SenderDomain(Table, tablename="sender_domains"):
    """A domain that may appear in the envelope sender (the whitelist). Stored in punycode."""

    id = Serial(primary_key=True)
    name = Varchar(length=253, unique=True)
    comment = Text(default="")
    created_at = Timestamptz()


class RelayRoute(Table, tablename="relay_routes"):
    """Where mail from one sender domain is relayed, and how (TLS, SMTP AUTH)."""

    id = Serial(primary_key=True)
    sender_domain = ForeignKey(references=SenderDomain, on_delete=OnDelete.cascade, unique=True)
    host = Varchar(length=253)
    port = Integer(default=25)
    tls_mode = Varchar(length=8, default="may")  # none | may | encrypt | verify
    auth_user = Varchar(length=255, null=True, default=None)
    # Fernet ciphertext under the node's secret key; never rendered back to anyone.
    auth_password_enc = Text(null=True, default=None)


class TrustedNetwork(Table, tablename="trusted_networks"):
    """A client network (CIDR) that may relay through us."""

    id = Serial(primary_key=True)
    cidr = Varchar(length=43, unique=True)
    comment = Text(default="")


class ConfigVersion(Table, tablename="config_versions"):
    """An immutable, numbered snapshot of the whole relay configuration."""

    id = Serial(primary_key=True)
    number = Integer(unique=True)
    snapshot = JSONB()
    checksum = Varchar(length=64)
    author = Varchar(length=64)
    comment = Text(default="")
    created_at = Timestamptz()


class AppliedVersion(Table, tablename="applied_versions"):
    """Which config version each node's Postfix runs, and since when."""

    node_id = Varchar(length=32, primary_key=True)
    number = Integer()
    applied_at = Timestamptz()
    # On the master: when a slave last reported (every pull). None for the master's own row.
    reported_at = Timestamptz(null=True, default=None)


class AuditLog(Table, tablename="audit_log"):
    """Who did what, when and from where; config changes carry their before and after."""

    id = Serial(primary_key=True)
    at = Timestamptz(index=True)
    actor = Varchar(length=64, index=True)
    action = Varchar(length=64, index=True)
    target = Text(default="")
    source_ip = Varchar(length=45, default="")
    outcome = Varchar(length=16, default="ok")  # ok | denied | failed
    before = JSONB(null=True, default=None)
    after = JSONB(null=True, default=None)


class MailLog(Table, tablename="mail_logs"):
    """One recipient outcome of one message, from the Postfix log. Partitioned by UTC day on
    `at` (app/jobs/retention.py drops whole days); the primary key is (id, at)."""

    id = BigSerial(primary_key=True)
    at = Timestamptz(index=True)
    node_id = Varchar(length=32)
    queue_id = Varchar(length=32, index=True)
    message_id = Text(default="", index=True)
    # Searched by (address, at) and (domain, at) indexes (the baseline's SQL).
    sender = Text(default="")
    recipient = Text(default="")
    relay = Text(default="")
    status = Varchar(length=16)  # sent | deferred | bounced | expired
    delay_seconds = DoublePrecision(null=True, default=None)
    dsn = Varchar(length=16, default="")
    size = BigInt(null=True, default=None)
    client = Text(default="")


class RejectionLog(Table, tablename="rejection_logs"):
    """An SMTP transaction Postfix refused before queueing (NOQUEUE reject). Partitioned by UTC
    day on `at`, as mail_logs."""

    id = BigSerial(primary_key=True)
    at = Timestamptz(index=True)
    node_id = Varchar(length=32)
    client = Text(default="")
    sender = Text(default="", index=True)
    recipient = Text(default="", index=True)
    reason = Text(default="")
    code = SmallInt(default=0)


class ClusterLock(Table, tablename="cluster_locks"):
    """A lease: one holder at a time, until it expires; the fencing token grows on every grant."""

    name = Varchar(length=64, primary_key=True)
    holder = Varchar(length=64)
    fencing_token = BigInt(default=0)
    expires_at = Timestamptz()


class ApiToken(Table, tablename="api_tokens"):
    """A bearer token for the API; only its SHA-256 is stored. Kind `cluster` may read secrets
    (encrypted for the peer); kind `read` never sees them and may only read; kind `write` may
    also change the configuration and act on the queue."""

    id = Serial(primary_key=True)
    name = Varchar(length=64, unique=True)
    token_hash = Varchar(length=64, unique=True)
    kind = Varchar(length=16, default="read")  # read | write | cluster
    created_by = Varchar(length=64)
    created_at = Timestamptz()
    last_used_at = Timestamptz(null=True, default=None)
    revoked = Boolean(default=False)
    # Space-separated CIDRs the token is accepted from; empty: from anywhere.
    allowed_networks = Text(default="")
    expires_at = Timestamptz(null=True, default=None)  # None: never
    last_used_ip = Varchar(length=45, null=True, default=None)


class LogCursor(Table, tablename="log_cursors"):
    """How far log ingestion has read a log file: survives restarts and rotation."""

    source = Varchar(length=255, primary_key=True)
    inode = BigInt(default=0)
    position = BigInt(default=0)
    updated_at = Timestamptz()
    head = Text(default="")  # the hash of the file's first line: which copy of the log


class LogMessage(Table, tablename="log_messages"):
    """What the log said about a queued message before its deliveries (sender, size, client,
    message-id), so that each delivery line can be written as one complete mail_logs row."""

    id = BigSerial(primary_key=True)
    node_id = Varchar(length=32)
    queue_id = Varchar(length=32)
    message_id = Text(default="")
    sender = Text(default="")
    size = BigInt(null=True, default=None)
    client = Text(default="")
    first_seen_at = Timestamptz(index=True)


class VrrpEvent(Table, tablename="vrrp_events"):
    """One VRRP state change of one node (MASTER, BACKUP, FAULT, STOP), in the order keepalived
    reported them: order by id, not by `at`, to replay a node's history."""

    id = BigSerial(primary_key=True)
    # When the event reader read the line (keepalived's FIFO lines carry no time).
    at = Timestamptz(index=True)
    node_id = Varchar(length=32, index=True)
    instance = Varchar(length=64)
    state = Varchar(length=16)  # MASTER | BACKUP | FAULT | STOP | DELETED
    priority = Integer()


class SyncRun(Table, tablename="sync_runs"):
    """One queue-sync run of the active node: what it copied to the peer's replica, how long
    Postfix was frozen, and how it ended."""

    id = BigSerial(primary_key=True)
    started_at = Timestamptz(index=True)
    node_id = Varchar(length=32)
    peer = Varchar(length=64, default="")
    outcome = Varchar(length=16)  # ok | skipped | conflict | failed
    detail = Text(default="")
    duration_seconds = DoublePrecision(default=0)
    freeze_seconds = DoublePrecision(default=0)
    freeze_mode = Varchar(length=8, default="freeze")  # freeze | stop | none
    files = Integer(default=0)
    bytes = BigInt(default=0)
    fencing_token = BigInt(null=True, default=None)


class QueueImport(Table, tablename="queue_imports"):
    """A message this node took over from its peer's replica when it became MASTER: the peer's
    original queue ID, so that the peer, when it returns, can drop exactly these."""

    id = BigSerial(primary_key=True)
    node_id = Varchar(length=32)
    original_queue_id = Varchar(length=32, index=True)
    imported_at = Timestamptz(index=True)
    transition = Varchar(length=64, default="")  # e.g. "MASTER 100 at 2026-11-25T14:57:00Z"


class Promotion(Table, tablename="promotions"):
    """One takeover of the peer's queue by this node, written when it has finished (or failed):
    a returning peer asks for queue_imports only once the MASTER period's promotion is here, as
    the rows of queue_imports that go with it are written in the same transaction."""

    id = BigSerial(primary_key=True)
    node_id = Varchar(length=32)
    master_at = Timestamptz(index=True)  # the vrrp_events time of the MASTER it followed
    finished_at = Timestamptz()
    imported = Integer(default=0)
    refused = Integer(default=0)
    error = Text(default="")  # why the import failed; empty when it finished


class SecondFactor(Table, tablename="second_factors"):
    """A user's enrolled second factor: an authenticator app (TOTP) or a WebAuthn security key."""

    id = Serial(primary_key=True)
    user = ForeignKey(references=AppUser, on_delete=OnDelete.cascade, index=True)
    kind = Varchar(length=16)  # totp | webauthn
    name = Varchar(length=64)
    created_at = Timestamptz()
    last_used_at = Timestamptz(null=True, default=None)
    # TOTP: the secret as Fernet ciphertext under the node's key, and the last time step a code
    # was accepted for (a code is refused for that step and every earlier one: no replay).
    totp_secret_enc = Text(null=True, default=None)
    totp_last_step = BigInt(null=True, default=None)
    # WebAuthn: the credential ID and COSE public key (base64url), and the authenticator's counter.
    credential_id = Text(null=True, default=None, unique=True)
    public_key = Text(null=True, default=None)
    sign_count = BigInt(default=0)


class RecoveryCode(Table, tablename="recovery_codes"):
    """A single-use recovery code: SHA-256 of a per-code salt and the code, never the clear code."""

    id = Serial(primary_key=True)
    user = ForeignKey(references=AppUser, on_delete=OnDelete.cascade, index=True)
    salt = Varchar(length=32)
    code_hash = Varchar(length=64)
    created_at = Timestamptz()
    used_at = Timestamptz(null=True, default=None)


class SecondFactorPolicy(Table, tablename="second_factor_policy"):
    """Whether users of a role must have a second factor (no row: not required)."""

    role = Varchar(length=16, primary_key=True)  # admin | operator | readonly
    required = Boolean(default=False)
    changed_by = Varchar(length=64)
    changed_at = Timestamptz()


class SessionSecondFactor(Table, tablename="session_second_factor"):
    """Second-factor state of one login session: the step still missing after the password
    (verify or enrol; none when fully logged in) and the ceremony in progress, if any."""

    id = Serial(primary_key=True)
    session = ForeignKey(references=UserSession, on_delete=OnDelete.cascade, unique=True)
    stage = Varchar(length=8, null=True, default=None)  # verify | enrol | None
    # The open WebAuthn challenge (base64url), what it is for and when it was issued.
    challenge = Text(null=True, default=None)
    challenge_for = Varchar(length=16, null=True, default=None)  # register | authenticate
    challenge_at = Timestamptz(null=True, default=None)
    # A TOTP secret shown as a QR code but not yet confirmed with a code (Fernet ciphertext).
    totp_pending_enc = Text(null=True, default=None)


class SecondFactorThrottle(Table, tablename="second_factor_throttle"):
    """Per user, when the next guessable second-factor attempt (TOTP or recovery code) is free:
    a generic cell rate algorithm, so a burst is allowed and the budget refills with time."""

    id = Serial(primary_key=True)
    user = ForeignKey(references=AppUser, on_delete=OnDelete.cascade, unique=True)
    next_free_at = Timestamptz()
