"""Config pull (slave): fetch the config version the master's Postfix runs and make it live here.

The master exports only what it applied successfully (never a draft). One run: GET the master's
export over HTTPS (the master's certificate checked against a pinned
SHA-256 fingerprint or a CA file before the token is sent), check its checksum, turn the sealed
secrets into this node's at-rest ciphertext, validate it like a form, then, under a lock, store
it as a new local version and apply it through the agent. Storing and applying are one
transaction: when the agent refuses the version, the tables roll back with it, so the slave's
configuration always equals what its Postfix runs.

The master's version number and when it was made are kept in the local version's comment
("pulled master version N of TIME");
only a newer master version is applied (or one of the same number the master made at another
time, after its database was restored), an equal or older one is nothing to do. Two runs at once
(a manual run during the timer's) are serialised by an advisory lock and the second one re-reads
the last pulled version inside it, so a version is never applied twice.

Whenever the master answered, the slave records which version the master runs (so that it can
tell whether it is ready: running the same), and reports which master version its own Postfix
runs (POST /api/nodes/applied, same connection checks and token), so that the master's
dashboard shows both nodes. A failed report is logged; it does not fail the run. An apply that
failed because the agent was not there (an install restarts it) is tried again at once.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from app import audit
from app.agent.client import AgentClient
from app.cluster.peer import PeerError, PeerTls, json_object, peer_request
from app.config import applied, service
from app.config import snapshot as snap
from app.config.validation import FieldErrors
from app.crypto import SecretBox, SecretKeyError
from app.db.tables import AuditLog, ConfigVersion
from app.postfix import pipeline
from app.settings import Settings, SettingsError

log = logging.getLogger("mailrelay.config_pull")

ACTOR = service.Actor("config-pull")
ACTION = "config.pull"
# With the time the master made that version: a master restored from a backup may make a
# version of the same number again, with other content (config-import, then Apply).
COMMENT = "pulled master version {}"
_COMMENT_RE = re.compile(r"^pulled master version (\d+)(?: of (\S+))?$")
# pg_advisory_xact_lock key for the pull's critical part ("pull"); the config service takes its
# own lock (for the version number) inside it.
_PULL_LOCK = 0x70756C6C
REPORT_PATH = "/api/nodes/applied"
# Pauses before the next tries of an apply the agent did not answer: long enough for a
# restarted agent's socket to accept again, short beside the timer's 10 s.
APPLY_RETRY_PAUSES = (0.5, 1.0, 2.0)
# How often a run asks again while the master cannot be reached.
FETCH_RETRY_PAUSE = 2.0
# An export is a few kilobytes per domain; anything this large is not one.
MAX_EXPORT_BYTES = 32 * 1024 * 1024

Outcome = Literal["skipped", "unchanged", "applied", "refused", "failed"]


# -- the result of a run ----------------------------------------------------------------------


@dataclass
class PullResult:
    outcome: Outcome
    detail: str
    master_version: int | None = None
    local_version: int | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    warn: bool = False  # fine for this run, but worth an operator's look (logged as a warning)
    retry: bool = False  # failed for a passing reason: worth another try in this run

    @property
    def ok(self) -> bool:
        return self.outcome in ("skipped", "unchanged", "applied")


class Refused(Exception):
    """The master answered, but with something this node will not apply."""

    def __init__(self, detail: str, problems: list[str] | None = None) -> None:
        super().__init__(detail)
        self.problems = problems or []


# -- fetching ---------------------------------------------------------------------------------


async def fetch_export(
    url: str, token: str, tls: PeerTls, newer_than: int | None = None, wait: float = 0.0
) -> dict[str, Any]:
    """GET {url}/api/config/export with the bearer token; the parsed JSON body. With
    `newer_than`, the master answers as soon as a newer version exists, or after `wait` s."""
    params = {"newer_than": newer_than, "wait": wait} if newer_than is not None and wait else None
    async with peer_request(
        url, token, tls, "GET", "/api/config/export", params=params, wait=wait
    ) as response:
        if response.status_code != 200:
            raise PeerError(f"the master answered HTTP {response.status_code}")
        return await json_object(response, MAX_EXPORT_BYTES, "the master's export")


# -- checking ---------------------------------------------------------------------------------


def verify(export: dict[str, Any]) -> tuple[int, snap.Snapshot]:
    """The export's version and config, if the checksum matches the config and the config has
    the shape of a snapshot (what the values may be is snapshot.validate's part)."""
    version, checksum, config = export.get("version"), export.get("checksum"), export.get("config")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise Refused(f"the export's version {version!r} is not a number")
    if not isinstance(checksum, str) or not isinstance(config, dict):
        raise Refused(f"master version {version}: the export lacks its checksum or config")
    actual = snap.checksum(config)
    if not hmac.compare_digest(actual, checksum):
        raise Refused(
            f"master version {version}: checksum mismatch (the export says {checksum[:16]}..., "
            f"its config hashes to {actual[:16]}...)"
        )
    if export.get("secrets") != "sealed-for-peer":
        raise Refused(
            f"master version {version}: the export carries no secrets; MASTER_API_TOKEN must "
            "be a cluster token"
        )
    if not _snapshot_shaped(config):
        raise Refused(f"master version {version}: the export's config is not a snapshot")
    return version, config


def _snapshot_shaped(config: dict[str, Any]) -> bool:
    domains, networks = config.get("sender_domains"), config.get("trusted_networks")
    if not isinstance(domains, list) or not isinstance(networks, list):
        return False
    return all(
        isinstance(entry, dict) and isinstance(entry.get("route"), dict | None) for entry in domains
    ) and all(isinstance(entry, dict) for entry in networks)


def to_local(config: snap.Snapshot, box: SecretBox) -> snap.Snapshot:
    """The config with every sealed password turned into this node's at-rest ciphertext."""
    local = copy.deepcopy(config)
    for entry in local.get("sender_domains") or []:
        route = entry.get("route") if isinstance(entry, dict) else None
        if not isinstance(route, dict):
            continue
        route.pop("auth_password_set", None)
        sealed = route.pop("auth_password_sealed", None)
        if sealed is None:
            continue
        if not isinstance(sealed, str):
            raise Refused(f"the password for {entry.get('name')!r} is not a sealed secret")
        try:
            route["auth_password_enc"] = box.open_from_peer(sealed)
        except SecretKeyError as exc:
            raise Refused(f"the password for {entry.get('name')!r}: {exc}") from None
    return local


async def last_pulled_master_version() -> int:
    """The master version the newest pulled local version came from (0: never pulled)."""
    return (await _last_pulled())[0]


async def _last_pulled() -> tuple[int, str]:
    """The master version the newest pulled local version came from and when the master made
    it ((0, ""): never pulled; "": pulled by a release that did not keep the time)."""
    row = (
        await ConfigVersion.select(ConfigVersion.comment)
        .where(
            (ConfigVersion.author == ACTOR.username)
            & ConfigVersion.comment.like("pulled master version %")
        )
        .order_by(ConfigVersion.number, ascending=False)
        .first()
    )
    match = _COMMENT_RE.match(row["comment"]) if row else None
    return (int(match.group(1)), match.group(2) or "") if match else (0, "")


def _applied_already(master_version: int, made: str, last: tuple[int, str]) -> bool:
    """Whether the master's version (its number, when it made it) is what was pulled last, or
    older. The same number made at another time is another version: the master's database was
    restored, and a version of that number made again after it."""
    number, last_made = last
    if master_version != number:
        return master_version < number
    return not (made and last_made and made != last_made)


async def applied_state(node_id: str) -> dict[str, Any] | None:
    """What this node reports to the master: the master version its Postfix runs (from the
    applied local version's comment), the local number and when it was applied. None when
    nothing is applied here, or the applied version did not come from the master."""
    row = await applied.of(node_id)
    if row is None:
        return None
    version = (
        await ConfigVersion.select(ConfigVersion.author, ConfigVersion.comment)
        .where(ConfigVersion.number == row["number"])
        .first()
    )
    match = (
        _COMMENT_RE.match(version["comment"])
        if version and version["author"] == ACTOR.username
        else None
    )
    if match is None:
        return None
    return {
        "node_id": node_id,
        "number": row["number"],
        "master_number": int(match.group(1)),
        "applied_at": row["applied_at"].isoformat(),
    }


async def record_master(export: dict[str, Any], own_node_id: str) -> None:
    """Keep what the master says it runs (its node id, version and when it applied it), for
    this node's readiness and the dashboard. An export without them (a master before this
    field existed, or nothing applied there yet) records nothing."""
    node_id, version, at = export.get("node_id"), export.get("version"), export.get("applied_at")
    if not (
        applied.is_node_id(node_id)
        and node_id != own_node_id
        and isinstance(version, int)
        and not isinstance(version, bool)
        and 0 < version <= 2**31 - 1
        and isinstance(at, str)
    ):
        return
    try:
        applied_at = dt.datetime.fromisoformat(at)
    except ValueError:
        return
    if applied_at.tzinfo is not None:
        await applied.record_heard(str(node_id), version, applied_at)


async def report_applied(settings: Settings, tls: PeerTls) -> bool:
    """Tell the master which of its versions this node runs. Never raises: a failure is
    logged (the next run, 10 s later, reports again)."""
    try:
        state = await applied_state(settings.node_id)
        if state is None:
            log.debug("config-pull: no version from the master is applied here; nothing to report")
            return False
        assert settings.master_api_url and settings.master_api_token
        async with peer_request(
            settings.master_api_url, settings.master_api_token, tls, "POST", REPORT_PATH, state
        ) as response:
            if response.status_code not in (200, 204):
                raise PeerError(f"the master answered HTTP {response.status_code}")
    except PeerError as exc:
        log.warning("config-pull: the applied version was not reported to the master: %s", exc)
        return False
    except Exception:
        log.warning(
            "config-pull: the applied version was not reported to the master", exc_info=True
        )
        return False
    log.debug(
        "config-pull: reported master version %s (local version %s) to the master",
        state["master_number"],
        state["number"],
    )
    return True


# -- the run ----------------------------------------------------------------------------------


class _ApplyFailed(Exception):
    def __init__(self, report: pipeline.TestReport) -> None:
        super().__init__("; ".join(report.problems))
        self.problems = report.problems
        self.agent_unavailable = report.agent_unavailable


async def run_once(
    settings: Settings, agent: AgentClient, box: SecretBox, tls: PeerTls | None = None
) -> PullResult:
    """One pull. A failed or refused run is a result, not an exception; only a configuration
    error (SettingsError) raises."""
    started = time.monotonic()
    result = await _run(settings, agent, box, tls)
    result.seconds = time.monotonic() - started
    log.log(
        logging.INFO if result.ok and not result.warn else logging.WARNING,
        "config-pull: %s: %s%s in %.2f s",
        result.outcome,
        result.detail,
        _problems(result.problems),
        result.seconds,
    )
    return result


async def _run(
    settings: Settings, agent: AgentClient, box: SecretBox, tls: PeerTls | None
) -> PullResult:
    if settings.cluster_mode != "slave":
        return PullResult("skipped", f"CLUSTER_MODE={settings.cluster_mode}: nothing to pull")
    if tls is None:
        tls = PeerTls.for_master(settings)
    if not settings.master_api_url or not settings.master_api_token:
        raise SettingsError("MASTER_API_URL and MASTER_API_TOKEN are required on a slave")
    # The run follows the master until CONFIG_PULL_WAIT_SECONDS are up: it waits at the
    # master again after every answer (an apply, nothing new, the master unreachable for a
    # moment), so that an Apply on the master meets a waiting request nearly always, not the
    # gap between two runs.
    deadline = time.monotonic() + settings.config_pull_wait_seconds
    done: list[PullResult] = []
    retries = iter(APPLY_RETRY_PAUSES)
    unreachable = 0
    while True:
        try:
            export = await fetch_export(
                settings.master_api_url,
                settings.master_api_token,
                tls,
                newer_than=await last_pulled_master_version(),
                wait=max(0.0, deadline - time.monotonic()),
            )
        except PeerError as exc:
            result = PullResult("failed", str(exc))
            unreachable += 1
            if unreachable == 1:
                log.warning("config-pull: %s; trying again every %g s", exc, FETCH_RETRY_PAUSE)
            if deadline - time.monotonic() > FETCH_RETRY_PAUSE:
                await asyncio.sleep(FETCH_RETRY_PAUSE)
                continue
            break
        result = await _pull(settings, agent, box, export)
        # The master answered: tell it what runs here now, whatever this run did (applied,
        # nothing to do, or refused and kept the last good version), so its dashboard is
        # current, also after the master's own restart.
        await report_applied(settings, tls)
        if result.retry and (pause := next(retries, None)) is not None:
            log.info(
                "config-pull: %s%s; trying again in %g s",
                result.detail,
                _problems(result.problems),
                pause,
            )
            await asyncio.sleep(pause)
            continue
        if result.outcome == "applied":
            done.append(result)
        if result.outcome not in ("applied", "unchanged") or time.monotonic() >= deadline:
            break
    if done and result.outcome in ("applied", "unchanged"):
        # The versions applied are what an operator wants to read in the run's log line.
        last = done[-1]
        if len(done) > 1:
            last.detail = f"{len(done)} versions, the last: {last.detail}"
        result = last
    elif done:
        result.detail += f" (after {len(done)} applied in this run)"
    if unreachable:
        result.detail += f" ({unreachable} tries in this run could not reach the master)"
        result.warn = True
    return result


async def _pull(
    settings: Settings, agent: AgentClient, box: SecretBox, export: dict[str, Any]
) -> PullResult:
    # The master's version for the audit: its number and when the master made it (not the
    # checksum: it changes with every export, as sealed secrets are encrypted afresh each time).
    target = f"master version {export.get('version')} of {export.get('created_at')}"[:200]
    try:
        master_version, config = verify(export)
    except Refused as exc:
        await _audit_failure(target, str(exc), exc.problems)
        return PullResult("refused", str(exc), problems=exc.problems)
    await record_master(export, settings.node_id)
    made = str(export.get("created_at") or "")
    try:
        last = await _last_pulled()
        if _applied_already(master_version, made, last):
            return _unchanged(master_version, last[0])
        local = to_local(config, box)
        problems = snap.validate(local)
        if problems:
            raise Refused(f"master version {master_version} is not valid", problems)
    except Refused as exc:
        await _audit_failure(target, str(exc), exc.problems)
        return PullResult("refused", str(exc), master_version, problems=exc.problems)
    try:
        async with ConfigVersion._meta.db.transaction():
            await ConfigVersion.raw("SELECT pg_advisory_xact_lock({})", _PULL_LOCK)
            # Another run may have applied it while we fetched or waited for the lock.
            last = await _last_pulled()
            if _applied_already(master_version, made, last):
                return _unchanged(master_version, last[0])
            comment = COMMENT.format(master_version) + (f" of {made}" if made else "")
            number = await service.replace_all(ACTOR, local, ACTION, comment)
            report = await pipeline.apply_version(number, box, agent, settings.node_id, ACTOR)
            if not report.ok:
                raise _ApplyFailed(report)  # rolls the stored version back
    except FieldErrors as exc:  # validated above already; kept so that it stays a result
        problems = list(exc.errors.values())
        await _audit_failure(target, "refused by the config service", problems)
        return PullResult(
            "refused",
            f"master version {master_version} is not valid",
            master_version,
            problems=problems,
        )
    except _ApplyFailed as exc:
        await _audit_failure(target, "not applied", exc.problems)
        return PullResult(
            "failed",
            f"master version {master_version} was not applied",
            master_version,
            problems=exc.problems,
            retry=exc.agent_unavailable,
        )
    return PullResult(
        "applied",
        f"master version {master_version} applied as local version {number}",
        master_version,
        number,
    )


def _problems(problems: list[str], show: int = 5) -> str:
    if not problems:
        return ""
    more = f"; and {len(problems) - show} more" if len(problems) > show else ""
    return f" ({'; '.join(problems[:show])}{more})"


def _unchanged(master_version: int, last: int) -> PullResult:
    if master_version == last:
        return PullResult(
            "unchanged", f"master version {master_version} is applied already", master_version
        )
    # The master's numbering went back (its database restored or rebuilt): nothing is applied
    # until it passes the last pulled number again.
    return PullResult(
        "unchanged",
        f"master version {master_version} is older than the pulled version {last}; "
        "not applied (was the master's database replaced?)",
        master_version,
        warn=True,
    )


async def _audit_failure(target: str, detail: str, problems: list[str]) -> None:
    """One audit entry per bad master version, not one every 10 s while it stays the latest
    (the log has every run). A transient failure (network, TLS) is not audited: it is not a
    version anybody needs to look at."""
    recorded = await AuditLog.exists().where(
        (AuditLog.action == ACTION) & (AuditLog.target == target) & (AuditLog.outcome == "failed")
    )
    if recorded:
        return
    await audit.record(
        ACTOR.username,
        ACTION,
        target,
        outcome="failed",
        after={"detail": detail, "problems": problems[:50]},
    )
