"""The rows ingestion writes for a log, compared with the rows the ingestion of December 2026
(before its speed-up) wrote for the same log: any change to parsing or writing that loses,
adds or alters a row fails here. The expected rows are in data/ingest_rows.json, times as
seconds after tests.loggen.START; `UPDATE_INGEST_ROWS=1` rewrites that file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.db.tables import MailLog
from app.jobs import ingest
from tests.integration.test_log_totals import LATEST_KEPT, LATEST_RECOUNT, latest
from tests.loggen import START, line, stamp, traffic

EXPECTED = Path(__file__).with_name("data") / "ingest_rows.json"


def iso(at: dt.datetime, service: str, text: str) -> str:
    return f"{at.isoformat(timespec='microseconds')} relay-a postfix/{service}[77]: {text}\n"


def odd_lines() -> bytes:
    """Shapes the generated traffic has not: pickup, qmqpd, SASL, a queued reject, milter,
    a probe, RFC 3339 stamps, a second Postfix instance, bytes that are not UTF-8, noise."""
    t = START + dt.timedelta(hours=5)
    s = dt.timedelta(seconds=1)
    text = "".join(
        [
            line(t, "pickup", "4dLq3B0001z1bc: uid=0 from=<Root@Host.example>"),
            line(t, "cleanup", "4dLq3B0001z1bc: message-id=<cron.1@host.example>"),
            line(
                t,
                "qmgr",
                "4dLq3B0001z1bc: from=<root@host.example>, size=640, nrcpt=1 (queue active)",
            ),
            line(
                t + s,
                "local",
                "4dLq3B0001z1bc: to=<Ops@Host.example>, orig_to=<root>, "
                "relay=local, delay=0.02, delays=0.01/0/0/0.01, dsn=2.0.0, status=sent "
                "(delivered to mailbox)",
            ),
            iso(
                t,
                "smtpd",
                "4dLq3B0002z2bc: client=sub.example.com[198.18.0.50]:41234, "
                "sasl_method=PLAIN, sasl_username=app@example.com",
            ),
            iso(t, "cleanup", "4dLq3B0002z2bc: message-id=4711@sub"),
            iso(
                t,
                "qmgr",
                "4dLq3B0002z2bc: from=<app@example.com>, size=9000, nrcpt=2 (queue active)",
            ),
            iso(
                t + s,
                "smtp",
                "4dLq3B0002z2bc: to=<one@example.org>, relay=mx.example.org"
                "[203.0.113.5]:25, conn_use=3, delay=1.5, delays=0.1/0.2/0.3/0.9, "
                "tls=TLSv1.3, dsn=2.0.0, status=sent (250 ok)",
            ),
            iso(
                t + s,
                "smtp",
                "4dLq3B0002z2bc: to=<two@example.org>, relay=none, delay=1, "
                "delays=1/0/0/0, dsn=5.4.4, status=bounced (Host not found)",
            ),
            iso(
                t + s,
                "smtp",
                "4dLq3B0002z2bc: to=<probe@example.org>, relay=none, "
                "delay=1, delays=1/0/0/0, dsn=2.0.0, status=deliverable (probe)",
            ),
            line(t, "qmqpd", "C0FFEE99: client=q.example.com[198.18.0.60]"),
            line(
                t + s,
                "error",
                "C0FFEE99: to=<x@local.invalid>, relay=none, delay=0.1, "
                "delays=0.1/0/0/0, dsn=5.0.0, status=bounced (mail for local.invalid loops)",
            ),
            line(
                t,
                "smtpd",
                "4dLq3B0003z3bc: reject: END-OF-MESSAGE from a.example[198.18.0.7]: "
                "550 5.7.1 Content rejected; from=<A@Example.com> to=<b@example.org> "
                "proto=ESMTP helo=<a>",
            ),
            line(
                t,
                "smtpd",
                "4dLq3B0004z4bc: milter-reject: END-OF-MESSAGE from "
                "b.example[198.18.0.8]: 5.7.1 Spam; from=<c@example.com> proto=ESMTP "
                "helo=<b>",
            ),
            line(
                t,
                "smtpd",
                "NOQUEUE: reject: CONNECT from c.example[198.18.0.9]: 554 5.7.1 "
                "<c.example[198.18.0.9]>: Client host rejected: Access denied; proto=SMTP",
            ),
            line(
                t,
                "smtpd",
                "NOQUEUE: reject: RCPT from d.example[198.18.0.10]: 450 4.7.1 "
                "Service unavailable; Client host [198.18.0.10] blocked using zen; "
                "from=<d@example.com> to=<e@example.org> proto=ESMTP helo=<d>",
            ),
            f"{stamp(START)} relay-a postfix-out/smtp[9]: 4dLq3B0005z5bc: "
            "to=<out@example.org>, relay=none, delay=3, delays=3/0/0/0, dsn=4.4.1, "
            "status=deferred (connect timed out)\n",
            line(t, "postscreen", "CONNECT from [198.18.0.11]:5555 to [198.18.0.100]:25"),
            "not a log line at all\n",
            line(t, "master", "daemon started -- version 3.7.11, configuration /etc/postfix"),
        ]
    )
    broken = line(
        t,
        "smtp",
        "4dLq3B0006z6bc: to=<caf\x00@example.org>, relay=none, delay=1, "
        "delays=1/0/0/0, dsn=4.4.1, status=deferred (timeout)",
    )
    return text.encode() + broken.encode().replace(b"\x00", b"\xe9")


def log_bytes() -> bytes:
    return traffic(0, 120).text().encode() + odd_lines()


def seconds(value: Any) -> Any:
    return round((value - START).total_seconds(), 6) if isinstance(value, dt.datetime) else value


async def table_rows() -> dict[str, list[list[Any]]]:
    queries = {
        "mail_logs": "SELECT at, node_id, queue_id, message_id, sender, recipient, relay, "
        "status, delay_seconds, dsn, size, client FROM mail_logs",
        "rejection_logs": "SELECT at, node_id, client, sender, recipient, reason, code "
        "FROM rejection_logs",
        "log_messages": "SELECT node_id, queue_id, message_id, sender, size, client, "
        "first_seen_at FROM log_messages",
    }
    found = {}
    for name, query in queries.items():
        rows = await MailLog.raw(query)
        found[name] = sorted(
            ([seconds(value) for value in row.values()] for row in rows), key=json.dumps
        )
    return found


@pytest.mark.parametrize("max_lines", [5000, 40])
async def test_every_line_ends_in_the_same_rows_as_before(settings, tmp_path, max_lines):
    path = tmp_path / "postfix.log"
    path.write_bytes(log_bytes())
    log_settings = dataclasses.replace(settings, postfix_log_file=path)
    await ingest.run_once(log_settings, max_lines=max_lines)
    found = await table_rows()
    if os.environ.get("UPDATE_INGEST_ROWS") and max_lines == 5000:
        EXPECTED.write_text(json.dumps(found, indent=0, ensure_ascii=False) + "\n")
    assert found == json.loads(EXPECTED.read_text())


async def test_the_totals_triggers_agree_with_a_recount_after_ingestion(settings, tmp_path):
    path = tmp_path / "postfix.log"
    path.write_bytes(log_bytes())
    await ingest.run_once(dataclasses.replace(settings, postfix_log_file=path), max_lines=300)
    kept = await MailLog.raw("SELECT * FROM log_totals ORDER BY period_start")
    assert kept
    assert await latest(LATEST_KEPT) == await latest(LATEST_RECOUNT)
    await MailLog.raw("SELECT log_totals_rebuild()")
    assert await MailLog.raw("SELECT * FROM log_totals ORDER BY period_start") == kept
