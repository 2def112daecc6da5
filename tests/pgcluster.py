"""A throwaway PostgreSQL cluster for the test suite.

Plain module (no pytest import): conftest.py wraps it in fixtures.

PostgreSQL refuses to run as root, so when the tests run as root the cluster's
directory is owned by the ``postgres`` user and the server binaries run through
``runuser -u postgres --``. Client binaries (createdb, dropdb) connect over TCP
to 127.0.0.1 with trust authentication and run as the current user.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresCluster", "find_pg_bin"]

# The test suite's server need not survive a crash; a benchmark that times writes asks for
# the durability of a node's PostgreSQL (durable=True: the server's defaults).
_NOT_DURABLE = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version))


def find_pg_bin() -> str:
    """Return $PG_BIN, else the newest /usr/lib/postgresql/*/bin."""
    env = os.environ.get("PG_BIN")
    if env:
        return env
    candidates = [
        path
        for path in glob.glob("/usr/lib/postgresql/*/bin")
        if os.path.isfile(os.path.join(path, "pg_ctl"))
    ]
    if not candidates:
        raise RuntimeError("no PostgreSQL found: set PG_BIN or install postgresql")
    return max(candidates, key=_version_key)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


class PostgresCluster:
    """A private PostgreSQL server on 127.0.0.1 in a temporary directory."""

    def __init__(self, pg_bin: str | None = None, durable: bool = False) -> None:
        self.pg_bin: str = pg_bin or find_pg_bin()
        self.durable = durable
        self.base_dir: Path | None = None
        self.port: int | None = None
        self.host: str = "127.0.0.1"
        self.user: str = "postgres"
        self._as_root: bool = os.geteuid() == 0

    # -- paths -------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_file(self) -> Path:
        return self._base() / "postgresql.log"

    def _base(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("PostgresCluster is not started")
        return self.base_dir

    # -- helpers -----------------------------------------------------------

    def _bin(self, name: str) -> str:
        return os.path.join(self.pg_bin, name)

    def _server_cmd(self, *args: str) -> list[str]:
        """A server-side command, run as the postgres user when we are root."""
        if self._as_root:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _run(self, cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            cmd,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"command failed (exit {result.returncode}): {' '.join(cmd)}\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def _client_cmd(self, name: str, *args: str) -> list[str]:
        if self.port is None:
            raise RuntimeError("PostgresCluster is not started")
        return [self._bin(name), "-h", self.host, "-p", str(self.port), "-U", self.user, *args]

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> PostgresCluster:
        if self.base_dir is not None:
            raise RuntimeError("PostgresCluster already started")
        self.base_dir = Path(tempfile.mkdtemp(prefix="mailrelay-pg-"))
        try:
            if self._as_root:
                shutil.chown(self.base_dir, user="postgres", group="postgres")
            self._initdb()
            self._start_server()
        except BaseException:
            self._cleanup()
            raise
        return self

    def _initdb(self) -> None:
        base = ["-D", str(self.data_dir), "-A", "trust", "-U", self.user, "--no-sync", "-E", "UTF8"]
        first = self._run(
            self._server_cmd(self._bin("initdb"), *base, "--locale=C.UTF-8"), check=False
        )
        if first.returncode == 0:
            return
        shutil.rmtree(self.data_dir, ignore_errors=True)
        second = self._run(self._server_cmd(self._bin("initdb"), *base, "--no-locale"), check=False)
        if second.returncode != 0:
            raise RuntimeError(
                "initdb failed:\n"
                f"{first.stdout}{first.stderr}\n--- retry with --no-locale ---\n"
                f"{second.stdout}{second.stderr}"
            )

    def _start_server(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            self.port = _free_port()
            options = (
                f"-c listen_addresses={self.host} -p {self.port} -k {self._base()} "
                f"{'' if self.durable else _NOT_DURABLE}"
            )
            result = self._run(
                self._server_cmd(
                    self._bin("pg_ctl"),
                    "start",
                    "-w",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                ),
                check=False,
            )
            if result.returncode == 0:
                return
            log = _tail(self.log_file)
            # Another process may have taken the port between probing and binding.
            if attempt < attempts and "could not bind" in log:
                continue
            raise RuntimeError(
                f"PostgreSQL failed to start on {self.host}:{self.port} "
                f"(pg_ctl exit {result.returncode}):\n{result.stdout}{result.stderr}\n"
                f"--- tail of {self.log_file} ---\n{log}"
            )

    def stop(self) -> None:
        """Stop the server (immediate mode) and remove its directory."""
        if self.base_dir is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run(
                    self._server_cmd(
                        self._bin("pg_ctl"),
                        "stop",
                        "-m",
                        "immediate",
                        "-w",
                        "-D",
                        str(self.data_dir),
                    ),
                    check=False,
                )
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None
        self.port = None

    # -- databases ---------------------------------------------------------

    def dsn(self, name: str = "postgres") -> str:
        if self.port is None:
            raise RuntimeError("PostgresCluster is not started")
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"

    def socket_dsn(self, name: str = "postgres") -> str:
        """The DSN of database ``name`` over the server's Unix socket, as a node's jobs reach
        Debian's PostgreSQL (scripts/install-node)."""
        if self.port is None:
            raise RuntimeError("PostgresCluster is not started")
        return f"postgresql://{self.user}@/{name}?host={self._base()}&port={self.port}"

    def create_database(self, name: str, template: str = "template0") -> str:
        """Create database ``name`` (a copy of ``template``) and return its DSN."""
        _check_name(name)
        _check_name(template)
        self._run(self._client_cmd("createdb", "-E", "UTF8", "-T", template, name))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        _check_name(name)
        self._run(self._client_cmd("dropdb", "--if-exists", "--force", name))

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid database name: {name!r}")
