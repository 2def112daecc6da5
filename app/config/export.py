"""The export the slave pulls: the version the master's Postfix runs, its number and a checksum.

Only a version this node applied successfully is ever exported: a draft (saved, not applied), or
a version whose apply failed here, never reaches the slave. Before the first apply the export is
version 0, an empty configuration, which a slave never applies. A `read` token gets the
configuration without secrets (only whether a password is set). A `cluster` token
gets each password sealed for the peer (see app.crypto): never clear text.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from app.config import snapshot as snap
from app.crypto import SecretBox


def build(
    node_id: str,
    version: dict[str, Any] | None,
    applied_at: dt.datetime | None,
    box: SecretBox,
    cluster: bool,
) -> dict[str, Any]:
    if version is None:
        config, number, author, created = snap.empty(), 0, "", None
    else:
        config = copy.deepcopy(version["snapshot"])
        number, author, created = version["number"], version["author"], version["created_at"]
    for entry in config["sender_domains"]:
        route = entry.get("route")
        if not route:
            continue
        secret = route.pop("auth_password_enc", None)
        if cluster and secret:
            route["auth_password_sealed"] = box.seal_for_peer(secret)
        else:
            route["auth_password_set"] = bool(secret)
    return {
        "node_id": node_id,
        "version": number,
        "applied_at": applied_at.isoformat() if applied_at else None,
        "author": author,
        "created_at": created.isoformat() if created else None,
        "checksum": snap.checksum(config),
        "secrets": "sealed-for-peer" if cluster else "omitted",
        "config": config,
    }
