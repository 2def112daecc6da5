"""`scripts/bench shadow-cpu`: the CPU each part of shadow copies spends per message, through
the real Postfix of the integration tests (tests/postfixhost.py: Postfix, the milter and the
shadow receiver in one network namespace, no lab), SHADOW_MODE off and prefer alternated.

Throughput on this shared machine moves by a factor of two from one round to the next; the CPU
a process spends per message moves far less, so this part tells what a change costs or saves
within minutes. With --before CHECKOUT the same rounds run on that checkout too, alternated
with this one (a worker process per checkout imports its own code).

CPU comes from /proc: each process's own time and, for Postfix's master, that of the children
it reaped (smtpd, cleanup, smtp...), so it needs no cgroup.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
PARTS = ("postfix", "milter", "receiver")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def own_seconds(pid: int) -> float:
    fields = _stat(pid)  # fields[11], [12]: utime, stime (after the state field)
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_seconds(pid: int) -> float:
    """A process with the children it reaped, and those still running."""
    fields = _stat(pid)
    total = sum(int(f) for f in fields[11:15]) / TICKS  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat(int(entry.name))[1]) == pid:
                total += own_seconds(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile: its time is in the parent's now
    return total


def worker(checkout: str, rounds: int, messages: int) -> None:
    """In a process of its own, with `checkout` first on sys.path: its Postfix, milter and
    receiver; prints one JSON line per round."""
    sys.path.insert(0, checkout)
    import asyncio

    from tests import postfixhost

    host = postfixhost.PostfixHost()
    host.start()
    sink = None
    try:
        asyncio.run(postfixhost.apply_one_route(host))
        host.stop_sink(1)  # Postfix's smtp-sink instead: the target is not the limit
        sink = subprocess.Popen(
            host.net("smtp-sink", "-u", "nobody", f"{postfixhost.SINK1}:25", "256"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # smtp-source cannot choose its address: the relay's own address answers from the
        # trusted client address instead.
        subprocess.run(
            host.net(
                "ip", "route", "replace", "local", postfixhost.RELAY, "dev", "lo",
                "table", "local", "src", postfixhost.CLIENT,
            ),
            check=True,
        )  # fmt: skip
        host.start_shadow("receiver")
        master = int((host.base / "spool" / "pid" / "master.pid").read_text().split()[0])
        for number in range(rounds):
            for mode in ("off", "prefer") if number % 2 == 0 else ("prefer", "off"):
                if mode == "off":
                    host.stop_shadow("milter")
                    host.shadow_mode = "off"
                    host._configure()
                    host.exec("postfix", "reload")
                else:
                    host.start_shadow("milter", mode)
                time.sleep(1)
                pids = {
                    "milter": host.shadow_processes.get("milter"),
                    "receiver": host.shadow_processes["receiver"],
                }
                before = {"postfix": tree_seconds(master)} | {
                    n: own_seconds(p.pid) for n, p in pids.items() if p
                }
                started = time.monotonic()
                subprocess.run(
                    host.net(
                        "smtp-source", "-s", "20", "-m", str(messages), "-l", "2048",
                        "-f", f"app@{postfixhost.ALLOWED}", "-t", "you@dest.example",
                        f"{postfixhost.RELAY}:25",
                    ),
                    check=True,
                    stdout=subprocess.DEVNULL,
                )  # fmt: skip
                seconds = time.monotonic() - started
                after = {"postfix": tree_seconds(master)} | {
                    n: own_seconds(p.pid) for n, p in pids.items() if p
                }
                cpu = {n: (after[n] - before[n]) * 1000 / messages for n in after}
                # A copy that failed costs less than one made: such a round would flatter.
                counters = host.shadow_counters
                unprotected = (
                    json.loads(counters.read_text()).get("unprotected_total", 0)
                    if counters.exists()
                    else 0
                )
                print(
                    json.dumps(
                        {"mode": mode, "accepted_per_s": messages / seconds}
                        | {f"{n}_ms": cpu.get(n, 0.0) for n in PARTS}
                        | {"unprotected_total": unprotected}
                    ),
                    flush=True,
                )
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait()
        host.stop()


def bench_shadow_cpu(quick: bool, before: Path | None = None) -> None:
    from bench import save, svg_bars, table

    rounds, messages, repeats = (2, 1000, 1) if quick else (2, 3000, 3)
    checkouts = {"now": ROOT} | ({"before": before.resolve()} if before else {})
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    # Each checkout's worker in turn, several times: drift falls on both alike.
    for _ in range(repeats):
        for name, checkout in checkouts.items():
            out = subprocess.run(
                [sys.executable, __file__, "worker", str(checkout), str(rounds), str(messages)],
                # The services start with `python -m`, which puts the working directory first
                # on sys.path: from this checkout's directory they ran this checkout's code.
                cwd=checkout,
                check=True,
                capture_output=True,
                text=True,
                timeout=1800,
            ).stdout
            for line in out.splitlines():
                if line.startswith("{"):
                    run = json.loads(line)
                    rows.setdefault((name, run["mode"]), []).append(run)
            print(f"bench: {name} done", file=sys.stderr)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for key, runs in rows.items():
        results[key] = {
            "rounds": len(runs),
            "accepted_per_s": round(statistics.median(r["accepted_per_s"] for r in runs), 1),
            **{f"{n}_ms": round(statistics.median(r[f"{n}_ms"] for r in runs), 3) for n in PARTS},
        }
        results[key]["total_ms"] = round(sum(results[key][f"{n}_ms"] for n in PARTS), 3)
    added = {
        name: round(results[(name, "prefer")]["total_ms"] - results[(name, "off")]["total_ms"], 3)
        for name in checkouts
    }
    text = table(
        f"shadow copies, CPU per message through the real Postfix (no lab): {rounds} rounds "
        f"of {messages} messages per mode, x{repeats} per checkout, alternated, medians; "
        f"added by prefer: "
        + ", ".join(f"{name} {ms} ms" for name, ms in added.items()),
        ["checkout", "SHADOW_MODE", "accepted/s", "Postfix ms", "milter ms", "receiver ms",
         "all three ms"],
        [
            [name, mode, r["accepted_per_s"], r["postfix_ms"], r["milter_ms"], r["receiver_ms"],
             r["total_ms"]]
            for (name, mode), r in sorted(results.items())
        ],
    )  # fmt: skip
    chart = svg_bars(
        "shadow copies: CPU ms per message",
        [f"{name}, {mode}" for name, mode in sorted(results)],
        {n: [results[k][f"{n}_ms"] for k in sorted(results)] for n in PARTS},
        "ms",
    )
    save(
        "shadow-cpu",
        {
            "results": {f"{n}/{m}": r for (n, m), r in results.items()},
            "runs": {f"{n}/{m}": r for (n, m), r in rows.items()},
            "added_ms": added,
        },
        chart,
        text,
    )


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
