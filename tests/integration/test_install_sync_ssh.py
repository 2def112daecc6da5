"""The ssh side of queue sync as scripts/install-node writes it (scripts/lib/sync-ssh.sh), run
with bash against this machine's rrsync and checked with OpenSSH's own parser (ssh-keygen).
install-node itself rewrites /etc and cannot run here; the lab runs it on its nodes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "scripts" / "lib" / "sync-ssh.sh"
PEER = "198.18.0.12"
REPLICA = "/var/spool/mailrelay-replica"

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None or not Path("/usr/bin/rrsync").exists(),
    reason="needs OpenSSH's ssh-keygen and rsync's rrsync",
)


def bash(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f'. "{LIB}"; {script}', "sync-ssh", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


@pytest.fixture
def keypair(tmp_path) -> tuple[str, Path]:
    key = tmp_path / "peer_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@peer", "-f", str(key)],
        check=True,
    )
    return Path(f"{key}.pub").read_text().strip(), key


def fingerprint(path: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def test_the_peers_key_may_only_rrsync_into_the_replica_from_the_peers_address(keypair, tmp_path):
    public, key = keypair
    result = bash('sync_authorized_keys "$1" "$2" "$3"', REPLICA, PEER, public)
    assert result.returncode == 0, result.stderr
    # Debian 12's rrsync (rsync 3.2.7 and later) knows write-only and munged links.
    assert result.stdout == (
        f'from="{PEER}",command="/usr/bin/rrsync -wo -munge {REPLICA}",restrict '
        f"{' '.join(public.split()[:2])} mailrelay-queue-sync\n"
    )
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(result.stdout)
    # OpenSSH reads the line, options and all, as the peer's key.
    assert fingerprint(authorized) == fingerprint(Path(f"{key}.pub"))


def test_an_rrsync_without_write_only_or_munged_links_gets_neither(tmp_path):
    old = tmp_path / "rrsync"
    old.write_text("#!/bin/sh\necho 'Use \"man rrsync\" to learn how to restrict ssh users'\n")
    old.chmod(0o755)
    newer = tmp_path / "rrsync-wo"
    newer.write_text("#!/bin/sh\necho 'usage: rrsync [-ro | -wo] [-no-overwrite] DIR'\n")
    newer.chmod(0o755)
    assert bash("sync_rrsync_options", env={"RRSYNC": str(old)}).stdout == ""
    assert bash("sync_rrsync_options", env={"RRSYNC": str(newer)}).stdout == "-wo"


def test_the_peers_host_key_is_pinned_for_its_address(keypair, tmp_path):
    public, _key = keypair
    result = bash('sync_known_hosts "$1" "$2"', PEER, public)
    assert result.returncode == 0, result.stderr
    known = tmp_path / "sync_known_hosts"
    known.write_text(result.stdout)
    found = subprocess.run(
        ["ssh-keygen", "-F", PEER, "-f", str(known)], capture_output=True, text=True, check=False
    )
    assert found.returncode == 0 and public.split()[1] in found.stdout
    other = subprocess.run(
        ["ssh-keygen", "-F", "198.18.0.13", "-f", str(known)], capture_output=True, check=False
    )
    assert other.returncode != 0


@pytest.mark.parametrize(
    ("function", "args", "error"),
    [
        ("sync_known_hosts", (PEER, "ssh-rsa AAAAB3NzaC1yc2E"), "SYNC_PEER_HOST_KEY is not one"),
        ("sync_known_hosts", (PEER, ""), "SYNC_PEER_HOST_KEY is not one"),
        ("sync_authorized_keys", (REPLICA, PEER, 'ssh-ed25519 AAAA",x'), "SYNC_PEER_PUBKEY"),
        ("sync_authorized_keys", (REPLICA, "", "ssh-ed25519 AAAA"), "PEER_NODE_IP is not an IP"),
        ("sync_authorized_keys", (REPLICA, 'a",command="sh', "ssh-ed25519 AAAA"), "PEER_NODE_IP"),
    ],
)
def test_bad_settings_are_refused_by_name(function, args, error):
    result = bash(f'{function} "$@"', *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert error in result.stderr
