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
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import httpx

from app.alerts.conditions import TITLES
from app.settings import Settings

log = logging.getLogger("mailrelay.alerts")

SMTP_TIMEOUT = 20.0
WEBHOOK_TIMEOUT = 10.0


class NotifyError(Exception):
    """The channel did not take the notice; the message says why."""


@dataclass(frozen=True)
class Message:
    node_id: str
    hostname: str
    key: str
    started: bool  # True: the condition began to hold; False: it cleared
    since: dt.datetime
    summary: str
    at: dt.datetime

    @property
    def title(self) -> str:
        return TITLES.get(self.key, self.key)

    @property
    def subject(self) -> str:
        what = "ALERT" if self.started else "cleared"
        return f"[mailrelay {self.node_id}] {what}: {self.title}"

    def body(self) -> str:
        since = self.since.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        state = "holds since" if self.started else "cleared at"
        return (
            f"{self.title} on node {self.node_id} ({self.hostname}): {state} {since}.\n\n"
            f"{self.summary}\n\n"
            "One message says when an alert starts and one when it clears; the node's dashboard "
            "lists the active ones.\n"
        )

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


async def send(settings: Settings, channel: str, message: Message) -> None:
    if channel == "email":
        await asyncio.to_thread(_send_email, settings, message)
    else:
        await _post_webhook(settings, message)


def _send_email(settings: Settings, message: Message) -> None:
    limits = settings.alerts
    assert limits.sender is not None  # load_settings requires it with ALERT_EMAIL
    mail = EmailMessage()
    mail["From"] = limits.sender
    mail["To"] = ", ".join(limits.email)
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(message.at)
    mail["Message-ID"] = make_msgid("mailrelay-alert", limits.sender.rpartition("@")[2])
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    mail.set_content(message.body())
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


async def _post_webhook(settings: Settings, message: Message) -> None:
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
