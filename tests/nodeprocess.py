"""`mailrelay serve` as a real HTTPS server in a process of its own, on a database of its own:
the browser tests' server, or a second node that a test's app asks over the peer API."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.pgcluster import PostgresCluster

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
COMMAND = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    base_url: str
    state_dir: Path
    log_file: Path
    process: subprocess.Popen[bytes]
    admin_password: str  # the first admin's one-time password, as the install prints it
    env: dict[str, str]  # the node's settings: run its CLI with them (cli())
    database_url: str

    def output(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server output)"

    def fingerprint(self) -> str:
        """The certificate's SHA-256 fingerprint, as `mailrelay serve` prints it on start."""
        found = re.search(r"HTTPS certificate SHA-256 fingerprint: (\S+)", self.output())
        assert found, f"serve printed no fingerprint:\n{self.output()}"
        return found.group(1)

    def cli(self, *args: str) -> str:
        """A `mailrelay` command with this node's settings: its standard output."""
        return _run(self.env, *args).stdout.strip()


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*COMMAND, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"mailrelay {args[0]} failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def serve_node(
    pg_cluster: PostgresCluster, database: str, settings: dict[str, str]
) -> Iterator[Server]:
    """`mailrelay migrate`, `create-first-admin`, then `serve` on a free port against a fresh
    database `database`, with node a's defaults overridden by `settings`."""
    pg_cluster.drop_database(database)
    dsn = pg_cluster.create_database(database)
    tmp = Path(tempfile.mkdtemp(prefix=f"{database}-"))
    state_dir = tmp / "state"
    state_dir.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "STATE_DIR": str(state_dir),
        "HTMX_SOURCE": "local",
        "NODE_ID": "a",
        "NODE_IP": "127.0.0.1",
        "CLUSTER_MODE": "master",
        "PICCOLO_CONF": "app.piccolo_conf",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    for name in ("SECRET_KEY_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE", "MASTER_API_URL"):
        env.pop(name, None)
    _run(env, "migrate")
    first_admin = _run(env, "create-first-admin")
    port = free_port()
    log_file = tmp / "server.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [*COMMAND, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Server(
        f"https://127.0.0.1:{port}",
        state_dir,
        log_file,
        process,
        first_admin.stdout.strip(),
        env,
        dsn,
    )
    try:
        _wait_healthy(running)
        yield running
    finally:
        _stop(process)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"mailrelay serve exited with status {server.process.returncode} before it "
                f"answered /healthz:\n{server.output()}"
            )
        try:
            # The server made a self-signed certificate for itself: nothing to verify against.
            response = httpx.get(f"{server.base_url}/healthz", verify=False, timeout=2.0)  # noqa: S501
            if response.status_code == 200 and response.json() == {"status": "ok"}:
                return
            last_error = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last_error = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(
        f"mailrelay serve did not answer {server.base_url}/healthz within {STARTUP_TIMEOUT:.0f} s "
        f"(last: {last_error}):\n{server.output()}"
    )
