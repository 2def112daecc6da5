"""`python -m app.replication receiver|milter`: the two shadow-copy services of a node.

  receiver   the peer's shadow copies in, over TLS on NODE_IP:SHADOW_PORT (its own unit,
             mailrelay-shadow-receiver.service)
  milter     Postfix's smtpd_milters: a copy to the peer before the 250
             (mailrelay-shadow-milter.service)
Both read app/settings.py's SHADOW_* settings and need no database.
"""

from __future__ import annotations

import argparse
import sys

from app import logsetup
from app.cluster.peer import parse_fingerprint
from app.replication import shadow_receiver, sync_mark
from app.replication.shadow_client import ShadowClient
from app.replication.shadow_store import ShadowStore
from app.settings import Settings, SettingsError, load_settings

# A message is never larger than the store.
MAX_MESSAGE_BYTES = 1 << 30


def receiver(settings: Settings) -> None:
    if not settings.shadow_token:
        raise SettingsError("SHADOW_TOKEN is required for the shadow receiver")
    cert = settings.shadow_cert_file or settings.tls_cert_file or settings.generated_cert_file
    key = settings.shadow_key_file or settings.tls_key_file or settings.generated_key_file
    store = ShadowStore(settings.shadow_store, settings.shadow_store_max_bytes)
    service = shadow_receiver.Receiver(
        store,
        settings.shadow_token,
        min(MAX_MESSAGE_BYTES, settings.shadow_store_max_bytes),
        settings.replica_dir / sync_mark.NAME,
        settings.shadow_timeout_ms / 1000,
    )
    context = shadow_receiver.server_context(cert, key)
    listener = shadow_receiver.listen(settings.node_ip, settings.shadow_port)
    shadow_receiver.serve(service, listener, context, peer=settings.peer_node_ip)


def milter(settings: Settings) -> None:
    from app.replication import shadow_milter

    client = None
    if settings.peer_node_ip and settings.shadow_token and settings.peer_cert_fingerprint:
        client = ShadowClient(
            settings.peer_node_ip,
            settings.shadow_port,
            parse_fingerprint(settings.peer_cert_fingerprint, "PEER_CERT_FINGERPRINT"),
            settings.shadow_token,
            settings.shadow_timeout_ms / 1000,
            # From this node's own address, the one the peer's receiver lets in.
            source=settings.node_ip,
        )
    settings.shadow_counter_file.parent.mkdir(parents=True, exist_ok=True)
    shadowing = shadow_milter.Shadowing(
        settings.shadow_mode, client, shadow_milter.Counters(settings.shadow_counter_file)
    )
    shadow_milter.serve(settings.shadow_milter_socket, shadowing)


def main(argv: list[str] | None = None) -> int:
    logsetup.configure()
    parser = argparse.ArgumentParser(prog="python -m app.replication")
    parser.add_argument("service", choices=("receiver", "milter"))
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        (receiver if args.service == "receiver" else milter)(settings)
    except SettingsError as exc:
        logsetup.error_line(f"mailrelay {args.service}: {exc}")
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
