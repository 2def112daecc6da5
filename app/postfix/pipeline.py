""" "Test configuration" and "Apply changes" for a config version.

Both render the version here (pure, validated twice) and hand the map files to the privileged
agent, which builds and checks them against a scratch copy of main.cf (test) or also swaps the live
maps and reloads Postfix (apply). The diff against the live maps is computed here from the
applied version: rendering is deterministic, so that is exactly what Postfix runs with.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from app import audit
from app.agent.client import AgentClient, AgentRefused, AgentUnavailable, Meanwhile
from app.agent.protocol import MapsAnswer
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


class AgentCall(Protocol):
    """The agent's check or apply (app/agent/client.py)."""

    def __call__(
        self, version: int, files: dict[str, bytes], *, meanwhile: Meanwhile | None = None
    ) -> Awaitable[MapsAnswer]: ...


# Renderings of recent versions: the one this node's Postfix runs, which every Apply diffs
# against, and the one last tested, which is usually applied next. At 100,000 sender domains a
# rendering takes 0.22 s. Keyed by number and checksum, since a version that a slave's pull
# rolled back leaves its number to the next one, and by the key that decrypts its passwords.
_RENDERED: OrderedDict[tuple[SecretBox, int, str], render.RenderedMaps] = OrderedDict()
_RENDERED_KEPT = 2


async def render_version(number: int, box: SecretBox) -> render.RenderedMaps:
    key = box, number, await service.version_checksum(number)
    maps = _RENDERED.get(key)
    if maps is None:
        version = await service.get_version(number)
        maps = render.render(number, version["snapshot"], box.decrypt)
        # Kept under the checksum of the row it was rendered from, read with it.
        key = box, number, version["checksum"]
        _RENDERED[key] = maps
    _RENDERED.move_to_end(key)
    while len(_RENDERED) > _RENDERED_KEPT:
        _RENDERED.popitem(last=False)
    return maps


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
) -> tuple[TestReport, render.RenderedMaps | None, render.RenderedMaps | None]:
    """The version's maps (None when they cannot be rendered: `problems` says why) and the
    live ones, to diff against."""
    report = TestReport(number)
    try:
        maps = await render_version(number, box)
    except render.RenderError as exc:
        report.problems = exc.problems
        return report, None, None
    return report, maps, await applied_maps(node_id, box)


async def on_agent(
    report: TestReport,
    maps: render.RenderedMaps,
    live: render.RenderedMaps | None,
    call: AgentCall,
) -> MapsAnswer:
    """`call` (the agent's check or apply) with `maps`; the diff against `live` lands in
    `report`, worked out while the agent builds the maps in its own process. It starts once
    the maps are sent: beside the sending it held the event loop back (0.03 s of an Apply at
    100,000 sender domains). When the agent cannot be reached it is worked out all the same."""
    started = False

    async def diff() -> None:
        nonlocal started
        started = True
        report.diff = await asyncio.to_thread(render.diff_maps, live, maps)

    try:
        return await call(maps.version, maps.files, meanwhile=diff)
    finally:
        if not started:
            await diff()


async def test_version(number: int, box: SecretBox, agent: AgentClient, node_id: str) -> TestReport:
    report, maps, live = await _prepare(number, box, node_id)
    if maps is None:
        return report
    try:
        answer = await on_agent(report, maps, live, agent.check)
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
    report, maps, live = await _prepare(number, box, node_id)
    if maps is not None:
        try:
            answer = await on_agent(report, maps, live, agent.apply)
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
