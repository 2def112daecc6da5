#!/usr/bin/python3
"""Health check of the mailrelay-web container: GET https://127.0.0.1:$HTTPS_PORT/healthz.

Exit 0 when the app answers {"status": "ok"}, 1 otherwise (podman's HEALTHCHECK / HealthCmd
contract). The certificate is the node's own (often self-signed): it is not verified here, the
check is about the app answering on its port.
"""

import json
import os
import ssl
import sys
import urllib.request


def main() -> int:
    host = os.environ.get("HTTPS_HOST", "").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::", "*"):  # noqa: S104 - a wildcard bind: ask over loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = os.environ.get("HTTPS_PORT", "").strip() or "8443"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"https://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:
            body = json.load(response)
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if body != {"status": "ok"}:
        print(f"{url}: unexpected answer {body!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
