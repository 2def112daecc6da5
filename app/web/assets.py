"""The pinned htmx release. scripts/lib/bootstrap.sh reads these two lines to fetch and verify the
local copy, so the CDN file and the local one are the same bytes."""

HTMX_VERSION = "2.0.11"
HTMX_SRI = "sha384-2OatzQy1H+Zd/IIrjr1TcuDGqLXeHhbooAyJY1KdQMKnr4LZ22k31GBLdYKHmVjg"
HTMX_CDN_ORIGIN = "https://cdn.jsdelivr.net"
HTMX_CDN_URL = f"{HTMX_CDN_ORIGIN}/npm/htmx.org@{HTMX_VERSION}/dist/htmx.min.js"
HTMX_LOCAL_PATH = "/static/vendor/htmx.min.js"
