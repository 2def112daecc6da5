"""The GUI always answers, over the app's real HTTP stack and the real PostgreSQL: a failed
action's message where the user acted (HTMX and plain forms), only the actions that can work
offered, and every list that can grow paged and sorted (the queue beyond 5,000 messages too).
Agents are fakes on unix sockets (tests/clusterpeer.py)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from app.agent.client import AgentClient
from app.auth import tokens
from app.config import service
from app.db.tables import AuditLog, MailLog, RejectionLog
from tests.clusterpeer import Refusal, fake_agent
from tests.conftest import csrf, make_user

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
    message = answer.text[answer.text.index('id="action-error"') :].split("</p>")[0]
    assert "there is no message 4dQ00009999 in the queue" in message


# -- every list that can grow: pages of 50, sortable columns, filters kept ----------------------


def _column(page: str, table_id: str, index: int) -> list[str]:
    """The text of column `index` of each body row of the table inside `table_id`."""
    table = page[page.index(f'id="{table_id}"') :]
    body = table[table.index("<tbody>") : table.index("</tbody>")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows]
    return [re.sub(r"<[^>]+>", "", c[index]).strip() for c in cells if len(c) > index]


async def test_the_audit_log_pages_and_sorts_with_its_filters(login_as):
    at = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    await AuditLog.insert(
        *[
            AuditLog(
                at=at + dt.timedelta(minutes=n),
                actor=f"actor-{n % 7}",
                action="domain.add" if n % 2 else "route.set",
                target=f"t{n:03d}",
                outcome="ok",
            )
            for n in range(120)
        ]
    )
    admin = await login_as("admin")
    first = (await admin.get("/audit?action=domain", headers=HTMX)).text
    targets = _column(first, "audit-table", 3)
    assert targets == [f"t{n:03d}" for n in range(119, 19, -2)]  # newest first, 50 a page
    assert 'href="/audit?action=domain&amp;sort=at&amp;dir=desc&amp;page_no=2"' in first
    second = (await admin.get("/audit?action=domain&page_no=2", headers=HTMX)).text
    assert _column(second, "audit-table", 3) == [f"t{n:03d}" for n in range(19, 0, -2)]
    by_actor = (await admin.get("/audit?action=domain&sort=actor&dir=asc")).text
    actors = _column(by_actor, "audit-table", 1)
    assert actors == sorted(actors) and actors[0] == "actor-0" and len(actors) == 50


async def test_message_tracking_pages_and_sorts_its_results(login_as):
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    await MailLog.insert(
        *[
            MailLog(
                at=at + dt.timedelta(seconds=n),
                node_id="a",
                queue_id=f"Q{n:04d}",
                sender="app@example.com",
                recipient=f"r{(n * 37) % 101:03d}@dest.example",
                status="sent",
            )
            for n in range(75)
        ]
    )
    readonly = await login_as("readonly")
    first = (await readonly.get("/tracking?sender=@example.com", headers=HTMX)).text
    assert _column(first, "tracking-results", 1)[:2] == ["Q0074", "Q0073"]
    assert len(_column(first, "tracking-results", 1)) == 50
    last = (await readonly.get("/tracking?sender=@example.com&page_no=2", headers=HTMX)).text
    assert _column(last, "tracking-results", 1)[-1] == "Q0000"
    assert len(_column(last, "tracking-results", 1)) == 25 and 'rel="next"' not in last
    by_recipient = await readonly.get("/tracking?sender=@example.com&sort=recipient&dir=asc")
    recipients = _column(by_recipient.text, "tracking-results", 3)
    assert recipients == sorted(recipients) and recipients[0] == "r000@dest.example"


async def test_the_rejection_log_pages_and_sorts(login_as):
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    await RejectionLog.insert(
        *[
            RejectionLog(
                at=at + dt.timedelta(seconds=n),
                node_id="a" if n % 3 else "b",
                client=f"198.51.100.{n}",
                sender="spam@example.org",
                recipient="x@example.com",
                reason="Relay access denied",
                code=554,
            )
            for n in range(60)
        ]
    )
    readonly = await login_as("readonly")
    page = (await readonly.get("/rejects")).text
    assert _column(page, "rejects-table", 2)[0] == "198.51.100.59"
    assert "Page 1 of 2" not in page  # the log is not counted: a next page is offered
    assert 'rel="next"' in page
    rest = (await readonly.get("/rejects?page_no=2")).text
    assert len(_column(rest, "rejects-table", 2)) == 10
    by_node = (await readonly.get("/rejects?sort=node_id&dir=desc", headers=HTMX)).text
    assert "<html" not in by_node
    assert _column(by_node, "rejects-table", 1)[:20] == ["b"] * 20
    assert _column(by_node, "rejects-table", 1)[20] == "a"


async def test_domains_networks_and_config_versions_page_and_sort(login_as):
    actor = service.Actor("test")
    for n in range(55):
        await service.add_domain(actor, f"d{n:02d}.example", comment=f"c{54 - n:02d}")
    for n in range(52):
        await service.add_network(actor, f"10.{n}.0.0/16")
    await service.add_network(actor, "2001:db8::/48")
    readonly = await login_as("readonly")
    domains = (await readonly.get("/domains")).text
    assert _column(domains, "domains", 0)[:2] == ["d00.example", "d01.example"]
    assert "Page 1 of 2" in domains
    by_comment = (await readonly.get("/domains?sort=comment&dir=desc&page_no=2")).text
    assert _column(by_comment, "domains", 0) == [f"d{n:02d}.example" for n in range(50, 55)]
    networks = (await readonly.get("/networks?page_no=2")).text
    # In address order, IPv4 before IPv6: 10.9 before 10.10, the IPv6 network last.
    assert _column(networks, "networks", 0) == ["10.50.0.0/16", "10.51.0.0/16", "2001:db8::/48"]
    assert _column((await readonly.get("/networks")).text, "networks", 0)[9:11] == [
        "10.9.0.0/16",
        "10.10.0.0/16",
    ]
    versions = (await readonly.get("/versions")).text
    numbers = _column(versions, "versions", 2)
    assert numbers[0] == "108" and len(numbers) == 50 and "Page 1 of" not in versions
    oldest = (await readonly.get("/versions?sort=number&dir=asc")).text
    assert _column(oldest, "versions", 2)[:3] == ["1", "2", "3"]


async def test_users_and_tokens_page_and_sort(login_as):
    for n in range(52):
        await make_user(f"user{n:02d}", "readonly" if n % 2 else "operator")
    for n in range(51):
        await tokens.create(f"token{n:02d}", "read", "test")
    admin = await login_as("admin")
    users = (await admin.get("/users?sort=role&dir=desc")).text
    assert _column(users, "users", 0)[0] == "admin"  # the first admin account or admin-user
    assert "Page 1 of 2" in users
    by_name = (await admin.get("/users?page_no=2")).text
    assert _column(by_name, "users", 0)[-1] == "user51"
    token_page = (await admin.get("/tokens?sort=name&dir=desc")).text
    assert _column(token_page, "tokens", 0)[0] == "token50"
    assert "Page 1 of 2" in token_page


# -- actions offered only where they can work -----------------------------------------------------


async def test_test_and_apply_and_rollback_are_offered_only_where_they_can_work(login_as):
    operator = await login_as("operator")
    # No version yet: Test and Apply could only answer "add a sender domain first".
    empty = (await operator.get("/versions")).text
    assert 'id="test-config"' not in empty and 'id="apply-config"' not in empty
    actor = service.Actor("test")
    await service.add_domain(actor, "one.example")
    await service.add_domain(actor, "two.example")
    versions = (await operator.get("/versions")).text
    assert 'id="test-config"' in versions and 'id="apply-config"' in versions
    assert 'class="htmx-indicator busy" role="status">Testing…' in versions
    # Rolling back to the current version would change nothing; to an older one it can.
    assert "/versions/2/rollback" not in (await operator.get("/versions/2")).text
    assert "/versions/1/rollback" in (await operator.get("/versions/1")).text


async def test_deleting_what_is_gone_already_shows_the_list_with_the_message(login_as):
    await service.add_domain(service.Actor("test"), "kept.example")
    operator = await login_as("operator")
    await operator.get("/domains")
    token = {"_csrf_token": csrf(operator)["x-csrftoken"]}
    page = await operator.post("/domains/gone.example/delete", data=token)
    assert page.status_code == 404
    assert "<html" in page.text and "kept.example" in page.text and 'id="domain-form"' in page.text
    message = page.text[page.text.index('id="action-error"') :].split("</p>")[0]
    assert "There is no sender domain gone.example." in message
    fragment = await operator.post(
        "/networks/delete", data={"cidr": "192.0.2.0/24"} | token, headers=HTMX
    )
    assert fragment.status_code == 404 and "<html" not in fragment.text
    assert "The network 192.0.2.0/24 is not trusted." in fragment.text
    routes = await operator.post("/routes/kept.example/delete", data=token)
    assert routes.status_code == 404 and 'id="routes"' in routes.text
    assert "The sender domain kept.example has no route." in routes.text
