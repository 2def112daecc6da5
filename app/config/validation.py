"""The rules every configuration value must pass before it is stored or rendered.

One set of rules for the GUI, the API, the config pull and the renderer. Anything that can reach a
Postfix map is refused when it holds whitespace or control characters: one stray newline in a map
value would be a second map entry.
"""

from __future__ import annotations

import ipaddress
import re

import idna

TLS_MODES = ("none", "may", "encrypt", "verify")
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Whitespace, C0 and C1 controls, line/paragraph separators and lone surrogates.
_MAP_UNSAFE_RE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
MAX_COMMENT = 500
# Wider trusted networks than these are almost certainly a mistake that opens the relay.
_MIN_PREFIX = {4: 8, 6: 32}


class FieldErrors(ValueError):
    """Validation failed; `errors` maps each field name to the message shown beside it."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def map_safe(value: str, what: str) -> str:
    if _MAP_UNSAFE_RE.search(value):
        raise ValueError(f"{what} must not contain spaces, line breaks or control characters.")
    return value


def domain_name(value: str, what: str = "A domain") -> str:
    """Normalise a domain to lowercase ASCII (IDN to punycode) or raise ValueError."""
    value = value.strip()
    if not value:
        raise ValueError(f"{what} is required.")
    map_safe(value, what)
    candidate = value.rstrip(".") if value.endswith(".") and not value.endswith("..") else value
    try:
        ascii_name = idna.encode(candidate, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"{what} is not a valid domain name: {exc}.") from None
    ascii_name = ascii_name.lower()
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2:
        raise ValueError(f"{what} needs at least two labels, like example.com.")
    for label in labels:
        if not _LABEL_RE.match(label):
            raise ValueError(f"{what} has an invalid label {label!r}.")
    if labels[-1].isdigit():
        raise ValueError(f"{what} must not end in a numeric label.")
    return ascii_name


def relay_host(value: str) -> str:
    """A relay target: a hostname (normalised like a domain) or an IP address."""
    value = value.strip()
    if not value:
        raise ValueError("The relay host is required.")
    map_safe(value, "The relay host")
    if "%" in value:
        raise ValueError("The relay host must not carry an IPv6 zone (%...).")
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if value.count(".") == 0:
        raise ValueError("The relay host must be a fully qualified name or an IP address.")
    return domain_name(value, "The relay host")


def port(value: str | int) -> int:
    text = str(value).strip()
    # Plain ASCII digits only: int() would also take "+25", "1_0" and non-ASCII digits.
    if not (text.isascii() and text.isdigit()):
        raise ValueError("The port must be a whole number.")
    number = int(text)
    if not 1 <= number <= 65535:
        raise ValueError("The port must be between 1 and 65535.")
    return number


def tls_mode(value: str) -> str:
    value = value.strip().lower()
    if value not in TLS_MODES:
        raise ValueError(f"The TLS mode must be one of {', '.join(TLS_MODES)}.")
    return value


def cidr(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("A network is required.")
    map_safe(value, "A network")
    if "%" in value:
        raise ValueError("A network must not carry an IPv6 zone (%...).")
    if "/" not in value:
        raise ValueError(f"Write the prefix length too, like {value}/32 or 10.0.0.0/8.")
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a network in CIDR notation (like 10.0.0.0/8)."
        ) from None
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ValueError(f"{value} has host bits set; did you mean {loose}?") from None
    if network.prefixlen < _MIN_PREFIX[network.version]:
        raise ValueError(
            f"{network} is too wide: trusting it would come close to an open relay "
            f"(at least /{_MIN_PREFIX[network.version]})."
        )
    return str(network)


def auth_user(value: str) -> str:
    value = value.strip()
    if len(value) > 255:
        raise ValueError("The SMTP AUTH user has at most 255 characters.")
    map_safe(value, "The SMTP AUTH user")
    if ":" in value:
        raise ValueError("The SMTP AUTH user must not contain ':'.")
    return value


def auth_password(value: str) -> str:
    if len(value) > 255:
        raise ValueError("The SMTP AUTH password has at most 255 characters.")
    return map_safe(value, "The SMTP AUTH password")


def comment(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_COMMENT:
        raise ValueError(f"A comment has at most {MAX_COMMENT} characters.")
    if _CONTROL_RE.search(value):
        raise ValueError("A comment must not contain control characters.")
    return value


def collect(checks: dict[str, tuple[object, object]]) -> dict[str, object]:
    """Run each (validator, raw value) and gather every field's error at once."""
    cleaned: dict[str, object] = {}
    errors: dict[str, str] = {}
    for field, (check, raw) in checks.items():
        try:
            cleaned[field] = check(raw)  # type: ignore[operator]
        except ValueError as exc:
            errors[field] = str(exc)
    if errors:
        raise FieldErrors(errors)
    return cleaned
