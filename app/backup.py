"""A node's backups: a pg_dump of its database with the config export beside it, written
atomically into BACKUP_DIR and rotated, and the restore of such a dump into an empty database.

The config export (also `mailrelay config-export`) holds the route passwords in clear, so that
a host with another secret key can import it; every file here is mode 0600. The dump holds them
encrypted under SECRET_KEY_FILE: without that key they are lost (see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from app.cluster import pull
from app.config import applied
from app.crypto import SecretBox, SecretKeyError
from app.settings import Settings

log = logging.getLogger("mailrelay.backup")

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
DUMP_SUFFIX = ".dump"
EXPORT_SUFFIX = ".config.json"
# What pg_dump's custom format starts with.
DUMP_MAGIC = b"PGDMP"
# A temporary file of ours this old belongs to a run that was killed: no run takes a day.
STALE_TEMP_SECONDS = 24 * 3600


class BackupError(Exception):
    """The run failed; the message is one line that says why."""


class NoAppliedVersion(BackupError):
    pass


def _ours(node_id: str) -> re.Pattern[str]:
    """The names this node's backups have; any other file in BACKUP_DIR is left alone."""
    return re.compile(
        rf"^mailrelay-{re.escape(node_id)}-(\d{{8}}T\d{{6}}Z)"
        rf"({re.escape(DUMP_SUFFIX)}|{re.escape(EXPORT_SUFFIX)})$"
    )


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """DATABASE_URL without its password for pg_dump's command line (which every user sees in
    ps), and the environment that carries the password instead."""
    parts = urlsplit(url)
    env: dict[str, str] = {}
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            env["PGPASSWORD"] = unquote(password)
        netloc = f"{user}@{hosts}" if user else hosts
    query = parts.query
    params = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in params):
        env["PGPASSWORD"] = next(value for name, value in params if name == "password")
        query = urlencode([(name, value) for name, value in params if name != "password"])
    # Not urlunsplit: it drops the empty host of postgresql:///name?host=/socket/dir.
    return f"{parts.scheme}://{netloc}{parts.path}{'?' if query else ''}{query}", env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client (postgresql-client)")
    return path


def _run_tool(args: list[str], url: str, **kwargs: Any) -> None:
    """Run pg_dump or pg_restore against DATABASE_URL; a failure is one line from its stderr."""
    target, secret = libpq_target(url)
    name = Path(args[0]).name
    result = subprocess.run(
        [args[0], "--no-password", f"--dbname={target}", *args[1:]],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **secret},
        check=False,
        **kwargs,
    )
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").splitlines()
        why = next((line for line in lines if "error:" in line), lines[0] if lines else "")
        why = " ".join(why.split()).removeprefix(f"{name}: error: ")
        raise BackupError(f"{name} failed (exit {result.returncode}): {why}")


@contextlib.contextmanager
def _atomic(final: Path) -> Iterator[int]:
    """A new 0600 file that appears under its name only once it is complete and on disk; on any
    failure nothing is left."""
    temp = _temp_name(final)
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot write in {final.parent}: {exc}") from None
    try:
        try:
            yield descriptor
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.rename(temp, final)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BackupError(f"{final}: {exc}") from None
        raise
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def config_export(settings: Settings, box: SecretBox) -> dict[str, Any]:
    """The configuration this node's Postfix runs, as `config-import` takes it: the master
    version it came from, and the route passwords in clear (the importing host seals them with
    its own key)."""
    version, _ = await applied.version_run_by(settings.node_id)
    if version is None:
        raise NoAppliedVersion(f"node {settings.node_id} runs no applied version: no export")
    if settings.cluster_mode == "master":
        master_version = version["number"]
    else:
        state = await pull.applied_state(settings.node_id)
        master_version = state["master_number"] if state else 0
    config = copy.deepcopy(version["snapshot"])
    for entry in config["sender_domains"]:
        route = entry.get("route") or {}
        sealed = route.pop("auth_password_enc", None)
        if sealed:
            route["auth_password"] = box.decrypt(sealed)
    return {"master_version": master_version, **config}


def export_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def last_made(directory: Path, node_id: str, now: float | None = None) -> float:
    """When this node's newest dump in `directory` was written, or, while there is none, when
    the directory was made (a node installed this evening has missed no backup yet); OSError
    when the directory cannot be read."""
    pattern = _ours(node_id)
    now = time.time() if now is None else now
    times = [
        made_at(Path(entry.path), now)
        for entry in os.scandir(directory)
        if pattern.match(entry.name) and entry.name.endswith(DUMP_SUFFIX) and entry.is_file()
    ]
    return max(times) if times else min(directory.stat().st_mtime, now)


# Clocks of two hosts, or of a host and its file system, differ by this much without a fault.
CLOCK_SLACK_SECONDS = 60.0


def made_at(path: Path, now: float) -> float:
    """When a backup file was made: its mtime. One dated in the future was made while the clock
    was ahead, no later than now: it is dated now (on disk too, so that its age grows from
    here), or it would keep a failing backup from being noticed for as long as the clock was
    ahead."""
    mtime = path.stat().st_mtime
    if mtime <= now + CLOCK_SLACK_SECONDS:
        return mtime
    with contextlib.suppress(OSError):
        os.utime(path, (now, now))
    return now


def remove_stale_temps(directory: Path, node_id: str, now: float | None = None) -> list[Path]:
    """Delete the temporary files of this node's runs that were killed (SIGKILL, a power cut):
    a day old, or of a process that is gone. Each run does this before it dumps, so that runs
    killed night after night (a dump that outgrew the unit's time limit) do not fill the disk."""
    pattern = _ours(node_id)
    removed: list[Path] = []
    now = time.time() if now is None else now
    for path in directory.iterdir():
        temp = re.fullmatch(r"\.(.+)\.(\d+)\.tmp", path.name)
        if not (temp and pattern.match(temp.group(1)) and path.is_file()):
            continue
        if now - path.stat().st_mtime > STALE_TEMP_SECONDS or not _alive(int(temp.group(2))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that number
        return True
    return True


def rotate(directory: Path, node_id: str, keep: int, now: float | None = None) -> list[Path]:
    """Delete this node's backups but the newest `keep` (a dump and its export count as one),
    and temporary files of killed runs; return what was deleted."""
    pattern = _ours(node_id)
    by_stamp: dict[str, list[Path]] = {}
    removed = remove_stale_temps(directory, node_id, now)
    now = time.time() if now is None else now
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match and path.is_file():
            by_stamp.setdefault(match.group(1), []).append(path)

    def newest_first(stamp: str) -> tuple[bool, str]:
        # A name stamped while the clock was ahead counts as older than every other: it must
        # not outrank, and so delete, the backups made since the clock was set right.
        named = dt.datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=dt.UTC).timestamp()
        return named <= now + CLOCK_SLACK_SECONDS, stamp

    for stamp in sorted(by_stamp, key=newest_first, reverse=True)[keep:]:
        for path in by_stamp[stamp]:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@dataclass
class BackupResult:
    dump: Path
    dump_bytes: int
    export: Path | None = None
    master_version: int | None = None
    note: str = ""
    removed: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _size(count: int) -> str:
    value, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


async def run_once(settings: Settings) -> BackupResult:
    """Dump the database, write the config export beside it, rotate; one log line."""
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime(STAMP_FORMAT)
    directory = settings.backup_dir
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"BACKUP_DIR {directory}: {exc}") from None
    base = f"mailrelay-{settings.node_id}-{stamp}"
    dump = directory / f"{base}{DUMP_SUFFIX}"
    pg_dump = _tool("pg_dump")
    stale = remove_stale_temps(directory, settings.node_id)
    with _atomic(dump) as descriptor:
        await asyncio.to_thread(
            _run_tool, [pg_dump, "--format=custom"], settings.database_url, stdout=descriptor
        )
    result = BackupResult(dump, dump.stat().st_size)
    failure = None
    try:
        document = await config_export(settings, SecretBox(settings.secret_key_file))
    except NoAppliedVersion as exc:
        result.note = f"; {exc}"
    except SecretKeyError as exc:
        failure = f"wrote {dump}, but no config export: {exc}"
    else:
        result.export = directory / f"{base}{EXPORT_SUFFIX}"
        result.master_version = document["master_version"]
        with (
            _atomic(result.export) as descriptor,
            open(descriptor, "wb", closefd=False) as out,
        ):
            out.write(export_bytes(document))
    result.removed = stale + rotate(directory, settings.node_id, settings.backup_keep)
    result.seconds = time.monotonic() - started
    if failure:
        raise BackupError(failure)
    export = (
        f" and {result.export.name} (master version {result.master_version})"
        if result.export
        else ""
    )
    log.info(
        "backup: wrote %s (%s)%s in %.2f s; kept the newest %d, removed %d files%s",
        dump,
        _size(result.dump_bytes),
        export,
        result.seconds,
        settings.backup_keep,
        len(result.removed),
        result.note,
    )
    return result


_USER_RELATIONS = (
    "SELECT n.nspname || '.' || c.relname AS name FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' "
    "ORDER BY 1"
)


async def _refuse_unless_empty(url: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url, timeout=10)
    try:
        names = [row["name"] for row in await connection.fetch(_USER_RELATIONS)]
        migrations = 0
        if "public.migration" in names:
            migrations = await connection.fetchval("SELECT count(*) FROM public.migration")
        database = await connection.fetchval("SELECT current_database()")
    finally:
        await connection.close()
    if names:
        raise BackupError(
            f"restore refused: database {database} is not empty ({len(names)} tables and "
            f"sequences, {migrations} migrations applied); restore only into an empty database: "
            f"stop the mailrelay services, drop and recreate it (dropdb {database}; "
            f"createdb -O mailrelay {database}), then restore"
        )


_ANY_NODE = re.compile(rf"^mailrelay-(.+)-\d{{8}}T\d{{6}}Z{re.escape(DUMP_SUFFIX)}$")


def _check_node(settings: Settings, file: Path, from_node: str | None) -> None:
    """A node's database holds its own users' sessions, mail log, sync runs and history: a dump
    of the other node restored here would make this node the other one. The file's name says
    whose it is; `from_node` is the operator saying so (for a renamed file, or on purpose)."""
    if from_node is not None:
        return
    named = _ANY_NODE.match(file.name)
    if named is None:
        raise BackupError(
            f"{file.name} is not named as `mailrelay backup` names a dump "
            "(mailrelay-NODE-STAMP.dump), so whose it is cannot be told: give --from-node=NODE"
        )
    if named.group(1) != settings.node_id:
        raise BackupError(
            f"{file.name} is a backup of node {named.group(1)}, and this is node "
            f"{settings.node_id} (NODE_ID): restoring it here would give this node the other's "
            f"history; give --from-node={named.group(1)} if that is what you mean"
        )


async def restore(settings: Settings, file: Path, from_node: str | None = None) -> float:
    """Restore a dump of `mailrelay backup` of this node (or of `from_node`) into DATABASE_URL,
    which must be empty; nothing is written when it is not. Return the seconds it took."""
    started = time.monotonic()
    try:
        with file.open("rb") as dump:
            magic = dump.read(len(DUMP_MAGIC))
    except OSError as exc:
        raise BackupError(f"{file}: {exc}") from None
    if magic != DUMP_MAGIC:
        raise BackupError(f"{file} is not a dump of `mailrelay backup` (pg_dump custom format)")
    _check_node(settings, file, from_node)
    pg_restore = _tool("pg_restore")
    await _refuse_unless_empty(settings.database_url)
    # One transaction: a restore that fails leaves the database empty, as it found it. Owner and
    # grants are this host's: the dump's role names need not exist here.
    options = ["--single-transaction", "--exit-on-error", "--no-owner", "--no-privileges"]
    await asyncio.to_thread(_run_tool, [pg_restore, *options, str(file)], settings.database_url)
    seconds = time.monotonic() - started
    log.info("restore: restored %s (%s) in %.2f s", file, _size(file.stat().st_size), seconds)
    return seconds
