"""The agent's own check of the policy floors in the maps it is asked to install.

The web app and the config pull validate every value before they render it, but the agent is
root and trusts nothing it is sent: a caller that skipped the validation (or a bug in it) must
not make this relay trust a network wider than the floor, the only way these maps could open
it to relaying for strangers (smtpd_relay_restrictions = permit_mynetworks,
reject_unauth_destination).
"""

from __future__ import annotations

import ipaddress

from app.config import validation
from app.messages import Message, message_of


def _network(line: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A mynetworks line as rendered (IPv6 in brackets) as a network."""
    if line.startswith("["):
        address, _, prefix = line[1:].partition("]/")
        line = f"{address}/{prefix}"
    return ipaddress.ip_network(line, strict=True)


def network_problems(mynetworks: bytes) -> list[str]:
    """Every trusted network wider than the floor of app.config.validation (IPv6 networks
    judged also by the IPv4 they embed), and networks that pass one by one but together trust
    too much; empty when the map keeps to the floor."""
    problems: list[str] = []
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for number, line in enumerate(mynetworks.decode("ascii", "replace").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        try:
            network = _network(line)
            validation.cidr(str(network))
            if isinstance(network, ipaddress.IPv6Network):
                for inner in validation.ipv4_inside(network):
                    try:
                        validation.cidr(str(inner))
                    except ValueError:
                        raise ValueError(
                            Message(
                                "{network} embeds the IPv4 network {inner}, wider than the floor",
                                network=str(network),
                                inner=str(inner),
                            )
                        ) from None
            trusted.append(network)
        except ValueError as exc:
            problems.append(
                Message(
                    "mynetworks line {number}: {problem}", number=number, problem=message_of(exc)
                )
            )
    try:
        validation.trusted_together(trusted)
    except ValueError as exc:
        problems.append(Message("mynetworks as a whole: {problem}", problem=message_of(exc)))
    return problems
