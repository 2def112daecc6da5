"""The rules every configuration value must pass before it is stored or rendered.

One set of rules for the GUI, the API, the config pull and the renderer. Anything that can reach a
Postfix map is refused when it holds whitespace or control characters: one stray newline in a map
value would be a second map entry.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import idna

from app.messages import Message, message_of

TLS_MODES = ("none", "may", "encrypt", "verify")
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Names whose every label is letters, digits and inner hyphens, without the "??--" reserved for
# A-labels: IDNA's whole check (about 0.1 ms a name, most of an Apply at 100,000 domains) could
# only lowercase them, so they skip it. Anything else, punycode included, takes the full check.
_PLAIN_ASCII_NAME_RE = re.compile(
    r"(?:(?!..--)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"(?!..--)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
# A name exactly as domain_name() returns it, in one match: plain lowercase labels (no "??--"),
# at least two, the last not all digits, 253 characters at most. Checking a stored snapshot
# (every render, every pull) asks this first and domain_name() only when it says no: at 100,000
# sender domains that was half of an Apply's render (tests/unit/test_validation.py holds the two
# to the same answer).
_LABEL = r"(?!..--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NORMAL_NAME_RE = re.compile(rf"(?=[^\n]{{4,253}}\Z)(?:{_LABEL}\.)+(?![0-9]+\Z){_LABEL}")
# Whitespace, C0 and C1 controls, line/paragraph separators and lone surrogates.
_MAP_UNSAFE_RE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
MAX_COMMENT = 500
# Wider trusted networks than these are almost certainly a mistake that opens the relay.
_MIN_PREFIX = {4: 8, 6: 32}
# IPv6 blocks whose last 32 bits carry an IPv4 address: a network inside one is as wide, in IPv4
# terms, as its prefix beyond the block's /96, and must meet the IPv4 floor there (a /96 of one
# of them is all of IPv4). Teredo keeps the client's IPv4 address (inverted) in the same bits.
_IPV4_EMBEDDING = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), Message("IPv4-mapped addresses")),
    (ipaddress.IPv6Network("::/96"), Message("IPv4-compatible addresses")),
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), Message("IPv4-translated addresses")),
    (ipaddress.IPv6Network("64:ff9b::/96"), Message("NAT64 addresses")),
    (ipaddress.IPv6Network("64:ff9b:1::/48"), Message("local-use NAT64 addresses")),
    (ipaddress.IPv6Network("2001::/32"), Message("Teredo addresses")),
)
_EMBEDDED_AT = 96
# 6to4 carries the IPv4 address right after its /16, not in the last 32 bits.
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
# Together, the trusted networks may cover at most two /8s' worth of IPv4 addresses (every
# private range, 10/8, 172.16/12, 192.168/16 and 100.64/10 at once, fits) and two /32s of IPv6.
# Each network at the floor passes on its own, but 256 IPv4 /8s are all of IPv4.
_MOST_TOGETHER = {4: 2 << 24, 6: 2 << 96}
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# Names that resolve to this host by convention (RFC 6761 and the classic localhost.DOMAIN).
_LOCALHOST = "localhost"
_RELAY_HOST = Message("The relay host")


class FieldErrors(ValueError):
    """Validation failed; `errors` maps each field name to the message shown beside it."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def map_safe(value: str, what: str) -> str:
    if _MAP_UNSAFE_RE.search(value):
        raise ValueError(
            Message("{what} must not contain spaces, line breaks or control characters.", what=what)
        )
    return value


# Names found normal already: each render, pull and change checks every stored name again, and
# a set lookup takes a tenth of the match (about 0.4 microseconds a name). Bounded: a relay
# that renames everything over the years starts it again now and then.
_KNOWN_NORMAL: set[str] = set()
_KNOWN_NORMAL_MOST = 1_000_000


def is_normal_domain(value: str) -> bool:
    """True when domain_name(value) would return `value` itself; False: ask domain_name()."""
    if value in _KNOWN_NORMAL:
        return True
    if _NORMAL_NAME_RE.fullmatch(value) is None:
        return False
    if len(_KNOWN_NORMAL) >= _KNOWN_NORMAL_MOST:
        _KNOWN_NORMAL.clear()
    _KNOWN_NORMAL.add(value)
    return True


def domain_name(value: str, what: str = Message("A domain")) -> str:
    """Normalise a domain to lowercase ASCII (IDN to punycode) or raise ValueError."""
    value = value.strip()
    if not value:
        raise ValueError(Message("{what} is required.", what=what))
    map_safe(value, what)
    candidate = value.rstrip(".") if value.endswith(".") and not value.endswith("..") else value
    ascii_name = (
        candidate.lower() if _PLAIN_ASCII_NAME_RE.fullmatch(candidate) else _idna(candidate, what)
    )
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2:
        raise ValueError(Message("{what} needs at least two labels, like example.com.", what=what))
    for label in labels:
        if not _LABEL_RE.match(label):
            raise ValueError(
                Message("{what} has an invalid label {label!r}.", what=what, label=label)
            )
    if labels[-1].isdigit():
        raise ValueError(Message("{what} must not end in a numeric label.", what=what))
    return ascii_name


def _idna(name: str, what: str) -> str:
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise ValueError(
            Message("{what} is not a valid domain name: {error}.", what=what, error=str(exc))
        ) from None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, Teredo)."""
    if address.teredo:
        return address.teredo[1]
    if any(address in block for block, _ in _IPV4_EMBEDDING):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _not_a_relay(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Message | None:
    """Why no route may point at `address` (it is this host, no host, or many), or None."""
    if address.is_loopback:
        return Message("a loopback address")
    if address.is_unspecified:
        return Message("an unspecified address")
    if address in _THIS_NETWORK:
        return Message("in 0.0.0.0/8 (this network)")
    if address.is_link_local:
        return Message("a link-local address")
    if address.is_multicast:
        return Message("a multicast address")
    if address.version == 4 and address.is_reserved:
        return Message("a reserved or broadcast address")
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        why = _not_a_relay(embedded) if embedded else None
        if why:
            return Message("{why} ({address}) in IPv6 form", why=why, address=embedded)
    return None


# Many sender domains share a few smarthosts: an Apply of 100,000 routes to 50 hosts checks
# 50 hosts, not 100,000. The answer depends on the text alone; refusals are not cached.
@functools.lru_cache(maxsize=4096)
def relay_host(value: str) -> str:
    """A relay target: a hostname (normalised like a domain) or an IP address, never this host
    itself, a link-local neighbour or a multicast group."""
    value = value.strip()
    if not value:
        raise ValueError(Message("The relay host is required."))
    map_safe(value, _RELAY_HOST)
    if "%" in value:
        raise ValueError(Message("The relay host must not carry an IPv6 zone (%...)."))
    try:
        address = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        pass
    else:
        why = _not_a_relay(address)
        if why:
            raise ValueError(
                Message(
                    "The relay host {address} is {why}: a route must point at a mail server "
                    "elsewhere on the network.",
                    address=address,
                    why=why,
                )
            )
        return str(address)
    this_host = ValueError(
        Message(
            "The relay host {host} names this host (localhost): a route must point at a mail "
            "server elsewhere on the network.",
            host=value,
        )
    )
    if value.lower().rstrip(".") == _LOCALHOST:
        raise this_host
    if value.count(".") == 0:
        raise ValueError(Message("The relay host must be a fully qualified name or an IP address."))
    name = domain_name(value, _RELAY_HOST)
    labels = name.split(".")
    if _LOCALHOST in (labels[0], labels[-1]):
        raise this_host
    return name


def port(value: str | int) -> int:
    text = str(value).strip()
    # Plain ASCII digits only: int() would also take "+25", "1_0" and non-ASCII digits.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(Message("The port must be a whole number."))
    number = int(text)
    if not 1 <= number <= 65535:
        raise ValueError(Message("The port must be between 1 and 65535."))
    return number


def tls_mode(value: str) -> str:
    value = value.strip().lower()
    if value not in TLS_MODES:
        raise ValueError(
            Message("The TLS mode must be one of {modes}.", modes=", ".join(TLS_MODES))
        )
    return value


def cidr(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(Message("A network is required."))
    map_safe(value, Message("A network"))
    if "%" in value:
        raise ValueError(Message("A network must not carry an IPv6 zone (%...)."))
    if "/" not in value:
        raise ValueError(
            Message("Write the prefix length too, like {value}/32 or 10.0.0.0/8.", value=value)
        )
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            Message("{value!r} is not a network in CIDR notation (like 10.0.0.0/8).", value=value)
        ) from None
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ValueError(
            Message("{value} has host bits set; did you mean {loose}?", value=value, loose=loose)
        ) from None
    if network.prefixlen < _MIN_PREFIX[network.version]:
        raise ValueError(
            Message(
                "{network} is too wide: trusting it would come close to an open relay "
                "(at least /{floor}).",
                network=network,
                floor=_MIN_PREFIX[network.version],
            )
        )
    if isinstance(network, ipaddress.IPv6Network):
        _check_embedded_ipv4_width(network)
    return str(network)


def _check_embedded_ipv4_width(network: ipaddress.IPv6Network) -> None:
    """Hold an IPv6 network that covers IPv4 addresses to the IPv4 floor in IPv4 terms."""
    floor = _EMBEDDED_AT + _MIN_PREFIX[4]
    for block, kind in _IPV4_EMBEDDING:
        if network.overlaps(block) and network.prefixlen < floor:
            ipv4_width = max(network.prefixlen - _EMBEDDED_AT, 0)
            raise ValueError(
                Message(
                    "{network} is too wide: its {kind} ({block}) stand for an IPv4 "
                    "/{ipv4_width}; trusting it would come close to an open relay (at least "
                    "/{floor} there, an IPv4 /{ipv4_floor}).",
                    network=network,
                    kind=kind,
                    block=block,
                    ipv4_width=ipv4_width,
                    floor=floor,
                    ipv4_floor=_MIN_PREFIX[4],
                )
            )


def ipv4_inside(network: ipaddress.IPv6Network) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks an IPv6 network stands for through the blocks that carry an IPv4
    address (mapped, compatible, translated, NAT64, Teredo with its bits as they are, 6to4)."""
    carriers = [(block, _EMBEDDED_AT) for block, _ in _IPV4_EMBEDDING] + [(_SIX_TO_FOUR, 16)]
    found = []
    for block, start in carriers:
        if not network.overlaps(block):
            continue
        bits = max(0, min(32, network.prefixlen - start))
        first = (int(network.network_address) >> (96 - start)) & 0xFFFFFFFF
        found.append(ipaddress.IPv4Network((first >> (32 - bits) << (32 - bits), bits)))
    return found


def trusted_together(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
    """Refuse trusted networks that each keep to the floor but together cover more addresses
    than a relay should trust (IPv6 networks count also by the IPv4 they stand for)."""
    ipv4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    ipv6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    ipv4 += [inner for network in ipv6 for inner in ipv4_inside(network)]
    covered_by = {
        4: sum(n.num_addresses for n in ipaddress.collapse_addresses(ipv4)),
        6: sum(n.num_addresses for n in ipaddress.collapse_addresses(ipv6)),
    }
    for version, covered in covered_by.items():
        if covered > _MOST_TOGETHER[version]:
            raise ValueError(
                Message(
                    "The trusted networks together cover {covered} IPv{version} addresses, "
                    "more than the {most} (two /{floor} networks) a relay may trust: together "
                    "they would come close to an open relay.",
                    covered=f"{covered:,}",
                    version=version,
                    most=f"{_MOST_TOGETHER[version]:,}",
                    floor=_MIN_PREFIX[version],
                )
            )


def _plain_ascii(value: str, what: str) -> None:
    # The agent installs only plain ASCII maps: a user or password beyond it would pass here and
    # then stop every Apply of every later version until someone found and changed it.
    if not value.isascii():
        raise ValueError(Message("{what} must be plain ASCII.", what=what))


def auth_user(value: str) -> str:
    value = value.strip()
    if len(value) > 255:
        raise ValueError(Message("The SMTP AUTH user has at most 255 characters."))
    map_safe(value, Message("The SMTP AUTH user"))
    _plain_ascii(value, Message("The SMTP AUTH user"))
    if ":" in value:
        raise ValueError(Message("The SMTP AUTH user must not contain ':'."))
    return value


def auth_password(value: str) -> str:
    if len(value) > 255:
        raise ValueError(Message("The SMTP AUTH password has at most 255 characters."))
    _plain_ascii(value, Message("The SMTP AUTH password"))
    return map_safe(value, Message("The SMTP AUTH password"))


def comment(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_COMMENT:
        raise ValueError(Message("A comment has at most {n} characters.", n=MAX_COMMENT))
    if _CONTROL_RE.search(value):
        raise ValueError(Message("A comment must not contain control characters."))
    return value


def collect(checks: dict[str, tuple[object, object]]) -> dict[str, object]:
    """Run each (validator, raw value) and gather every field's error at once."""
    cleaned: dict[str, object] = {}
    errors: dict[str, str] = {}
    for field, (check, raw) in checks.items():
        try:
            cleaned[field] = check(raw)  # type: ignore[operator]
        except ValueError as exc:
            errors[field] = message_of(exc)
    if errors:
        raise FieldErrors(errors)
    return cleaned
