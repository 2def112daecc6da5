"""The export the slave pulls: the latest version, its number and a checksum.

A `read` token gets the configuration without secrets (only whether a password is set). A
`cluster` token gets each password sealed for the peer (see app.crypto): never clear text.
"""

from __future__ import annotations

import copy
from typing import Any

from app.config import snapshot as snap
from app.crypto import SecretBox


def build(version: dict[str, Any] | None, box: SecretBox, cluster: bool) -> dict[str, Any]:
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
        "version": number,
        "author": author,
        "created_at": created.isoformat() if created else None,
        "checksum": snap.checksum(config),
        "secrets": "sealed-for-peer" if cluster else "omitted",
        "config": config,
    }
