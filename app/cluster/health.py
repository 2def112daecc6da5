"""The node's own host figures for its status: its certificate's expiry and its spool disk.

Both are cheap (one small file read, one statfs) and known to any process of the node that can
see the files; one that cannot (the web app in a container without the spool) says why.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from app.settings import Settings


def cert_file(settings: Settings) -> Path:
    """The certificate the node's HTTPS API presents (to browsers and to the peer)."""
    return settings.tls_cert_file or settings.generated_cert_file


# What the HTTPS server presents is asked at most this often (a TLS handshake with itself).
SERVED_CHECK_SECONDS = 300.0
_served: dict[tuple[str, int], tuple[float, dt.datetime | None]] = {}


def _reachable(host: str) -> str:
    """Where a server bound to `host` answers: one bound to every address (HTTPS_HOST of
    0.0.0.0 or ::) answers on loopback too."""
    try:
        return "127.0.0.1" if ipaddress.ip_address(host).is_unspecified else host
    except ValueError:  # a host name
        return host or "127.0.0.1"


def served_not_after(host: str, port: int) -> dt.datetime | None:
    """The end of the certificate the node's HTTPS server presents now (None: it does not
    answer). A certificate file renewed in place is served only after a restart, while the file
    already says the new date: the older of the two is the one browsers and peers get."""
    key = (_reachable(host), port)
    checked = _served.get(key)
    if checked is not None and time.monotonic() - checked[0] < SERVED_CHECK_SECONDS:
        return checked[1]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # read, not trusted
    try:
        with (
            socket.create_connection(key, timeout=2) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        found = x509.load_der_x509_certificate(der).not_valid_after_utc if der else None
    except (OSError, ValueError):
        found = None
    _served[key] = (time.monotonic(), found)
    return found


def host_facts(settings: Settings) -> dict[str, Any]:
    facts: dict[str, Any] = {"tls_cert_not_after": None, "spool_used_percent": None}
    unknown: list[str] = []
    path = cert_file(settings)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        not_after = cert.not_valid_after_utc
        served = served_not_after(settings.https_host, settings.https_port)
        if served is not None and served < not_after:
            # Renewed on disk, not yet served: the alert and /metrics follow what is served.
            not_after = served
            facts["tls_cert_restart_needed"] = True
        facts["tls_cert_not_after"] = not_after.isoformat()
    except (OSError, ValueError) as exc:
        unknown.append(f"certificate {path}: {exc}")
    spool = settings.alerts.spool_dir
    try:
        usage = shutil.disk_usage(spool)
        # As df(1) shows it: the blocks reserved for root are no room for Postfix.
        facts["spool_used_percent"] = round(100.0 * usage.used / (usage.used + usage.free), 2)
    except OSError as exc:
        unknown.append(f"spool {spool}: {exc.strerror}")
    if unknown:
        facts["unknown"] = "; ".join(unknown)
    return facts


def days_left(not_after: str | None, now: dt.datetime) -> float | None:
    if not not_after:
        return None
    return (dt.datetime.fromisoformat(not_after) - now).total_seconds() / 86400.0
