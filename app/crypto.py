"""Secrets at rest and in the export.

The node's secret key file holds a Fernet key. Route passwords are stored encrypted under it.
Both nodes of a cluster share the same key file (the installer copies it), so a cluster token's
export can carry a password encrypted under a key derived from it for the purpose "export": the
peer decrypts, nobody on the wire or in a log sees clear text, and a leaked at-rest ciphertext is
not an export.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecretKeyError(Exception):
    pass


def ensure_secret_key(path: Path) -> None:
    """Create the key file (mode 0600) if it does not exist yet; never overwrite one."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(Fernet.generate_key() + b"\n")


class SecretBox:
    """Encrypts and decrypts short secrets with the node's key (and its export sub-key)."""

    def __init__(self, key_file: Path) -> None:
        try:
            raw = key_file.read_bytes().strip()
        except OSError as exc:
            raise SecretKeyError(f"cannot read secret key file {key_file}: {exc}") from exc
        try:
            self._at_rest = Fernet(raw)
        except ValueError as exc:
            raise SecretKeyError(f"{key_file} does not hold a valid Fernet key") from exc
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"mailrelay-export-v1"
        ).derive(base64.urlsafe_b64decode(raw))
        self._export = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, clear: str) -> str:
        return self._at_rest.encrypt(clear.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._at_rest.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretKeyError("a stored secret does not decrypt with this node's key") from exc

    def seal_for_peer(self, at_rest_token: str) -> str:
        return self._export.encrypt(self.decrypt(at_rest_token).encode()).decode()

    def open_from_peer(self, export_token: str) -> str:
        """Turn a peer's export ciphertext into this node's at-rest ciphertext."""
        try:
            clear = self._export.decrypt(export_token.encode()).decode()
        except InvalidToken as exc:
            raise SecretKeyError("the peer's secret does not decrypt: key files differ") from exc
        return self.encrypt(clear)
