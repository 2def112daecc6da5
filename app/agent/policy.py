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

# IPv6 ranges that carry an IPv4 address in their low bits (mapped, compatible, NAT64) or
# right after the prefix (6to4): trusting one trusts that part of the IPv4 internet.
_EMBEDDED_IPV4 = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), 96),
    (ipaddress.IPv6Network("::/96"), 96),
    (ipaddress.IPv6Network("64:ff9b::/96"), 96),
    (ipaddress.IPv6Network("2002::/16"), 16),
)


def _network(line: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A mynetworks line as rendered (IPv6 in brackets) as a network."""
    if line.startswith("["):
        address, _, prefix = line[1:].partition("]/")
        line = f"{address}/{prefix}"
    return ipaddress.ip_network(line, strict=True)


def _embedded(network: ipaddress.IPv6Network) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks an IPv6 network covers through the embedding ranges."""
    found = []
    for embedding, start in _EMBEDDED_IPV4:
        if not network.overlaps(embedding):
            continue
        bits = max(0, min(32, network.prefixlen - start))
        shift = 128 - start - 32
        first = (int(network.network_address) >> shift) & 0xFFFFFFFF
        found.append(ipaddress.IPv4Network((first >> (32 - bits) << (32 - bits), bits)))
    return found


def network_problems(mynetworks: bytes) -> list[str]:
    """Every trusted network wider than the floor of app.config.validation (IPv6 networks
    judged also by the IPv4 they embed); empty when the map keeps to it."""
    problems: list[str] = []
    for number, line in enumerate(mynetworks.decode("ascii", "replace").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        try:
            network = _network(line)
            validation.cidr(str(network))
            if isinstance(network, ipaddress.IPv6Network):
                for inner in _embedded(network):
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
        except ValueError as exc:
            problems.append(
                Message(
                    "mynetworks line {number}: {problem}", number=number, problem=message_of(exc)
                )
            )
    return problems
