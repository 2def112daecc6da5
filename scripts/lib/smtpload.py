"""Continuous SMTP load for the lab and the benchmarks: each of CONCURRENCY workers opens a new
session after the last one, sends one message and quits, for SECONDS. One JSON object on stdout:
sessions, messages accepted, errors by kind (refused, timeout, reset, a 4xx/5xx reply), the
greeting latency (connect to 220) p50/p99/max in milliseconds and how many greetings took over
100 ms and over 1 s.

    python3 smtpload.py SERVER SECONDS CONCURRENCY SENDER TAG [PAUSE]

PAUSE (seconds, default 0) paces each worker between its sessions.

A refused or reset connection is exactly what a sync in `stop` mode costs a sender; in `freeze`
mode the greeting only comes late. Standard library only: it runs in the lab's client
namespace with the host's python3.
"""

from __future__ import annotations

import json
import smtplib
import socket
import sys
import threading
import time
from collections import Counter


def _session(server: str, sender: str, message_id: str) -> float:
    """One SMTP session with one message; the seconds from connect to the 220 greeting."""
    started = time.monotonic()
    smtp = smtplib.SMTP(timeout=20)
    try:
        code, _ = smtp.connect(server, 25)
        greeted = time.monotonic() - started
        if code != 220:
            raise smtplib.SMTPConnectError(code, b"no 220 greeting")
        smtp.sendmail(
            sender,
            ["you@dest.example"],
            f"From: {sender}\r\nTo: you@dest.example\r\nMessage-ID: <{message_id}>\r\n"
            f"Subject: load\r\n\r\nload\r\n",
        )
        smtp.quit()
        return greeted
    finally:
        smtp.close()


def _kind(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionResetError | smtplib.SMTPServerDisconnected | BrokenPipeError):
        return "reset"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"smtp {exc.smtp_code}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "smtp rcpt refused"
    return type(exc).__name__


def run(
    server: str, seconds: float, concurrency: int, sender: str, tag: str, pause: float = 0.0
) -> dict:
    deadline = time.monotonic() + seconds
    greetings: list[float] = []
    errors: Counter[str] = Counter()
    sessions = [0]
    lock = threading.Lock()

    def worker(number: int) -> None:
        sequence = 0
        while time.monotonic() < deadline:
            sequence += 1
            try:
                greeted = _session(server, sender, f"{tag}-{number}-{sequence}@load.test")
            except Exception as exc:  # every failure is a figure, whatever its kind
                with lock:
                    sessions[0] += 1
                    errors[_kind(exc)] += 1
                time.sleep(0.05)  # a refused connect fails at once: do not spin
                continue
            with lock:
                sessions[0] += 1
                greetings.append(greeted)
            time.sleep(pause)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    greetings.sort()

    def quantile(q: float) -> float:
        return round(greetings[min(len(greetings) - 1, int(q * len(greetings)))] * 1000, 1)

    return {
        "seconds": seconds,
        "concurrency": concurrency,
        "sessions": sessions[0],
        "accepted": len(greetings),
        "errors": dict(errors),
        "greeting_ms": (
            {"p50": quantile(0.5), "p99": quantile(0.99), "max": round(greetings[-1] * 1000, 1)}
            if greetings
            else {}
        ),
        # A freeze delays only the sessions that arrive while it lasts: too few to move p99 when
        # syncs are seconds apart, so these say how many senders met one.
        "greetings_over": {
            "100ms": sum(1 for g in greetings if g > 0.1),
            "1s": sum(1 for g in greetings if g > 1.0),
        },
    }


if __name__ == "__main__":
    server, seconds, concurrency, sender, tag = sys.argv[1:6]
    pause = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    print(json.dumps(run(server, float(seconds), int(concurrency), sender, tag, pause)))
