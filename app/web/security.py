"""Response headers every page and API answer carries (also error and redirect answers)."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

from app.web.assets import HTMX_CDN_URL

CSP = "; ".join(
    [
        "default-src 'self'",
        f"script-src 'self' {HTMX_CDN_URL}",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ]
)

HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "strict-transport-security": "max-age=31536000",
    "cross-origin-opener-policy": "same-origin",
}


async def add_security_headers(message: Message, scope: Scope) -> None:
    """A before_send hook: it sees every response, including those exception handlers make."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in HEADERS.items():
        headers[name] = value
    # Pages show live state: never from a cache. Static files may be cached.
    if not scope["path"].startswith("/static/"):
        headers["cache-control"] = "no-store"
