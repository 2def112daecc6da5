"""`python -m app.agent` (also `mailrelay agent ...`): the root side of a node.

  serve               run the agent on AGENT_SOCKET (or the systemd-activated socket)
  postfix-settings    apply postfix-conf/main.cf.fragment with postconf (--check: only show)
  thaw                undo what a queue sync that died mid-copy left (the unit's ExecStopPost)

Environment: AGENT_SOCKET (/run/mailrelay/agent.sock), POSTFIX_CONFIG_DIR (/etc/postfix),
POSTFIX_MAPS_ROOT (/etc/postfix/mailrelay), AGENT_SOCKET_MODE (0660); the replica import's
REPLICA_DIR (/var/spool/mailrelay-replica), REPLICA_MAX_FILE_BYTES (Postfix's
message_size_limit plus 4 MiB), REPLICA_MAX_FILES (200000); for queue sync SYNC_PEER,
SYNC_SSH_KEY, SYNC_KNOWN_HOSTS (app/agent/queuesync.py); for postfix-settings the
optional protections POSTFIX_RBL_LIST, POSTFIX_CLIENT_RATE_LIMIT, POSTFIX_POSTSCREEN (see
app/agent/postfix.py: anti_abuse).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from app import logsetup
from app.agent import queuesync
from app.agent.postfix import SHADOW_COUNTERS, SHADOW_STORE, AgentError, PostfixTools
from app.agent.replica import REPLICA
from app.agent.server import serve


def tools_from_env() -> PostfixTools:
    return PostfixTools(
        Path(os.environ.get("POSTFIX_CONFIG_DIR", "/etc/postfix")),
        Path(os.environ.get("POSTFIX_MAPS_ROOT", "/etc/postfix/mailrelay")),
        Path(os.environ.get("REPLICA_DIR", str(REPLICA))),
        Path(os.environ.get("SHADOW_STORE", str(SHADOW_STORE))),
        Path(os.environ.get("SHADOW_COUNTER_FILE", str(SHADOW_COUNTERS))),
    )


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser("serve", help="run the privileged agent")
    serve.set_defaults(func=cmd_serve)
    settings = sub.add_parser("postfix-settings", help="apply the product's main.cf settings")
    settings.add_argument("--check", action="store_true", help="only print what would change")
    settings.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a fragment value for this host (e.g. mailrelay_tls_dir=/etc/x)",
    )
    settings.set_defaults(func=cmd_postfix_settings)
    thaw = sub.add_parser("thaw", help="thaw or restart Postfix after a sync that died mid-copy")
    thaw.set_defaults(func=cmd_thaw)


def cmd_serve(args: argparse.Namespace) -> None:
    # Belt and braces for ExecStopPost: an agent started by hand has none.
    cmd_thaw(args)
    socket_path = Path(os.environ.get("AGENT_SOCKET", "/run/mailrelay/agent.sock"))
    mode = int(os.environ.get("AGENT_SOCKET_MODE", "0660"), 8)
    asyncio.run(serve(socket_path, tools_from_env(), mode))


def cmd_thaw(args: argparse.Namespace) -> None:
    for action in queuesync.recover():
        logging.getLogger("mailrelay.agent").warning("a queue sync died mid-copy: %s", action)


def cmd_postfix_settings(args: argparse.Namespace) -> None:
    overrides = {}
    for item in args.set:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise AgentError(f"--set wants NAME=VALUE, got {item!r}")
        overrides[name.strip()] = value.strip()
    changes = tools_from_env().apply_settings(overrides, dry_run=args.check, env=dict(os.environ))
    verb = "would change" if args.check else "changed"
    for change in changes:
        print(f"{verb}: {change}")
    if not changes:
        print("Postfix settings are up to date")


def main(argv: list[str] | None = None) -> int:
    logsetup.configure()
    parser = argparse.ArgumentParser(prog="mailrelay agent")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except AgentError as exc:
        logsetup.error_line(f"mailrelay agent: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
