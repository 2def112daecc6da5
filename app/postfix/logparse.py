"""Parse Postfix log lines into typed events. Pure: no I/O, no clock (the caller passes `now`).

Two line shapes are accepted, both as Postfix 3.7 and the usual syslog daemons write them:

    Nov 25 14:00:01 relay-a postfix/smtpd[1234]: <text>        postlogd, classic syslog
    2026-11-25T14:00:01.123456+00:00 relay-a postfix/smtpd[1234]: <text>
                                                    rsyslog (RFC 3339), journald short-iso

postlogd (`maillog_file`) writes the day zero-padded (`Nov 05`, strftime "%b %d"), classic syslog
pads it with a space (`Nov  5`); both are read. The classic stamp has neither a year nor a zone:
it is local time (Postfix formats it with localtime()), and the year is the one that puts the
line no more than a day after `now` (a line from Dec 31 read on Jan 1 is last year's).

The texts are those of the Postfix source (smtpd.c, smtpd_check.c log_whatsup(), cleanup
message-id, opened.c, log_adhoc.c, qmgr_active.c); lines we have no use for return None.
Addresses are kept as Postfix wrote them, without the angle brackets: `from=<>` is "".
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

# Short queue IDs are upper-case hex (microseconds + inode). Long ones
# (enable_long_queue_ids = yes) are base-52 time, at least 6 + 4 characters, a 'z', and the
# base-51 inode, in an alphabet without vowels (mail_queue.h).
_LONG_QID = r"[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}z[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-y]+"
_SHORT_QID = r"[0-9A-F]{6,}"
QUEUE_ID = re.compile(rf"(?:{_LONG_QID}|{_SHORT_QID})")

_CLASSIC_STAMP = (
    r"(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)"
    r"(?:\.(?P<frac>\d{1,6}))?"
)
_ISO_STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)"
# host, then syslog_name/service[pid]: the syslog_name may itself hold a slash
# (multiple instances: postfix-out/smtp, or master.cf -o syslog_name=postfix/submission).
_REST = r"(?P<host>\S+) (?P<program>[^\s\[\]]+/(?P<service>[^\s/\[\]]+))\[(?P<pid>\d+)\]: "
# The queue ID that starts most texts ("%s: ..."), or NOQUEUE; absent from the rest.
_QID_PREFIX = rf"(?:(?P<qid>{QUEUE_ID.pattern}|NOQUEUE): )?"
# The whole head of a line in one match per shape, its queue ID included: one regex call per
# line instead of two.
_CLASSIC = re.compile(rf"(?P<stamp>{_CLASSIC_STAMP}) {_REST}{_QID_PREFIX}")
_ISO = re.compile(rf"(?P<stamp>{_ISO_STAMP}) {_REST}{_QID_PREFIX}")


# Where each shape's stamp, host, program, service, pid and queue ID are in match.groups():
# one groups() call and an itemgetter take a third less than group() with six names.
def _head_fields(
    pattern: re.Pattern[str], names: tuple[str, ...]
) -> Callable[[tuple[Any, ...]], tuple[str, ...]]:
    first, *rest = (pattern.groupindex[name] - 1 for name in names)
    return itemgetter(first, *rest)


_ALL_FIELDS = ("stamp", "host", "program", "service", "pid", "qid")
_CLASSIC_FIELDS = _head_fields(_CLASSIC, _ALL_FIELDS)
_ISO_FIELDS = _head_fields(_ISO, _ALL_FIELDS)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}

# What every event starts with: at, host, program, service, pid.
_Head = tuple[dt.datetime, str, str, str, int]

DELIVERY_AGENTS = frozenset({"smtp", "lmtp", "local", "virtual", "error", "discard", "relay"})

_CONNECT = re.compile(r"connect from (?P<client>\S+)")
# smtpd.c: "%s: client=%s" plus optional ", sasl_method=..", ", orig_queue_id=..", ...
_CLIENT = re.compile(r"client=(?P<client>[^,\s]+)(?P<extra>,.*)?")
_SASL_USER = re.compile(r", sasl_username=(?P<user>[^,]*)")
# pickup.c: "%s: uid=%d from=<%s>" (local submission through sendmail/postdrop)
_PICKUP_TEXT = re.compile(r"uid=(?P<uid>\d+) from=<(?P<sender>.*)>")
# opened.c: "%s: from=<%s>, size=%ld, nrcpt=%d (queue %s)"
_QUEUE_ACTIVE = re.compile(
    r"from=<(?P<sender>.*)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+)(?: \((?P<note>.*)\))?"
)
# cleanup_message.c: "%s: message-id=%s", the header's value as the client wrote it
_MESSAGE_ID = re.compile(r"message-id=(?P<message_id>.*)", re.DOTALL)
# qmgr_active.c: "%s: from=<%s>, status=expired, returned to sender"
_EXPIRED = re.compile(r"from=<(?P<sender>.*)>, status=expired, returned to sender")
# log_adhoc.c: to=<>, [orig_to=<>,] relay=, [conn_use=,] delay=, delays=a/b/c/d, [tls=..,]
# dsn=, status= (reason)
# A number is digits with at most one point: a line with another (a damaged log) is no
# delivery, where float() would have stopped the ingestion at it.
# `(?:[^>]++|>)*?` is `.*?` taken a run at a time: the same ends tried in the same order (only at
# a '>' can ">, " follow, and every '>' ends a run), but one regex step per run instead of one per
# character; `(?:.*?, )?` stepped through the whole reply of every delivery. This way a fullmatch
# takes a third less time, and records() a twelfth less.
_DELIVERY = re.compile(
    r"to=<(?P<to>(?:[^>]++|>)*?)>, (?:orig_to=<(?P<orig>(?:[^>]++|>)*?)>, )?"
    r"relay=(?P<relay>[^,]*), (?:conn_use=(?P<conn_use>\d+), )?delay=(?P<delay>\d+(?:\.\d*)?), "
    r"delays=(?P<delays>\d+(?:\.\d*)?(?:/\d+(?:\.\d*)?){3}), (?:(?:[^,]++|,)*?, )?"
    r"dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), status=(?P<status>[A-Za-z]+)(?: \((?P<text>.*)\))?",
    re.DOTALL,
)
# smtpd_check.c log_whatsup(): "%s: %s: %s from %s: %s;" then " from=<%s>", " to=<%s>",
# " proto=%s", " helo=<%s>" for what is known at that stage. The reply text may itself hold
# semicolons (DNSBL texts do), so the context is the tail after the last one.
_REJECT = re.compile(
    r"(?P<action>reject|milter-reject): (?P<stage>.+?) from (?P<client>\S+?\[[^\]]*\](?::\S+)?): "
    r"(?P<reply>.*);(?: from=<(?P<sender>[^>]*)>)?(?: to=<(?P<to>[^>]*)>)?"
    r"(?: proto=(?P<proto>\S+))?(?: helo=<(?P<helo>[^>]*)>)?",
    re.DOTALL,
)
_REPLY = re.compile(r"(?P<code>[245]\d\d)[ -](?P<text>.*)", re.DOTALL)
_ENHANCED = re.compile(r"(?P<dsn>[245]\.\d{1,3}\.\d{1,3})(?: |$)")


# Not frozen: a frozen dataclass sets every field through object.__setattr__, which made building
# the events a quarter of the parser's time. Nothing changes an event after the parser made it.
@dataclass(slots=True)
class Event:
    """What every parsed line has: when, which host, which Postfix program and process."""

    at: dt.datetime
    host: str
    program: str  # syslog_name/service as logged, e.g. postfix/smtpd
    service: str  # smtpd, cleanup, qmgr, smtp, ...
    pid: int


@dataclass(slots=True)
class Connect(Event):
    client: str  # name[addr] (name[addr]:port with smtpd_client_port_logging)


@dataclass(slots=True)
class ClientContext(Event):
    """A message was started: by smtpd (`client=`), qmqpd, or pickup (client is then "")."""

    queue_id: str
    client: str
    sasl_username: str = ""
    uid: int | None = None  # pickup: the submitting user's uid
    sender: str | None = None  # pickup names the sender right away


@dataclass(slots=True)
class MessageId(Event):
    queue_id: str
    message_id: str  # without the angle brackets


@dataclass(slots=True)
class QueueActive(Event):
    """qmgr took the message into the active queue (once per delivery attempt)."""

    queue_id: str
    sender: str
    size: int
    nrcpt: int


@dataclass(slots=True)
class Delivery(Event):
    """One recipient's outcome from a delivery agent."""

    queue_id: str
    recipient: str
    orig_recipient: str
    relay: str
    conn_use: int | None
    delay: float
    delays: tuple[float, float, float, float]
    dsn: str
    status: str  # sent | deferred | bounced (and deliverable/undeliverable for probes)
    text: str


@dataclass(slots=True)
class Expired(Event):
    """qmgr gave up on a message (maximal_queue_lifetime) and returned it to the sender."""

    queue_id: str
    sender: str


@dataclass(slots=True)
class Removed(Event):
    queue_id: str


@dataclass(slots=True)
class Reject(Event):
    """smtpd refused a client, command or recipient (NOQUEUE when nothing was queued yet)."""

    queue_id: str | None
    action: str  # reject | milter-reject
    stage: str  # CONNECT, HELO, EHLO, MAIL, RCPT, DATA, END-OF-MESSAGE, ...
    client: str
    code: int  # the SMTP reply code, 0 if the reply has none
    dsn: str  # the enhanced status code, "" if none
    reason: str  # the reply after the SMTP code (enhanced code and text)
    sender: str | None  # None when the stage had no MAIL FROM yet
    recipient: str | None
    proto: str | None
    helo: str | None


def _strip_brackets(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == "<" and value[-1] == ">":
        return value[1:-1]
    return value


_ONE_DAY = dt.timedelta(days=1)
# A classic stamp's second (\d\d: 0 to 99) as a timedelta made once: timedelta(seconds=) was a
# quarter of the time a new stamp takes.
_SECONDS = tuple(dt.timedelta(seconds=second) for second in range(100))


def _classic_time(fields: tuple[str, ...], now: dt.datetime, tz: dt.tzinfo | None) -> dt.datetime:
    """A classic stamp's month, day, hours, minutes, seconds, fraction ("" or None) -> when."""
    mon, day, hours, minutes, seconds, frac = fields
    micro = int((frac or "0").ljust(6, "0"))
    parts = (_MONTHS[mon], int(day), int(hours), int(minutes), int(seconds), micro)
    reference = now if now.tzinfo else now.astimezone()
    year = reference.year
    for candidate in (year, year - 1):
        try:
            naive = dt.datetime(candidate, *parts)
        except ValueError:  # Feb 29 in a year without one: it can only be the other year
            continue
        # tz None: the host's local time, which is how Postfix wrote it.
        at = naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()
        if at - reference <= _ONE_DAY:
            return at
    raise ValueError("no year fits this time stamp")


# What ingestion reads of a line (Parser.records): a plain tuple per line, its kind first, then
# `at` and the queue ID (None for NOQUEUE), then per kind:
#   DELIVERY      recipient, relay, delay, dsn, status
#   QUEUE_ACTIVE  sender, size
#   CLIENT        client ("" for pickup), sender (pickup names it; None from smtpd, qmqpd)
#   MESSAGE_ID    message_id
#   EXPIRED       sender
#   REJECT        client, sender, recipient, reason, code (as Reject has them)
# Building an Event per line, with fields ingestion never reads, was most of the parser's time.
Record = tuple[Any, ...]
DELIVERY, QUEUE_ACTIVE, CLIENT, MESSAGE_ID, EXPIRED, REJECT = range(6)
# What else _classify tells apart: lines that make events but no records (pickup's make CLIENT).
_PICKUP, _CONNECT_KIND, _REMOVED = range(6, 9)
# The services whose text makes each kind (_classify and records() ask): another's is no event.
_QMGR = frozenset({"qmgr"})
_WRITERS = {
    DELIVERY: DELIVERY_AGENTS,
    QUEUE_ACTIVE: _QMGR,
    EXPIRED: _QMGR,
    CLIENT: frozenset({"smtpd", "qmqpd"}),
    MESSAGE_ID: frozenset({"cleanup"}),
    REJECT: frozenset({"smtpd"}),
    _PICKUP: frozenset({"pickup"}),
}


class Parser:
    """Parses the lines of one stretch of log read at `now` (see parse_line).

    A busy log repeats each time stamp for many lines: the parser works each one out once (a
    Parser is meant for one batch of lines, its cache holds the stamps it has seen).
    """

    def __init__(self, now: dt.datetime, tz: dt.tzinfo | None = None) -> None:
        self.now = now
        self.tz = tz
        self._reference = now if now.tzinfo else now.astimezone()
        self._times: dict[str, dt.datetime | None] = {}
        self._minutes: dict[tuple[str, ...], dt.datetime] = {}

    def parse(self, line: str) -> Event | None:
        """One log line (with or without its newline) -> an event, or None for anything else."""
        head = _CLASSIC.match(line)
        if head is not None:
            stamp, host, program, service, pid, qid = _CLASSIC_FIELDS(head.groups())
        else:
            head = _ISO.match(line)
            if head is None:
                return None
            stamp, host, program, service, pid, qid = _ISO_FIELDS(head.groups())
        at = self._at(stamp, head)
        if at is None:
            return None
        text = line[head.end() :].rstrip("\r\n")
        found = _classify(service, qid, text)
        if found is None:
            return None
        return _EVENTS[found[0]]((at, host, program, service, int(pid)), qid, found[1])

    def records(self, raw_lines: Iterable[bytes]) -> list[Record]:
        """What ingestion reads of raw log lines, in one loop: a Record for each line that
        parse() makes a ClientContext, MessageId, QueueActive, Delivery, Expired or Reject of,
        with the same values. Bytes that are not UTF-8 (old clients, SMTPUTF8 gone wrong) are
        kept as U+FFFD."""
        classic, iso, at_of = _CLASSIC_RECORDS.match, _ISO_RECORDS.match, self._at
        records = []
        for raw in raw_lines:
            line = raw.decode("utf-8", "replace")
            match = classic(line) or iso(line)
            if match is None:
                continue
            kind, writers, fields, record = _RECORD_TEXTS[match.lastgroup]
            stamp, service, qid, *values = match.group(*fields)
            # NOQUEUE (qid None) only before a reject, as in _classify.
            if service in writers and (qid is not None or kind == REJECT):
                at = at_of(stamp, match)
                if at is not None:
                    records.append(record(at, qid, *values))
        return records

    def _at(self, stamp: str, head: re.Match[str]) -> dt.datetime | None:
        """The stamp's time (None if it is no time), worked out once per stamp."""
        times = self._times
        if stamp in times:
            return times[stamp]
        at = times[stamp] = self._time(head)
        return at

    def _time(self, head: re.Match[str]) -> dt.datetime | None:
        try:
            if head.re in _ISO_SHAPES:
                return dt.datetime.fromisoformat(head["stamp"])
            return self._classic_time(head)
        except (KeyError, ValueError):
            return None

    def _classic_time(self, head: re.Match[str]) -> dt.datetime:
        """_classic_time from the start of the stamp's minute, worked out once per minute: the
        zone's offset and the year are the same for every second of a minute (offsets change
        on whole minutes), and placing a stamp in a zone is most of the cost."""
        minute = head.group("mon", "day", "h", "m")
        if minute in self._minutes:
            start = self._minutes[minute]
        else:
            start = self._minutes[minute] = _classic_time((*minute, "00", ""), self.now, self.tz)
        frac = head["frac"]
        at = start + (
            dt.timedelta(seconds=int(head["s"]), microseconds=int(frac.ljust(6, "0")))
            if frac
            else _SECONDS[int(head["s"])]
        )
        if at - self._reference <= _ONE_DAY:
            return at
        # The minute's start fits this year and its later second no more: the edge of a day
        # ahead, where the other year may fit.
        return _classic_time(head.group("mon", "day", "h", "m", "s", "frac"), self.now, self.tz)


def parse_line(line: str, now: dt.datetime, tz: dt.tzinfo | None = None) -> Event | None:
    """One log line (with or without its newline) -> an event, or None for anything else.

    `now` places classic time stamps in a year; `tz` is the zone they were written in (default:
    this host's local zone). For many lines, one Parser is faster.
    """
    return Parser(now, tz).parse(line)


def _classify(service: str, qid: str | None, body: str) -> tuple[int, Any] | None:
    """What the text after the head is (`body` follows the queue ID if the text starts with
    one), with the match (or value) that holds the rest; None for texts we have no use for."""
    if qid is None:
        if service == "smtpd" and body.startswith("connect from "):
            return _found(_CONNECT_KIND, _CONNECT.fullmatch(body))
        return None
    if service in _WRITERS[REJECT] and body.startswith(("reject: ", "milter-reject: ")):
        return _found(REJECT, _REJECT.fullmatch(body))
    if qid == "NOQUEUE":
        return None
    if service in _WRITERS[DELIVERY] and body.startswith("to=<"):
        return _found(DELIVERY, _DELIVERY.fullmatch(body))
    if service in _QMGR and body.startswith("from=<"):  # both from=< texts are qmgr's
        if body.endswith(", status=expired, returned to sender"):
            return _found(EXPIRED, _EXPIRED.fullmatch(body))
        return _found(QUEUE_ACTIVE, _QUEUE_ACTIVE.fullmatch(body))
    if service in _WRITERS[MESSAGE_ID] and body.startswith("message-id="):
        return _found(MESSAGE_ID, _MESSAGE_ID.fullmatch(body))
    if body.startswith("client=") and service in _WRITERS[CLIENT]:
        return _found(CLIENT, _CLIENT.fullmatch(body))
    if service in _WRITERS[_PICKUP] and body.startswith("uid="):
        return _found(_PICKUP, _PICKUP_TEXT.fullmatch(body))
    if body == "removed":
        return _REMOVED, None
    return None


def _found(kind: int, match: re.Match[str] | None) -> tuple[int, re.Match[str]] | None:
    return None if match is None else (kind, match)


# --- events (parse) ---------------------------------------------------------------------------


def _delivery(head: _Head, qid: str, match: re.Match[str]) -> Delivery:
    # The most frequent event: its fields in one groups() call and positionally (Delivery's
    # field order), which costs a third less than one lookup and one keyword per field.
    to, orig, relay, conn_use, delay, delays, dsn, status, text = match.groups()
    a, b, c, d = map(float, delays.split("/"))
    return Delivery(
        *head,
        qid,
        to,
        orig or "",
        relay,
        int(conn_use) if conn_use else None,
        float(delay),
        (a, b, c, d),
        dsn,
        status,
        text or "",
    )


def _queue_active(head: _Head, qid: str, match: re.Match[str]) -> QueueActive:
    return QueueActive(
        *head,
        queue_id=qid,
        sender=match["sender"],
        size=int(match["size"]),
        nrcpt=int(match["nrcpt"]),
    )


def _client(head: _Head, qid: str, match: re.Match[str]) -> ClientContext:
    sasl = _SASL_USER.search(match["extra"] or "")
    return ClientContext(
        *head, queue_id=qid, client=match["client"], sasl_username=sasl["user"] if sasl else ""
    )


def _pickup(head: _Head, qid: str, match: re.Match[str]) -> ClientContext:
    return ClientContext(
        *head, queue_id=qid, client="", uid=int(match["uid"]), sender=match["sender"]
    )


def _reply(reply: str) -> tuple[int, str]:
    """A reject's reply -> its SMTP code (0 if none) and the rest (enhanced code and text)."""
    coded = _REPLY.fullmatch(reply)
    if coded is None:
        return 0, reply
    return int(coded["code"]), coded["text"]


def _reject(head: _Head, qid: str | None, match: re.Match[str]) -> Reject:
    code, reason = _reply(match["reply"])
    enhanced = _ENHANCED.match(reason)
    return Reject(
        *head,
        queue_id=None if qid == "NOQUEUE" else qid,
        action=match["action"],
        stage=match["stage"],
        client=match["client"],
        code=code,
        dsn=enhanced["dsn"] if enhanced else "",
        reason=reason,
        sender=match["sender"],
        recipient=match["to"],
        proto=match["proto"],
        helo=match["helo"],
    )


# Per kind, the event made of the head, the queue ID and what _classify found.
_EVENTS: tuple[Callable[[_Head, Any, Any], Event], ...] = (
    _delivery,
    _queue_active,
    _client,
    lambda head, qid, match: MessageId(
        *head, queue_id=qid, message_id=_strip_brackets(match["message_id"])
    ),
    lambda head, qid, match: Expired(*head, queue_id=qid, sender=match["sender"]),
    _reject,
    _pickup,
    lambda head, qid, match: Connect(*head, client=match["client"]),
    lambda head, qid, _: Removed(*head, queue_id=qid),
)


# --- records (Parser.records) -----------------------------------------------------------------

# A record of `at`, the queue ID and groups of the text.
_Build = Callable[..., Record]


def _delivery_record(
    at: dt.datetime, qid: str, to: str, relay: str, delay: str, dsn: str, status: str
) -> Record:
    return DELIVERY, at, qid, to, relay, float(delay), dsn, status


def _reject_record(
    at: dt.datetime, qid: str | None, client: str, sender: str | None, to: str | None, reply: str
) -> Record:
    code, reason = _reply(reply)
    return REJECT, at, qid, client, sender, to, reason, code


# Per kind records() reads: the pattern parse() reads its text with, the groups of it the record
# takes, and the record of `at`, the queue ID and those groups.
_RECORD_FIELDS: tuple[tuple[int, re.Pattern[str], tuple[str, ...], _Build], ...] = (
    (DELIVERY, _DELIVERY, ("to", "relay", "delay", "dsn", "status"), _delivery_record),
    (
        QUEUE_ACTIVE,
        _QUEUE_ACTIVE,
        ("sender", "size"),
        lambda at, qid, sender, size: (QUEUE_ACTIVE, at, qid, sender, int(size)),
    ),
    (CLIENT, _CLIENT, ("client",), lambda at, qid, client: (CLIENT, at, qid, client, None)),
    (
        MESSAGE_ID,
        _MESSAGE_ID,
        ("message_id",),
        lambda at, qid, message_id: (MESSAGE_ID, at, qid, _strip_brackets(message_id)),
    ),
    (REJECT, _REJECT, ("client", "sender", "to", "reply"), _reject_record),
    (EXPIRED, _EXPIRED, ("sender",), lambda at, qid, sender: (EXPIRED, at, qid, sender)),
    (_PICKUP, _PICKUP_TEXT, ("sender",), lambda at, qid, sender: (CLIENT, at, qid, "", sender)),
)


def _text(kind: int, pattern: re.Pattern[str]) -> str:
    """The pattern with its groups renamed k<kind>_<name> (one pattern has one set of names) and
    its flags kept, then an empty group k<kind>: it closes last, so it is the match's lastgroup.
    After the text rather than around it, it leaves the text's first character first, which the
    alternation tries before anything else (a group around it cost 1.5% more)."""
    text = re.sub(r"\(\?P<(\w+)>", rf"(?P<k{kind}_\1>", pattern.pattern)
    if pattern.flags & re.DOTALL:
        text = f"(?s:{text})"
    return f"{text}(?P<k{kind}>)"


# What records() matches each line with: one regex call per line instead of the head's, then
# _classify's tests and the text's fullmatch (records() takes a twentieth less). A queue ID (or
# NOQUEUE, then qid is None) is required, and the text must be one of those records() reads,
# ending where line[head.end():].rstrip("\r\n") ends, as the fullmatch of that did: no sooner
# ([\r\n]*\Z), no later (the lookbehind: a `.*` would take a \r of the line's end into its group).
_RECORDS_AFTER_STAMP = (
    rf"{_REST}(?:(?P<qid>{QUEUE_ID.pattern})|NOQUEUE): "
    rf"(?:{'|'.join(_text(kind, pattern) for kind, pattern, _, _ in _RECORD_FIELDS)})"
    r"(?<![\r\n])[\r\n]*\Z"
)
_CLASSIC_RECORDS = re.compile(rf"(?P<stamp>{_CLASSIC_STAMP}) {_RECORDS_AFTER_STAMP}")
_ISO_RECORDS = re.compile(rf"(?P<stamp>{_ISO_STAMP}) {_RECORDS_AFTER_STAMP}")
_ISO_SHAPES = (_ISO, _ISO_RECORDS)
# By a match's lastgroup (never None: every text ends in its group): its kind, the services that
# write it, the groups to read (the head's first: one group() call per line) and the record of
# them.
_RECORD_TEXTS: dict[str | None, tuple[int, frozenset[str], tuple[str, ...], _Build]] = {
    f"k{kind}": (
        kind,
        _WRITERS[kind],
        ("stamp", "service", "qid", *(f"k{kind}_{field}" for field in fields)),
        record,
    )
    for kind, _, fields, record in _RECORD_FIELDS
}


def split_client(client: str) -> tuple[str, str]:
    """`name[addr]` or `name[addr]:port` -> (name, addr); ("", "") when it is not that shape."""
    open_at = client.find("[")
    close_at = client.rfind("]")
    if open_at <= 0 or close_at < open_at:
        return "", ""
    return client[:open_at], client[open_at + 1 : close_at]
