"""The Postfix log parser: every event we use, as Postfix 3.7 writes it (the formats come from
the Postfix source: smtpd.c, smtpd_check.c log_whatsup(), cleanup, opened.c, log_adhoc.c,
qmgr_active.c), under both time stamp shapes and both queue id forms."""

from __future__ import annotations

import datetime as dt

import pytest

from app.postfix.logparse import (
    CLIENT,
    DELIVERY,
    EXPIRED,
    MESSAGE_ID,
    QUEUE_ACTIVE,
    QUEUE_ID,
    REJECT,
    ClientContext,
    Connect,
    Delivery,
    Event,
    Expired,
    MessageId,
    Parser,
    QueueActive,
    Reject,
    Removed,
    parse_line,
    split_client,
)
from tests.loggen import traffic

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 25, 15, 0, 0, tzinfo=UTC)
LONG = "4dLq2G1xZ9z9vxL"  # enable_long_queue_ids = yes
SHORT = "3D770111AF50"
CLASSIC = "Nov 25 14:00:01 relay-a postfix/{service}[{pid}]: {text}"
ISO = "2026-11-25T14:00:01.123456+00:00 relay-a postfix/{service}[{pid}]: {text}"


def logged(service: str, text: str, shape: str = CLASSIC) -> str:
    """A line as `service` logs `text`, in the time stamp `shape`."""
    return shape.format(service=service, pid=1, text=text)


def parse(text: str, service: str = "smtpd", shape: str = CLASSIC, pid: int = 1234):
    return parse_line(shape.format(service=service, pid=pid, text=text) + "\n", NOW, tz=UTC)


def test_it_reads_the_classic_header():
    event = parse("connect from app1.example.com[198.18.0.30]")
    assert event == Connect(
        at=dt.datetime(2026, 11, 25, 14, 0, 1, tzinfo=UTC),
        host="relay-a",
        program="postfix/smtpd",
        service="smtpd",
        pid=1234,
        client="app1.example.com[198.18.0.30]",
    )


def test_it_reads_the_rfc3339_header():
    event = parse("connect from app1.example.com[198.18.0.30]", shape=ISO)
    assert event is not None
    assert event.at == dt.datetime(2026, 11, 25, 14, 0, 1, 123456, tzinfo=UTC)
    other_zone = parse_line(
        "2026-11-25T15:00:01+0100 relay-a postfix/smtpd[7]: connect from x[198.18.0.1]", NOW
    )
    assert other_zone is not None
    assert other_zone.at == dt.datetime(2026, 11, 25, 14, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "stamp",
    [
        "Nov 05 14:00:01",  # postlogd: strftime("%b %d ...")
        "Nov  5 14:00:01",  # classic syslog: the day padded with a space
    ],
)
def test_it_reads_both_day_paddings(stamp: str):
    event = parse_line(f"{stamp} relay-a postfix/smtpd[1]: connect from x[198.18.0.1]", NOW, UTC)
    assert event is not None
    assert event.at == dt.datetime(2026, 11, 5, 14, 0, 1, tzinfo=UTC)


def test_the_year_is_the_one_that_is_not_in_the_future():
    new_year = dt.datetime(2027, 1, 1, 0, 5, tzinfo=UTC)
    line = "Dec 31 23:59:59 relay-a postfix/smtpd[1]: connect from x[198.18.0.1]"
    event = parse_line(line, new_year, UTC)
    assert event is not None and event.at.year == 2026
    # A day ahead is still this year (clock skew between hosts, time zones).
    tomorrow = "Nov 26 14:00:00 relay-a postfix/smtpd[1]: connect from x[198.18.0.1]"
    assert parse_line(tomorrow, NOW, UTC).at.year == 2026  # type: ignore[union-attr]
    beyond = "Nov 27 15:00:01 relay-a postfix/smtpd[1]: connect from x[198.18.0.1]"
    assert parse_line(beyond, NOW, UTC).at.year == 2025  # type: ignore[union-attr]


def test_classic_stamps_are_local_time_of_the_given_zone():
    plus_two = dt.timezone(dt.timedelta(hours=2))
    event = parse_line(
        "Nov 25 16:00:01 relay-a postfix/smtpd[1]: connect from x[198.18.0.1]", NOW, plus_two
    )
    assert event is not None
    assert event.at == dt.datetime(2026, 11, 25, 14, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize("qid", [LONG, SHORT, "B1B894562003", "4dLq2H0Bc5z1"])
def test_queue_ids(qid: str):
    assert QUEUE_ID.fullmatch(qid)
    event = parse(f"{qid}: removed", service="qmgr")
    assert event is not None and event.queue_id == qid  # type: ignore[union-attr]


@pytest.mark.parametrize("word", ["NOQUEUE", "warning", "statistics", "4dLq2G1xZ9", "3d770111af50"])
def test_words_are_not_queue_ids(word: str):
    assert not QUEUE_ID.fullmatch(word)
    assert parse(f"{word}: removed", service="qmgr") is None


@pytest.mark.parametrize("qid", [LONG, SHORT])
@pytest.mark.parametrize("shape", [CLASSIC, ISO])
def test_smtpd_client_line(qid: str, shape: str):
    event = parse(f"{qid}: client=app1.example.com[198.18.0.30]", shape=shape)
    assert isinstance(event, ClientContext)
    assert (event.queue_id, event.client, event.sasl_username) == (
        qid,
        "app1.example.com[198.18.0.30]",
        "",
    )


def test_smtpd_client_line_with_sasl_and_port():
    event = parse(
        f"{LONG}: client=unknown[2001:db8::7]:52144, sasl_method=PLAIN, sasl_username=app1"
    )
    assert isinstance(event, ClientContext)
    assert event.client == "unknown[2001:db8::7]:52144"
    assert event.sasl_username == "app1"
    assert split_client(event.client) == ("unknown", "2001:db8::7")


def test_pickup_starts_a_local_message():
    event = parse(f"{LONG}: uid=0 from=<root>", service="pickup")
    assert isinstance(event, ClientContext)
    assert (event.client, event.uid, event.sender) == ("", 0, "root")


@pytest.mark.parametrize(
    ("logged", "expected"),
    [
        ("<20261125140001.1@app1.example.com>", "20261125140001.1@app1.example.com"),
        ("no-brackets@legacy", "no-brackets@legacy"),
    ],
)
def test_cleanup_message_id(logged: str, expected: str):
    event = parse(f"{LONG}: message-id={logged}", service="cleanup")
    assert event == MessageId(
        at=dt.datetime(2026, 11, 25, 14, 0, 1, tzinfo=UTC),
        host="relay-a",
        program="postfix/cleanup",
        service="cleanup",
        pid=1234,
        queue_id=LONG,
        message_id=expected,
    )


@pytest.mark.parametrize("sender", ["alerts@example.com", ""])
def test_qmgr_queue_active(sender: str):
    event = parse(f"{SHORT}: from=<{sender}>, size=1843, nrcpt=3 (queue active)", "qmgr")
    assert isinstance(event, QueueActive)
    assert (event.queue_id, event.sender, event.size, event.nrcpt) == (SHORT, sender, 1843, 3)


def test_sent():
    event = parse(
        f"{LONG}: to=<bob@example.org>, relay=mx.example.org[203.0.113.5]:25, delay=0.51, "
        "delays=0.05/0.01/0.2/0.25, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4dLq2H0Bc5z1)",
        service="smtp",
    )
    assert isinstance(event, Delivery)
    assert event.queue_id == LONG
    assert event.recipient == "bob@example.org"
    assert event.orig_recipient == ""
    assert event.relay == "mx.example.org[203.0.113.5]:25"
    assert event.conn_use is None
    assert event.delay == 0.51
    assert event.delays == (0.05, 0.01, 0.2, 0.25)
    assert (event.dsn, event.status) == ("2.0.0", "sent")
    assert event.text == "250 2.0.0 Ok: queued as 4dLq2H0Bc5z1"


def test_deferred_with_orig_to_and_conn_use():
    event = parse(
        f"{SHORT}: to=<carol@example.org>, orig_to=<c@example.org>, "
        "relay=mx.example.org[203.0.113.5]:25, conn_use=2, delay=307136, "
        "delays=307106/0.02/30/0, dsn=4.4.1, status=deferred (connect to "
        "mx.example.org[203.0.113.5]:25: Connection timed out)",
        service="smtp",
        shape=ISO,
    )
    assert isinstance(event, Delivery)
    assert (event.recipient, event.orig_recipient) == ("carol@example.org", "c@example.org")
    assert event.conn_use == 2
    assert event.delay == 307136
    assert (event.dsn, event.status) == ("4.4.1", "deferred")
    assert event.text == "connect to mx.example.org[203.0.113.5]:25: Connection timed out"


def test_bounced_by_the_remote_server():
    event = parse(
        f"{LONG}: to=<nobody@example.org>, relay=mx.example.org[203.0.113.5]:25, delay=1.2, "
        "delays=1.1/0/0.03/0.07, dsn=5.1.1, status=bounced (host mx.example.org[203.0.113.5] "
        "said: 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown "
        "(in reply to RCPT TO command))",
        service="smtp",
    )
    assert isinstance(event, Delivery)
    assert (event.status, event.dsn, event.relay) == (
        "bounced",
        "5.1.1",
        "mx.example.org[203.0.113.5]:25",
    )
    assert event.text.endswith("(in reply to RCPT TO command)")


@pytest.mark.parametrize(
    ("service", "relay"), [("error", "none"), ("lmtp", "private/dovecot-lmtp"), ("local", "local")]
)
def test_other_delivery_agents(service: str, relay: str):
    event = parse(
        f"{LONG}: to=<a@example.net>, relay={relay}, delay=0.1, delays=0.1/0/0/0, dsn=5.1.1, "
        "status=bounced (local delivery is disabled on this relay)",
        service=service,
    )
    assert isinstance(event, Delivery) and event.relay == relay and event.service == service


def test_a_delivery_line_with_a_tls_summary_still_parses():
    # Newer Postfix versions add ", tls=..." before dsn=: tolerate fields we do not know.
    event = parse(
        f"{LONG}: to=<a@example.net>, relay=mx[203.0.113.5]:25, delay=0.3, delays=0/0/0.1/0.2, "
        "tls=may, dsn=2.0.0, status=sent (250 ok)",
        service="smtp",
    )
    assert isinstance(event, Delivery) and event.status == "sent"


@pytest.mark.parametrize(
    ("fields", "dsn", "status", "text"),
    [
        # As Postfix writes them: a reply with ", dsn=" in it, fields we do not know.
        (
            "dsn=2.0.0, status=sent (250 ok, dsn=5.1.1, status=x)",
            "2.0.0",
            "sent",
            "250 ok, dsn=5.1.1, status=x",
        ),
        ("tls=may, x=y, dsn=2.0.0, status=sent (250 ok)", "2.0.0", "sent", "250 ok"),
        # Unknown fields come first: "dsn=2.0.0" and "status=sent (a)" are taken for two, as
        # the rest fits after them...
        ("dsn=2.0.0, status=sent (a), dsn=5.1.1, status=bounced (b)", "5.1.1", "bounced", "b"),
        # ...and after a field we do not know, the first dsn= fits, its reply to the end.
        (
            "x=y, dsn=2.0.0, status=sent (a), dsn=5.1.1, status=bounced (b)",
            "2.0.0",
            "sent",
            "a), dsn=5.1.1, status=bounced (b",
        ),
    ],
)
def test_a_delivery_takes_the_first_fields_that_fit(fields, dsn, status, text):
    # Addresses with ">, " in them, replies with ", ": each lazy part of _DELIVERY ends at the
    # first place where the rest of the line fits, whatever form the pattern takes for speed.
    event = parse(
        f"{LONG}: to=<a>, b@example.org>, orig_to=<c>, d@example.org>, relay=none, delay=1, "
        f"delays=1/0/0/0, {fields}",
        service="smtp",
    )
    assert isinstance(event, Delivery)
    assert (event.recipient, event.orig_recipient) == ("a>, b@example.org", "c>, d@example.org")
    assert (event.dsn, event.status, event.text) == (dsn, status, text)


def test_expired():
    event = parse(f"{LONG}: from=<alerts@example.com>, status=expired, returned to sender", "qmgr")
    assert isinstance(event, Expired)
    assert (event.queue_id, event.sender) == (LONG, "alerts@example.com")


@pytest.mark.parametrize("service", ["qmgr", "postsuper"])
def test_removed(service: str):
    assert parse(f"{LONG}: removed", service) == Removed(
        at=dt.datetime(2026, 11, 25, 14, 0, 1, tzinfo=UTC),
        host="relay-a",
        program=f"postfix/{service}",
        service=service,
        pid=1234,
        queue_id=LONG,
    )


def test_relay_access_denied():
    # The text smtpd_check.c writes for reject_unauth_destination.
    event = parse(
        "NOQUEUE: reject: RCPT from unknown[198.18.0.99]: 554 5.7.1 <x@elsewhere.net>: "
        "Relay access denied; from=<app@example.com> to=<x@elsewhere.net> proto=ESMTP "
        "helo=<client.local>"
    )
    assert event == Reject(
        at=dt.datetime(2026, 11, 25, 14, 0, 1, tzinfo=UTC),
        host="relay-a",
        program="postfix/smtpd",
        service="smtpd",
        pid=1234,
        queue_id=None,
        action="reject",
        stage="RCPT",
        client="unknown[198.18.0.99]",
        code=554,
        dsn="5.7.1",
        reason="5.7.1 <x@elsewhere.net>: Relay access denied",
        sender="app@example.com",
        recipient="x@elsewhere.net",
        proto="ESMTP",
        helo="client.local",
    )


def test_sender_not_allowed_at_mail_stage():
    # Our own check_sender_access static:{553 5.7.1 ...} at MAIL FROM: no recipient yet.
    event = parse(
        "NOQUEUE: reject: MAIL from app1.example.com[198.18.0.30]: 553 5.7.1 <x@bad.example>: "
        "Sender address rejected: Sender domain not allowed on this relay; "
        "from=<x@bad.example> proto=ESMTP helo=<app1>"
    )
    assert isinstance(event, Reject)
    assert (event.stage, event.code, event.dsn) == ("MAIL", 553, "5.7.1")
    assert (event.sender, event.recipient, event.helo) == ("x@bad.example", None, "app1")


@pytest.mark.parametrize(
    ("stage", "reply", "tail", "sender", "recipient"),
    [
        (
            "CONNECT",
            "554 5.7.1 Service unavailable; Client host [198.18.0.99] blocked using "
            "zen.example; https://zen.example/query",
            " proto=SMTP",
            None,
            None,
        ),
        (
            "EHLO",
            "504 5.5.2 <bad host>: Helo command rejected: need fully-qualified hostname",
            " proto=ESMTP helo=<bad host>",
            None,
            None,
        ),
        (
            "DATA",
            "550 5.5.3 <DATA>: Data command rejected: Multi-recipient bounce",
            " from=<> proto=ESMTP helo=<c>",
            "",
            None,
        ),
        (
            "END-OF-MESSAGE",
            "554 5.7.1 Message rejected by policy",
            " from=<a@example.com> to=<b@example.org> proto=ESMTP helo=<c>",
            "a@example.com",
            "b@example.org",
        ),
    ],
)
def test_reject_stages(stage, reply, tail, sender, recipient):
    event = parse(f"NOQUEUE: reject: {stage} from unknown[198.18.0.99]: {reply};{tail}")
    assert isinstance(event, Reject)
    assert event.stage == stage
    assert f"{event.code} {event.reason}" == reply
    assert (event.sender, event.recipient) == (sender, recipient)


def test_a_reject_inside_a_queued_transaction_keeps_its_queue_id():
    event = parse(
        f"{LONG}: reject: RCPT from app1.example.com[198.18.0.30]: 550 5.1.1 <x@example.org>: "
        "Recipient address rejected: User unknown; from=<a@example.com> to=<x@example.org> "
        "proto=ESMTP helo=<app1>"
    )
    assert isinstance(event, Reject)
    assert event.queue_id == LONG and event.code == 550


def test_milter_reject():
    event = parse(
        f"{LONG}: milter-reject: END-OF-MESSAGE from app1.example.com[198.18.0.30]: "
        "5.7.1 Spam message rejected; from=<a@example.com> to=<b@example.org> proto=ESMTP "
        "helo=<app1>"
    )
    assert isinstance(event, Reject)
    assert (event.action, event.code, event.dsn) == ("milter-reject", 0, "5.7.1")
    assert event.reason == "5.7.1 Spam message rejected"


def test_a_syslog_name_with_a_slash():
    event = parse_line(
        "Nov 25 14:00:01 relay-a postfix/submission/smtpd[77]: connect from x[198.18.0.1]",
        NOW,
        UTC,
    )
    assert isinstance(event, Connect)
    assert (event.program, event.service) == ("postfix/submission/smtpd", "smtpd")


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "Nov 25 14:00:01 relay-a postfix/smtpd[1]: disconnect from x[198.18.0.1] ehlo=1 quit=1",
        "Nov 25 14:00:01 relay-a postfix/smtpd[1]: warning: hostname x does not resolve",
        f"Nov 25 14:00:01 relay-a postfix/bounce[1]: {LONG}: sender non-delivery notification: "
        "4dLq2H0Bc5z1",
        "Nov 25 14:00:01 relay-a postfix/smtpd[1]: NOQUEUE: reject_warning: RCPT from "
        "x[198.18.0.1]: 554 5.7.1 <a@b>: Relay access denied; from=<a@c> to=<a@b> proto=SMTP",
        f"Nov 25 14:00:01 relay-a sshd[1]: {LONG}: removed",
        "Foo 25 14:00:01 relay-a postfix/smtpd[1]: connect from x[198.18.0.1]",
        f"Nov 25 14:00:01 relay-a postfix/smtp[1]: {LONG}: to=<a@b>, relay=none, broken",
        # Numbers that are not numbers (a damaged log): skipped, never a stop.
        f"Nov 25 14:00:01 relay-a postfix/smtp[1]: {LONG}: to=<a@b>, relay=none, delay=1.2.3, "
        "delays=1/0/0/0, dsn=2.0.0, status=sent (x)",
        f"Nov 25 14:00:01 relay-a postfix/smtp[1]: {LONG}: to=<a@b>, relay=none, delay=1, "
        "delays=1/0./0..1/0, dsn=2.0.0, status=sent (x)",
        # A delivery agent's text from another program is not a delivery.
        f"Nov 25 14:00:01 relay-a postfix/cleanup[1]: {LONG}: to=<a@b>, relay=none, delay=1, "
        "delays=1/0/0/0, dsn=2.0.0, status=sent (x)",
    ],
)
def test_other_lines_are_none(line: str):
    assert parse_line(line, NOW, UTC) is None
    assert Parser(NOW).records([line.encode()]) == []


def test_split_client():
    assert split_client("mail.example.org[203.0.113.25]") == ("mail.example.org", "203.0.113.25")
    assert split_client("unknown") == ("", "")


def test_a_parser_gives_each_line_what_parse_line_gives_it():
    # One Parser works each time stamp out once: repeated, bad and both shapes of stamp must
    # come out as they do line by line.
    lines = [
        CLASSIC.format(service="smtpd", pid=1, text="connect from a[198.18.0.1]"),
        CLASSIC.format(service="smtpd", pid=2, text="connect from b[198.18.0.2]"),
        "Feb 29 14:00:01 relay-a postfix/smtpd[3]: connect from c[198.18.0.3]",
        "Feb 29 14:00:01 relay-a postfix/smtpd[4]: connect from d[198.18.0.4]",
        ISO.format(service="smtpd", pid=5, text="connect from e[198.18.0.5]"),
        ISO.format(service="smtpd", pid=6, text=f"{SHORT}: removed"),
        "Dec 31 23:59:59 relay-a postfix/smtpd[7]: connect from f[198.18.0.6]",
    ]
    parser = Parser(NOW, UTC)
    parsed = [parser.parse(line) for line in lines]
    assert parsed == [parse_line(line, NOW, UTC) for line in lines]
    assert parsed[2] is None and parsed[3] is None  # 2026 and 2025 have no Feb 29
    assert parsed[0] is not None and parsed[1] is not None and parsed[0].at == parsed[1].at
    assert parsed[6] is not None and parsed[6].at.year == 2025
    berlin = Parser(NOW, dt.timezone(dt.timedelta(hours=1))).parse(lines[0])
    assert berlin is not None and berlin.at == dt.datetime(2026, 11, 25, 13, 0, 1, tzinfo=UTC)


def _as_record(event: Event | None) -> tuple | None:
    """What Parser.records is to give for a line that parse() makes `event` of."""
    match event:
        case Delivery():
            return (
                DELIVERY,
                *(event.at, event.queue_id, event.recipient, event.relay),
                *(event.delay, event.dsn, event.status),
            )
        case QueueActive():
            return QUEUE_ACTIVE, event.at, event.queue_id, event.sender, event.size
        case ClientContext():
            return CLIENT, event.at, event.queue_id, event.client, event.sender
        case MessageId():
            return MESSAGE_ID, event.at, event.queue_id, event.message_id
        case Expired():
            return EXPIRED, event.at, event.queue_id, event.sender
        case Reject():
            return (
                REJECT,
                *(event.at, event.queue_id, event.client, event.sender),
                *(event.recipient, event.reason, event.code),
            )
    return None  # connects, removed, and what parse() has no use for


def test_records_give_each_line_what_parse_gives_it():
    # Every shape ingestion reads, and each of them cut short and with a byte changed: what
    # Parser.records makes of a line is what parse() does, less the fields ingestion never
    # reads, and nothing for lines it makes no such event of.
    shapes = [
        *traffic(0, 30).lines,
        logged("pickup", f"{LONG}: uid=0 from=<root>"),
        logged("smtpd", f"{LONG}: client=x[198.18.0.1]"),
        logged("smtpd", f"{SHORT}: client=x[198.18.0.1], sasl_method=PLAIN, sasl_username=app"),
        logged(
            "smtpd",
            f"{LONG}: milter-reject: END-OF-MESSAGE from x[198.18.0.1]: 5.7.1 no; "
            "proto=ESMTP helo=<x>",
        ),
        logged("smtpd", "NOQUEUE: reject: CONNECT from x[198.18.0.1]: 554 5.7.1 no; proto=SMTP"),
        logged(
            "smtp",
            f"{SHORT}: to=<a@b.example>, relay=none, delay=1, delays=1/0/0/0, dsn=4.4.1, "
            "status=deferred (no route)\r",
            ISO,
        ),
        logged("cleanup", f"{SHORT}: message-id=<x@y>", ISO),
        logged(
            "smtp",
            f"{SHORT}: to=<a@b.example>, relay=none, delay=1, delays=1/0/0/0, dsn=2.1.5, "
            "status=deliverable (probe)",
        ),
        logged("qmgr", f"{SHORT}: to=<a@b.example>, relay=none"),
        logged("local", "NOQUEUE: to=<a@b.example>, relay=none"),
        logged("qmgr", f"{SHORT}: removed"),
        "Feb 29 14:00:01 relay-a postfix/cleanup[3]: 3D770111AF50: message-id=<x@y>",
        "2026-02-30T14:00:01+00:00 relay-a postfix/cleanup[3]: 3D770111AF50: message-id=<x@y>",
        # records() reads a line with one regex (its text ending where the \r and \n at the end of
        # the line start), then asks which service wrote it: where that could part from parse().
        logged("cleanup", f"{LONG}: message-id=<x\r@y>\r\r"),
        logged("cleanup", f"{LONG}: message-id=<x\n@y>"),
        logged("smtpd", f"{LONG}: client=x[198.18.0.1], a=\rb\r\r"),
        logged("smtpd", f"{LONG}: client=x[198.18.0.1], a=\nb"),
        logged("qmgr", f"{SHORT}: from=<a\r@b>, size=1, nrcpt=1\r\r", ISO),
        logged("qmgr", f"{SHORT}: from=<a\n@b>, size=1, nrcpt=1", ISO),
        logged(
            "smtp",
            f"{LONG}: to=<a\n>, b@c>, orig_to=<d>, e>, relay=x\r, delay=1, delays=1/0/0/0, "
            "tls=may, x=y, dsn=2.0.0, status=sent (250 \r\nok, dsn=5.1.1, status=bounced)\r\r",
        ),
        logged(
            "smtpd",
            "NOQUEUE: reject: RCPT from x[198.18.0.1]: 554 5.7.1 \r\nno; from=<a\r> "
            "to=<b\n> proto=ESMTP helo=<x>\r\r",
        ),
        logged(
            "qmgr", f"{LONG}: from=<a@b>, size=1, nrcpt=1 (x), status=expired, returned to sender"
        ),
        logged("qmgr", f"{LONG}: from=<a@b>, status=expired, returned to sender\r"),
        logged("smtp", f"{LONG}: from=<a@b>, status=expired, returned to sender"),
        logged("smtp", f"{LONG}: from=<a@b>, size=1, nrcpt=1"),
        logged(
            "smtpd",
            f"{LONG}: to=<a@b.example>, relay=none, delay=1, delays=1/0/0/0, dsn=2.0.0, "
            "status=sent (x)",
        ),
        logged("cleanup", f"{LONG}: client=x[198.18.0.1]"),
        logged("smtpd", "NOQUEUE: client=x[198.18.0.1]"),
        logged("cleanup", "NOQUEUE: message-id=<x@y>"),
        logged("smtpd", f"{LONG}: message-id=<x@y>"),
        logged("smtpd", f"{LONG}: uid=0 from=<root>"),
        logged("pickup", "NOQUEUE: uid=0 from=<root>"),
        logged(
            "cleanup",
            f"{LONG}: milter-reject: END-OF-MESSAGE from x[198.18.0.1]: 5.7.1 no; "
            "proto=ESMTP helo=<x>",
        ),
    ]
    lines = [
        variant
        for shape in shapes
        for cut in range(0, len(shape) + 1, 7)
        for variant in (shape[:cut], shape[:cut] + "\n", shape[:cut] + "\x00" + shape[cut + 1 :])
    ]
    parser = Parser(NOW, UTC)
    expected = [_as_record(parser.parse(line)) for line in lines]
    assert Parser(NOW, UTC).records(line.encode() for line in lines) == [
        record for record in expected if record is not None
    ]
    kinds = {record[0] for record in expected if record is not None}
    assert kinds == {DELIVERY, QUEUE_ACTIVE, CLIENT, MESSAGE_ID, EXPIRED, REJECT}
    assert expected.count(None) > len(lines) / 2  # most cuts and changes are of no use


def test_records_keep_bytes_that_are_not_utf8():
    line = f"Nov 25 14:00:01 relay-a postfix/cleanup[3]: {SHORT}: message-id=<\xe9t\xe9@x>\n"
    [record] = Parser(NOW, UTC).records([line.encode("latin-1")])
    assert record[-1] == "\ufffdt\ufffd@x"
