"""The GUI always answers, over the app's real HTTP stack and the real PostgreSQL: a failed
action's message where the user acted (HTMX and plain forms), only the actions that can work
offered, and every list that can grow paged and sorted (the queue beyond 5,000 messages too).
Agents are fakes on unix sockets (tests/clusterpeer.py)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from app.agent.client import AgentClient
from tests.clusterpeer import Refusal, fake_agent
from tests.conftest import csrf

HTMX = {"hx-request": "true"}
NOW = int(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp())


def _entry(n: int, queue_name: str = "deferred") -> dict:
    return {
        "queue_id": f"4dQ{n:08d}",
        "queue_name": queue_name,
        "arrival_time": NOW + n,
        "message_size": 1000 + (n * 7919) % 5000,
        "sender": f"s{n:05d}@example.com",
        "recipients": [{"address": f"r{n}@dest.example", "delay_reason": "connection refused"}],
    }


@pytest.fixture
async def queued(app, monkeypatch):
    """An agent whose queue holds 5,200 deferred messages and one on hold; queue actions on
    the held one are refused as Postfix would refuse them."""
    entries = [_entry(n) for n in range(5200)] + [_entry(9999, "hold")]

    def refuse(args):
        return Refusal(f"there is no message {args['queue_id']} in the queue")

    verbs = {"queue_list": lambda a: entries[: a["limit"]], "hold": refuse, "release": refuse}
    async with fake_agent(verbs) as agent:
        monkeypatch.setattr(app.state, "agent", AgentClient(agent.path))
        yield entries


def _queue_ids(page: str) -> list[str]:
    return re.findall(r'<tr id="q-(\w+)">', page)


async def test_the_queue_page_lists_more_than_five_thousand_messages_a_page_at_a_time(
    login_as, queued
):
    operator = await login_as("operator")
    first = (await operator.get("/queue")).text
    assert "5201 of 5201 messages match" in first
    assert "Page 1 of 105" in first
    assert _queue_ids(first) == [f"4dQ{n:08d}" for n in range(50)]  # oldest first
    before_last = (await operator.get("/queue?page_no=104")).text
    assert _queue_ids(before_last) == [f"4dQ{n:08d}" for n in range(5150, 5200)]
    last = (await operator.get("/queue?page_no=105")).text
    assert _queue_ids(last) == ["4dQ00009999"]
    assert 'rel="next"' not in last and 'rel="prev"' in last


async def test_the_queue_sorts_by_a_column_and_keeps_its_filters_on_every_page(login_as, queued):
    operator = await login_as("operator")
    page = (await operator.get("/queue?sender=s0&sort=size&dir=desc", headers=HTMX)).text
    assert "<html" not in page and 'id="queue-table"' in page
    sizes = [int(s) for s in re.findall(r"</td><td>(\d+)</td>\s*<td>s", page)]
    assert len(sizes) == 50 and sizes == sorted(sizes, reverse=True)
    assert max(sizes) == max(e["message_size"] for e in queued if e["sender"].startswith("s0"))
    # The next page's link keeps the filter and the order.
    assert 'href="/queue?sender=s0&amp;sort=size&amp;dir=desc&amp;page_no=2"' in page
    # The same column again turns the order round.
    assert 'href="/queue?sender=s0&amp;sort=size&amp;dir=asc&amp;page_no=1"' in page
    # An unknown column falls back to the list's own order.
    assert _queue_ids((await operator.get("/queue?sort=nope")).text)[0] == "4dQ00000000"


async def test_each_message_offers_only_the_actions_that_can_work_on_it(login_as, queued):
    page = (await (await login_as("operator")).get("/queue?queue_name=hold")).text
    row = page[page.index('<tr id="q-4dQ00009999">') :].split("</tr>")[0]
    assert "/queue/4dQ00009999/release" in row and "/queue/4dQ00009999/delete" in row
    assert "/hold" not in row and "/flush" not in row and "/requeue" not in row
    page = (await (await login_as("admin")).get("/queue?sender=s00001@")).text
    row = page[page.index('<tr id="q-4dQ00000001">') :].split("</tr>")[0]
    assert "/hold" in row and "/flush" in row and "/release" not in row


async def test_a_failed_queue_action_answers_htmx_with_its_message_alone(login_as, queued):
    operator = await login_as("operator")
    await operator.get("/queue")
    answer = await operator.post("/queue/4dQ00009999/release", headers=csrf(operator) | HTMX)
    assert answer.status_code == 409
    assert "<html" not in answer.text
    assert 'class="error request-error-message"' in answer.text
    assert "there is no message 4dQ00009999 in the queue" in answer.text


async def test_a_failed_queue_action_without_javascript_shows_the_queue_with_the_message(
    login_as, queued
):
    operator = await login_as("operator")
    await operator.get("/queue")
    answer = await operator.post(
        "/queue/4dQ00009999/release", data={"_csrf_token": csrf(operator)["x-csrftoken"]}
    )
    assert answer.status_code == 409
    assert "<html" in answer.text and 'id="queue-table"' in answer.text
    message = answer.text[answer.text.index('id="queue-action-error"') :].split("</p>")[0]
    assert "there is no message 4dQ00009999 in the queue" in message
