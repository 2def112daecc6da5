"""Dashboard tiles and chart, recent rejects, and message tracking, from the log tables."""

from __future__ import annotations

import datetime as dt

from app import reports
from app.db.tables import LogMessage, MailLog, RejectionLog

NOW = dt.datetime.now(dt.UTC)
FIGURES = ("accepted", "delivered", "deferred", "bounced", "rejected")


def figures(page: str, period: str, column: str = "this") -> dict[str, int | None]:
    """One column of a traffic tile (this node, the peer, the total): a count per figure, None
    where the tile shows none."""
    tile = page.split(f'id="traffic-{period}"')[1].split("</section>")[0]
    found = {}
    for key in FIGURES:
        row = tile.split(f'<tr class="{key}">')[1].split("</tr>")[0]
        text = row.split(f'<td class="{column}">')[1].split("</td>")[0]
        found[key] = int(text.replace(",", "")) if text.replace(",", "").isdigit() else None
    return found


async def _logs() -> None:
    rows = []
    for i in range(6):
        rows.append(
            MailLog(
                at=NOW - dt.timedelta(minutes=10),
                node_id="a",
                queue_id=f"Q{i}AAAAAA",
                message_id=f"<m{i}@test>",
                sender="app@example.com",
                recipient=f"r{i}@dest.example",
                relay="198.18.5.21[198.18.5.21]:25",
                status="sent",
                dsn="2.0.0",
                size=100,
                client="198.18.5.30",
            )
        )
    rows.append(
        MailLog(
            at=NOW - dt.timedelta(hours=3),
            node_id="a",
            queue_id="QDEFAAAAA",
            message_id="<d@test>",
            sender="app@example.com",
            recipient="late@dest.example",
            relay="none",
            status="deferred",
            dsn="4.4.1",
        )
    )
    rows.append(
        MailLog(
            at=NOW - dt.timedelta(days=3),
            node_id="a",
            queue_id="QOLDAAAAA",
            message_id="<old@test>",
            sender="old@example.com",
            recipient="x@dest.example",
            status="bounced",
            dsn="5.1.1",
        )
    )
    await MailLog.insert(*rows)
    await RejectionLog.insert(
        RejectionLog(
            at=NOW - dt.timedelta(minutes=5),
            node_id="a",
            client="198.18.5.40",
            sender="app@blocked.example",
            recipient="x@dest.example",
            reason="Sender domain not allowed on this relay",
            code=553,
        )
    )
    await LogMessage.insert(
        LogMessage(
            node_id="a",
            queue_id="Q1AAAAAA",
            message_id="<m1@test>",
            sender="app@example.com",
            size=100,
            client="198.18.5.30",
            first_seen_at=NOW - dt.timedelta(minutes=11),
        )
    )


async def test_the_dashboard_is_honest_when_nothing_was_logged(login_as):
    client = await login_as("readonly")
    page = (await client.get("/")).text
    assert 'id="kpi-empty"' in page
    assert "No rejects recorded yet" in page
    assert "No traffic logged in the last 24 hours." in page
    assert "the privileged agent is not reachable" in page  # no Postfix here: said, not hidden


async def test_tiles_count_per_period(login_as):
    await _logs()
    client = await login_as("readonly")
    page = (await client.get("/")).text
    assert 'id="kpi-empty"' not in page
    assert figures(page, "1h") == {
        "accepted": 6,
        "delivered": 6,
        "deferred": 0,
        "bounced": 0,
        "rejected": 1,
    }
    assert figures(page, "24h") == {
        "accepted": 7,
        "delivered": 6,
        "deferred": 1,
        "bounced": 0,
        "rejected": 1,
    }
    assert figures(page, "retention")["accepted"] == 8
    assert figures(page, "retention")["bounced"] == 1
    assert page.count('<rect class="delivered"') == 1
    assert page.count('<rect class="deferred"') == 1
    assert "app@blocked.example" in page


async def test_recent_rejects_refresh_as_a_fragment(login_as):
    await _logs()
    client = await login_as("readonly")
    fragment = (await client.get("/dashboard/rejects", headers={"hx-request": "true"})).text
    assert fragment.startswith('<div id="recent-rejects"')
    assert "553 Sender domain not allowed on this relay" in fragment


async def test_tracking_finds_messages_and_shows_a_lifecycle(login_as):
    await _logs()
    client = await login_as("readonly")
    assert (await client.get("/tracking?recipient=r3@dest.example")).text.count("<tr class=") == 1
    by_domain = (await client.get("/tracking?sender=@example.com")).text
    assert by_domain.count('<tr class="sent"') == 6
    assert by_domain.count('<tr class="deferred"') == 1
    assert "Q2AAAAAA" in (await client.get("/tracking?message_id=<m2@test>")).text
    since = (NOW - dt.timedelta(days=1)).date().isoformat()
    recent = (await client.get(f"/tracking?sender=@example.com&since={since}")).text
    assert "QOLDAAAAA" not in recent and "QDEFAAAAA" in recent
    page = (await client.get("/tracking/Q1AAAAAA")).text
    assert "198.18.5.30" in page and "r1@dest.example" in page and "&lt;m1@test&gt;" in page


async def test_the_dashboard_says_how_much_mail_was_accepted_without_a_shadow_copy(
    app, login_as, monkeypatch
):
    """The agent here answers over its real socket protocol from a stand-in (no Postfix in this
    test); what the milter's counter really holds is proven in the lab (test_zero_loss)."""
    import time

    from app.agent.client import AgentClient
    from tests.clusterpeer import AGENT_STATUS, fake_agent

    client = await login_as("readonly")
    calm = AGENT_STATUS | {"shadow": AGENT_STATUS["shadow"] | {"unprotected_total": 0}}
    async with fake_agent({"status": calm}) as agent:
        monkeypatch.setattr(app.state, "agent", AgentClient(agent.path))
        page = (await client.get("/")).text
    line = page[page.index('id="shadow-status"') :].split("</p>")[0]
    assert "unprotected mail: 0" in line and "2 of the peer&#39;s held here" in line
    assert 'class="error"' not in line

    shadow = AGENT_STATUS["shadow"] | {"unprotected_total": 3, "last_unprotected_at": time.time()}
    async with fake_agent({"status": AGENT_STATUS | {"shadow": shadow}}) as agent:
        monkeypatch.setattr(app.state, "agent", AgentClient(agent.path))
        page = (await client.get("/")).text
    line = page[page.index('id="shadow-status"') :].split("</p>")[0]
    assert '<strong class="error">unprotected mail: 3</strong>' in line
    assert "the last 0 s ago" in line or "the last 1 s ago" in line
    assert "lost if this node and its disk are lost" in line


async def test_a_shadow_milter_that_does_not_answer_is_an_alert_on_the_dashboard(
    app, login_as, monkeypatch
):
    from app.agent.client import AgentClient
    from tests.clusterpeer import AGENT_STATUS, fake_agent

    client = await login_as("readonly")
    down = AGENT_STATUS | {"shadow": AGENT_STATUS["shadow"] | {"milter": "not answering"}}
    async with fake_agent({"status": down}) as agent:
        monkeypatch.setattr(app.state, "agent", AgentClient(agent.path))
        page = (await client.get("/")).text
        assert 'id="shadow-milter-down"' in page
        assert "Postfix accepts mail without a copy on the peer" in page
        up = AGENT_STATUS | {"shadow": AGENT_STATUS["shadow"] | {"milter": "answering"}}
        agent.results["status"] = up
        assert 'id="shadow-milter-down"' not in (await client.get("/")).text


async def test_the_dashboard_asks_the_agent_for_its_status_once_a_page(app, login_as, monkeypatch):
    """The queue panel and this node's traffic tile both show the agent's status; the agent runs
    one verb at a time, and each status runs Postfix's commands and counts the queue."""
    from app.agent.client import AgentClient
    from tests.clusterpeer import AGENT_STATUS, fake_agent

    client = await login_as("readonly")
    async with fake_agent({"status": AGENT_STATUS}) as agent:
        monkeypatch.setattr(app.state, "agent", AgentClient(agent.path))
        page = (await client.get("/")).text
    assert agent.verbs == ["status"]
    # Both parts of the page show what that one answer said.
    assert "Postfix 3.7.11" in page
    deferred_now = page.split('id="deferred-now"')[1].split("</table>")[0]
    assert '<td class="this">4</td>' in deferred_now


async def test_a_window_starts_at_the_five_minute_period_that_holds_its_start():
    """The last hour is the log_totals periods from the one holding `now - 1 h` on: 60 to 65
    minutes, whole periods only."""
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    first = (await MailLog.raw("SELECT log_totals_bucket({}) AS start", hour_ago))[0]["start"]
    await MailLog.insert(
        *(
            MailLog(at=at, node_id="a", queue_id=queue_id, sender="a@example.com",
                    recipient="r@dest.example", status="sent")
            for at, queue_id in [(first + dt.timedelta(seconds=1), "QIN"),
                                 (first - dt.timedelta(seconds=1), "QOUT")]
        )
    )  # fmt: skip
    hour, day, _ = await reports.kpi_tiles(14)
    assert (hour["period"], hour["accepted"], hour["delivered"]) == ("1h", 1, 1)
    assert (day["period"], day["accepted"], day["delivered"]) == ("24h", 2, 2)


def _hour(at: dt.datetime) -> dt.datetime:
    return at.replace(minute=0, second=0, microsecond=0)


async def test_the_chart_has_every_hour_of_the_last_day_with_its_own_figures():
    await _logs()
    before = _hour(dt.datetime.now(dt.UTC))
    hours = await reports.hourly_traffic()
    last = hours[-1]["hour"]
    assert last in (before, _hour(dt.datetime.now(dt.UTC)))
    assert [h["hour"] for h in hours] == [last - dt.timedelta(hours=23 - i) for i in range(24)]
    expected = {
        hour: dict.fromkeys(("delivered", "deferred", "bounced", "rejected"), 0)
        for hour in (h["hour"] for h in hours)
    }
    expected[_hour(NOW - dt.timedelta(minutes=10))]["delivered"] += 6
    expected[_hour(NOW - dt.timedelta(minutes=5))]["rejected"] += 1
    expected[_hour(NOW - dt.timedelta(hours=3))]["deferred"] += 1
    # The bounce of three days ago is outside the chart.
    assert {h["hour"]: {k: v for k, v in h.items() if k != "hour"} for h in hours} == expected


def test_chart_bars_stack_the_figures_of_an_hour_to_the_busiest_hours_height():
    start = dt.datetime(2026, 12, 7, 5, tzinfo=dt.UTC)
    quiet = {"delivered": 0, "deferred": 0, "bounced": 0, "rejected": 0}
    traffic = [{"hour": start + dt.timedelta(hours=i), **quiet} for i in range(4)]
    traffic[0] |= {"delivered": 30, "rejected": 10}
    traffic[3] |= {"delivered": 10, "deferred": 10, "bounced": 10, "rejected": 30}
    bars = reports.chart_bars(traffic, height=120)
    assert [(b.x, b.title, b.tick) for b in bars] == [
        (2, "05:00: 40", "05"),
        (22, "06:00: 0", ""),
        (42, "07:00: 0", ""),
        (62, "08:00: 60", "08"),
    ]
    # From the bottom (y=120) up, delivered first; an hour without mail draws nothing.
    assert bars[0].segments == (("delivered", 60, 60), ("rejected", 40, 20))
    assert bars[1].segments == bars[2].segments == ()
    assert bars[3].segments == (
        ("delivered", 100, 20),
        ("deferred", 80, 20),
        ("bounced", 60, 20),
        ("rejected", 0, 60),
    )
