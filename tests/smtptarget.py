"""A relay target that records what it receives: `python -m tests.smtptarget HOST PORT DIR`.

Each message is written to DIR as <n>.eml plus <n>.json with the envelope and how it arrived
(over TLS or not, which SMTP AUTH user, its Received: headers). Options: --tls CERT KEY (offer
STARTTLS), --require-tls, --auth USER:PASSWORD (require AUTH, only after STARTTLS). Runs until
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import itertools
import json
import signal
import ssl
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Recorder:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.counter = itertools.count(len(list(directory.glob("[0-9]*.json"))) + 1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        n = next(self.counter)
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        message = email.message_from_bytes(content)
        (self.directory / f"{n}.eml").write_bytes(content)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "auth_user": (
                session.auth_data.login.decode()
                if isinstance(session.auth_data, LoginPassword)
                else None
            ),
            "message_id": message.get("Message-ID", ""),
            # The trace headers, newest first and unfolded: which hops the message took.
            "received": [" ".join(str(h).split()) for h in message.get_all("Received", [])],
        }
        tmp = self.directory / f".{n}.json"
        tmp.write_text(json.dumps(record))
        tmp.rename(self.directory / f"{n}.json")
        return "250 OK recorded"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--require-tls", action="store_true")
    parser.add_argument("--auth", metavar="USER:PASSWORD")
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*args.tls)
        kwargs.update(tls_context=context, require_starttls=args.require_tls)
    if args.auth:
        user, _, password = args.auth.partition(":")

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
        ) -> AuthResult:
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            return AuthResult(success=ok, auth_data=auth_data if ok else None)

        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=True)
    controller = Controller(Recorder(args.directory), hostname=args.host, port=args.port, **kwargs)
    controller.start()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


def received(directory: Path) -> list[dict[str, Any]]:
    """What a target recorded, in arrival order."""
    files = sorted(directory.glob("[0-9]*.json"), key=lambda p: int(p.stem))
    return [json.loads(p.read_text()) for p in files]


if __name__ == "__main__":
    main()
