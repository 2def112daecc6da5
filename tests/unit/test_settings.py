"""Environment settings: defaults, and a SettingsError naming the variable for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SettingsError, load_agent_settings, load_settings

DB = "postgresql://mailrelay@localhost/mailrelay"


def env(**values: str) -> dict[str, str]:
    return {"DATABASE_URL": DB, **values}


def test_defaults() -> None:
    s = load_settings(env=env())
    assert s.retention_days == 14
    assert s.sync_interval_seconds == 5.0
    assert s.cluster_mode == "master"
    assert s.node_id == "a"
    assert s.node_ip == "127.0.0.1"
    assert s.peer_node_ip is None
    assert s.vip_address is None
    assert s.vrrp_priority == 250
    assert s.master_api_url is None
    assert s.master_api_token is None
    assert s.database_url == DB
    assert s.tls_cert_file is None and s.tls_key_file is None
    assert s.state_dir == Path("/var/lib/mailrelay")
    assert s.secret_key_file == Path("/var/lib/mailrelay/secret.key")
    assert s.https_host == "127.0.0.1"
    assert s.https_port == 8443
    assert s.session_idle_minutes == 30
    assert s.htmx_source == "cdn"
    assert s.hostname


def test_values_are_parsed() -> None:
    s = load_settings(
        env=env(
            RETENTION_DAYS=" 30 ",
            SYNC_INTERVAL_SECONDS="2.5",
            NODE_ID="b",
            NODE_IP="2001:DB8::0:2",
            PEER_NODE_IP="192.0.2.1",
            VIP_ADDRESS="192.0.2.100",
            VRRP_PRIORITY="150",
            CLUSTER_MODE="SLAVE",
            MASTER_API_URL="https://node-a.example:8443",
            MASTER_API_TOKEN="tok",
            TLS_CERT_FILE="/etc/mailrelay/cert.pem",
            TLS_KEY_FILE="/etc/mailrelay/key.pem",
            STATE_DIR="/srv/mailrelay",
            HTMX_SOURCE="local",
            NODE_HOSTNAME="relay-b",
        )
    )
    assert s.retention_days == 30
    assert s.sync_interval_seconds == 2.5
    assert s.node_id == "b"
    assert s.node_ip == "2001:db8::2"
    assert s.peer_node_ip == "192.0.2.1"
    assert s.vip_address == "192.0.2.100"
    assert s.vrrp_priority == 150
    assert s.cluster_mode == "slave"
    assert s.master_api_url == "https://node-a.example:8443"
    assert s.master_api_token == "tok"
    assert s.tls_cert_file == Path("/etc/mailrelay/cert.pem")
    assert s.tls_key_file == Path("/etc/mailrelay/key.pem")
    assert s.secret_key_file == Path("/srv/mailrelay/secret.key")
    assert s.htmx_source == "local"
    assert s.hostname == "relay-b"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RETENTION_DAYS", "two weeks"),
        ("RETENTION_DAYS", "1.5"),
        ("RETENTION_DAYS", "0"),
        ("RETENTION_DAYS", "3651"),
        ("SYNC_INTERVAL_SECONDS", "fast"),
        ("SYNC_INTERVAL_SECONDS", "0.5"),
        ("SYNC_INTERVAL_SECONDS", "3601"),
        ("SYNC_INTERVAL_SECONDS", "nan"),
        ("SYNC_INTERVAL_SECONDS", "inf"),
        ("VRRP_PRIORITY", "255"),
        ("VRRP_PRIORITY", "0"),
        ("HTTPS_PORT", "65536"),
        ("HTTPS_PORT", "https"),
        ("SESSION_IDLE_MINUTES", "1441"),
        ("NODE_IP", "300.1.1.1"),
        ("NODE_IP", "localhost"),
        ("PEER_NODE_IP", "node-b"),
        ("VIP_ADDRESS", "192.0.2.0/24"),
        ("CLUSTER_MODE", "primary"),
        ("HTMX_SOURCE", "unpkg"),
        ("NODE_ID", "node-a"),
        ("NODE_ID", "x" * 33),
        ("MASTER_API_URL", "http://node-a.example:8443"),
        ("MASTER_API_URL", "node-a.example"),
        ("DATABASE_URL", "mysql://localhost/mailrelay"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(env=env(**{variable: value}))


def test_database_url_is_required() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings(env={})
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings(env={"DATABASE_URL": "   "})


def test_slave_needs_the_master_url() -> None:
    with pytest.raises(SettingsError, match="MASTER_API_URL"):
        load_settings(env=env(CLUSTER_MODE="slave", MASTER_API_TOKEN="tok"))


def test_slave_needs_the_master_token() -> None:
    with pytest.raises(SettingsError, match="MASTER_API_TOKEN"):
        load_settings(env=env(CLUSTER_MODE="slave", MASTER_API_URL="https://node-a.example"))


@pytest.mark.parametrize("given", [{"TLS_CERT_FILE": "/etc/c.pem"}, {"TLS_KEY_FILE": "/etc/k.pem"}])
def test_tls_cert_and_key_come_together(given: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="TLS_CERT_FILE") as caught:
        load_settings(env=env(**given))
    assert "TLS_KEY_FILE" in str(caught.value)


def test_secrets_are_read_from_name_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "db").write_text(DB + "\n")
    s = load_settings(
        env={
            "DATABASE_URL_FILE": str(tmp_path / "db"),
            "CLUSTER_MODE": "slave",
            "MASTER_API_URL": "https://node-a.example",
            "MASTER_API_TOKEN_FILE": str(tmp_path / "token"),
        }
    )
    assert s.master_api_token == "s3cret-token"
    assert s.database_url == DB


def test_a_set_value_wins_over_name_file(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("postgresql://other/db")
    s = load_settings(env=env(DATABASE_URL_FILE=str(tmp_path / "db")))
    assert s.database_url == DB


def test_an_empty_value_falls_back_to_name_file(tmp_path: Path) -> None:
    (tmp_path / "db").write_text(DB)
    s = load_settings(env={"DATABASE_URL": "", "DATABASE_URL_FILE": str(tmp_path / "db")})
    assert s.database_url == DB


def test_an_unreadable_name_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="MASTER_API_TOKEN_FILE"):
        load_settings(
            env=env(
                CLUSTER_MODE="slave",
                MASTER_API_URL="https://node-a.example",
                MASTER_API_TOKEN_FILE=str(tmp_path / "missing"),
            )
        )


def test_the_agent_starts_from_its_own_env_file_alone() -> None:
    """agent.env (scripts/install-node) carries only SYNC_* and REPLICA_*: no DATABASE_URL."""
    s = load_agent_settings(
        env={
            "SYNC_PEER": "198.18.0.12",
            "SYNC_SSH_KEY": "/etc/mailrelay/sync_ed25519",
            "SYNC_REMOTE_USER": "mailrelay-sync",
            "SYNC_KNOWN_HOSTS": "/etc/mailrelay/sync_known_hosts",
            "REPLICA_MAX_FILES": "5000",
        }
    )
    assert s.socket == Path("/run/mailrelay/agent.sock") and s.socket_mode == 0o660
    assert s.postfix_config_dir == Path("/etc/postfix")
    assert s.postfix_maps_root == Path("/etc/postfix/mailrelay")
    assert s.replica_dir == Path("/var/spool/mailrelay-replica")
    assert s.replica_max_file_bytes is None and s.replica_max_files == 5000
    assert s.sync.peer == "198.18.0.12"
    assert s.sync.snapshot_dir == Path("/var/lib/mailrelay-agent/queue-snapshot")
    assert not s.protections.postscreen and s.protections.rbl_zones == ()


def test_a_node_without_a_peer_has_an_agent_all_the_same() -> None:
    assert load_agent_settings(env={}).sync.peer is None


def test_an_empty_snapshot_dir_means_no_snapshot() -> None:
    assert load_agent_settings(env={"SYNC_SNAPSHOT_DIR": ""}).sync.snapshot_dir is None
    s = load_agent_settings(env={"SYNC_SNAPSHOT_DIR": "/srv/snap"})
    assert s.sync.snapshot_dir == Path("/srv/snap")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SYNC_PEER", "peer;rm -rf /"),
        ("SYNC_PEER", "-oProxyCommand=x"),
        ("AGENT_SOCKET_MODE", "rw-rw----"),
        ("AGENT_SOCKET_MODE", "1777"),
        ("REPLICA_MAX_FILES", "0"),
        ("REPLICA_MAX_FILE_BYTES", "lots"),
        ("SHADOW_MODE", "sometimes"),
        ("SHADOW_TIMEOUT_MS", "2s"),
        ("POSTFIX_RBL_LIST", "zen.example, evil\nline"),
        ("POSTFIX_CLIENT_RATE_LIMIT", "0"),
        ("POSTFIX_POSTSCREEN", "maybe"),
    ],
)
def test_a_bad_agent_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_agent_settings(env={variable: value})


def test_the_masters_pin_is_checked_where_it_is_read() -> None:
    digest = bytes.fromhex("ab" * 32)
    pin = ":".join(["AB"] * 32)
    assert load_settings(env=env(MASTER_CERT_FINGERPRINT=pin)).master_cert_fingerprint == digest
    assert load_settings(env=env()).master_cert_fingerprint is None
    with pytest.raises(SettingsError, match="MASTER_CERT_FINGERPRINT"):
        load_settings(env=env(MASTER_CERT_FINGERPRINT="sha256:" + "ab" * 32))
