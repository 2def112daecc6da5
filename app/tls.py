"""The node's HTTPS certificate: the configured one, or a self-signed one made on first start,
and the pins the other node recognises it by."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.settings import Settings

# A generated certificate's lifetime; `mailrelay renew-cert` makes another with the same key.
LIFETIME = dt.timedelta(days=825)


def _colons(digest: bytes) -> str:
    text = digest.hex().upper()
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2))


def fingerprint(cert_file: Path) -> str:
    """The SHA-256 of the certificate: a pin that a renewed certificate no longer matches."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return _colons(cert.fingerprint(hashes.SHA256()))


def key_fingerprint(cert_file: Path) -> str:
    """The SHA-256 of the certificate's public key (its SubjectPublicKeyInfo): a pin that every
    certificate of the same key matches, so a renewal changes nothing on the other node."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return _colons(hashlib.sha256(_spki(cert)).digest())


def served_names(cert_file: Path) -> frozenset[str]:
    """The DNS names a certificate is for (its subjectAltName), lower case; a wildcard stays
    as `*.domain`."""
    stat = cert_file.stat()
    return _served_names(cert_file, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _served_names(cert_file: Path, _mtime_ns: int, _size: int) -> frozenset[str]:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(name.lower().rstrip(".") for name in names.get_values_for_type(x509.DNSName))


def names_host(names: frozenset[str], host: str) -> bool:
    """Whether `host` is one of `names`, a wildcard matching one label included."""
    host = host.lower().rstrip(".")
    label, dot, parent = host.partition(".")
    return host in names or bool(label and dot and f"*.{parent}" in names)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def matches_pin(der: bytes, pin: bytes) -> bool:
    """Whether a certificate (DER) is the pinned one: `pin` is the SHA-256 of the certificate
    itself, or of its public key. Compared in constant time either way."""
    by_certificate = hmac.compare_digest(hashlib.sha256(der).digest(), pin)
    try:
        key = _spki(x509.load_der_x509_certificate(der))
    except ValueError:
        return by_certificate
    return hmac.compare_digest(hashlib.sha256(key).digest(), pin) or by_certificate


def _self_signed(
    settings: Settings, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[bytes, bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(settings.hostname), x509.DNSName("localhost")]
    for address in {settings.node_ip, settings.vip_address, "127.0.0.1"}:
        if address:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, settings.hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(settings: Settings) -> tuple[Path, Path, bool]:
    """Return (cert, key, generated_now). A configured pair is used as it is."""
    if settings.tls_cert_file and settings.tls_key_file:
        return settings.tls_cert_file, settings.tls_key_file, False
    cert_file, key_file = settings.generated_cert_file, settings.generated_key_file
    if cert_file.exists() and key_file.exists():
        return cert_file, key_file, False
    cert_pem, key_pem = _self_signed(settings)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_file.write_bytes(cert_pem)
    return cert_file, key_file, True


def renew_generated(settings: Settings) -> Path:
    """A new self-signed certificate for the generated key, valid for LIFETIME from now: a
    peer that pins the key (key_fingerprint) goes on, one that pins the certificate needs the
    new fingerprint. The services read it when they start."""
    cert_file, key_file = settings.generated_cert_file, settings.generated_key_file
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file} is not the EC key mailrelay generates")
    cert_pem, _ = _self_signed(settings, key)
    tmp = cert_file.with_name(f".{cert_file.name}.new")
    tmp.write_bytes(cert_pem)
    os.replace(tmp, cert_file)
    return cert_file
