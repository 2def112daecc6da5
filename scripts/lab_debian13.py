"""The Debian 13 (trixie) node root of the lab: built once with debootstrap while the lab machine
still has Debian's registry and PyPI, kept, and made ready for a node boot with the lab-only
settings of scripts/lab-debian13/ (what this test host lacks, never the product's files).

Runs with the system python3 (no dependencies); scripts/lab.py imports it, and it can be run on
its own: `python3 scripts/lab_debian13.py build` (the root), `... image` (the web image archive).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Not under the lab's state directory: `scripts/lab down` removes that, the root is kept.
ROOTS = Path(os.environ.get("MAILRELAY_LAB_ROOTS", "/var/lib/mailrelay-lab-roots"))
DEBIAN13 = ROOTS / "debian13"
# Where the node finds the web manager's image (scripts/install-node WEB_IMAGE_ARCHIVE default).
IMAGES = ROOTS / "images"
WEB_IMAGE = "localhost/mailrelay-web:latest"
NODE_IMAGE_DIR = "/var/cache/mailrelay"
LAB_FILES = ROOT / "scripts" / "lab-debian13"
# Rootless podman storage in a node: bound from the node's directory (scripts/lab-debian13/
# etc/containers/storage.conf says why).
NODE_STORAGE = "/var/lib/containers-lab"
# The uv binary the root holds (this machine's, copied in), for install-node's offline sync.
NODE_UV = "/usr/local/bin/uv"
# A command prefix, inside a node, for mailrelay's podman and systemctl --user.
AS_MAILRELAY = [
    "sh",
    "-c",
    'cd / && uid="$(id -u mailrelay)" && exec runuser -u mailrelay -- env '
    'XDG_RUNTIME_DIR="/run/user/$uid" DBUS_SESSION_BUS_ADDRESS="unix:path=/run/user/$uid/bus" "$@"',
    "as-mailrelay",
]
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Bump when what the root holds changes: the next `up --debian 13` builds it again.
RECIPE = "3"
# What scripts/install-node installs on Debian 13 with the web manager as a quadlet, and what
# the lab's checks run inside a node (ps, curl). The nodes have no registry: all of it now.
PACKAGES = [
    *("postfix", "libsasl2-modules", "keepalived", "rsync", "openssh-server", "openssh-client"),
    *("postgresql", "python3", "python3-venv", "openssl", "iproute2", "swaks"),
    *("libnet-ssleay-perl", "logrotate"),
    *("podman", "uidmap", "dbus-user-session", "libpam-systemd", "procps", "curl"),
]


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if result.returncode != 0:
        raise SystemExit(f"lab: {' '.join(cmd)} failed:\n{result.stdout[-3000:]}{result.stderr}")
    return result


def root_ready(root: Path = DEBIAN13) -> bool:
    marker = root / ".mailrelay-lab-root"
    return marker.exists() and marker.read_text().strip() == RECIPE


# Which uv.lock the root's Python environment was made from. install-node syncs offline, from
# the uv cache the root holds: after a change to the lock it would need wheels that are not
# there, so the environment is made again first.
PYTHON_MARKER = ".mailrelay-lab-python"


def lock_digest() -> str:
    return hashlib.sha256((ROOT / "uv.lock").read_bytes()).hexdigest()


def python_ready(root: Path) -> bool:
    marker = root / PYTHON_MARKER
    return marker.exists() and marker.read_text().strip() == lock_digest()


@contextlib.contextmanager
def chroot_mounts(root: Path):
    """/proc, /dev and the lab machine's DNS for apt and uv inside the chroot."""
    mounted: list[Path] = []
    try:
        for source, target, args in (
            ("proc", root / "proc", ("-t", "proc")),
            ("/dev", root / "dev", ("--bind",)),
        ):
            run("mount", *args, source, str(target))
            mounted.append(target)
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)


def in_root(root: Path, *cmd: str, env: dict[str, str] | None = None) -> None:
    base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
    proxies = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
    run("chroot", str(root), *cmd, env={**base, **proxies, **(env or {})})


def host_uv() -> str:
    found = run(
        "bash",
        "-c",
        'readlink -f "$(command -v uv)" 2>/dev/null; '
        "ls /root/.pyenv/versions/*/bin/uv 2>/dev/null | head -1",
    ).stdout.split()
    candidates = [path for path in found if path and "shims" not in path]
    if not candidates:
        raise SystemExit(
            "lab: no uv binary on this machine (scripts/lib/bootstrap.sh installs one)"
        )
    return candidates[-1]


def build_root(root: Path = DEBIAN13) -> Path:
    """Debian 13 with every package a node needs and the product's Python environment, made
    once (a few minutes) and kept; a half-built root is never used."""
    if root_ready(root):
        if not python_ready(root):
            print("lab: uv.lock changed: the Debian 13 root's Python environment again", flush=True)
            try:
                with chroot_mounts(root):
                    install_python_env(root)
            finally:
                (root / "etc/resolv.conf").write_text("")
            (root / PYTHON_MARKER).write_text(lock_digest() + "\n")
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    print(f"lab: building the Debian 13 node root in {root} (once; a few minutes)", flush=True)
    run(
        "debootstrap",
        "--variant=minbase",
        "--include=systemd,systemd-sysv,dbus,ca-certificates",
        "trixie",
        str(partial),
        MIRROR,
    )
    (partial / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} trixie main\ndeb {MIRROR} trixie-updates main\n"
        "deb http://deb.debian.org/debian-security trixie-security main\n"
    )
    (partial / "etc/apt/apt.conf.d/90mailrelay-lab").write_text(
        'APT::Install-Recommends "false";\nAcquire::Check-Valid-Until "false";\n'
    )
    # Maintainer scripts start nothing in the chroot.
    policy = partial / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    shutil.copy(host_uv(), partial / NODE_UV.lstrip("/"))
    with chroot_mounts(partial):
        in_root(
            partial,
            "sh",
            "-c",
            "echo 'postfix postfix/main_mailer_type select No configuration' "
            "| debconf-set-selections",
        )
        in_root(partial, "apt-get", "-q", "update")
        in_root(
            partial,
            "apt-get",
            "-q",
            "install",
            "-y",
            *PACKAGES,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
        install_python_env(partial)
        in_root(partial, "apt-get", "clean")
    policy.unlink()
    (partial / "etc/resolv.conf").write_text("")
    (partial / PYTHON_MARKER).write_text(lock_digest() + "\n")
    (partial / ".mailrelay-lab-root").write_text(RECIPE + "\n")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    print(f"lab: Debian 13 node root ready: {root}", flush=True)
    return root


def install_python_env(root: Path) -> None:
    """The venv install-node makes (uv sync --frozen --no-dev --extra milter with Debian's
    python3), so that install-node in a node only re-syncs from uv's cache, offline."""
    prefix = root / "opt/mailrelay"
    prefix.mkdir(parents=True, exist_ok=True)
    for part in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / part, prefix / part)
    shutil.rmtree(prefix / "app", ignore_errors=True)  # a root made before, made again
    shutil.copytree(ROOT / "app", prefix / "app", ignore=shutil.ignore_patterns("__pycache__"))
    ca_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    env = {"UV_PROJECT_ENVIRONMENT": "/opt/mailrelay/venv", "HOME": "/root"}
    if ca_bundle.exists():
        # HTTPS to PyPI trusts what this machine trusts (it may sit behind a TLS proxy).
        shutil.copy(ca_bundle, root / "root/lab-ca.crt")
        env["SSL_CERT_FILE"] = "/root/lab-ca.crt"
    in_root(
        root,
        "sh",
        "-c",
        "cd /opt/mailrelay && "
        "uv sync --frozen --no-dev --extra milter --python /usr/bin/python3 -q",
        env=env,
    )
    with contextlib.suppress(FileNotFoundError):
        (root / "root/lab-ca.crt").unlink()


def prepare_node_root(root: Path) -> None:
    """The lab-only settings (scripts/lab-debian13/, a tree of files laid over the node's root):
    what this test host lacks, written into the node's own disk before it boots."""
    for source in LAB_FILES.rglob("*"):
        if source.is_file():
            target = root / source.relative_to(LAB_FILES)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)


def web_image_archive() -> Path:
    """The web manager's image, built from this tree (podman/build-images.sh: Debian packages
    and the locked wheels) and saved for `podman load` by the nodes' mailrelay user."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    archive = IMAGES / "mailrelay-web.tar"
    build = subprocess.run(
        ["bash", str(ROOT / "podman" / "build-images.sh"), "--no-postgres"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        raise SystemExit(f"lab: podman/build-images.sh failed:\n{build.stderr[-3000:]}")
    podman = ["podman", "--runtime", "/usr/sbin/runc", "--cgroup-manager", "cgroupfs"]
    image_id = run(*podman, "image", "inspect", "--format", "{{.Id}}", WEB_IMAGE).stdout.strip()
    stamp = IMAGES / "mailrelay-web.id"
    if archive.exists() and stamp.exists() and stamp.read_text().strip() == image_id:
        return archive
    with tempfile.NamedTemporaryFile(dir=IMAGES, suffix=".tar", delete=False) as part:
        Path(part.name).unlink()
        run(*podman, "save", "--format", "docker-archive", "-o", part.name, WEB_IMAGE)
        os.chmod(part.name, 0o644)
        os.replace(part.name, archive)
    stamp.write_text(image_id + "\n")
    return archive


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        print(build_root())
    elif sys.argv[1:] == ["image"]:
        print(web_image_archive())
    else:
        raise SystemExit(__doc__)
