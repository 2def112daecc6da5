"""`python -m app.agent` (also `mailrelay agent ...`): the root side of a node.

  serve               run the agent on AGENT_SOCKET (or the systemd-activated socket)
  postfix-settings    apply postfix-conf/main.cf.fragment with postconf (--check: only show)
  thaw                undo what a queue sync that died mid-copy left (the unit's ExecStopPost)

Environment: read and checked by app.settings.load_agent_settings (AgentSettings): the
socket, Postfix's directories, the replica import's caps, queue sync's peer and ssh (SYNC_*),
and for postfix-settings the optional protections (POSTFIX_RBL_LIST, ...) and SHADOW_MODE.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from app import logsetup
from app.agent import queuesync
from app.agent.postfix import AgentError, PostfixTools
from app.agent.server import serve
from app.settings import SettingsError, load_agent_settings


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
    settings = load_agent_settings()
    # Belt and braces for ExecStopPost: an agent started by hand has none.
    cmd_thaw(args)
    asyncio.run(serve(settings))


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
    settings = load_agent_settings()
    changes = PostfixTools.from_settings(settings).apply_settings(
        settings, overrides, dry_run=args.check
    )
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
    except (AgentError, SettingsError) as exc:
        logsetup.error_line(f"mailrelay agent: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
