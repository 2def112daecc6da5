""" "Test configuration" and "Apply changes" for a config version.

Test renders into a scratch directory and reports every problem with where it comes from, plus the
diff against what is live. Apply renders again and swaps the live map set atomically, then records
the applied version for this node. The Postfix issue adds postmap, `postfix check` and the reload
through the privileged agent behind these same two functions.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from app import audit
from app.config import service
from app.crypto import SecretBox
from app.db.tables import AppliedVersion
from app.postfix import render


@dataclass
class TestReport:
    version: int
    problems: list[str] = field(default_factory=list)
    diff: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


async def _render(number: int, box: SecretBox) -> render.RenderedMaps:
    version = await service.get_version(number)
    return render.render(number, version["snapshot"], box.decrypt)


async def test_version(number: int, box: SecretBox, maps_root: Path) -> TestReport:
    report = TestReport(number)
    try:
        maps = await _render(number, box)
    except render.RenderError as exc:
        report.problems = exc.problems
        return report
    scratch = Path(tempfile.mkdtemp(prefix="mailrelay-test-"))
    try:
        render.write_directory(maps, scratch / "maps")
    except OSError as exc:
        report.problems.append(f"cannot write the map files: {exc}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.diff = render.diff_against_live(maps, maps_root)
    return report


async def apply_version(
    number: int, box: SecretBox, maps_root: Path, node_id: str, actor: service.Actor
) -> TestReport:
    """Test, then swap in; on any problem nothing live changes and the failure is audited."""
    report = await test_version(number, box, maps_root)
    if report.ok:
        try:
            render.swap_live(await _render(number, box), maps_root)
        except OSError as exc:
            report.problems.append(f"cannot swap the live maps: {exc}")
    if not report.ok:
        await audit.record(
            actor.username,
            "config.apply",
            f"version {number}",
            actor.source_ip,
            "failed",
            after={"problems": report.problems},
        )
        return report
    async with AppliedVersion._meta.db.transaction():
        await AppliedVersion.raw(
            "INSERT INTO applied_versions (node_id, number, applied_at) VALUES ({}, {}, {}) "
            "ON CONFLICT (node_id) DO UPDATE SET number = EXCLUDED.number, "
            "applied_at = EXCLUDED.applied_at",
            node_id,
            number,
            dt.datetime.now(dt.UTC),
        )
        await audit.record(
            actor.username,
            "config.apply",
            f"version {number}",
            actor.source_ip,
            after={"node": node_id, "version": number},
        )
    return report


async def applied_versions() -> dict[str, dict]:
    return {row["node_id"]: row for row in await AppliedVersion.select()}
