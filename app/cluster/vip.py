"""Whether this node holds the VIP, from `ip -o addr`."""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess

from app.messages import Message


class VipCheckError(RuntimeError):
    """`ip addr` could not be run or read: whether we hold the VIP is unknown."""


def addresses(ip_output: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The usable addresses in `ip -o addr show` output.

    IPv6 addresses still in (or failed) duplicate address detection cannot be used yet.
    """
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for line in ip_output.splitlines():
        words = line.split()
        for index, word in enumerate(words[:-1]):
            if word not in ("inet", "inet6"):
                continue
            if {"tentative", "dadfailed"} & set(words):
                break
            with contextlib.suppress(ValueError):
                found.add(ipaddress.ip_interface(words[index + 1]).ip)
            break
    return found


def vip_held(vip: str, *, netns: str | None = None) -> bool:
    """Whether the VIP is configured on an interface of this node (or of network namespace
    `netns`) right now. Raises VipCheckError when that cannot be found out."""
    wanted = ipaddress.ip_address(vip)
    command = ["ip", "-o", "addr", "show"]
    if netns is not None:
        command[1:1] = ["-n", netns]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        # The reasons are the operating system's and ip's own texts, quoted as they are.
        raise VipCheckError(
            Message("cannot run {command}: {error}", command=" ".join(command), error=str(exc))
        ) from exc
    if result.returncode != 0:
        raise VipCheckError(
            Message(
                "{command} failed: {error}",
                command=" ".join(command),
                error=result.stderr.strip(),
            )
        )
    return wanted in addresses(result.stdout)
