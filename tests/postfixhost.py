"""A real Postfix with the product's configuration, in its own network and mount namespace.

The namespace has the relay at 198.18.5.1, two relay targets (sink1 .21 plain, sink2 .22 with
STARTTLS + AUTH required), a trusted client address .30 and an untrusted one .40, all on the
namespace's loopback. Postfix sees private /etc/postfix, /var/spool/postfix and /var/lib/postfix
(bind mounts inside a mount namespace held open by a `sleep` process), so the host's own Postfix
configuration and port 25 are never touched. The agent runs inside the same namespaces.
Everything is removed in stop(), also after a failed start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from app.agent.client import AgentClient
from app.postfix import render

ROOT = Path(__file__).resolve().parents[1]
RELAY = "198.18.5.1"
SINK1 = "198.18.5.21"
SINK2 = "198.18.5.22"
CLIENT = "198.18.5.30"
OUTSIDE = "198.18.5.40"
# The peer's shadow receiver (app/replication), played inside the same namespace.
SHADOW_PEER = "198.18.5.50"
SHADOW_PORT = 2526
SHADOW_TOKEN = "shadow-token-for-tests-0123456789abcdef"
SINK2_USER = "relayuser"
SINK2_PASSWORD = "sink-secret-42"


# One allowed sender domain routed to sink1, trusted only from CLIENT: the configuration the
# takeover tests (replica, shadows) apply before they plant the peer's files.
ALLOWED = "allowed.example"
ONE_ROUTE = {
    "sender_domains": [
        {
            "name": ALLOWED,
            "comment": "",
            "route": {
                "host": SINK1,
                "port": 25,
                "tls_mode": "none",
                "auth_user": "",
                "auth_password_enc": "",
            },
        }
    ],
    "trusted_networks": [{"cidr": f"{CLIENT}/32", "comment": ""}],
}


def started() -> Iterator[PostfixHost]:
    """A module fixture's body: a running relay, or the test skipped with the reason."""
    import pytest

    reason = available()
    if reason:
        pytest.skip(f"real Postfix tests need: {reason}")
    host = PostfixHost().start()
    yield host
    host.stop()


async def apply_one_route(host: PostfixHost) -> AgentClient:
    """ONE_ROUTE applied through the host's agent, and sink1 emptied."""
    client = AgentClient(host.agent_socket)
    report = await client.apply(1, render.render(1, ONE_ROUTE, str).files)
    assert report["applied"], report
    for item in host.sink1.iterdir():
        item.unlink()
    return client


def new_takeover() -> str:
    """A takeover's key as the VRRP reader passes it: each test's import is a takeover of its
    own, unless it asks again with the same key."""
    return f"test-{time.time_ns()}"


def available() -> str | None:
    """Why this machine cannot run the fixture, or None."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("postfix", "swaks", "ip", "nsenter", "unshare"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed"
    return None


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


class PostfixHost:
    def __init__(self, shadow_mode: str = "off") -> None:
        self.shadow_mode = shadow_mode
        self.ns = f"mr-pf-{os.getpid()}"
        self.base = Path(tempfile.mkdtemp(prefix="mailrelay-postfix-"))
        self.holder: subprocess.Popen[bytes] | None = None
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.agent_socket = self.base / "run" / "agent.sock"
        self.log_file = self.base / "log" / "postfix.log"
        self.maps_root = self.base / "maps"
        self.sink1 = self.base / "sink1"
        self.sink2 = self.base / "sink2"
        self.tls_dir = self.base / "tls"
        # The peer's queue copy, as the agent's promotion import reads it.
        self.replica = self.base / "replica"
        self.shadow_store = self.base / "shadow"
        self.takeover_journal = self.base / "takeover-journal"
        self.milter_socket = self.base / "run" / "milter.sock"
        self.shadow_counters = self.base / "shadow-counters.json"
        self.shadow_processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- running things inside --------------------------------------------------------------

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the relay's network + mount namespace (Postfix tools)."""
        assert self.holder is not None
        result = _run(["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--wd=/", *cmd])
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {result.stderr or result.stdout}")
        return result

    def net(self, *cmd: str) -> list[str]:
        """A command line that runs in the namespace's network only (clients, targets)."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def swaks(self, sender: str, rcpt: str, client: str = CLIENT, *extra: str) -> str:
        result = _run(
            self.net(
                "swaks",
                "--server",
                RELAY,
                "--local-interface",
                client,
                "--from",
                sender,
                "--to",
                rcpt,
                "--timeout",
                "20",
                *extra,
            )
        )
        return result.stdout + result.stderr

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> PostfixHost:
        try:
            self._network()
            self._files()
            self._namespace()
            self._configure()
            self._daemons()
            self.start_postfix()
        except Exception:
            self.stop()
            raise
        return self

    def start_postfix(self) -> None:
        self.exec("postfix", "start")
        self._wait(
            lambda: self.exec("postfix", "status", check=False).returncode == 0,
            "postfix to start",
        )

    def restart_postfix(self) -> None:
        """A new master process: the services it throttled (daemons that died at their start)
        start afresh."""
        self.exec("postfix", "stop")
        self.start_postfix()

    def _network(self) -> None:
        _run(["ip", "netns", "del", self.ns])
        for cmd in (
            ["ip", "netns", "add", self.ns],
            self.net("ip", "link", "set", "lo", "up"),
            *[
                self.net("ip", "addr", "add", f"{a}/32", "dev", "lo")
                for a in (RELAY, SINK1, SINK2, CLIENT, OUTSIDE, SHADOW_PEER)
            ],
        ):
            result = _run(cmd)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: {result.stderr}")

    def _files(self) -> None:
        for name in ("etc", "spool", "lib", "log", "run", "tls", "sink1", "sink2"):
            (self.base / name).mkdir()
        # Postfix daemons (user postfix) must traverse to the maps, certificates and log.
        os.chmod(self.base, 0o755)  # noqa: S103
        for item in Path("/etc/postfix").iterdir():
            if item.name != "main.cf" and item.is_file():
                shutil.copy2(item, self.base / "etc" / item.name)
        for item in ("dynamicmaps.cf.d", "postfix-files.d", "sasl"):
            if (Path("/etc/postfix") / item).is_dir():
                shutil.copytree(Path("/etc/postfix") / item, self.base / "etc" / item)
        (self.base / "etc" / "main.cf").write_text("")
        shutil.chown(self.base / "lib", "postfix", "postfix")
        _self_signed(self.tls_dir / "smtpd.crt", self.tls_dir / "smtpd.key", "relay.test")
        _self_signed(self.base / "sink2.crt", self.base / "sink2.key", "sink2.test")

    def _namespace(self) -> None:
        mounts = " && ".join(
            f"mount --bind {self.base / src} {dst}"
            for src, dst in (
                ("etc", "/etc/postfix"),
                ("spool", "/var/spool/postfix"),
                ("lib", "/var/lib/postfix"),
            )
        )
        self.holder = subprocess.Popen(
            self.net(
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{mounts} && exec sleep infinity",
            ),
            start_new_session=True,
        )
        self._wait(
            lambda: (
                (self.base / "etc" / "main.cf").exists()
                and self.exec("test", "-e", "/etc/postfix/master.cf", check=False).returncode == 0
                and self.exec("findmnt", "/var/lib/postfix", check=False).returncode == 0
            ),
            "the mount namespace",
        )

    def _configure(self) -> None:
        overrides = {
            "mailrelay_maps": f"{self.maps_root}/live",
            "mailrelay_tls_dir": str(self.tls_dir),
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.base}",
            "myhostname": "relay.test",
            "inet_interfaces": RELAY,
            "smtp_bind_address": RELAY,
        }
        args = [f"{k}={v}" for k, v in overrides.items()]
        result = self._agent_cmd("postfix-settings", *[f"--set={a}" for a in args])
        if result.returncode != 0:
            raise RuntimeError(f"postfix-settings: {result.stderr}")
        self.exec("postfix", "set-permissions")

    def _agent_env(self) -> list[str]:
        return [
            "env",
            f"POSTFIX_MAPS_ROOT={self.maps_root}",
            f"AGENT_SOCKET={self.agent_socket}",
            f"REPLICA_DIR={self.replica}",
            f"TAKEOVER_JOURNAL={self.takeover_journal}",
            f"SHADOW_MODE={self.shadow_mode}",
            f"SHADOW_MILTER_SOCKET={self.milter_socket}",
            f"SHADOW_STORE={self.shadow_store}",
            f"SHADOW_COUNTER_FILE={self.shadow_counters}",
            f"PYTHONPATH={ROOT}",
        ]

    def _agent_cmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.exec(*self._agent_env(), sys.executable, "-m", "app.agent", *args, check=False)

    def _daemons(self) -> None:
        self.start_agent()
        self.start_sink(1)
        self.start_sink(2)
        self._wait(self.agent_socket.exists, "the agent socket")

    def start_agent(self) -> None:
        assert self.holder is not None
        agent_log = open(self.base / "agent.log", "ab")  # noqa: SIM115 - lives with the daemon
        self.agent = subprocess.Popen(
            [
                "nsenter",
                "-t",
                str(self.holder.pid),
                "-m",
                "-n",
                "--wd=/",
                *self._agent_env(),
                sys.executable,
                "-m",
                "app.agent",
                "serve",
            ],
            stdout=agent_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.daemons.append(self.agent)

    def restart_agent(self) -> None:
        """The agent stopped and started again: all it kept in memory is gone."""
        _terminate(self.agent)
        self.daemons.remove(self.agent)
        self.agent_socket.unlink(missing_ok=True)
        self.start_agent()
        self._wait(self.agent_socket.exists, "the agent socket")

    def start_sink(self, number: int) -> None:
        if number == 1:
            args = [SINK1, "25", str(self.sink1)]
        else:
            args = [
                SINK2,
                "25",
                str(self.sink2),
                "--tls",
                str(self.base / "sink2.crt"),
                str(self.base / "sink2.key"),
                "--require-tls",
                "--auth",
                f"{SINK2_USER}:{SINK2_PASSWORD}",
            ]
        process = subprocess.Popen(
            self.net("env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "tests.smtptarget", *args),
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / f"sink{number}.log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        process.sink_number = number  # type: ignore[attr-defined]
        self.daemons.append(process)
        address = SINK1 if number == 1 else SINK2
        self._wait(
            lambda: _run(self.net("bash", "-c", f"echo > /dev/tcp/{address}/25")).returncode == 0,
            f"sink{number}",
        )

    # -- shadow copies (app/replication) ---------------------------------------------------

    def _shadow_env(self, mode: str, timeout_ms: int) -> list[str]:
        fingerprint = _fingerprint(self.base / "shadow.crt")
        return [
            "env",
            f"PYTHONPATH={ROOT}",
            "DATABASE_URL=postgresql://unused/no-database-needed",
            f"SHADOW_MODE={mode}",
            f"SHADOW_TIMEOUT_MS={timeout_ms}",
            f"SHADOW_TOKEN={SHADOW_TOKEN}",
            f"SHADOW_PORT={SHADOW_PORT}",
            f"SHADOW_STORE={self.shadow_store}",
            f"SHADOW_STORE_MAX_BYTES={64 * 1024 * 1024}",
            f"SHADOW_MILTER_SOCKET={self.milter_socket}",
            f"SHADOW_COUNTER_FILE={self.shadow_counters}",
            f"SHADOW_CERT_FILE={self.base / 'shadow.crt'}",
            f"SHADOW_KEY_FILE={self.base / 'shadow.key'}",
            f"REPLICA_DIR={self.replica}",
            f"NODE_IP={SHADOW_PEER}",
            f"PEER_NODE_IP={SHADOW_PEER}",
            f"PEER_CERT_FINGERPRINT={fingerprint}",
        ]

    def start_shadow(self, which: str, mode: str = "prefer", timeout_ms: int = 2000) -> None:
        """Start the shadow `receiver` (the peer's, at SHADOW_PEER) or the `milter`; Postfix
        gets the milter settings for `mode` from the agent's postfix-settings."""
        if not (self.base / "shadow.crt").exists():
            _self_signed(self.base / "shadow.crt", self.base / "shadow.key", "peer.test")
        self.stop_shadow(which)
        log = open(self.base / f"shadow-{which}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            self.net(
                *self._shadow_env(mode, timeout_ms), sys.executable, "-m", "app.replication", which
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.shadow_processes[which] = process
        if which == "milter":
            self._wait(self.milter_socket.exists, "the shadow milter socket")
            if mode != self.shadow_mode:
                self.shadow_mode = mode
                self._configure()
                self.exec("postfix", "reload")
        else:
            self._wait(
                lambda: (
                    _run(
                        self.net("bash", "-c", f"echo > /dev/tcp/{SHADOW_PEER}/{SHADOW_PORT}")
                    ).returncode
                    == 0
                ),
                "the shadow receiver",
            )

    def stop_shadow(self, which: str) -> None:
        process = self.shadow_processes.pop(which, None)
        if process is not None:
            _terminate(process)
        if which == "milter":
            self.milter_socket.unlink(missing_ok=True)

    def stop_sink(self, number: int) -> None:
        for process in list(self.daemons):
            if getattr(process, "sink_number", None) == number:
                _terminate(process)
                self.daemons.remove(process)

    def stop(self) -> None:
        if self.holder is not None:
            self.exec("postfix", "stop", check=False)
        for process in [*self.daemons, *self.shadow_processes.values()]:
            _terminate(process)
        self.daemons.clear()
        self.shadow_processes.clear()
        if self.holder is not None:
            _terminate(self.holder)
            self.holder = None
        _run(["ip", "netns", "del", self.ns])
        shutil.rmtree(self.base, ignore_errors=True)

    @staticmethod
    def _wait(condition: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def _fingerprint(cert: Path) -> str:
    import hashlib
    import ssl

    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return hashlib.sha256(der).hexdigest()


def _self_signed(cert: Path, key: Path, name: str) -> None:
    result = _run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "30",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
        ]
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl: {result.stderr}")
    os.chmod(key, 0o600)
