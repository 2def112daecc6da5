"""Every environment variable the product reads, parsed and validated once.

A bad value is an error that names the variable; nothing falls back silently.
Secrets may come from ``NAME_FILE`` instead of ``NAME`` (podman secrets, systemd credentials).
Two sets: `load_settings` for the web app and the jobs (mailrelay.env), `load_agent_settings`
for the root agent (agent.env). Not settings, so read where they are used: what systemd hands a
process (LISTEN_FDS, NOTIFY_SOCKET, JOURNAL_STREAM) and DATABASE_URL as Piccolo's engine
module reads it (set from these settings by the CLI).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


class SettingsError(Exception):
    """A variable is missing or malformed; the message names it."""


ClusterMode = Literal["master", "slave"]
ShadowMode = Literal["off", "prefer", "require"]
FreezeMode = Literal["freeze", "stop", "none"]


@dataclass(frozen=True)
class AlertSettings:
    """Alerts (app/alerts): where they go and when a condition counts as one."""

    email: tuple[str, ...] = ()
    sender: str | None = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    webhook_url: str | None = None
    webhook_ca_file: Path | None = None
    min_interval_seconds: float = 600.0
    sync_failures: int = 3
    replication_lag_seconds: float = 120.0
    queue_messages: int = 1000
    queue_age_seconds: float = 3600.0
    cert_days: float = 14.0
    spool_dir: Path = Path("/var/spool/postfix")
    spool_percent: float = 90.0
    # No backup of this node newer than this many hours is an alert (0: no such alert, for a
    # node whose backups are made otherwise).
    backup_hours: float = 36.0
    # Mail-log lines waiting this many minutes for ingestion are an alert (0: not judged).
    ingest_minutes: float = 10.0
    # The language of the alert e-mail's text (the webhook's JSON keeps English keys and texts).
    language: str = "en"


@dataclass(frozen=True)
class SyncSettings:
    """The agent's half of queue sync (app/agent/queuesync.py): the peer and the ssh that
    reaches it, written into agent.env by scripts/install-node."""

    # None: this node has no peer (a queue sync is refused, everything else works).
    peer: str | None = None
    ssh_key: Path = Path("/etc/mailrelay/sync_ed25519")
    remote_user: str = "mailrelay-sync"
    # The peer's ssh host key, pinned by install-node from SYNC_PEER_HOST_KEY.
    known_hosts: Path = Path("/etc/mailrelay/sync_known_hosts")
    # freeze mode's local copy of the queue; None (SYNC_SNAPSHOT_DIR set empty): no copy.
    snapshot_dir: Path | None = Path("/var/lib/mailrelay-agent/queue-snapshot")


@dataclass(frozen=True)
class PostfixProtections:
    """The optional protections `mailrelay agent postfix-settings` writes, all off by default
    (app/agent/postfix.py: anti_abuse)."""

    # DNSBL zones looked up for clients outside the trusted networks.
    rbl_zones: tuple[str, ...] = ()
    # Messages per client per minute (anvil); None: no limit.
    client_rate_limit: int | None = None
    postscreen: bool = False


@dataclass(frozen=True)
class AgentSettings:
    """The privileged agent (app/agent). It runs as root under its own unit with its own env
    file (/etc/mailrelay/agent.env, written by scripts/install-node), so it reads only these
    variables and needs none of the web app's (no DATABASE_URL)."""

    socket: Path
    socket_mode: int
    postfix_config_dir: Path
    postfix_maps_root: Path
    replica_dir: Path
    # None: Postfix's message_size_limit plus room for the envelope (app/agent/replica.py).
    replica_max_file_bytes: int | None
    replica_max_files: int
    # What a takeover took so far (app/agent/takeover_journal.py).
    takeover_journal: Path
    shadow_store: Path
    shadow_counter_file: Path
    shadow_mode: ShadowMode
    shadow_timeout_ms: int
    shadow_milter_socket: Path
    sync: SyncSettings
    protections: PostfixProtections


@dataclass(frozen=True)
class Settings:
    node_id: str
    node_ip: str
    peer_node_ip: str | None
    vip_address: str | None
    vrrp_priority: int
    cluster_mode: ClusterMode
    master_api_url: str | None
    master_api_token: str | None
    retention_days: int
    sync_interval_seconds: float
    database_url: str
    tls_cert_file: Path | None
    tls_key_file: Path | None
    secret_key_file: Path
    state_dir: Path
    https_host: str
    https_port: int
    session_idle_minutes: int
    session_max_hours: int
    htmx_source: Literal["cdn", "local"]
    hostname: str
    agent_socket: Path
    postfix_log_file: Path
    vrrp_interface: str
    vrrp_advert_int: str
    sync_freeze: FreezeMode
    sync_flush: bool
    config_pull_wait_seconds: float
    config_drift_alert_seconds: float
    peer_api_url: str | None
    peer_api_token: str | None
    peer_cert_fingerprint: str | None
    webauthn_rp_id: str | None
    # How a slave recognises its master's certificate (app/cluster/peer.py: PeerTls).
    master_cert_fingerprint: bytes | None = None
    master_ca_file: Path | None = None
    shadow_mode: ShadowMode = "prefer"
    shadow_timeout_ms: int = 2000
    shadow_port: int = 2526
    shadow_token: str | None = None
    shadow_store: Path = Path("/var/spool/mailrelay-shadow")
    shadow_store_max_bytes: int = 1 << 30
    shadow_milter_socket: Path = Path("/run/mailrelay-shadow-milter/milter.sock")
    shadow_counter_file: Path = Path("/var/lib/mailrelay-shadow-milter/counters.json")
    shadow_cert_file: Path | None = None
    shadow_key_file: Path | None = None
    replica_dir: Path = Path("/var/spool/mailrelay-replica")
    alerts: AlertSettings = AlertSettings()
    sync_runs_retention_days: int = 30
    vrrp_events_retention_days: int = 30
    queue_imports_retention_days: int = 90
    audit_retention_days: int = 400
    backup_dir: Path = Path("/var/backups/mailrelay")
    backup_keep: int = 14

    @property
    def generated_cert_file(self) -> Path:
        return self.state_dir / "tls" / "node.crt"

    @property
    def generated_key_file(self) -> Path:
        return self.state_dir / "tls" / "node.key"


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            file_name = self.env.get(f"{name}_FILE")
            if file_name:
                try:
                    value = Path(file_name).read_text().strip()
                except OSError as exc:
                    raise SettingsError(f"{name}_FILE: cannot read {file_name}: {exc}") from exc
            else:
                return None
        return value.strip()

    def text(self, name: str, default: str | None = None) -> str:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise SettingsError(f"{name} is required but not set")
            return default
        return value

    def optional(self, name: str) -> str | None:
        return self.raw(name)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {value!r}") from None
        if not low <= number <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, got {number}")
        return number

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {value!r}") from None
        if not low <= number <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, got {number}")
        return number

    def ip(self, name: str, default: str | None = None, required: bool = True) -> str | None:
        value = self.raw(name) or default
        if value is None:
            if required:
                raise SettingsError(f"{name} is required but not set")
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise SettingsError(f"{name} must be an IP address, got {value!r}") from None

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.raw(name) or default).lower()
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.choice(name, "yes" if default else "no", ("yes", "no", "true", "false"))
        return value in ("yes", "true")

    def path(self, name: str, default: str | None = None) -> Path | None:
        value = self.raw(name) or default
        return Path(value) if value else None

    def fingerprint(self, name: str) -> bytes | None:
        value = self.raw(name)
        return None if value is None else parse_fingerprint(value, name)


def parse_fingerprint(text: str, name: str) -> bytes:
    """A SHA-256 fingerprint as `mailrelay serve` prints it (colons optional); a bad value is a
    SettingsError naming the variable."""
    digits = text.replace(":", "").lower()
    if len(digits) != 64 or not all(c in "0123456789abcdef" for c in digits):
        raise SettingsError(
            f"{name} must be a SHA-256 fingerprint (64 hex digits, colons allowed), got {text!r}"
        )
    return bytes.fromhex(digits)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the whole configuration; raise SettingsError naming the bad variable."""
    r = _Reader(os.environ if env is None else env)
    mode = r.choice("CLUSTER_MODE", "master", ("master", "slave"))
    master_api_url = r.optional("MASTER_API_URL")
    master_api_token = r.optional("MASTER_API_TOKEN")
    if mode == "slave" and not master_api_url:
        raise SettingsError("MASTER_API_URL is required when CLUSTER_MODE=slave")
    if master_api_url and not master_api_url.startswith("https://"):
        raise SettingsError(f"MASTER_API_URL must be an https:// URL, got {master_api_url!r}")
    if mode == "slave" and not master_api_token:
        raise SettingsError("MASTER_API_TOKEN is required when CLUSTER_MODE=slave")
    database_url = r.text("DATABASE_URL")
    if not database_url.startswith(("postgres://", "postgresql://")):
        raise SettingsError("DATABASE_URL must be a postgresql:// URL")
    cert = r.path("TLS_CERT_FILE")
    key = r.path("TLS_KEY_FILE")
    if (cert is None) != (key is None):
        raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE must be set together (or neither)")
    state_dir = r.path("STATE_DIR", "/var/lib/mailrelay")
    assert state_dir is not None
    secret_key_file = r.path("SECRET_KEY_FILE", str(state_dir / "secret.key"))
    assert secret_key_file is not None
    node_id = r.text("NODE_ID", "a")
    if not node_id.isalnum() or len(node_id) > 32:
        raise SettingsError(f"NODE_ID must be 1-32 letters or digits, got {node_id!r}")
    session_idle_minutes = r.integer("SESSION_IDLE_MINUTES", 30, 1, 24 * 60)
    session_max_hours = r.integer("SESSION_MAX_HOURS", 12, 1, 24 * 30)
    if session_max_hours * 60 < session_idle_minutes:
        raise SettingsError(
            f"SESSION_MAX_HOURS ({session_max_hours} h) must not be shorter than "
            f"SESSION_IDLE_MINUTES ({session_idle_minutes} min)"
        )
    return Settings(
        node_id=node_id,
        node_ip=r.ip("NODE_IP", "127.0.0.1") or "127.0.0.1",
        peer_node_ip=r.ip("PEER_NODE_IP", required=False),
        vip_address=r.ip("VIP_ADDRESS", required=False),
        # High by default: the peer waits (256 - priority) / 256 adverts before it takes over.
        vrrp_priority=r.integer("VRRP_PRIORITY", 250, 1, 254),
        cluster_mode=mode,  # type: ignore[arg-type]
        master_api_url=master_api_url,
        master_api_token=master_api_token,
        retention_days=r.integer("RETENTION_DAYS", 14, 1, 3650),
        sync_interval_seconds=r.number("SYNC_INTERVAL_SECONDS", 5.0, 1.0, 3600.0),
        database_url=database_url,
        tls_cert_file=cert,
        tls_key_file=key,
        secret_key_file=secret_key_file,
        state_dir=state_dir,
        https_host=r.text("HTTPS_HOST", "127.0.0.1"),
        https_port=r.integer("HTTPS_PORT", 8443, 1, 65535),
        session_idle_minutes=session_idle_minutes,
        session_max_hours=session_max_hours,
        htmx_source=r.choice("HTMX_SOURCE", "cdn", ("cdn", "local")),  # type: ignore[arg-type]
        hostname=r.text("NODE_HOSTNAME", socket.gethostname()),
        agent_socket=_agent_socket(r),
        postfix_log_file=r.path("POSTFIX_LOG_FILE", "/var/log/postfix.log") or Path(),
        # Checked in detail where keepalived.conf is rendered (app.cluster.keepalived).
        vrrp_interface=r.text("VRRP_INTERFACE", "eth0"),
        vrrp_advert_int=r.text("VRRP_ADVERT_INT", "1"),
        sync_freeze=r.choice("SYNC_FREEZE", "freeze", ("freeze", "stop", "none")),  # type: ignore[arg-type]
        sync_flush=r.flag("SYNC_FLUSH", False),
        # How long one pull run follows the master; the timer starts the next one a second
        # after it ended. At most the master's longest long poll (60 s).
        config_pull_wait_seconds=r.number("CONFIG_PULL_WAIT_SECONDS", 50.0, 0.0, 60.0),
        # A pull applies within seconds of the master's Apply; nodes that still run different
        # versions after this long are a problem an operator must see.
        config_drift_alert_seconds=r.number("CONFIG_DRIFT_ALERT_SECONDS", 30.0, 1.0, 86400.0),
        # The peer's API, for a returning node to ask what the peer took over. On the slave the
        # peer is the master: its MASTER_* settings serve when these are not set.
        peer_api_url=r.optional("PEER_API_URL") or master_api_url,
        peer_api_token=r.optional("PEER_API_TOKEN") or master_api_token,
        peer_cert_fingerprint=r.optional("PEER_CERT_FINGERPRINT")
        or r.optional("MASTER_CERT_FINGERPRINT"),
        webauthn_rp_id=_rp_id(r.optional("WEBAUTHN_RP_ID")),
        master_cert_fingerprint=r.fingerprint("MASTER_CERT_FINGERPRINT"),
        master_ca_file=r.path("MASTER_CA_FILE"),
        **_shadow(r),
        alerts=_alerts(r),
        **_retention(r),
        **_backup(r),
    )


def load_agent_settings(env: Mapping[str, str] | None = None) -> AgentSettings:
    """The agent's variables (see AgentSettings); raise SettingsError naming a bad one."""
    r = _Reader(os.environ if env is None else env)
    shadow = _shadow(r)
    max_file_bytes = None
    if r.optional("REPLICA_MAX_FILE_BYTES") is not None:
        max_file_bytes = r.integer("REPLICA_MAX_FILE_BYTES", 0, 1, 1 << 44)
    return AgentSettings(
        socket=_agent_socket(r),
        socket_mode=_file_mode(r, "AGENT_SOCKET_MODE", 0o660),
        postfix_config_dir=r.path("POSTFIX_CONFIG_DIR", "/etc/postfix") or Path(),
        postfix_maps_root=r.path("POSTFIX_MAPS_ROOT", "/etc/postfix/mailrelay") or Path(),
        replica_dir=shadow["replica_dir"],
        replica_max_file_bytes=max_file_bytes,
        replica_max_files=r.integer("REPLICA_MAX_FILES", 200_000, 1, 1 << 40),
        takeover_journal=r.path("TAKEOVER_JOURNAL", "/var/lib/mailrelay-agent/takeover-journal")
        or Path(),
        shadow_store=shadow["shadow_store"],
        shadow_counter_file=shadow["shadow_counter_file"],
        shadow_mode=shadow["shadow_mode"],
        shadow_timeout_ms=shadow["shadow_timeout_ms"],
        shadow_milter_socket=shadow["shadow_milter_socket"],
        sync=_sync(r),
        protections=_protections(r),
    )


def _agent_socket(r: _Reader) -> Path:
    # Read by both sides: the agent listens on it, the web app and the jobs connect to it.
    return r.path("AGENT_SOCKET", "/run/mailrelay/agent.sock") or Path()


def _file_mode(r: _Reader, name: str, default: int) -> int:
    value = r.raw(name)
    if value is None:
        return default
    try:
        mode = int(value, 8)
    except ValueError:
        raise SettingsError(f"{name} must be an octal file mode like 0660, got {value!r}") from None
    if not 0 <= mode <= 0o777:
        raise SettingsError(f"{name} must be an octal file mode like 0660, got {value!r}")
    return mode


def _sync(r: _Reader) -> SyncSettings:
    peer = r.optional("SYNC_PEER")
    if peer is not None and not re.fullmatch(r"[0-9a-fA-F.:]+|[a-z0-9.-]+", peer):
        raise SettingsError(f"SYNC_PEER is not a host or address: {peer!r}")
    # Unset is the default directory; set empty (a host without the disk for a second copy of
    # its queue): no snapshot, the frozen pass copies straight to the peer, ssh and all.
    snapshot = r.env.get("SYNC_SNAPSHOT_DIR")
    if snapshot is None:
        snapshot_dir: Path | None = SyncSettings.snapshot_dir
    else:
        snapshot_dir = Path(snapshot.strip()) if snapshot.strip() else None
    return SyncSettings(
        peer=peer,
        ssh_key=r.path("SYNC_SSH_KEY", str(SyncSettings.ssh_key)) or Path(),
        remote_user=r.text("SYNC_REMOTE_USER", SyncSettings.remote_user),
        known_hosts=r.path("SYNC_KNOWN_HOSTS", str(SyncSettings.known_hosts)) or Path(),
        snapshot_dir=snapshot_dir,
    )


def _protections(r: _Reader) -> PostfixProtections:
    zones = tuple(z.strip() for z in (r.optional("POSTFIX_RBL_LIST") or "").split(",") if z.strip())
    for zone in zones:
        if not re.fullmatch(r"[a-z0-9.-]+(=[0-9.]+)?(\*[0-9]+)?", zone):
            raise SettingsError(f"POSTFIX_RBL_LIST: {zone!r} is not a DNSBL zone")
    rate = None
    if r.optional("POSTFIX_CLIENT_RATE_LIMIT") is not None:
        rate = r.integer("POSTFIX_CLIENT_RATE_LIMIT", 0, 1, 10**9)
    return PostfixProtections(
        rbl_zones=zones,
        client_rate_limit=rate,
        postscreen=r.flag("POSTFIX_POSTSCREEN", False),
    )


def _shadow(r: _Reader) -> dict[str, Any]:
    """Shadow copies (app/replication): a 250 only once the peer holds a copy."""
    token = r.optional("SHADOW_TOKEN")
    if token is not None and len(token) < 32:
        raise SettingsError("SHADOW_TOKEN must be at least 32 characters (the same on both nodes)")
    cert, key = r.path("SHADOW_CERT_FILE"), r.path("SHADOW_KEY_FILE")
    if (cert is None) != (key is None):
        raise SettingsError("SHADOW_CERT_FILE and SHADOW_KEY_FILE must be set together")
    return {
        "shadow_mode": r.choice("SHADOW_MODE", "prefer", ("off", "prefer", "require")),
        # The peer is on the same LAN: a copy takes a millisecond or two plus the peer's fsync;
        # 2 s leaves room for a 50 MB message and a slow disk, and is far below what an SMTP
        # client waits for the final reply (RFC 5321: 10 minutes).
        "shadow_timeout_ms": r.integer("SHADOW_TIMEOUT_MS", 2000, 50, 60000),
        "shadow_port": r.integer("SHADOW_PORT", 2526, 1, 65535),
        "shadow_token": token,
        "shadow_store": r.path("SHADOW_STORE", "/var/spool/mailrelay-shadow"),
        "shadow_store_max_bytes": r.integer("SHADOW_STORE_MAX_BYTES", 1 << 30, 1 << 20, 1 << 44),
        "shadow_milter_socket": r.path(
            "SHADOW_MILTER_SOCKET", "/run/mailrelay-shadow-milter/milter.sock"
        ),
        "shadow_counter_file": r.path(
            "SHADOW_COUNTER_FILE", "/var/lib/mailrelay-shadow-milter/counters.json"
        ),
        "shadow_cert_file": cert,
        "shadow_key_file": key,
        "replica_dir": r.path("REPLICA_DIR", "/var/spool/mailrelay-replica"),
    }


_ADDRESS = re.compile(r"[^@\s<>,;]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _alerts(r: _Reader) -> AlertSettings:
    emails = tuple(a.strip() for a in (r.optional("ALERT_EMAIL") or "").split(",") if a.strip())
    for address in emails:
        if not _ADDRESS.fullmatch(address):
            raise SettingsError(
                f"ALERT_EMAIL must be e-mail addresses, comma-separated: {address!r}"
            )
    sender = r.optional("ALERT_FROM")
    if sender is not None and not _ADDRESS.fullmatch(sender):
        raise SettingsError(f"ALERT_FROM must be an e-mail address, got {sender!r}")
    if emails and sender is None:
        # The relay takes mail only from whitelisted sender domains: nothing to guess here.
        raise SettingsError(
            "ALERT_FROM is required with ALERT_EMAIL (a sender of an allowed domain)"
        )
    url = r.optional("ALERT_WEBHOOK_URL")
    if url is not None and not re.fullmatch(r"https://[^\s/]+(/\S*)?", url):
        raise SettingsError(f"ALERT_WEBHOOK_URL must be an https:// URL, got {url!r}")
    return AlertSettings(
        email=emails,
        sender=sender,
        smtp_host=r.text("ALERT_SMTP_HOST", "127.0.0.1"),
        smtp_port=r.integer("ALERT_SMTP_PORT", 25, 1, 65535),
        webhook_url=url,
        webhook_ca_file=r.path("ALERT_WEBHOOK_CA_FILE"),
        # A condition that comes and goes (a flapping link) says so at most this often.
        min_interval_seconds=r.number("ALERT_MIN_INTERVAL_SECONDS", 600.0, 0.0, 7 * 86400.0),
        # Runs every SYNC_INTERVAL_SECONDS: one failure is a blip, three are a pattern.
        sync_failures=r.integer("ALERT_SYNC_FAILURES", 3, 1, 10000),
        replication_lag_seconds=r.number("ALERT_REPLICATION_LAG_SECONDS", 120.0, 1.0, 7 * 86400.0),
        queue_messages=r.integer("ALERT_QUEUE_MESSAGES", 1000, 0, 10**9),
        queue_age_seconds=r.number("ALERT_QUEUE_AGE_SECONDS", 3600.0, 1.0, 30 * 86400.0),
        cert_days=r.number("ALERT_CERT_DAYS", 14.0, 0.0, 3650.0),
        spool_dir=r.path("ALERT_SPOOL_DIR", "/var/spool/postfix") or Path(),
        spool_percent=r.number("ALERT_SPOOL_PERCENT", 90.0, 1.0, 100.0),
        # The backup timer runs daily: a day and a half without a new one is a missed night.
        backup_hours=r.number("ALERT_BACKUP_HOURS", 36.0, 0.0, 3650 * 24.0),
        # The follower reads within seconds; ten minutes is a stop, not a busy hour.
        ingest_minutes=r.number("ALERT_INGEST_MINUTES", 10.0, 0.0, 7 * 24 * 60.0),
        language=r.choice("ALERT_LANGUAGE", "en", ("en", "de")),
    )


def _retention(r: _Reader) -> dict[str, Any]:
    """How long the tables that grow by themselves keep their rows (app/jobs/retention.py).
    RETENTION_DAYS (mail logs) is read with the rest above; config versions and users are kept."""
    return {
        # About 17,000 rows a day per node: history for the dashboard and a post-mortem.
        "sync_runs_retention_days": r.integer("SYNC_RUNS_RETENTION_DAYS", 30, 1, 3650),
        "vrrp_events_retention_days": r.integer("VRRP_EVENTS_RETENTION_DAYS", 30, 1, 3650),
        # A returning node asks its peer for these to delete exactly the messages the peer took
        # over: keep them longer than a node may plausibly be away (a repair, a lost disk
        # replaced). Past that, it releases its stale copies: delivered twice, or bounced.
        "queue_imports_retention_days": r.integer("QUEUE_IMPORTS_RETENTION_DAYS", 90, 7, 3650),
        # Who changed what: over a year, for the yearly review.
        "audit_retention_days": r.integer("AUDIT_RETENTION_DAYS", 400, 30, 36500),
    }


def _backup(r: _Reader) -> dict[str, Any]:
    """`mailrelay backup` (app/backup.py): where the daily dumps go and how many stay."""
    return {
        "backup_dir": r.path("BACKUP_DIR", "/var/backups/mailrelay"),
        "backup_keep": r.integer("BACKUP_KEEP", 14, 1, 3650),
    }


def _rp_id(value: str | None) -> str | None:
    # Security keys are bound to this name; unset, the host name the browser used is taken.
    if value is None:
        return None
    name = value.lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if re.fullmatch(
            r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]"
            r"([a-z0-9-]{0,61}[a-z0-9])?",
            name,
        ):
            return name
    raise SettingsError(
        f"WEBAUTHN_RP_ID must be a host or domain name (not an IP address), got {value!r}"
    )
