"""TOTP (RFC 6238) for authenticator apps: new secrets, the enrolment QR code, and which time step
a code belongs to (pyotp computes the codes; nothing here touches the database or the clock)."""

from __future__ import annotations

import hmac
import re

import pyotp
import segno

DIGITS = 6
INTERVAL = 30
# One step either side: a phone whose clock is up to 30 s off still works.
WINDOW = 1
_CODE = re.compile(r"[0-9]{6}")


def new_secret() -> str:
    """160 random bits in base32, the size RFC 4226 recommends."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, username: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL).provisioning_uri(
        name=username, issuer_name=issuer
    )


def qr_svg(uri: str) -> str:
    """The URI as an inline SVG QR code (no style attribute: the CSP allows no inline styles)."""
    return str(segno.make(uri, error="m").svg_inline(scale=5, dark="#000", light="#fff"))


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code `code` is, within the window around `now`; None if none is."""
    code = code.replace(" ", "").strip()
    if not _CODE.fullmatch(code):
        return None
    otp = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL)
    current = otp.timecode(int(now))
    for step in range(current - WINDOW, current + WINDOW + 1):
        if hmac.compare_digest(otp.generate_otp(step), code):
            return step
    return None
