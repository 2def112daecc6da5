"""The benchmark parts behind scripts/bench. Each part measures ours beside the plain tool in
the same run, prints a table, and writes bench-results/<part>.json and an SVG bar chart."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.platform()}"


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        title,
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in cells[1:]
    ]
    return "\n".join(lines)


def svg_bars(title: str, labels: list[str], series: dict[str, list[float]], unit: str) -> str:
    """A grouped bar chart, one group per label, one bar per series."""
    colours = ["#0b5cad", "#d4a72c", "#18794e", "#b42318"]
    peak = max((v for values in series.values() for v in values), default=1) or 1
    group_w, bar_w, height = 40 + 24 * len(series), 22, 200
    width = 60 + group_w * len(labels)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 80}">',
        f'<text x="10" y="18" font-size="14">{title}</text>',
    ]
    for gi, label in enumerate(labels):
        x0 = 50 + gi * group_w
        for si, (name, values) in enumerate(series.items()):
            value = values[gi]
            h = value / peak * height
            x = x0 + si * (bar_w + 2)
            parts.append(
                f'<rect x="{x}" y="{30 + height - h:.1f}" width="{bar_w}" '
                f'height="{h:.1f}" fill="{colours[si % 4]}"><title>{name}: {value:.3g} '
                f"{unit}</title></rect>"
            )
            parts.append(
                f'<text x="{x}" y="{26 + height - h:.1f}" font-size="9">{value:.3g}</text>'
            )
        parts.append(f'<text x="{x0}" y="{height + 48}" font-size="11">{label}</text>')
    for si, name in enumerate(series):
        parts.append(
            f'<rect x="{10 + si * 160}" y="{height + 60}" width="10" height="10" '
            f'fill="{colours[si % 4]}"/><text x="{24 + si * 160}" y="{height + 69}" '
            f'font-size="11">{name} ({unit})</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def save(part: str, data: dict[str, Any], chart: str, text: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    data["machine"] = machine()
    data["when"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    (RESULTS / f"{part}.json").write_text(json.dumps(data, indent=2))
    (RESULTS / f"{part}.svg").write_text(chart)
    print(text)
    print(f"\nmachine: {data['machine']}\nwritten: bench-results/{part}.json, {part}.svg")


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# -- apply ------------------------------------------------------------------------------------


def snapshot(domains: int) -> dict[str, Any]:
    return {
        "sender_domains": [
            {
                "name": f"d{i}.example",
                "comment": "",
                "route": {
                    "host": f"relay{i % 50}.example.net",
                    "port": 25,
                    "tls_mode": "may",
                    "auth_user": None,
                    "auth_password_enc": None,
                },
            }
            for i in range(domains)
        ],
        "trusted_networks": [{"cidr": "198.18.5.30/32", "comment": ""}],
    }


APPLY_RUNS = 3
MAPS = ("sender_access", "sender_relayhost", "tls_policy", "sasl_passwd")


def _apply_goal(size: int, whole: float, median: dict[str, float]) -> str:
    """The issue's goals: an absolute one for a small configuration, one relative to plain
    postmap and a reload for a large one; other sizes have none."""
    if size == 100:
        return "yes" if whole <= 0.5 else "no"
    if size == 100_000:
        return "yes" if whole <= 2 * median["postmap"] + median["reload"] else "no"
    return "-"


def bench_apply(quick: bool) -> None:
    """Per size, three rounds of (an operator's Apply of one more sender domain: render, then
    the agent's apply while the diff against the live maps is worked out; plain postmap of the
    same four files; one `postfix reload`), alternating within the round; medians. The diff is
    also timed alone, to show what the Apply overlaps. Not timed: reading the two versions
    from the database (the live one's rendering is kept from its own Apply, as the web app
    keeps it); the version rendered is parsed afresh from JSON, as that read gives it."""
    from app.agent.client import AgentClient
    from app.postfix import pipeline, render
    from tests.postfixhost import PostfixHost, available

    reason = available()
    if reason:
        sys.exit(f"bench apply needs a real Postfix: {reason}")
    sizes = [100, 1000] if quick else [100, 10_000, 100_000]
    host = PostfixHost().start()
    rows, data = [], {"sizes": sizes, "runs": APPLY_RUNS, "results": []}
    version = 0
    try:
        agent = AgentClient(host.agent_socket, timeout=1800)
        for size in sizes:
            snap = snapshot(size)
            runs: dict[str, list[float]] = {
                "render": [], "apply": [], "diff": [], "postmap": [], "reload": []
            }  # fmt: skip
            # The size goes live first, untimed: each round then adds one domain to it.
            version += 1
            live = render.render(version, snap, lambda s: s)
            asyncio.run(agent.apply(version, live.files))
            for _ in range(APPLY_RUNS):
                version += 1
                snap["sender_domains"].append(
                    {**snap["sender_domains"][0], "name": f"v{version}.example"}
                )
                # As read from the database: new objects, whose string hashes nobody computed.
                stored = json.loads(json.dumps(snap))
                started = time.perf_counter()
                maps = render.render(version, stored, lambda s: s)
                runs["render"].append(time.perf_counter() - started)
                report = pipeline.TestReport(version)
                started = time.perf_counter()
                answer = asyncio.run(pipeline.on_agent(report, maps, live, agent.apply))
                runs["apply"].append(time.perf_counter() - started)
                if answer["problems"] or f"+v{version}.example\tOK" not in report.diff:
                    sys.exit(f"apply failed: {answer['problems']} {report.diff[:2000]}")
                runs["diff"].append(timed(functools.partial(render.diff_maps, live, maps)))
                live = maps
                plain = Path(tempfile.mkdtemp(prefix="bench-postmap-"))
                render.write_directory(maps, plain / "maps")
                # The same postmap binary and main.cf, inside the relay's namespace.
                runs["postmap"].append(
                    timed(
                        lambda plain=plain: [
                            host.exec("postmap", f"hash:{plain / 'maps' / name}") for name in MAPS
                        ]
                    )
                )
                shutil.rmtree(plain, ignore_errors=True)
                runs["reload"].append(timed(lambda: host.exec("postfix", "reload")))
            median = {name: statistics.median(each) for name, each in runs.items()}
            whole = median["render"] + median["apply"]
            rows.append(
                [
                    size,
                    f"{median['render']:.3f}",
                    f"{median['apply']:.3f}",
                    f"{median['diff']:.3f}",
                    f"{median['postmap']:.3f}",
                    f"{median['reload']:.3f}",
                    f"{whole:.3f}",
                    _apply_goal(size, whole, median),
                ]
            )
            data["results"].append(
                {
                    "domains": size,
                    "render_s": median["render"],
                    "agent_apply_s": median["apply"],
                    "diff_alone_s": median["diff"],
                    "plain_postmap_s": median["postmap"],
                    "reload_s": median["reload"],
                    "runs_s": runs,
                }
            )
    finally:
        host.stop()
    text = table(
        f"Apply of one more sender domain: render, then the agent's apply (checks, postmap, "
        f"swap, reload) with the diff against the live maps worked out meanwhile; the diff "
        f"alone; plain postmap of the same four maps and one postfix reload; medians of "
        f"{APPLY_RUNS} alternated runs; goals for the whole Apply (render + agent with diff): "
        "<= 0.5 s at 100 domains, <= 2 x postmap + reload at 100,000",
        ["sender domains", "render s", "agent apply + diff s", "diff alone s", "plain postmap s",
         "reload s", "whole Apply s", "within goal"],
        rows,
    )  # fmt: skip
    chart = svg_bars(
        "Apply time",
        [str(s) for s in sizes],
        {
            "render": [r["render_s"] for r in data["results"]],
            "agent apply + diff": [r["agent_apply_s"] for r in data["results"]],
            "plain postmap": [r["plain_postmap_s"] for r in data["results"]],
        },
        "s",
    )
    save("apply", data, chart, text)


# -- logs -------------------------------------------------------------------------------------


def bench_logs(quick: bool, before: Path | None = None) -> None:
    """Ingestion into PostgreSQL beside pflogsumm on the same log (scripts/bench_ingest.py)."""
    import bench_ingest

    bench_ingest.bench_logs(quick, before)


def bench_freshness(quick: bool, before: Path | None = None) -> None:
    """Postfix log line -> message tracking at 300 messages/s (scripts/bench_ingest.py)."""
    import bench_ingest

    bench_ingest.bench_freshness(quick, before)


# -- gui --------------------------------------------------------------------------------------


def bench_gui(quick: bool, before: Path | None = None) -> None:
    """Dashboard, tracking and audit latency at 10M mail_logs rows (scripts/bench_gui.py)."""
    import bench_gui

    bench_gui.bench_gui(quick, before)


def bench_gui_layouts(quick: bool) -> None:
    """The gui pages on day partitions and on plain tables, side by side (bench_layouts.py)."""
    import bench_layouts

    bench_layouts.bench_gui_layouts(quick)


def bench_retention(quick: bool) -> None:
    """Retention of the oldest 7 of 30 days by partition DROP against batched DELETE, at 10M
    mail_logs rows (scripts/bench_retention.py)."""
    import bench_retention

    bench_retention.bench_retention(quick)


def bench_shadow_cpu(quick: bool, before: Path | None = None) -> None:
    """CPU per message of Postfix, the shadow milter and the receiver, off against prefer,
    through the real Postfix without the lab (scripts/bench_shadow_cpu.py)."""
    import bench_shadow_cpu

    bench_shadow_cpu.bench_shadow_cpu(quick, before)


def lab_part(name: str) -> Callable[[bool], None]:
    """A part that needs the two-node lab (scripts/bench_lab.py)."""

    def run(quick: bool) -> None:
        import bench_lab

        getattr(bench_lab, f"bench_{name}")(quick)

    return run


PARTS = {
    "apply": bench_apply,
    "logs": bench_logs,
    "freshness": bench_freshness,
    "gui": bench_gui,
    "gui-layouts": bench_gui_layouts,
    "retention": bench_retention,
    "shadow-cpu": bench_shadow_cpu,
    **{
        name: lab_part(name) for name in ("failover", "sync", "lag", "throughput", "pull", "shadow")
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--quick", action="store_true", help="small sizes, a short run")
    parser.add_argument(
        "--before",
        type=Path,
        metavar="CHECKOUT",
        help="logs, freshness, gui, shadow-cpu: also measure this checkout (e.g. /work/main)",
    )
    args = parser.parse_args()
    with_before = {
        "logs": bench_logs,
        "freshness": bench_freshness,
        "gui": bench_gui,
        "shadow-cpu": bench_shadow_cpu,
    }
    if args.before is not None:
        if args.part not in with_before:
            parser.error(f"--before applies to these parts only: {', '.join(with_before)}")
        with_before[args.part](args.quick, args.before)
    else:
        PARTS[args.part](args.quick)


if __name__ == "__main__":
    main()
