"""The Podman quadlets in podman/ and the images they run.

1. The real Quadlet generator (podman 5.4, from Debian trixie's package, fetched and cached by
   scripts/lib/quadlet.sh: bookworm's podman 4.3 has no Quadlet) turns every .container,
   .volume and .network file into a service, without an error or a warning.
2. `systemd-analyze --user verify` accepts the generated services.
3. podman/build-images.sh builds the images, and the stack runs from the `podman run` lines
   that Quadlet generated. PostgreSQL comes up healthy, then the web app answers /healthz and
   reaches the agent socket. This runs rootless under a test user, as in production, and as root.

Podman here is 4.3.1, and its default runtime (crun) fails on this host's hybrid cgroups. The
runs therefore use `--runtime /usr/sbin/runc --cgroup-manager cgroupfs --ulimit
nofile=10000:10000`. As root they also need `--ulimit nproc=32768:32768`: this sandbox has no
CAP_SYS_RESOURCE, and runc cannot raise RLIMIT_NPROC to podman's default. The generated lines
are changed only where a test must differ from a node:

- flags that need systemd are dropped (`--cgroups=split`, `--sdnotify=...`, `--cidfile=...`).
  `--rm` is dropped too, so the logs stay for a failure message.
- names get a per-run prefix (containers, volumes, secrets); ports, the environment file and the
  agent's socket directory point at test ones.
- as root, `--userns keep-id:...` is dropped, because Podman allows keep-id only rootless.

Set MAILRELAY_SKIP_IMAGE_BUILD=1 to skip part 3. A cold run takes a few minutes (debootstrap);
later runs reuse .cache/images/ and podman's layer cache.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PODMAN_DIR = ROOT / "podman"
QUADLET_SH = ROOT / "scripts" / "lib" / "quadlet.sh"
BUILD_IMAGES = PODMAN_DIR / "build-images.sh"
IMAGES = ("localhost/mailrelay-web:latest", "localhost/mailrelay-postgres:15")
RUNC_FLAGS = ["--runtime", "/usr/sbin/runc", "--cgroup-manager", "cgroupfs"]
TEST_USER = "mailrelay-podtest"
APP_UID = 10001  # the image's mailrelay user (podman/Containerfile)
SYSTEMD_ONLY_FLAGS = ("--cgroups=", "--sdnotify=", "--cidfile=")

# What the generator prints on stderr for every file it reads; anything else is a complaint.
LOADING = re.compile(r"^quadlet-generator\[\d+\]: Loading source (unit|drop-in) file \S+$")
# systemd-analyze's only acceptable complaint: podman itself is not installed on this machine.
NO_PODMAN = re.compile(
    r"^\S+\.service: Command /usr/bin/podman is not executable: No such file or directory$"
)


def quadlet_sources() -> list[Path]:
    return sorted(
        path
        for path in PODMAN_DIR.iterdir()
        if path.suffix in (".container", ".volume", ".network")
    )


def expected_service(source: Path) -> str:
    # podman-systemd.unit(5): x.container -> x.service, x.volume -> x-volume.service, ...
    if source.suffix == ".container":
        return f"{source.stem}.service"
    return f"{source.stem}-{source.suffix[1:]}.service"


@pytest.fixture(scope="module")
def quadlet() -> Path:
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(QUADLET_SH)], capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/lib/quadlet.sh could not provide the generator:\n{result.stderr}")
    print(f"\n[quadlets] generator ready in {time.monotonic() - started:.1f} s")
    return Path(result.stdout.strip())


@pytest.fixture(scope="module")
def generated(quadlet: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The user units Quadlet writes for podman/ (its normal, non-dry-run mode)."""
    out = tmp_path_factory.mktemp("quadlet-units")
    result = subprocess.run(
        [str(quadlet), "-user", "-no-kmsg-log", str(out)],
        env={**os.environ, "QUADLET_UNIT_DIRS": str(PODMAN_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {path.name: path.read_text() for path in out.glob("*.service")}


def test_the_generator_makes_a_service_of_every_file(quadlet: Path):
    sources = quadlet_sources()
    assert {path.name for path in sources} >= {
        "mailrelay-web.container",
        "mailrelay-db.container",
        "mailrelay-db.volume",
    }
    result = subprocess.run(
        [str(quadlet), "-dryrun", "-user"],
        env={**os.environ, "QUADLET_UNIT_DIRS": str(PODMAN_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [line for line in result.stderr.splitlines() if not LOADING.match(line)]
    assert result.returncode == 0, result.stderr
    assert complaints == [], "\n".join(complaints)
    services = set(re.findall(r"^---(\S+)---$", result.stdout, flags=re.MULTILINE))
    assert services == {expected_service(path) for path in sources}


def test_systemd_accepts_the_generated_units(generated: dict[str, str], tmp_path: Path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    units = tmp_path / "units"
    units.mkdir()
    for name, text in generated.items():
        (units / name).write_text(text)
    runtime = tmp_path / "runtime"  # a user manager wants XDG_RUNTIME_DIR, even to verify
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        ["systemd-analyze", "--user", "verify", "--man=no", *sorted(map(str, units.iterdir()))],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        cwd=units,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    messages = [
        line.strip()
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not NO_PODMAN.match(line.strip())
    ]
    assert messages == [], "\n".join(messages)
    assert result.returncode == 0 or not Path("/usr/bin/podman").exists(), result.stderr


def exec_start(unit: str) -> list[str]:
    lines = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].removeprefix("ExecStart="))


def service_keys(unit: str) -> set[str]:
    return {line.strip() for line in unit.splitlines() if "=" in line}


def test_the_generated_services_hold_the_production_choices(generated: dict[str, str]):
    web, db = generated["mailrelay-web.service"], generated["mailrelay-db.service"]
    web_run, db_run = " ".join(exec_start(web)), " ".join(exec_start(db))
    for flag in (
        "--network host",
        "--userns keep-id:uid=10001,gid=10001",
        "--read-only",
        "--cap-drop all",
        "-v /run/mailrelay:/run/mailrelay:ro",
        "--env-file /etc/mailrelay/mailrelay.env",
        "--env DATABASE_URL=",
        "--health-cmd /usr/local/bin/mailrelay-healthcheck",
        "--health-on-failure kill",
    ):
        assert flag in web_run, flag
    assert "--secret mailrelay-secret-key,type=mount" in web_run
    assert "--secret mailrelay-db-url,type=mount" in web_run
    assert web_run.endswith(" localhost/mailrelay-web:latest")
    assert {"Requires=mailrelay-db.service", "Restart=always", "WantedBy=default.target"} <= (
        service_keys(web)
    )
    for flag in ("--network host", "--sdnotify=healthy", "--stop-signal SIGINT"):
        assert flag in db_run, flag
    assert "--secret mailrelay-db-password,type=mount" in db_run
    assert db_run.endswith(" localhost/mailrelay-postgres:15")
    assert {"Restart=always", "WantedBy=default.target"} <= service_keys(db)


# -- images and containers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> None:
    if os.environ.get("MAILRELAY_SKIP_IMAGE_BUILD") == "1":
        pytest.skip("MAILRELAY_SKIP_IMAGE_BUILD=1: image build and container runs skipped")
    if os.geteuid() != 0:
        pytest.skip("building the images needs root (debootstrap, podman import)")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(BUILD_IMAGES)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    print(f"\n[quadlets] build-images.sh: {time.monotonic() - started:.0f} s\n{result.stderr}")
    if result.returncode != 0:
        pytest.fail(f"podman/build-images.sh failed:\n{result.stdout}{result.stderr}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Podman:
    """podman with this host's runtime flags, as root or as `user` (rootless)."""

    def __init__(self, user: pwd.struct_passwd | None = None, runtime_dir: Path | None = None):
        self.user = user
        self.ulimits = ["--ulimit", "nofile=10000:10000"]
        if user is None:
            self.prefix = ["podman", *RUNC_FLAGS]
            self.ulimits += ["--ulimit", "nproc=32768:32768"]
        else:
            env = [
                f"HOME={user.pw_dir}",
                f"USER={user.pw_name}",
                f"XDG_RUNTIME_DIR={runtime_dir}",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            ]
            self.prefix = ["runuser", "-u", user.pw_name, "--", "env", "-i", *env]
            self.prefix += ["podman", *RUNC_FLAGS]

    def __call__(
        self, *args: str, check: bool = True, stdin: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [*self.prefix, *args],
            input=stdin,
            cwd="/",
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {shlex.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result

    def text(self, *args: str) -> str:
        return self(*args).stdout.decode().strip()


def adapt(
    unit: str,
    *,
    prefix: str,
    ulimits: list[str],
    env: dict[str, str],
    env_file: Path | None = None,
    binds: dict[str, Path] | None = None,
    rootless: bool,
) -> list[str]:
    """The unit's generated `podman run` line, made runnable here (see the module docstring)."""
    argv = exec_start(unit)
    assert argv[:2] == ["/usr/bin/podman", "run"], argv
    out = ["run", *ulimits]
    tokens = iter(argv[2:])
    for token in tokens:
        if token.startswith(SYSTEMD_ONLY_FLAGS) or token == "--rm":
            continue
        if token not in ("--name", "-v", "--env", "--env-file", "--secret", "--userns"):
            out.append(token)
            continue
        value = next(tokens)
        if token == "--name":
            value = prefix + value
        elif token == "-v":
            source, _, rest = value.partition(":")
            # A host path the test does not know about is an error: map it here first.
            source = str((binds or {})[source]) if source.startswith("/") else prefix + source
            value = f"{source}:{rest}"
        elif token == "--env":
            key = value.partition("=")[0]
            value = f"{key}={env[key]}" if key in env else value
        elif token == "--env-file":
            assert env_file is not None
            value = str(env_file)
        elif token == "--secret":
            name, _, options = value.partition(",")
            value = f"{prefix}{name},{options}"
        elif token == "--userns" and not rootless:
            continue
        out += [token, value]
    return out


class AgentStub:
    """A unix socket standing in for the agent's: root-owned, group `gid`, mode 0660, in a
    directory 0750 root:gid, as units/mailrelay-agent.socket makes it for group mailrelay."""

    def __init__(self, gid: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mailrelay-agent-"))
        os.chown(self.dir, 0, gid)
        self.dir.chmod(0o750)
        self.path = self.dir / "agent.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chown(self.path, 0, gid)
        self.path.chmod(0o660)
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(b"agent-stub\n")

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_healthy(podman: Podman, name: str, timeout: float) -> float:
    """Run the container's health check (the quadlet's HealthCmd) until it passes, as systemd
    would wait for Notify=healthy. Returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = podman.text("inspect", "--format", "{{.State.Status}}", name)
        if state != "running":
            logs = podman("logs", name, check=False)
            pytest.fail(f"{name} is {state}:\n{(logs.stdout + logs.stderr).decode()}")
        if podman("healthcheck", "run", name, check=False).returncode == 0:
            return time.monotonic() - started
        time.sleep(1)
    logs = podman("logs", name, check=False)
    pytest.fail(f"{name} not healthy after {timeout} s:\n{(logs.stdout + logs.stderr).decode()}")


def get_healthz(podman: Podman, name: str, port: int, timeout: float) -> dict[str, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the node's self-signed certificate
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/healthz", timeout=5, context=context
            ) as response:
                body: dict[str, str] = json.load(response)
                return body
        except OSError as exc:
            last = str(exc)
        if podman.text("inspect", "--format", "{{.State.Status}}", name) != "running":
            break
        time.sleep(1)
    logs = podman("logs", name, check=False)
    pytest.fail(
        f"no answer from https://127.0.0.1:{port}/healthz ({last}); {name} logs:\n"
        f"{(logs.stdout + logs.stderr).decode()}"
    )


@contextlib.contextmanager
def stack(
    podman: Podman,
    generated: dict[str, str],
    *,
    rootless: bool,
    app_gid: int,
    env_dir: Path,
) -> Iterator[tuple[str, int, str]]:
    """Start mailrelay-db, then mailrelay-web, from the generated units; yield (web container
    name, HTTPS port, volume prefix); remove everything afterwards."""
    prefix = f"mrt{os.getpid()}-{'rl' if rootless else 'root'}-"
    db_port, web_port = free_port(), free_port()
    password = os.urandom(12).hex()
    secrets = {
        "mailrelay-db-password": password.encode(),
        "mailrelay-db-url": (
            f"postgresql://mailrelay:{password}@127.0.0.1:{db_port}/mailrelay".encode()
        ),
        "mailrelay-secret-key": base64.urlsafe_b64encode(os.urandom(32)),
    }
    # The node's environment file. Its DATABASE_URL is wrong on purpose: the unit's
    # `--env DATABASE_URL=` must win over `--env-file`, so the secret's URL is used.
    env_file = env_dir / "mailrelay.env"
    env_file.write_text(
        "NODE_ID=t\nNODE_IP=127.0.0.1\nCLUSTER_MODE=master\n"
        f"HTTPS_HOST=127.0.0.1\nHTTPS_PORT={web_port}\n"
        "DATABASE_URL=postgresql://nobody@127.0.0.1:1/nothing\n"
    )
    env_file.chmod(0o644)
    agent = AgentStub(app_gid)
    names = [f"{prefix}mailrelay-web", f"{prefix}mailrelay-db"]
    try:
        for name, value in secrets.items():
            podman("secret", "create", prefix + name, "-", stdin=value)
        db = adapt(
            generated["mailrelay-db.service"],
            prefix=prefix,
            ulimits=podman.ulimits,
            env={"PGPORT": str(db_port)},
            rootless=rootless,
        )
        podman(*db)
        took = wait_healthy(podman, names[1], timeout=120)
        print(f"[quadlets] {'rootless' if rootless else 'root'} mailrelay-db healthy: {took:.1f} s")
        web = adapt(
            generated["mailrelay-web.service"],
            prefix=prefix,
            ulimits=podman.ulimits,
            env={},
            env_file=env_file,
            binds={"/run/mailrelay": agent.dir},
            rootless=rootless,
        )
        podman(*web)
        yield names[0], web_port, prefix
    finally:
        for name in names:
            podman("rm", "-f", "-t", "5", name, check=False)
        for volume in ("mailrelay-state", "mailrelay-db"):
            podman("volume", "rm", "-f", prefix + volume, check=False)
        for name in secrets:
            podman("secret", "rm", prefix + name, check=False)
        agent.close()


def check_web(podman: Podman, name: str, port: int) -> None:
    started = time.monotonic()
    assert get_healthz(podman, name, port, timeout=150) == {"status": "ok"}
    print(f"[quadlets] /healthz answered after {time.monotonic() - started:.1f} s")
    # The quadlet's HealthCmd, run the way podman's health timer runs it.
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    # The agent socket is reachable through the bind-mounted directory (group access only).
    probe = (
        "import socket; s = socket.socket(socket.AF_UNIX); "
        "s.connect('/run/mailrelay/agent.sock'); print(s.recv(64).decode().strip())"
    )
    assert podman.text("exec", name, "python3", "-c", probe) == "agent-stub"


def test_the_stack_runs_as_root(images: None, generated: dict[str, str], tmp_path: Path):
    podman = Podman()
    # As root there is no user namespace: the app runs as uid/gid 10001 on the host.
    with stack(podman, generated, rootless=False, app_gid=APP_UID, env_dir=tmp_path) as (
        name,
        port,
        _,
    ):
        check_web(podman, name, port)


def ensure_test_user() -> pwd.struct_passwd:
    """A user for rootless podman, kept between runs (its storage caches the images)."""
    try:
        user = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--create-home",
                "--home-dir",
                f"/var/lib/{TEST_USER}",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                TEST_USER,
            ],
            check=True,
            capture_output=True,
        )
        user = pwd.getpwnam(TEST_USER)
    for kind in ("uid", "gid"):
        ranges = Path(f"/etc/sub{kind}").read_text().splitlines()
        if not any(line.split(":")[0] in (TEST_USER, str(user.pw_uid)) for line in ranges):
            end = max((int(r.split(":")[1]) + int(r.split(":")[2]) for r in ranges), default=0)
            start = max(end, 100000)
            subprocess.run(
                ["usermod", f"--add-sub{kind}s", f"{start}-{start + 65535}", TEST_USER],
                check=True,
                capture_output=True,
            )
    # Native overlay in the user namespace (kernel >= 5.13); podman 4.3 would pick vfs, which
    # copies every layer in full.
    conf = Path(user.pw_dir) / ".config" / "containers" / "storage.conf"
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text('[storage]\ndriver = "overlay"\n')
        for path in (conf.parent.parent, conf.parent, conf):
            os.chown(path, user.pw_uid, user.pw_gid)
    return user


@pytest.fixture
def rootless(images: None) -> Iterator[tuple[Podman, pwd.struct_passwd]]:
    user = ensure_test_user()
    # Where logind would put it. Always the same: podman records its first runtime paths in its
    # database and keeps using them.
    runtime_dir = Path(f"/run/user/{user.pw_uid}")
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(runtime_dir, user.pw_uid, user.pw_gid)
    podman = Podman(user, runtime_dir)
    try:
        info = podman("info", check=False)
        if info.returncode != 0:
            reason = f"rootless podman does not work here: {info.stderr.decode().strip()}"
            print(f"[quadlets] SKIP: {reason}")
            pytest.skip(reason)
        started = time.monotonic()
        root = Podman()
        for image in IMAGES:
            wanted = root.text("image", "inspect", "--format", "{{.Id}}", image)
            have = podman("image", "inspect", "--format", "{{.Id}}", image, check=False)
            if have.returncode == 0 and have.stdout.decode().strip() == wanted:
                continue
            saved = root("save", "--format", "docker-archive", image, timeout=300).stdout
            podman("load", stdin=saved, timeout=300)
        print(f"[quadlets] images in {TEST_USER}'s storage: {time.monotonic() - started:.1f} s")
        yield podman, user
    finally:
        # Rootless podman leaves a pause process (catatonit -P) holding the test user's user
        # namespace: end it.
        pause = runtime_dir / "libpod" / "tmp" / "pause.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pause.read_text().strip()), 15)


def test_the_stack_runs_rootless(
    rootless: tuple[Podman, pwd.struct_passwd], generated: dict[str, str]
):
    podman, user = rootless
    env_dir = Path(tempfile.mkdtemp(prefix="mailrelay-podtest-env-"))
    os.chown(env_dir, user.pw_uid, user.pw_gid)
    try:
        # The agent socket's group is the user's primary group, as mailrelay's is on a node:
        # UserNS=keep-id:uid=10001,gid=10001 maps exactly that group to the app's.
        with stack(podman, generated, rootless=True, app_gid=user.pw_gid, env_dir=env_dir) as (
            name,
            port,
            prefix,
        ):
            check_web(podman, name, port)
            # keep-id: what the app writes in its state volume belongs to the user on the host.
            mountpoint = podman.text(
                "volume", "inspect", "--format", "{{.Mountpoint}}", prefix + "mailrelay-state"
            )
            assert (Path(mountpoint) / "tls" / "node.crt").stat().st_uid == user.pw_uid
    finally:
        shutil.rmtree(env_dir, ignore_errors=True)
