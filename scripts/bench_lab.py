"""The parts of scripts/bench that need the two-node lab: failover, sync, lag and throughput.

A lab that is down is brought up for the part and taken down after it; a lab that is up is used
as it is and left up (every setting a part changes is put back). Everything is measured from
the lab's client namespace through the VIP, the way a sending application sees the relay.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import ROOT, save, svg_bars, table

LAB = str(ROOT / "scripts" / "lab")
VIP = "198.18.0.100"
SINK1 = "198.18.0.21"
ENV = "/etc/mailrelay/mailrelay.env"
REPLICA = "/var/spool/mailrelay-replica"
SNAPSHOT = "/var/lib/mailrelay-agent/queue-snapshot"
MAILRELAY = "/opt/mailrelay/venv/bin/mailrelay"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
SHADOW_COUNTERS = "/var/lib/mailrelay-shadow-milter/counters.json"
QUEUE_DIRS = "incoming active deferred"
# The lab's routes: this sender's mail goes to sink1 (stopped when a part needs a queue), that
# one's to sink2 (always up).
SINK1_SENDER, SINK2_SENDER = "app@app.example", "pay@billing.example"


def lab(*args: str, check: bool = True, timeout: float = 600) -> str:
    result = subprocess.run(
        [LAB, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise SystemExit(f"scripts/lab {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def in_client(*command: str, timeout: float = 900, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", "mrlab-client", *command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout


def vip_owner() -> str:
    """ "a" or "b"; "" while nobody holds the VIP (it is moving, or in stop mode a node with
    the peer's keepalived stopped drops it while its Postfix is down)."""
    match = re.search(r"VIP \S+: (\w+)", lab("status"))
    return match.group(1) if match and match.group(1) in ("a", "b") else ""


def active() -> str:
    """The node that holds the VIP, waiting a little for one while the VIP moves."""
    wait_for(lambda: vip_owner() != "", 60, "a node to hold the VIP")
    return vip_owner()


def other(node: str) -> str:
    return "b" if node == "a" else "a"


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.2)


def set_env(node: str, name: str, value: str | None) -> None:
    line = f" && echo {name}={value} >> {ENV}" if value is not None else ""
    lab("exec", node, "sh", "-c", f"sed -i '/^{name}=/d' {ENV}{line}")


def sql(node: str, query: str) -> list[str]:
    out = lab(
        "exec", node, "runuser", "-u", "postgres", "--", "psql", "-d", "mailrelay", "-Atc", query
    )
    return [line for line in out.splitlines() if line]


def queue_count(node: str, root: str = "/var/spool/postfix") -> int:
    out = lab(
        "exec", node, "sh", "-c", f"cd {root} && find {QUEUE_DIRS} -type f 2>/dev/null | wc -l"
    )
    return int(out.strip() or 0)


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "max": round(ordered[-1], 3),
    }


def save_quantiles(
    part: str,
    title: str,
    case: str,
    upper: str,
    results: dict[str, dict[str, Any]],
    data: dict[str, Any],
) -> None:
    """The table and chart of a part whose figures are seconds: median and `upper` (p95 or
    p99) per case."""
    rows = [[name, r["n"], r["median"], r[upper], r["max"]] for name, r in results.items()]
    text = table(title, [case, "n", "median s", f"{upper} s", "max s"], rows)
    series = {q: [r[q] for r in results.values()] for q in ("median", upper)}
    save(part, data | {"results": results}, svg_bars(title, list(results), series, "s"), text)


@contextlib.contextmanager
def the_lab() -> Iterator[None]:
    was_down = "the lab is down" in lab("status", check=False)
    if was_down:
        print("bench: bringing the lab up (about 2 minutes)", file=sys.stderr)
        lab("up", timeout=900)
    try:
        wait_for(lambda: "running" in lab("status"), 300, "the lab's nodes")
        yield
    finally:
        if was_down:
            lab("down", check=False, timeout=300)


def ready_backup(node: str) -> bool:
    state = lab("exec", node, "cat", "/run/mailrelay-vrrp/vrrp.state", check=False)
    return '"BACKUP"' in state


# -- failover ---------------------------------------------------------------------------------

# Runs in the client namespace: a client that starts a message through the VIP every 20 ms (a
# fresh connection each; a TCP connect that takes longer than 0.1 s is given up, so the probe's
# own timeouts are not what is measured) until it is told an instant on stdin and has had a 250
# after it. Each session runs in its own thread: a session that was in flight when the node
# failed may wait for its 5 s dialogue timeout (nobody is left to answer it) without holding up
# the sessions after it, which measure when the relay accepts again. Prints when each 250
# came, when each TCP connect succeeded, when the sessions still waiting at the end connected,
# and when the VIP's MAC address in the client's ARP table changed (JSON).
PROBE = """
import json, smtplib, socket, sys, threading, time
vip = sys.argv[1]
stop_after = []
threading.Thread(target=lambda: stop_after.append(float(sys.stdin.readline())), daemon=True).start()
def mac():
    with open("/proc/net/arp") as arp:
        for line in arp.read().splitlines()[1:]:
            fields = line.split()
            if fields[0] == vip:
                return fields[3]
    return ""
seen = {"ok": [], "connect": [], "mac": [], "waiting": []}
waiting = set()
lock = threading.Lock()
def note(what):
    with lock:
        seen[what].append(time.time())
def session():
    try:
        sock = socket.create_connection((vip, 25), timeout=0.1)
    except OSError:
        return
    connected = time.time()
    with lock:
        seen["connect"].append(connected)
        waiting.add(connected)
    try:
        sock.settimeout(5)
        smtp = smtplib.SMTP(local_hostname="probe.lab.test")
        smtp.sock = sock
        smtp.getreply()
        smtp.sendmail("pay@billing.example", ["you@dest.example"], "Subject: probe")
        smtp.quit()
        note("ok")
    except (OSError, smtplib.SMTPException):
        sock.close()
    with lock:
        waiting.discard(connected)
last_mac = mac()
deadline = time.time() + 300
while time.time() < deadline:
    with lock:
        done = stop_after and seen["ok"] and seen["ok"][-1] > stop_after[0]
    if done:
        break
    if mac() != last_mac:
        last_mac = mac()
        note("mac")
    threading.Thread(target=session, daemon=True).start()
    time.sleep(0.02)
with lock:
    seen["waiting"] = sorted(waiting)
print(json.dumps(seen))
"""


def set_advert_interval(interval: str) -> None:
    for node in ("a", "b"):
        set_env(node, "VRRP_ADVERT_INT", interval)
        lab(
            "exec", node, "sh", "-c",
            f"set -a; . {ENV}; set +a; {MAILRELAY} keepalived-config > {KEEPALIVED_CONF}",
        )  # fmt: skip
    # The BACKUP first, so that the MASTER's restart hands the VIP to a ready peer.
    owner = active()
    for node in (other(owner), owner):
        lab("exec", node, "systemctl", "restart", "keepalived")
        wait_for(lambda n=node: ready_backup(n) or vip_owner() == n, 60, f"keepalived on {node}")


def fail(kind: str, owner: str) -> float:
    """Make the active node fail (or hand over) the `kind` way; the instant it began."""
    if kind == "crash":
        out = lab("crash", owner)
        return float(re.search(r"power cut at ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    if kind == "keepalived stop":
        # date runs in the node just before the stop: the nodes share the host's clock.
        out = lab("exec", owner, "sh", "-c", "date +%s.%N; exec systemctl stop keepalived")
        return float(out.split()[0])
    started = time.time()
    lab(
        "exec", owner, "runuser", "-u", "mailrelay", "--", "bash", "-c",
        f"set -a; . {ENV}; set +a; exec {MAILRELAY} switchover", timeout=300,
    )  # fmt: skip
    return started


def one_failover(kind: str) -> dict[str, float]:
    """Seconds from the start of the outage to the VIP's new MAC at the client, the first TCP
    connect and the first 250. A crash starts the outage at the power cut; a clean stop or a
    switchover at the probe's last 250 before its longest gap (the old node keeps answering
    until it has let the VIP go)."""
    owner = active()
    wait_for(lambda: ready_backup(other(owner)), 300, f"{other(owner)} to be a ready BACKUP")
    probe = subprocess.Popen(
        ["ip", "netns", "exec", "mrlab-client", "python3", "-c", PROBE, VIP],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # the probe is sending through the old node
    began = fail(kind, owner)
    out, _ = probe.communicate(f"{time.time() if kind == 'switchover' else began}\n", timeout=300)
    seen = json.loads(out)
    if kind == "crash":
        start = began
    else:
        oks = [t for t in seen["ok"] if t >= began - 0.5]
        gaps = [(later - earlier, earlier) for earlier, later in itertools.pairwise(oks)]
        start = max(gaps)[1] if gaps else began

    def first(times: list[float]) -> float:
        return round(min((t for t in times if t > start), default=float("nan")) - start, 3)

    if kind == "crash":
        lab("boot", owner, timeout=600)
    elif kind == "keepalived stop":
        lab("exec", owner, "systemctl", "start", "keepalived")
    return {
        "mac": first(seen["mac"]),
        "connect": first(seen["connect"]),
        "ok": first(seen["ok"]),
        # Sessions that connected before the outage and had no answer when the probe ended.
        "hanging": len([t for t in seen["waiting"] if t < start]),
    }


def bench_failover(quick: bool) -> None:
    runs = 3 if quick else 20
    results: dict[str, dict[str, Any]] = {}
    parts: dict[str, dict[str, float]] = {}
    with the_lab():
        try:
            for interval in ("1", "0.1"):
                set_advert_interval(interval)
                for kind in ("crash", "keepalived stop", "switchover"):
                    if kind == "switchover" and interval != "1":
                        continue  # the handover is a clean stop: the interval changes nothing
                    name = f"{kind}, advert {interval} s"
                    measured = [one_failover(kind) for _ in range(runs)]
                    results[name] = quantiles([m["ok"] for m in measured])
                    parts[name] = {
                        what: statistics.median(m[what] for m in measured)
                        for what in ("mac", "connect", "ok")
                    } | {"hanging": sum(m["hanging"] for m in measured)}
                    print(f"{name}: {results[name]}, medians {parts[name]}", file=sys.stderr)
        finally:
            set_advert_interval("1")
    save_quantiles(
        "failover",
        f"failover: seconds from the failure to the first 250 through the VIP ({runs} runs "
        "each; the probe retries a connect after 0.1 s)",
        "failure",
        "p95",
        results,
        {"runs": runs, "parts": parts},
    )
    print(
        table(
            "where the time goes (medians, seconds from the start of the outage); sessions in "
            f"flight at the failure still unanswered after the first 250, in all {runs} runs",
            [
                "failure",
                "VIP's MAC at the client",
                "first TCP connect",
                "first 250",
                "sessions left hanging",
            ],
            [[name, p["mac"], p["connect"], p["ok"], p["hanging"]] for name, p in parts.items()],
        )
    )


# -- sync -------------------------------------------------------------------------------------


def fill_queue(node: str, size: int) -> None:
    """Queue up to `size` messages on `node` (sink1 is down, so they stay)."""
    missing = size - queue_count(node)
    if missing > 0:
        in_client(
            "smtp-source", "-s", "20", "-m", str(missing), "-l", "2048",
            "-f", SINK1_SENDER, "-t", "you@dest.example", f"{VIP}:25",
        )  # fmt: skip
    wait_for(lambda: queue_count(node) >= size, 600, f"{size} messages in {node}'s queue")


def one_sync(node: str, mode: str) -> dict[str, Any]:
    set_env(node, "SYNC_FREEZE", mode)
    last = int(sql(node, "SELECT coalesce(max(id), 0) FROM sync_runs")[0])
    lab("exec", node, "systemctl", "start", "mailrelay-queue-sync.service", check=False)
    query = (
        "SELECT json_build_object('outcome', outcome, 'duration', duration_seconds, "
        "'frozen', freeze_seconds, 'files', files, 'bytes', bytes, 'detail', detail) "
        "FROM sync_runs WHERE id > {} ORDER BY id DESC LIMIT 1"
    )
    row = sql(node, query.format(last))
    if not row:
        raise SystemExit(f"bench: no sync ran on {node} (does it still hold the VIP?)")
    return json.loads(row[0])


@contextlib.contextmanager
def peer_keepalived_stopped(node: str, mode: str) -> Iterator[None]:
    """In stop mode Postfix is down for seconds, long enough to fail the SMTP check: the VIP
    would move to the peer mid-measurement (and the peer import the queue). With the peer's
    keepalived stopped the VIP stays with `node` (it drops out while Postfix is down and comes
    back), so the figures are those of one node. Other modes need no change."""
    if mode != "stop":
        yield
        return
    lab("exec", other(node), "systemctl", "stop", "keepalived")
    try:
        yield
    finally:
        wait_for(lambda: vip_owner() == node, 60, f"the VIP back on {node}")
        lab("exec", other(node), "systemctl", "start", "keepalived")
        wait_for(lambda: ready_backup(other(node)), 60, f"{other(node)} BACKUP again")


def load(seconds: float, tag: str) -> dict[str, Any]:
    script = ROOT / "scripts" / "lib" / "smtpload.py"
    out = in_client(
        "python3", str(script), VIP, str(seconds), "4", SINK2_SENDER, tag, "0.05",
        timeout=seconds + 300,
    )  # fmt: skip
    return json.loads(out)


def bench_sync(quick: bool) -> None:
    sizes = [1000, 10000] if quick else [1000, 10000, 100000]
    seconds = 20 if quick else 60
    runs: list[dict[str, Any]] = []
    loads: dict[str, dict[str, Any]] = {}
    with the_lab():
        node = active()
        lab("exec", node, "systemctl", "stop", "mailrelay-queue-sync.timer")
        lab("sink", "sink1", "stop")
        try:
            for size in sizes:
                fill_queue(node, size)
                for mode in ("freeze", "stop"):
                    # The first run copies the whole queue (the peer's replica and the local
                    # snapshot emptied before it): a sync's worst case. The second is the
                    # steady state, only what changed in between.
                    lab("exec", other(node), "find", REPLICA, "-type", "f", "-delete")
                    lab("exec", node, "rm", "-rf", SNAPSHOT)
                    with peer_keepalived_stopped(node, mode):
                        for which in ("whole queue", "next"):
                            run = one_sync(node, mode) | {"size": size, "mode": mode, "run": which}
                            runs.append(run)
                            print(
                                f"{size} queued, {mode}, {which} run: {run['outcome']} in "
                                f"{run['duration']:.2f} s, frozen {run['frozen'] * 1000:.0f} ms"
                            )
                            wait_for(lambda: vip_owner() == node, 60, f"the VIP on {node}")
            # Load while the timer syncs every 5 s (the 100k queue stays, so each sync has work).
            for mode in ("no sync", "freeze", "stop"):
                with peer_keepalived_stopped(node, mode):
                    if mode != "no sync":
                        # The steady state: the last mode's copies left this mode's snapshot
                        # (or the replica) behind, and one whole-queue copy is not what a
                        # sender meets every 5 s.
                        one_sync(node, mode)
                        wait_for(lambda: vip_owner() == node, 120, f"the VIP on {node}")
                        lab("exec", node, "systemctl", "start", "mailrelay-queue-sync.timer")
                    tag = f"bench-{mode.replace(' ', '')}-{int(time.time())}"
                    loads[mode] = load(seconds, tag)
                    lab("exec", node, "systemctl", "stop", "mailrelay-queue-sync.timer")
                print(f"load with {mode}: {loads[mode]}")
        finally:
            set_env(node, "SYNC_FREEZE", None)
            for each in ("a", "b"):
                lab("exec", each, "postsuper", "-d", "ALL", check=False)
            lab("sink", "sink1", "start", check=False)
            lab("exec", node, "systemctl", "start", "mailrelay-queue-sync.timer", check=False)
    base = loads["no sync"]["greeting_ms"]
    rows = [
        [r["size"], r["mode"], r["run"], r["outcome"], f"{r['duration']:.2f}",
         f"{r['frozen'] * 1000:.0f}", r["files"]]
        for r in runs
    ]  # fmt: skip
    load_rows = [
        [mode, run["sessions"], sum(run["errors"].values()), run["greeting_ms"].get("p50"),
         round(run["greeting_ms"].get("p50", 0) - base.get("p50", 0), 1),
         run["greeting_ms"].get("p99"),
         round(run["greeting_ms"].get("p99", 0) - base.get("p99", 0), 1),
         run["greeting_ms"].get("max"), run["greetings_over"]["100ms"],
         run["greetings_over"]["1s"]]
        for mode, run in loads.items()
    ]  # fmt: skip
    text = "\n\n".join(
        [
            table(
                "sync: one queue sync (Postfix frozen or stopped for the final pass)",
                ["queued", "mode", "run", "outcome", "run s", "frozen ms", "files"],
                rows,
            ),
            table(
                f"sync: {seconds} s of SMTP sessions through the VIP (4 senders) while syncs "
                "run every 5 s",
                [
                    "mode",
                    "sessions",
                    "errors",
                    "greeting p50 ms",
                    "added",
                    "p99 ms",
                    "added",
                    "max ms",
                    "over 100 ms",
                    "over 1 s",
                ],
                load_rows,
            ),
        ]
    )
    first = [r for r in runs if r["run"] == "whole queue"]
    labels = sorted({f"{r['size']}" for r in first}, key=int)
    chart = svg_bars(
        "sync: Postfix held still per sync (copying the whole queue)",
        labels,
        {
            mode: [
                next(r["frozen"] * 1000 for r in first if r["mode"] == mode and f"{r['size']}" == s)
                for s in labels
            ]
            for mode in ("freeze", "stop")
        },
        "ms",
    )
    save("sync", {"runs": runs, "load": loads, "load_seconds": seconds}, chart, text)


# -- lag --------------------------------------------------------------------------------------

# Runs in the client namespace: one message every PAUSE seconds for SECONDS; prints
# "queue-id accepted-at" per message.
SENDER = """
import re, smtplib, sys, time
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        with smtplib.SMTP(sys.argv[1], 25, timeout=20) as smtp:
            smtp.mail("app@app.example")
            smtp.rcpt("you@dest.example")
            code, text = smtp.data("Subject: lag\\r\\n\\r\\nx")
        print(re.search(rb"queued as (\\w+)", text).group(1).decode(), time.time(), flush=True)
    except (OSError, smtplib.SMTPException, AttributeError) as exc:
        print(f"not accepted: {exc!r}", file=sys.stderr)  # not part of the figure
    time.sleep(float(sys.argv[3]))
"""


def replica_ids(node: str) -> set[str]:
    out = lab(
        "exec", node, "sh", "-c",
        f"cd /var/spool/mailrelay-replica && find {QUEUE_DIRS} -type f 2>/dev/null",
        check=False,
    )  # fmt: skip
    return {line.rsplit("/", 1)[-1] for line in out.split()}


def set_sync_interval(node: str, seconds: float | None) -> None:
    dropin = "/etc/systemd/system/mailrelay-queue-sync.timer.d/zz-bench.conf"
    if seconds is None:
        lab("exec", node, "rm", "-f", dropin)
    else:
        lab(
            "exec", node, "sh", "-c",
            f"mkdir -p {dropin.rsplit('/', 1)[0]} && "
            f"printf '[Timer]\\nOnUnitActiveSec=\\nOnUnitActiveSec={seconds}s\\n' > {dropin}",
        )  # fmt: skip
    lab("exec", node, "systemctl", "daemon-reload")
    lab("exec", node, "systemctl", "restart", "mailrelay-queue-sync.timer")


def measure_lag(node: str, seconds: float) -> list[float]:
    peer = other(node)
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            now = time.time()
            for queue_id in replica_ids(peer):
                seen.setdefault(queue_id, now)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = in_client("python3", "-c", SENDER, VIP, str(seconds), "0.5", timeout=seconds + 120)
        sent = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line}
        deadline = time.time() + 30
        while time.time() < deadline and not set(sent) <= set(seen):
            time.sleep(0.5)
    finally:
        done.set()
        watcher.join()
    return [seen[i] - at for i, at in sent.items() if i in seen]


def bench_lag(quick: bool) -> None:
    seconds = 20 if quick else 60
    results: dict[str, dict[str, Any]] = {}
    with the_lab():
        node = active()
        lab("sink", "sink1", "stop")
        try:
            for interval in (5, 2):
                set_sync_interval(node, interval)
                lags = measure_lag(node, seconds)
                results[f"every {interval} s"] = quantiles(lags)
                print(f"sync every {interval} s: {results[f'every {interval} s']}")
        finally:
            set_sync_interval(node, None)
            lab("exec", node, "postsuper", "-d", "ALL", check=False)
            lab("sink", "sink1", "start", check=False)
    save_quantiles(
        "lag",
        "lag: from the 250 to the message's first appearance in the peer's replica "
        f"(one message every 0.5 s for {seconds} s)",
        "sync",
        "p99",
        results,
        {"seconds": seconds},
    )


# -- throughput -------------------------------------------------------------------------------

# A relay with nothing of ours: the same Postfix, every message to the sink.
BARE_MAIN_CF = """compatibility_level = 3.6
queue_directory = /var/spool/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
data_directory = /var/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.lab.test
inet_interfaces = all
mydestination =
mynetworks = 127.0.0.0/8 198.18.0.0/24
relayhost = [198.18.0.21]:25
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = /var/log/postfix.log
"""


def deliver(node: str, messages: int) -> dict[str, float]:
    """Send `messages` through the VIP (20 sessions in parallel) and wait until the node's
    queue is empty: accepted and delivered messages per second, and how busy the machine's
    cores were while the mail went in (a ratio of two rates tells what one costs only where
    the CPU is what limits both)."""
    started = time.monotonic()
    cpu_before = machine_cpu()
    in_client(
        "smtp-source", "-s", "20", "-m", str(messages), "-l", "2048",
        "-f", SINK1_SENDER,
        "-t", "you@dest.example", f"{VIP}:25",
    )  # fmt: skip
    accepted = time.monotonic() - started
    cpu = [after - before for before, after in zip(cpu_before, machine_cpu(), strict=True)]
    wait_for(lambda: queue_count(node) == 0, 900, f"{node}'s queue to drain")
    delivered = time.monotonic() - started
    total = sum(cpu) or 1
    return {
        "messages": messages,
        "accepted_per_s": round(messages / accepted, 1),
        "delivered_per_s": round(messages / delivered, 1),
        "cpu_busy": round(cpu[0] / total, 3),
        "cpu_iowait": round(cpu[1] / total, 3),
        "cpu_steal": round(cpu[2] / total, 3),
    }


def machine_cpu() -> tuple[int, int, int, int]:
    """The machine's CPU time so far, in clock ticks of all cores: busy, waiting for the
    disk, taken by the hypervisor for others (steal), idle (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, iowait, steal, idle


def listening(namespace: str, address: str) -> bool:
    probe = f"echo > /dev/tcp/{address}/25"
    command = ["ip", "netns", "exec", namespace, "bash", "-c", probe]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def smtp_sink() -> Iterator[None]:
    """Postfix's smtp-sink on sink1's address in place of the recording sink, so that the
    target is not the limit. Its stderr goes to a file: a sink that dies says why."""
    lab("sink", "sink1", "stop")
    wait_for(lambda: not listening("mrlab-sink1", SINK1), 30, "the recording sink1 to let go")
    log = ROOT / "bench-results" / "smtp-sink.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as errors:
        sink = subprocess.Popen(
            ["ip", "netns", "exec", "mrlab-sink1", "smtp-sink", "-u", "nobody", f"{SINK1}:25",
             "256"],
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )  # fmt: skip

    def check() -> None:
        if sink.poll() is not None:
            raise SystemExit(f"bench: smtp-sink exited ({sink.returncode}): {log.read_text()}")

    try:
        wait_for(lambda: check() or listening("mrlab-sink1", SINK1), 30, "smtp-sink to listen")
        yield
        check()
    finally:
        sink.terminate()
        sink.wait()
        lab("sink", "sink1", "start", check=False)


@contextlib.contextmanager
def bare_relay(node: str) -> Iterator[None]:
    """The node's Postfix with the bare relay main.cf for a while, its own put back after."""
    lab("exec", node, "cp", "-p", "/etc/postfix/main.cf", "/etc/postfix/main.cf.bench")
    try:
        lab("exec", node, "sh", "-c", f"cat > /etc/postfix/main.cf <<'EOF'\n{BARE_MAIN_CF}EOF")
        lab("exec", node, "postfix", "reload")
        yield
    finally:
        lab("exec", node, "mv", "/etc/postfix/main.cf.bench", "/etc/postfix/main.cf")
        lab("exec", node, "postfix", "reload")


THROUGHPUT_CONFIGS = {
    "prefer": "mailrelay-ha, SHADOW_MODE=prefer (default)",
    "off": "mailrelay-ha, SHADOW_MODE=off",
    "bare": "bare relay config",
}
# prefer, off, bare, bare, off, prefer, ...: each configuration's runs spread over the whole run,
# and each switch of SHADOW_MODE (an install-node, about 40 s) is made as rarely as possible.
THROUGHPUT_ORDER = ["prefer", "off", "bare", "bare", "off", "prefer", "prefer", "off", "bare"]


def bench_throughput(quick: bool) -> None:
    """The product's configuration, with and without shadow copies, against the bare relay
    configuration, alternating, three runs of each, medians: one run of each in a fixed order
    cannot tell cost from noise. The product's timers run as in production meanwhile; the
    SHADOW_MODE is set the operator's way, and the node is left on the default after."""
    messages = 2000 if quick else 20000
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in THROUGHPUT_CONFIGS.values()}
    sequence: list[str] = []
    with the_lab(), smtp_sink():
        node = active()
        installed = "prefer"
        try:
            for config in THROUGHPUT_ORDER:
                wanted = "off" if config == "bare" else config
                if wanted != installed and config != "bare":
                    set_shadow_mode(node, wanted)
                    installed = wanted
                label = THROUGHPUT_CONFIGS[config]
                if config == "bare":
                    with bare_relay(node):
                        run = deliver_with_cpu(node, messages)
                else:
                    run = deliver_with_cpu(node, messages)
                runs[label].append(run)
                sequence.append(f"{config} {run['accepted_per_s']} {run['cpu_busy']:.0%}")
        finally:
            if installed != "prefer":
                set_shadow_mode(node, "prefer")
    results = {
        name: {
            "messages": messages,
            "rounds": len(each),
            "accepted_per_s": statistics.median(r["accepted_per_s"] for r in each),
            "delivered_per_s": statistics.median(r["delivered_per_s"] for r in each),
            "cpu_busy": statistics.median(r["cpu_busy"] for r in each),
            "active_cpu_ms": statistics.median(r["active_cpu_ms"] for r in each),
            "peer_cpu_ms": statistics.median(r["peer_cpu_ms"] for r in each),
        }
        for name, each in runs.items()
    }
    bare = results[THROUGHPUT_CONFIGS["bare"]]
    ratios = {
        name: {
            "accepted": round(r["accepted_per_s"] / bare["accepted_per_s"], 2),
            "delivered": round(r["delivered_per_s"] / bare["delivered_per_s"], 2),
        }
        for name, r in results.items()
    }
    rows = [
        [name, r["messages"], r["rounds"], r["accepted_per_s"], r["delivered_per_s"],
         ratios[name]["accepted"], ratios[name]["delivered"], f"{r['cpu_busy']:.0%}",
         r["active_cpu_ms"], r["peer_cpu_ms"]]
        for name, r in results.items()
    ]  # fmt: skip
    text = table(
        f"throughput: {messages} messages through the VIP to smtp-sink (20 parallel sessions), "
        "runs alternated, medians; goal for the product's configuration against bare: "
        "accepted >= 0.9, delivered >= 0.95",
        ["Postfix config", "messages", "runs", "accepted/s", "delivered/s", "accepted x bare",
         "delivered x bare", "cores busy", "active node CPU ms/msg", "peer CPU ms/msg"],
        rows,
    )  # fmt: skip
    text += "\nsingle runs in their order (accepted/s, cores busy): " + ", ".join(sequence)
    chart = svg_bars(
        "throughput through the VIP",
        list(results),
        {
            "accepted": [r["accepted_per_s"] for r in results.values()],
            "delivered": [r["delivered_per_s"] for r in results.values()],
        },
        "msg/s",
    )
    save(
        "throughput",
        {"results": results, "runs": runs, "ratios": ratios, "sequence": sequence},
        chart,
        text,
    )


# -- pull -------------------------------------------------------------------------------------

# Runs in the client namespace: a new SMTP session to the slave every 20 ms (a running smtpd
# keeps the maps it opened until its session ends), MAIL and RCPT with a sender of a domain that
# is not allowed yet; prints the wall-clock time of the first RCPT answered 250.
PULL_PROBE = """
import smtplib, sys, time
host, sender, deadline = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3])
print("ready", flush=True)
while time.time() < deadline:
    try:
        with smtplib.SMTP(host, 25, timeout=2) as smtp:
            smtp.ehlo("probe.lab.test")
            smtp.mail(sender)
            code, _ = smtp.rcpt("you@dest.example")
        if code == 250:
            print(time.time(), flush=True)
            break
    except (OSError, smtplib.SMTPException):
        pass
    time.sleep(0.02)
"""
LAB_CONFIG_FILE = "/var/lib/mailrelay/bench-pull-config.json"


def import_and_apply(domains: list[str]) -> None:
    """On a: the lab's configuration plus `domains` as a new version, then Apply."""
    import lab as labconf  # scripts/lab.py: the lab's own configuration

    config = json.loads(json.dumps(labconf.LAB_CONFIG))
    config["sender_domains"] += [
        {"name": d, "comment": "bench pull", "route": None} for d in domains
    ]
    target = labconf.node_dir("a") / "root" / LAB_CONFIG_FILE.lstrip("/")
    target.write_text(json.dumps(config))
    target.chmod(0o644)
    for command in (f"config-import {LAB_CONFIG_FILE}", "config-apply"):
        lab("exec", "a", "runuser", "-u", "mailrelay", "--", "sh", "-c",
            f"set -a; . {ENV}; set +a; {MAILRELAY} {command}")  # fmt: skip


def applied_epoch(node: str) -> float:
    """When the node last applied a version (its own row: node ids are the lab's a and b)."""
    query = "SELECT extract(epoch FROM applied_at) FROM applied_versions WHERE node_id = '{}'"
    [row] = sql(node, query.format(node if node in ("a", "b") else ""))
    return float(row)


def one_pull(domain: str) -> dict[str, float]:
    probe = subprocess.Popen(
        ["ip", "netns", "exec", "mrlab-client", "python3", "-c", PULL_PROBE, "198.18.0.12",
         f"x@{domain}", "60"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert probe.stdout is not None
    assert probe.stdout.readline().strip() == "ready"
    import_and_apply([domain])
    out, _ = probe.communicate(timeout=90)
    if not out.strip():
        raise SystemExit(f"bench: b did not accept {domain} within 60 s of the Apply on a")
    accepted, applied_a, applied_b = float(out.strip()), applied_epoch("a"), applied_epoch("b")
    return {
        "total": accepted - applied_a,
        "pull_and_apply_on_b": applied_b - applied_a,
        "to_first_accepting_session": accepted - applied_b,
    }


def bench_pull(quick: bool) -> None:
    runs = 3 if quick else 20
    parts: dict[str, list[float]] = {}
    with the_lab():
        try:
            for i in range(runs):
                result = one_pull(f"pull{int(time.time())}-{i}.example")
                print(f"run {i + 1}: " + ", ".join(f"{k} {v:.3f} s" for k, v in result.items()))
                for key, value in result.items():
                    parts.setdefault(key, []).append(value)
                time.sleep(1)
        finally:
            import_and_apply([])  # the lab's own configuration again
    names = {
        "total": "end of Apply on a -> b's Postfix accepts",
        "pull_and_apply_on_b": "... of which: b pulled and applied",
        "to_first_accepting_session": "... of which: b's applied -> first accepting session",
    }
    results = {names[key]: quantiles(values) for key, values in parts.items()}
    save_quantiles(
        "pull",
        f"pull: from the end of a successful Apply on a to b's Postfix enforcing it ({runs} runs)",
        "span",
        "p95",
        results,
        {"runs": runs},
    )


# -- shadow -----------------------------------------------------------------------------------

# Runs in the client namespace: COUNT messages over one session; for each, the seconds from the
# end of its data (the final ".") to the relay's answer. Prints them as JSON.
DATA_TO_250 = """
import json, smtplib, sys, time
host, count = sys.argv[1], int(sys.argv[2])
body = ("From: app@app.example\\r\\nTo: you@dest.example\\r\\nSubject: bench\\r\\n\\r\\n"
        + "x" * 2000 + "\\r\\n")
seconds = []
with smtplib.SMTP(host, 25, timeout=30) as smtp:
    smtp.ehlo("bench.lab.test")
    for _ in range(count):
        smtp.mail("app@app.example")
        smtp.rcpt("you@dest.example")
        code, _ = smtp.docmd("DATA")
        assert code == 354, code
        smtp.send(body.encode() + b".\\r\\n")
        started = time.perf_counter()
        code, answer = smtp.getreply()
        seconds.append(time.perf_counter() - started)
        assert code == 250, (code, answer)
print(json.dumps(seconds))
"""


def set_shadow_mode(node: str, mode: str) -> None:
    """The operator's way: install-node with SHADOW_MODE (off configures no milter at all)."""
    lab("install", node, f"SHADOW_MODE={mode}", timeout=900)


def data_to_250(messages: int) -> list[float]:
    out = in_client("python3", "-", VIP, str(messages), stdin=DATA_TO_250)
    return [float(s) for s in json.loads(out)]


def drill() -> dict[str, int]:
    """The zero-loss drill once (as tests/lab/test_zero_loss.py): sink1 down, the active node's
    sync timer stopped, 30 messages with their 250, a power cut of the active node that also
    loses its disk at once; then count what its peer delivers, and bring a replacement in."""
    node = active()
    peer = other(node)
    wait_for(lambda: ready_backup(peer), 300, f"{peer} to be a ready BACKUP")
    lab("exec", node, "systemctl", "stop", "mailrelay-queue-sync.timer")
    wait_for(
        lambda: lab("exec", node, "systemctl", "is-active", "mailrelay-queue-sync.service",
                    check=False).strip() not in ("active", "activating", "deactivating"),
        60, "the sync under way to end",
    )  # fmt: skip
    lab("sink", "sink1", "stop")
    tag = f"benchdrill{int(time.time())}"
    sender = str(ROOT / "scripts" / "lib" / "sender.py")
    in_client("python3", sender, VIP, "30", tag, timeout=120)
    lab("crash", node, "--wipe")
    try:
        wait_for(lambda: vip_owner() == peer, 60, f"{peer} to take the VIP")
        lab("sink", "sink1", "start")

        def delivered() -> list[str]:
            lab("exec", peer, "postqueue", "-f", check=False)
            return [m for m in lab("sink", "sink1", "list").split() if f"<{tag}-" in m]

        with contextlib.suppress(SystemExit):
            wait_for(lambda: len(set(delivered())) >= 30, 180, "sink1 to receive all 30")
        ids = delivered()
    finally:
        lab("sink", "sink1", "start", check=False)
        lab("boot", node, timeout=1200)
    return {"sent": 30, "lost": 30 - len(set(ids)), "duplicates": len(ids) - len(set(ids))}


def node_cgroup(node: str) -> Path:
    return Path(f"/sys/fs/cgroup/unified/mrlab-{node}")


def node_cpu_seconds(node: str) -> float:
    """CPU time every process of a lab node has used so far (its cgroup's cpu.stat)."""
    for line in (node_cgroup(node) / "cpu.stat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "usage_usec":
            return int(value) / 1e6
    raise SystemExit(f"bench: no usage_usec in {node}'s cpu.stat")


def unprotected_total(node: str) -> int:
    """The node's count of mail accepted without a shadow copy (the milter's counters)."""
    raw = lab("exec", node, "cat", str(SHADOW_COUNTERS), check=False)
    try:
        return int(json.loads(raw).get("unprotected_total", 0))
    except (ValueError, AttributeError):
        return 0


def deliver_with_cpu(node: str, messages: int) -> dict[str, float]:
    """deliver(), and the CPU milliseconds per message each node spent meanwhile: the cost
    that throughput, on a machine this noisy, shows only through many rounds. With the mail
    accepted without a copy meanwhile: a copy not made costs less, and such a round flatters."""
    peer = other(node)
    unprotected = unprotected_total(node)
    before = {n: node_cpu_seconds(n) for n in (node, peer)}
    run = deliver(node, messages)
    spent = {n: (node_cpu_seconds(n) - before[n]) * 1000 / messages for n in (node, peer)}
    return run | {
        "active_cpu_ms": round(spent[node], 3),
        "peer_cpu_ms": round(spent[peer], 3),
        "unprotected": unprotected_total(node) - unprotected,
    }


@contextlib.contextmanager
def one_core_per_node(first: str) -> Iterator[None]:
    """Every thread of node `first` on CPU 0 and of the other node on CPU 1, as if each were a
    host of its own (what they fork later inherits it); the client and the sinks keep both.
    All threads get every CPU back after."""
    cpus = {first: {0}, other(first): {1}}

    def pin(node: str, allowed: set[int]) -> None:
        for threads in node_cgroup(node).rglob("cgroup.threads"):
            for tid in threads.read_text().split():
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.sched_setaffinity(int(tid), allowed)

    for node, allowed in cpus.items():
        pin(node, allowed)
    try:
        yield
    finally:
        for node in cpus:
            pin(node, set(range(os.cpu_count() or 1)))


LAYOUTS = ("shared cores", "one core per node")


def bench_shadow(quick: bool) -> None:
    """Throughput and end-of-data -> 250 with SHADOW_MODE off and prefer, alternating (off,
    prefer, prefer, off, ...) so that drift on this noisy machine falls on both; medians of the
    rounds. Twice: with both nodes on the same two cores (the lab as it is: the peer's
    receiver competes with the relay) and with one core per node (as two hosts). Then the
    zero-loss drill's lost count."""
    rounds = 2 if quick else 4
    messages = 1000 if quick else 5000
    probes = 100 if quick else 400
    modes = ("off", "prefer")
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    latencies: dict[tuple[str, str], list[float]] = {}
    with the_lab():
        node = active()
        try:
            with smtp_sink():
                for layout in LAYOUTS:
                    pinned = one_core_per_node(node) if layout != LAYOUTS[0] else None
                    with pinned or contextlib.nullcontext():
                        for round_ in range(rounds):
                            for mode in modes if round_ % 2 == 0 else modes[::-1]:
                                set_shadow_mode(node, mode)
                                key = (layout, mode)
                                latencies.setdefault(key, []).extend(data_to_250(probes))
                                runs.setdefault(key, []).append(deliver_with_cpu(node, messages))
                                print(
                                    f"bench: {layout}, round {round_ + 1} {mode}: {runs[key][-1]}",
                                    file=sys.stderr,
                                )
        finally:
            set_shadow_mode(node, "prefer")
        drilled = drill()
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for key in runs:
        # In milliseconds before the quantiles round: these are a few ms each.
        timing = quantiles([seconds * 1000 for seconds in latencies[key]])
        results[key] = {
            "accepted_per_s": round(statistics.median(r["accepted_per_s"] for r in runs[key]), 1),
            "delivered_per_s": round(statistics.median(r["delivered_per_s"] for r in runs[key]), 1),
            "data_to_250_p50_ms": round(timing["median"], 2),
            "data_to_250_p99_ms": round(timing["p99"], 2),
            "active_cpu_ms": round(statistics.median(r["active_cpu_ms"] for r in runs[key]), 3),
            "peer_cpu_ms": round(statistics.median(r["peer_cpu_ms"] for r in runs[key]), 3),
            "unprotected": sum(r["unprotected"] for r in runs[key]),
        }
    summary = {}
    for layout in LAYOUTS:
        off, prefer = results[(layout, "off")], results[(layout, "prefer")]
        summary[layout] = {
            "throughput_ratio": round(prefer["accepted_per_s"] / off["accepted_per_s"], 2),
            # What the nodes' CPU allows when it is the limit: off's CPU per message over
            # prefer's (the client and the sink spend the same in both).
            "cpu_ratio": round(
                (off["active_cpu_ms"] + off["peer_cpu_ms"])
                / (prefer["active_cpu_ms"] + prefer["peer_cpu_ms"]),
                2,
            ),
            "added_p50_ms": round(prefer["data_to_250_p50_ms"] - off["data_to_250_p50_ms"], 2),
            "added_p99_ms": round(prefer["data_to_250_p99_ms"] - off["data_to_250_p99_ms"], 2),
        }
    rows = [
        [layout, mode, r["accepted_per_s"], r["delivered_per_s"], r["data_to_250_p50_ms"],
         r["data_to_250_p99_ms"], r["active_cpu_ms"], r["peer_cpu_ms"], r["unprotected"]]
        for (layout, mode), r in results.items()
    ]  # fmt: skip
    goals = "; ".join(
        f"{layout}: prefer/off accepted = {s['throughput_ratio']}, nodes' CPU per message "
        f"off/prefer = {s['cpu_ratio']}, added p50 "
        f"{s['added_p50_ms']} ms, p99 {s['added_p99_ms']} ms"
        for layout, s in summary.items()
    )
    text = table(
        f"shadow copies: {rounds} rounds of {messages} messages (20 sessions) and {probes} "
        f"end-of-data -> 250 probes per mode and layout, medians; {goals} (goals: ratio >= "
        f"0.85, added p50 <= 5 ms, p99 <= 25 ms); drill: {drilled['lost']} of "
        f"{drilled['sent']} lost (goal 0), {drilled['duplicates']} duplicates",
        [
            "nodes on",
            "SHADOW_MODE",
            "accepted/s",
            "delivered/s",
            "p50 ms",
            "p99 ms",
            "active node CPU ms/msg",
            "peer CPU ms/msg",
            "accepted without a copy",
        ],
        rows,
    )
    chart = svg_bars(
        "shadow copies: throughput through the VIP",
        [f"{layout}, {mode}" for layout, mode in results],
        {
            "accepted": [r["accepted_per_s"] for r in results.values()],
            "delivered": [r["delivered_per_s"] for r in results.values()],
        },
        "msg/s",
    )
    save(
        "shadow",
        {
            "results": {f"{layout}/{mode}": r for (layout, mode), r in results.items()},
            "runs": {f"{layout}/{mode}": r for (layout, mode), r in runs.items()},
            "summary": summary,
            "drill": drilled,
        },
        chart,
        text,
    )
