"""The privileged side: every Postfix tool the product runs on a live system runs here.

Maps are installed as a whole directory under `maps_root` and made live by swapping the `live`
symlink; Postfix reads them through `mailrelay_maps` (see postfix-conf/main.cf.fragment). A set
of maps is built with postmap, then opened and queried through a scratch copy of main.cf (parsed
with every value expanded) before it can become live, and a failed reload puts the previous set
back.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.agent import policy, protocol
from app.agent.replica import IMPORT_PARTS, REPLICA
from app.messages import Message, encoded, message_of
from app.postfix import render
from app.replication import shadow_store
from app.replication.shadow_counters import read_counters
from app.settings import AgentSettings, PostfixProtections

HASHED_MAPS = ("sender_access", "sender_relayhost", "tls_policy", "sasl_passwd")
# A key no map holds: looking it up opens the map the way Postfix's daemons will.
PROBE_KEY = "mailrelay-map-check.invalid"
# The main.cf settings that decide who may relay, and as which sender (checked against the
# fragment's values).
RELAY_SETTINGS = (
    "smtpd_relay_restrictions",
    "mynetworks",
    "allow_percent_hack",
    "swap_bangpath",
    "resolve_dequoted_address",
)
QUEUE_ID_RE = re.compile(r"^[0-9A-Za-z]{6,32}$")
FRAGMENT = Path(__file__).resolve().parents[2] / "postfix-conf" / "main.cf.fragment"
COMMAND_TIMEOUT = 120


class AgentError(Exception):
    pass


def tool_said(command: str, output: str, code: int) -> Message:
    """What a Postfix tool printed when it failed or warned. Its text is Postfix's own English
    (or the C library's): no catalogue can translate it, and half a translation would mislead,
    so it is quoted as it is inside a sentence of ours, which is translated."""
    if output:
        return Message("{command}: {output}", command=command, output=output)
    return Message("{command} ended with exit code {code}", command=command, code=code)


@dataclass
class MapsReport:
    version: int
    problems: list[str] = field(default_factory=list)
    applied: bool = False

    def as_dict(self) -> protocol.MapsAnswer:
        problems = [encoded(problem) for problem in self.problems]
        return {"version": self.version, "problems": problems, "applied": self.applied}


def parse_fragment(text: str) -> list[tuple[str, str]]:
    """`name = value` pairs from a main.cf-style file (comments, continuation lines)."""
    pairs: list[tuple[str, str]] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if not pairs:
                raise AgentError(
                    Message("continuation line without a parameter: {line}", line=repr(raw))
                )
            name, value = pairs[-1]
            pairs[-1] = (name, f"{value} {raw.strip()}".strip())
            continue
        name, eq, value = raw.partition("=")
        if not eq:
            raise AgentError(Message("not a 'name = value' line: {line}", line=repr(raw)))
        pairs.append((name.strip(), value.strip()))
    return pairs


def anti_abuse(protections: PostfixProtections) -> tuple[dict[str, str], list[str]]:
    """Optional protections, all off by default: main.cf values and master.cf entries.

    POSTFIX_RBL_LIST        comma-separated DNSBL zones checked for clients outside the trusted
                            networks (trusted clients are never looked up)
    POSTFIX_CLIENT_RATE_LIMIT  messages per client per minute (anvil), trusted clients included:
                            on a relay every client is trusted, so no client is exempt
    POSTFIX_POSTSCREEN=yes  postscreen in front of smtpd on port 25 (with the RBL list, if any)
    """
    params: dict[str, str] = {}
    master: list[str] = []
    zones = protections.rbl_zones
    if zones:
        params["smtpd_client_restrictions"] = ", ".join(
            ["permit_mynetworks", *[f"reject_rbl_client {z}" for z in zones]]
        )
    if protections.client_rate_limit is not None:
        params.update(
            anvil_rate_time_unit="60s",
            smtpd_client_message_rate_limit=str(protections.client_rate_limit),
            smtpd_client_event_limit_exceptions="",
        )
    if protections.postscreen:
        params.update(
            postscreen_access_list="permit_mynetworks",
            postscreen_greet_action="enforce",
            postscreen_dnsbl_action="enforce" if zones else "ignore",
            postscreen_dnsbl_sites=", ".join(zones),
        )
        master = [
            "smtp/inet=smtp inet n - n - 1 postscreen",
            "smtpd/pass=smtpd pass - - n - - smtpd",
            "dnsblog/unix=dnsblog unix - - n - 0 dnsblog",
            "tlsproxy/unix=tlsproxy unix - - n - 0 tlsproxy",
        ]
    return params, master


def shadow_settings(settings: AgentSettings) -> dict[str, str]:
    """The milter of shadow copies (app/replication/shadow_milter.py), per SHADOW_MODE:
    `off` configures none; `prefer` lets Postfix accept when the milter itself is down (the
    milter counts what it cannot copy), `require` answers 4xx then. The timeouts stay short:
    a client that gives up while Postfix waits retries, and that copy is delivered twice."""
    if settings.shadow_mode == "off":
        return {"smtpd_milters": ""}
    return {
        "smtpd_milters": f"unix:{settings.shadow_milter_socket}",
        "milter_default_action": "accept" if settings.shadow_mode == "prefer" else "tempfail",
        # The milter answers within SHADOW_TIMEOUT_MS; Postfix waits a little longer.
        "milter_content_timeout": f"{settings.shadow_timeout_ms // 1000 + 5}s",
    }


def milter_state(milters: str) -> str:
    """Whether the shadow milter Postfix is configured with answers: "off" (none configured),
    "answering" or "not answering". The milter counts the mail it cannot copy, but a milter
    that is down counts nothing: in `prefer` Postfix then accepts without a copy, unseen, so
    this is asked of the socket itself."""
    if not milters:
        return "off"
    path = milters.split()[0].removeprefix("unix:")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(path)
        except OSError:
            return "not answering"
    return "answering"


def count_files(root: Path) -> tuple[int, int]:
    """The files under `root` and their total size in bytes (none when it does not exist)."""
    files = size = 0
    for directory, _subdirs, names in os.walk(root):
        for name in names:
            try:
                size += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:  # Postfix moved it on meanwhile
                continue
            files += 1
    return files, size


SHADOW_STORE = Path("/var/spool/mailrelay-shadow")
SHADOW_COUNTERS = Path("/var/lib/mailrelay-shadow-milter/counters.json")


class PostfixTools:
    def __init__(
        self,
        config_dir: Path,
        maps_root: Path,
        replica: Path = REPLICA,
        shadow_store: Path = SHADOW_STORE,
        shadow_counters: Path = SHADOW_COUNTERS,
    ) -> None:
        self.config_dir = config_dir
        self.maps_root = maps_root
        self.replica = replica
        self.shadow_store = shadow_store
        self.shadow_counters = shadow_counters

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> PostfixTools:
        return cls(
            settings.postfix_config_dir,
            settings.postfix_maps_root,
            settings.replica_dir,
            settings.shadow_store,
            settings.shadow_counter_file,
        )

    # -- running tools ------------------------------------------------------------------------

    def _cmd(self, tool: str, *args: str, config_dir: Path | None = None) -> list[str]:
        return [tool, "-c", str(config_dir or self.config_dir), *args]

    def run(
        self, tool: str, *args: str, config_dir: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                self._cmd(tool, *args, config_dir=config_dir),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            # The reason is the operating system's text (strerror), quoted as it is.
            raise AgentError(Message("{tool} failed: {error}", tool=tool, error=str(exc))) from exc
        if check and result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise AgentError(tool_said(f"{tool} {' '.join(args)}", output, result.returncode))
        return result

    # -- main.cf settings ---------------------------------------------------------------------

    def apply_settings(
        self,
        settings: AgentSettings,
        overrides: dict[str, str] | None = None,
        dry_run: bool = False,
    ) -> list[str]:
        """Set the product's main.cf parameters and master.cf tweaks; return what changed."""
        wanted = dict(parse_fragment(FRAGMENT.read_text()))
        protections, master_entries = anti_abuse(settings.protections)
        wanted.update(protections)
        wanted.update(shadow_settings(settings))
        wanted.update(overrides or {})
        current = {}
        for name in wanted:
            result = self.run("postconf", "-h", name, check=False)
            current[name] = result.stdout.strip() if result.returncode == 0 else None
        changes = [f"{k} = {v}" for k, v in wanted.items() if current.get(k) != v]
        if changes and not dry_run:
            self.run("postconf", "-e", *[f"{k}={v}" for k, v in wanted.items()])
        # Without chroot, Postfix daemons read the maps and certificates where they are; the
        # chroot would need copies inside the queue directory, which queue sync replicates.
        for entry in master_entries:
            name = entry.split("=", 1)[0]
            current_entry = self.run("postconf", "-M", name, check=False).stdout.split()
            if current_entry != entry.split("=", 1)[1].split():
                changes.append(f"master.cf: {entry.split('=', 1)[1]}")
                if not dry_run:
                    self.run("postconf", "-Me", entry)
        chrooted = self.run("postconf", "-F", "*/*/chroot").stdout.split()
        if any(line.endswith("=y") or line == "y" for line in chrooted):
            changes.append("master.cf: chroot = n for all services")
            if not dry_run:
                self.run("postconf", "-F", "*/*/chroot = n")
        return changes

    # -- maps ---------------------------------------------------------------------------------

    def _stage(self, version: int, files: dict[str, bytes]) -> Path:
        self.maps_root.mkdir(parents=True, exist_ok=True, mode=0o755)
        stage = self.maps_root / f"stage-{version}-{secrets.token_hex(4)}"
        render.write_directory(render.RenderedMaps(version, files), stage)
        # Postfix daemons open the maps as root, then drop privileges; 0755 lets operators read
        # the directory; the password map itself stays 0600.
        os.chmod(stage, 0o755)  # noqa: S103
        return stage

    def _check_stage(self, stage: Path) -> list[str]:
        scratch = self._scratch_config(stage)
        # What Postfix's daemons will read: main.cf parsed with every value expanded, and each
        # map built, then opened and queried as a lookup table through that main.cf. `postfix
        # check` adds checks of the queue and the installation that no set of maps changes, and
        # costs seconds (it runs post-install and walks the whole queue): not worth it per
        # Apply. The maps are independent and the checks of main.cf need none of them: all run
        # at once, so an Apply of 100,000 sender domains waits for the largest map and its
        # lookup rather than for a dozen programs one after another.
        try:
            with ThreadPoolExecutor(len(HASHED_MAPS) + 2) as pool:
                maps = [pool.submit(self._build_map, stage, name, scratch) for name in HASHED_MAPS]
                parsed = pool.submit(
                    self.run, "postconf", "-x", "-n", config_dir=scratch, check=False
                )
                relay = pool.submit(
                    self.run, "postconf", "-h", *RELAY_SETTINGS, config_dir=scratch, check=False
                )
                problems = [problem for built in maps for problem in built.result()]
                result = parsed.result()
                text = result.stderr.strip()
                if result.returncode != 0 or text:
                    problems.append(tool_said("postconf", text, result.returncode))
                problems += self._relay_problems(relay.result())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return problems

    def _scratch_config(self, stage: Path) -> Path:
        """A private copy of main.cf and master.cf that reads the staged maps; everything else
        is the live configuration."""
        scratch = stage / ".config"
        scratch.mkdir(mode=0o700)
        for name in ("main.cf", "master.cf"):
            shutil.copy2(self.config_dir / name, scratch / name)
        self.run("postconf", "-e", f"mailrelay_maps={stage}", config_dir=scratch)
        # Postfix reads a main.cf changed within the last second as one being written: it
        # waits and reads again until the file is older (about 2 s of every check here).
        # Nobody else writes this private copy; date it back.
        aged = time.time() - 60
        os.utime(scratch / "main.cf", (aged, aged))
        return scratch

    def _build_map(self, stage: Path, name: str, scratch: Path) -> list[str]:
        """postmap one staged map, then look a key up in it through the scratch main.cf."""
        result = self.run("postmap", f"hash:{stage / name}", check=False)
        built = stage / f"{name}.db"
        if name in render.SECRET_MAPS and built.exists():
            os.chmod(built, 0o600)
        text = (result.stderr + result.stdout).strip()
        if result.returncode != 0 or "warning" in text or "fatal" in text:
            return [tool_said(f"postmap {name}", text, result.returncode)]
        result = self.run(
            "postmap", "-q", PROBE_KEY, f"hash:{stage / name}", config_dir=scratch, check=False
        )
        text = result.stderr.strip()
        if result.returncode not in (0, 1) or text:
            return [tool_said(f"postmap -q {name}", text, result.returncode)]
        return []

    def _check_files(self, version: int, files: dict[str, bytes]) -> MapsReport:
        """What the maps themselves hold: their shape, then the policy floors."""
        report = MapsReport(version, render.check_files(files))
        if not report.problems:
            report.problems = policy.network_problems(files["mynetworks"])
        return report

    def _relay_problems(self, answer: subprocess.CompletedProcess[str]) -> list[str]:
        """Who may relay is decided by main.cf, not by the maps: with these maps in place it
        must still be only the trusted networks of the mynetworks map, for senders as they
        were sent (the fragment's values), so that no set of maps goes live on a relay that
        was opened by hand. `answer`: what `postconf -h` said of RELAY_SETTINGS, a line each,
        through the scratch main.cf."""
        values = answer.stdout.splitlines()
        if answer.returncode != 0 or len(values) != len(RELAY_SETTINGS):
            return []  # a main.cf postconf cannot read: the postconf check says so already
        wanted = dict(parse_fragment(FRAGMENT.read_text()))
        problems: list[str] = []
        for name, value in zip(RELAY_SETTINGS, values, strict=True):
            value = value.strip()
            if value != wanted[name]:
                problems.append(
                    Message(
                        "main.cf {name} = {value}, not the product's {wanted}: run "
                        "`mailrelay agent postfix-settings`",
                        name=name,
                        value=repr(value),
                        wanted=repr(wanted[name]),
                    )
                )
        return problems

    def check_maps(self, version: int, files: dict[str, bytes]) -> MapsReport:
        report = self._check_files(version, files)
        if report.problems:
            return report
        stage = self._stage(version, files)
        try:
            report.problems = self._check_stage(stage)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return report

    def live_version(self) -> int | None:
        header = self.maps_root / "live" / "sender_access"
        try:
            first = header.read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        match = re.search(r"config version (\d+)", first)
        return int(match.group(1)) if match else None

    def apply_maps(self, version: int, files: dict[str, bytes]) -> MapsReport:
        report = self._check_files(version, files)
        if report.problems:
            return report
        stage = self._stage(version, files)
        report.problems = self._check_stage(stage)
        if report.problems:
            shutil.rmtree(stage, ignore_errors=True)
            return report
        target = self.maps_root / f"v{version}-{secrets.token_hex(4)}"
        stage.rename(target)
        live = self.maps_root / "live"
        previous = os.readlink(live) if live.is_symlink() else None
        self._point_live_at(target.name)
        try:
            self._reload_if_running()
        except AgentError as exc:
            # The new maps are not what Postfix runs with: put the previous set back.
            if previous:
                self._point_live_at(previous)
                self.run("postfix", "reload", check=False)
            report.problems.append(
                Message("reload failed, previous maps restored: {error}", error=message_of(exc))
            )
            shutil.rmtree(target, ignore_errors=True)
            return report
        for old in self.maps_root.glob("v*-*"):
            if old.name not in (target.name, previous) and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        report.applied = True
        return report

    def _point_live_at(self, name: str) -> None:
        tmp = self.maps_root / f".live-{secrets.token_hex(4)}"
        os.symlink(name, tmp)
        os.replace(tmp, self.maps_root / "live")

    # -- status and queue ---------------------------------------------------------------------

    def postfix_running(self) -> bool:
        return self.run("postfix", "status", check=False).returncode == 0

    def _reload_if_running(self) -> None:
        """`postfix reload`, unless Postfix is not running (it reads the live maps when it
        starts). Whether it runs is asked after a failed reload, not before each one: one
        program less per Apply."""
        try:
            self.run("postfix", "reload")
        except AgentError:
            if self.postfix_running():
                raise

    def reload(self) -> None:
        self.run("postfix", "reload")

    def queue_size(self, spool: Path) -> dict[str, int]:
        """Files per queue directory of `spool` (queue_directory): cheap even with 100k queued
        messages (no parsing)."""
        return {
            name: count_files(spool / name)[0]
            for name in ("incoming", "active", "deferred", "hold", "maildrop")
        }

    def queue_directory(self) -> Path:
        return Path(self.run("postconf", "-h", "queue_directory").stdout.strip())

    def message_size_limit(self) -> int:
        value = self.run("postconf", "-h", "message_size_limit").stdout.strip()
        return int(value) if value.isdigit() else 0

    def replica_size(self) -> protocol.FilesAndBytes:
        """The peer's queue copied here (its message files and their bytes): what this node
        takes over if it becomes MASTER now. The web app cannot read the replica; the agent can.
        """
        files = size = 0
        for part in IMPORT_PARTS:
            part_files, part_size = count_files(self.replica / part)
            files, size = files + part_files, size + part_size
        return {"files": files, "bytes": size}

    def status(self) -> protocol.PostfixStatus:
        # The three settings it reads in one postconf run: the dashboard, the cluster panel
        # and every /metrics scrape ask for a status, and a run of postconf costs several
        # milliseconds (a status took 46 to 49 ms with three runs and 30 to 36 ms with one,
        # through the integration tests' Postfix, alternated).
        version, spool, milters = self.run(
            "postconf", "-h", "mail_version", "queue_directory", "smtpd_milters"
        ).stdout.splitlines()[:3]
        return {
            "postfix_running": self.postfix_running(),
            "postfix_version": version.strip(),
            "live_maps_version": self.live_version(),
            "queue": self.queue_size(Path(spool.strip())),
            "replica": self.replica_size(),
            "shadow": self.shadow_status(milters.strip()),
        }

    def shadow_status(self, milters: str) -> protocol.ShadowStatus:
        """The peer's shadows held here, and the mail this node accepted without a copy (the
        milter's counter file): for the dashboard, the cluster panel and /metrics. `milters`
        is Postfix's smtpd_milters."""
        stored, size = shadow_store.stored(self.shadow_store)
        counters = read_counters(self.shadow_counters)
        return {
            "stored": stored,
            "bytes": size,
            "unprotected_total": int(counters.get("unprotected_total", 0)),
            "last_unprotected_at": counters.get("last_unprotected_at"),
            "milter": milter_state(milters),
        }

    def queue_list(self, limit: int) -> list[dict[str, Any]]:
        result = self.run("postqueue", "-j")
        entries: list[dict[str, Any]] = []
        for line in result.stdout.splitlines():
            if len(entries) >= limit:
                break
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries

    def queue_action(self, action: str, queue_id: str) -> None:
        if not QUEUE_ID_RE.match(queue_id):
            raise AgentError(Message("not a queue ID: {queue_id}", queue_id=repr(queue_id)))
        if not any(e.get("queue_id") == queue_id for e in self.queue_list(limit=10**9)):
            raise AgentError(
                Message("there is no message {queue_id} in the queue", queue_id=queue_id)
            )
        flags = {"hold": "-h", "release": "-H", "delete": "-d", "requeue": "-r"}
        if action in flags:
            self.run("postsuper", flags[action], queue_id)
        elif action == "flush":
            self.run("postqueue", "-i", queue_id)
        else:
            raise AgentError(Message("unknown queue action {action}", action=repr(action)))

    def flush_all(self) -> None:
        self.run("postqueue", "-f")
