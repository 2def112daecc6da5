"""The node certificate's pins: by the certificate, or by its public key, which a renewal with
the same key keeps (`mailrelay renew-cert`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from app.settings import load_settings, parse_fingerprint
from app.tls import (
    LIFETIME,
    ensure_certificate,
    fingerprint,
    key_fingerprint,
    matches_pin,
    renew_generated,
)


def der(path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def test_a_renewal_keeps_the_key_pin_and_changes_the_certificate_pin(settings, tmp_path):
    node = dataclasses.replace(settings, state_dir=tmp_path, tls_cert_file=None, tls_key_file=None)
    cert, key, generated = ensure_certificate(node)
    assert generated
    old_der, key_before = der(cert), key.read_bytes()
    by_certificate = parse_fingerprint(fingerprint(cert), "PIN")
    by_key = parse_fingerprint(key_fingerprint(cert), "PIN")
    assert matches_pin(old_der, by_certificate) and matches_pin(old_der, by_key)

    renew_generated(node)

    new_der = der(cert)
    assert new_der != old_der and key.read_bytes() == key_before
    assert matches_pin(new_der, by_key)
    assert not matches_pin(new_der, by_certificate)
    assert not matches_pin(new_der, b"\0" * 32)
    not_after = x509.load_der_x509_certificate(new_der).not_valid_after_utc
    assert abs(not_after - (dt.datetime.now(dt.UTC) + LIFETIME)) < dt.timedelta(minutes=10)


def test_the_command_renews_the_generated_certificate_and_prints_both_pins(tmp_path):
    env = {"STATE_DIR": str(tmp_path), "TLS_CERT_FILE": "", "TLS_KEY_FILE": ""}
    command = [sys.executable, "-m", "app.cli", "renew-cert"]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, **env},
        )  # fmt: skip

    missing = run()
    assert missing.returncode == 1 and "cannot renew" in missing.stderr
    cert, _key, _ = ensure_certificate(
        dataclasses.replace(
            load_settings(), state_dir=tmp_path, tls_cert_file=None, tls_key_file=None
        )
    )
    pin = key_fingerprint(cert)
    done = run()
    assert done.returncode == 0, done.stderr
    assert f"its public key's SHA-256 (a pin that survives a renewal): {pin}" in done.stdout
    assert f"HTTPS certificate SHA-256 fingerprint: {fingerprint(cert)}" in done.stdout
