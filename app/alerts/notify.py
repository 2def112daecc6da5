"""Telling a person: an alert's start or end as an e-mail through the relay itself, and/or as
a JSON POST to a webhook. Nothing to install: smtplib and httpx.

The e-mail goes to ALERT_SMTP_HOST:ALERT_SMTP_PORT, by default this node's own Postfix on
127.0.0.1, which relays for its loopback address (app/postfix/render.py) and only for senders
of the whitelisted domains: ALERT_FROM must be one. The webhook wants https with a certificate
that verifies (against ALERT_WEBHOOK_CA_FILE when set, else the system's CAs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime as rfc2822_date
from email.utils import make_msgid
from typing import Any

import httpx

from app.alerts.conditions import TITLES
from app.messages import Message
from app.settings import Settings

log = logging.getLogger("mailrelay.alerts")

SMTP_TIMEOUT = 20.0
WEBHOOK_TIMEOUT = 10.0


class NotifyError(Exception):
    """The channel did not take the notice; the message says why."""


def _translator(language: str) -> Callable[..., str]:
    # The catalogue brings Jinja2 along: imported when a notice is written, not on each
    # 30-second run of the alerts job, which rarely sends one.
    from app.web.i18n import translator

    return translator(language)


@dataclass(frozen=True)
class AlertNotice:
    node_id: str
    hostname: str
    key: str
    started: bool  # True: the condition began to hold; False: it cleared
    since: dt.datetime
    text: str  # the finding's text, an i18n key with %s places for `values`
    values: tuple[str, ...]
    at: dt.datetime

    @property
    def title(self) -> str:
        return TITLES.get(self.key, self.key)

    @property
    def summary(self) -> str:
        return self.text % self.values if self.values else self.text

    def subject(self, language: str = "en") -> str:
        _ = _translator(language)
        what = Message("ALERT") if self.started else Message("cleared")
        return _(
            Message("[mailrelay {node}] {what}: {title}", node=self.node_id, what=what,
                 title=_(self.title))
        )  # fmt: skip

    def body(self, language: str = "en") -> str:
        from app.web.i18n import format_datetime

        _ = _translator(language)
        since = format_datetime(self.since.astimezone(dt.UTC), language, seconds=True) + " UTC"
        params = {"title": _(self.title), "node": self.node_id, "host": self.hostname}
        state = (
            Message("{title} on node {node} ({host}): holds since {since}.", since=since, **params)
            if self.started
            else Message(
                "{title} on node {node} ({host}): cleared at {since}.", since=since, **params
            )
        )
        footer = Message(
            "One message says when an alert starts and one when it clears; the node's dashboard "
            "lists the active ones."
        )
        return f"{_(state)}\n\n{_(self.text, *self.values)}\n\n{_(footer)}\n"

    def json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "hostname": self.hostname,
            "alert": self.key,
            "title": self.title,
            "state": "started" if self.started else "cleared",
            "since": self.since.isoformat(),
            "summary": self.summary,
            "at": self.at.isoformat(),
        }


def channels(settings: Settings) -> list[str]:
    wanted = []
    if settings.alerts.email:
        wanted.append("email")
    if settings.alerts.webhook_url:
        wanted.append("webhook")
    return wanted


async def send(settings: Settings, channel: str, message: AlertNotice) -> None:
    if channel == "email":
        await asyncio.to_thread(_send_email, settings, message)
    else:
        await _post_webhook(settings, message)


def _send_email(settings: Settings, message: AlertNotice) -> None:
    limits = settings.alerts
    assert limits.sender is not None  # load_settings requires it with ALERT_EMAIL
    mail = EmailMessage()
    mail["From"] = limits.sender
    mail["To"] = ", ".join(limits.email)
    mail["Subject"] = message.subject(limits.language)
    mail["Date"] = rfc2822_date(message.at)
    mail["Message-ID"] = make_msgid("mailrelay-alert", limits.sender.rpartition("@")[2])
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    mail.set_content(message.body(limits.language))
    try:
        with smtplib.SMTP(limits.smtp_host, limits.smtp_port, timeout=SMTP_TIMEOUT) as smtp:
            refused = smtp.send_message(mail)
    except smtplib.SMTPRecipientsRefused as exc:
        raise NotifyError(
            f"{limits.smtp_host}:{limits.smtp_port} refused {_refusal(exc.recipients)}"
        ) from None
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else exc.smtp_error
        )
        raise NotifyError(
            f"{limits.smtp_host}:{limits.smtp_port} answered {exc.smtp_code} {text}"
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise NotifyError(f"{limits.smtp_host}:{limits.smtp_port}: {exc}") from None
    if refused:  # the others have it: sending again would repeat it to them
        log.warning(
            "alerts: %s:%s refused %s", limits.smtp_host, limits.smtp_port, _refusal(refused)
        )


def _refusal(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{address}: {code} {text.decode(errors='replace')}"
        for address, (code, text) in recipients.items()
    )


async def _post_webhook(settings: Settings, message: AlertNotice) -> None:
    url = settings.alerts.webhook_url
    assert url is not None
    ca = settings.alerts.webhook_ca_file
    verify: ssl.SSLContext | bool = True
    try:
        if ca is not None:
            verify = ssl.create_default_context(cafile=str(ca))
        async with httpx.AsyncClient(verify=verify, timeout=WEBHOOK_TIMEOUT) as client:
            response = await client.post(url, json=message.json())
    except (OSError, ssl.SSLError, httpx.HTTPError) as exc:
        raise NotifyError(f"webhook {url}: {exc or type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise NotifyError(f"webhook {url} answered HTTP {response.status_code}")
