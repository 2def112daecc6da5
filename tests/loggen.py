"""Generated Postfix logs, line for line as Postfix 3.7 writes them: for the ingestion tests and
the `logs` benchmark."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

START = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=3)


def stamp(at: dt.datetime) -> str:
    # As postlogd writes it: local time, zero-padded day (strftime "%b %d %H:%M:%S").
    return at.astimezone().strftime("%b %d %H:%M:%S")


def line(at: dt.datetime, service: str, text: str, pid: int = 4242) -> str:
    return f"{stamp(at)} relay-a postfix/{service}[{pid}]: {text}\n"


def qid(i: int) -> str:
    if i % 6 == 5:  # a few short (hex) ids among the long ones
        return f"{0xC0FFEE00 + i:X}"
    return f"4dLq2G{i:04d}z{i % 7 + 1}bc"


@dataclasses.dataclass
class Traffic:
    lines: list[str]
    expect: Counter  # mail_logs rows per status, and "rejected"

    def text(self) -> str:
        return "".join(self.lines)


def traffic(first: int, count: int, start: dt.datetime = START) -> Traffic:
    """`count` messages from `first` on, as Postfix logs them, in time order.

    Each message has three recipients: one sent, one deferred and sent on the retry an hour
    later, one bounced (every third message) or sent. Every fifth message instead has one
    recipient that is deferred twice and then expires. Every other message comes with a relay
    attempt that smtpd rejects, every seventh with a refused sender.
    """
    timed: list[tuple[dt.datetime, str]] = []
    expect: Counter = Counter()

    def add(at: dt.datetime, service: str, text: str) -> None:
        timed.append((at, line(at, service, text)))

    for i in range(first, first + count):
        t = start + dt.timedelta(seconds=2 * i)
        q = qid(i)
        client = f"app{i % 3}.example.com[198.18.0.{30 + i % 3}]"
        add(t, "smtpd", f"connect from {client}")
        add(t, "smtpd", f"{q}: client={client}")
        add(t, "cleanup", f"{q}: message-id=<{i}.{q}@app.example.com>")
        add(t, "smtpd", f"disconnect from {client} ehlo=1 mail=1 rcpt=3 data=1 quit=1 commands=7")
        relay = "mx.example.org[203.0.113.5]:25"
        deferral = (
            "dsn=4.4.1, status=deferred (connect to mx.example.org[203.0.113.5]:25: "
            "Connection timed out)"
        )
        if i % 5 == 4:
            nrcpt = 1
            add(
                t,
                "qmgr",
                f"{q}: from=<alerts@example.com>, size={1000 + i}, nrcpt=1 (queue active)",
            )
            for attempt in (1, 2):
                at = t + dt.timedelta(seconds=1 + 3600 * (attempt - 1))
                add(
                    at,
                    "smtp",
                    f"{q}: to=<late{i}@example.org>, relay=none, delay={3600 * (attempt - 1) + 1}, "
                    f"delays=0.1/0/30/0, {deferral}",
                )
                expect["deferred"] += 1
            gone = t + dt.timedelta(seconds=7200)
            add(gone, "qmgr", f"{q}: from=<alerts@example.com>, status=expired, returned to sender")
            add(gone, "qmgr", f"{q}: removed")
            expect["expired"] += 1
        else:
            nrcpt = 3
            add(
                t,
                "qmgr",
                f"{q}: from=<alerts@example.com>, size={1000 + i}, nrcpt={nrcpt} (queue active)",
            )
            sent = (
                "delay=0.51, delays=0.05/0.01/0.2/0.25, dsn=2.0.0, status=sent "
                f"(250 2.0.0 Ok: queued as X{i})"
            )
            add(
                t + dt.timedelta(seconds=1),
                "smtp",
                f"{q}: to=<a{i}@example.org>, relay={relay}, {sent}",
            )
            add(
                t + dt.timedelta(seconds=1),
                "smtp",
                f"{q}: to=<b{i}@example.org>, orig_to=<bee{i}@example.org>, relay=none, "
                f"delay=31, delays=0.1/0/30/0, {deferral}",
            )
            if i % 3 == 0:
                add(
                    t + dt.timedelta(seconds=1),
                    "smtp",
                    f"{q}: to=<c{i}@example.net>, relay=mx.example.net[203.0.113.9]:25, "
                    "conn_use=2, delay=0.4, delays=0.1/0/0.1/0.2, dsn=5.1.1, status=bounced "
                    f"(host mx.example.net[203.0.113.9] said: 550 5.1.1 <c{i}@example.net>: "
                    "Recipient address rejected: User unknown (in reply to RCPT TO command))",
                )
                expect["bounced"] += 1
            else:
                add(
                    t + dt.timedelta(seconds=1),
                    "smtp",
                    f"{q}: to=<c{i}@example.net>, relay={relay}, {sent}",
                )
                expect["sent"] += 1
            retry = t + dt.timedelta(seconds=3600)
            add(
                retry,
                "qmgr",
                f"{q}: from=<alerts@example.com>, size={1000 + i}, nrcpt=1 (queue active)",
            )
            add(
                retry,
                "smtp",
                f"{q}: to=<b{i}@example.org>, orig_to=<bee{i}@example.org>, relay={relay}, {sent}",
            )
            add(retry, "qmgr", f"{q}: removed")
            expect["sent"] += 2
            expect["deferred"] += 1
        if i % 2 == 0:
            add(
                t,
                "smtpd",
                f"NOQUEUE: reject: RCPT from unknown[198.18.0.99]: 554 5.7.1 <x{i}@elsewhere.net>: "
                f"Relay access denied; from=<app@example.com> to=<x{i}@elsewhere.net> "
                "proto=ESMTP helo=<client.local>",
            )
            expect["rejected"] += 1
        if i % 7 == 0:
            add(
                t,
                "smtpd",
                "NOQUEUE: reject: MAIL from app0.example.com[198.18.0.30]: 553 5.7.1 "
                "<x@bad.example>: Sender address rejected: Sender domain not allowed on this "
                "relay; from=<x@bad.example> proto=ESMTP helo=<app0>",
            )
            expect["rejected"] += 1
        add(t, "anvil", "statistics: max connection rate 1/60s for (smtp:198.18.0.30) at Nov 25")
    timed.sort(key=lambda item: item[0])  # stable: a message's lines keep their order
    return Traffic([text for _, text in timed], expect)
