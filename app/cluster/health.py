"""The node's own host figures for its status: its certificate's expiry and its spool disk.

Both are cheap (one small file read, one statfs) and known to any process of the node that can
see the files; one that cannot (the web app in a container without the spool) says why.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from cryptography import x509

from app.settings import Settings


def cert_file(settings: Settings) -> Path:
    """The certificate the node's HTTPS API presents (to browsers and to the peer)."""
    return settings.tls_cert_file or settings.generated_cert_file


def host_facts(settings: Settings) -> dict[str, Any]:
    facts: dict[str, Any] = {"tls_cert_not_after": None, "spool_used_percent": None}
    unknown: list[str] = []
    path = cert_file(settings)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        facts["tls_cert_not_after"] = cert.not_valid_after_utc.isoformat()
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
