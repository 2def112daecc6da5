""" "Test configuration" and "Apply changes" for a config version.

Both render the version here (pure, validated twice) and hand the map files to the privileged
agent, which builds and checks them against a scratch copy of main.cf (test) or also swaps the live
maps and reloads Postfix (apply). The diff against the live maps is computed here from the
applied version: rendering is deterministic, so that is exactly what Postfix runs with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app import audit
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable
from app.config import applied, service
from app.crypto import SecretBox
from app.db.tables import AuditLog
from app.messages import Message, message_of
from app.postfix import render


@dataclass
class TestReport:
    version: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    diff: str = ""
    # The agent could not be reached or hung up (e.g. restarted by an install): worth another
    # try in a moment, unlike a version that Postfix's checks refused.
    agent_unavailable: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


async def render_version(number: int, box: SecretBox) -> render.RenderedMaps:
    version = await service.get_version(number)
    return render.render(number, version["snapshot"], box.decrypt)


async def applied_maps(node_id: str, box: SecretBox) -> render.RenderedMaps | None:
    """The maps this node's Postfix runs with, or None when nothing was applied yet."""
    number = await applied.number_of(node_id)
    if not number:
        return None
    try:
        return await render_version(number, box)
    except (service.NotFound, render.RenderError):
        return None


async def _prepare(
    number: int, box: SecretBox, node_id: str
) -> tuple[TestReport, render.RenderedMaps | None]:
    report = TestReport(number)
    try:
        maps = await render_version(number, box)
    except render.RenderError as exc:
        report.problems = exc.problems
        return report, None
    report.diff = render.diff_maps(await applied_maps(node_id, box), maps)
    return report, maps


async def test_version(number: int, box: SecretBox, agent: AgentClient, node_id: str) -> TestReport:
    report, maps = await _prepare(number, box, node_id)
    if maps is None:
        return report
    try:
        answer = await agent.check(number, maps.files)
    except AgentUnavailable as exc:
        report.notes.append(
            Message("Postfix did not check this version: {error}", error=message_of(exc))
        )
        return report
    except AgentRefused as exc:
        report.problems.append(
            Message("the agent refused the check: {error}", error=message_of(exc))
        )
        return report
    report.problems.extend(answer["problems"])
    return report


async def apply_version(
    number: int, box: SecretBox, agent: AgentClient, node_id: str, actor: service.Actor
) -> TestReport:
    """Test, swap in, reload. On any failure the previous maps stay live and it is audited."""
    report, maps = await _prepare(number, box, node_id)
    if maps is not None:
        try:
            answer = await agent.apply(number, maps.files)
            report.problems.extend(answer["problems"])
        except AgentUnavailable as exc:
            report.problems.append(Message("not applied: {error}", error=message_of(exc)))
            report.agent_unavailable = True
        except AgentRefused as exc:
            report.problems.append(Message("not applied: {error}", error=message_of(exc)))
    if not report.ok:
        await audit.record(
            actor.username,
            "config.apply",
            f"version {number}",
            actor.source_ip,
            "failed",
            after={"node": node_id, "problems": report.problems},
        )
        return report
    async with AuditLog._meta.db.transaction():
        await applied.record_own(node_id, number)
        await audit.record(
            actor.username,
            "config.apply",
            f"version {number}",
            actor.source_ip,
            after={"node": node_id, "version": number},
        )
    return report
