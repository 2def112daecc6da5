"""Render keepalived.conf from the node's settings.

The template is keepalived-conf/keepalived.conf.template with ``{{NAME}}`` placeholders. Every
value is validated before it is put in: keepalived's grammar has no quoting for most of them, so a
space or a brace in an interface name would change the meaning of the file. A bad value raises
KeepalivedConfigError naming the setting, like app.settings does.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parents[2] / "keepalived-conf" / "keepalived.conf.template"
CHECK_SCRIPT = "/opt/mailrelay/keepalived-conf/check_smtp.sh"
NOTIFY_FIFO = "/run/mailrelay-vrrp/vrrp.fifo"
# keepalived's default script user; the node installation creates it as a system user.
SCRIPT_USER = "keepalived_script"
# VRRPv3 advertisement interval: 1 to 4095 centiseconds.
MIN_ADVERT_INT = Decimal("0.01")
MAX_ADVERT_INT = Decimal("40.95")

# Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no "/", no white space. We allow the
# characters real names use and nothing that means something to keepalived's parser.
_IFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PATH = re.compile(r"/[A-Za-z0-9_./-]+")
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


class KeepalivedConfigError(ValueError):
    """A value cannot go into keepalived.conf; the message names the setting."""


def _ip(name: str, value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if value is None or str(value).strip() == "":
        raise KeepalivedConfigError(f"{name} is required for keepalived but not set")
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise KeepalivedConfigError(f"{name} must be an IP address, got {value!r}") from None


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise KeepalivedConfigError(f"{name} must be an integer, got {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise KeepalivedConfigError(f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise KeepalivedConfigError(f"{name} must be between {low} and {high}, got {number}")
    return number


def advert_interval(value: Any) -> str:
    """VRRP_ADVERT_INT as keepalived writes it: seconds, 0.01 to 40.95, in steps of 0.01.

    VRRPv3 (RFC 5798) carries the interval in a 12-bit field of centiseconds: keepalived accepts
    up to 255 in its grammar (the VRRPv2 range) but then clamps a VRRPv3 interval to 40.95 s and
    rounds it to 10 ms with only a log line. We refuse such values instead.
    """
    name = "VRRP_ADVERT_INT"
    if isinstance(value, bool):
        raise KeepalivedConfigError(f"{name} must be a number of seconds, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise KeepalivedConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not number.is_finite() or not MIN_ADVERT_INT <= number <= MAX_ADVERT_INT:
        raise KeepalivedConfigError(
            f"{name} must be between {MIN_ADVERT_INT} and {MAX_ADVERT_INT} seconds "
            f"(VRRPv3), got {value!r}"
        )
    if number != number.quantize(Decimal("0.01")):
        raise KeepalivedConfigError(
            f"{name} must be a multiple of 0.01 seconds (VRRPv3 counts centiseconds), got {value!r}"
        )
    return format(number.quantize(Decimal("0.01")), "f").rstrip("0").rstrip(".")


def render_config(
    *,
    node_id: str,
    node_ip: str | None,
    peer_node_ip: str | None,
    vip_address: str | None,
    vrrp_priority: int,
    vrrp_advert_int: float | str = 1,
    vrrp_interface: str = "eth0",
    vip_prefix: int | None = None,
    virtual_router_id: int = 51,
    check_script: str = CHECK_SCRIPT,
    notify_fifo: str = NOTIFY_FIFO,
    script_user: str = SCRIPT_USER,
    template: Path = TEMPLATE,
) -> str:
    """The keepalived.conf text for one node; KeepalivedConfigError names a bad setting.

    vip_prefix defaults to a host route (/32 or /128): the VIP is one address, and its own prefix
    adds no second route for the node's subnet.
    """
    if not isinstance(node_id, str) or not node_id.isalnum() or len(node_id) > 32:
        raise KeepalivedConfigError(f"NODE_ID must be 1-32 letters or digits, got {node_id!r}")
    own = _ip("NODE_IP", node_ip)
    peer = _ip("PEER_NODE_IP", peer_node_ip)
    vip = _ip("VIP_ADDRESS", vip_address)
    for name, address in (("PEER_NODE_IP", peer), ("VIP_ADDRESS", vip)):
        if address.version != own.version:
            raise KeepalivedConfigError(
                f"{name} must be an IPv{own.version} address like NODE_IP, got {address}"
            )
    if own.is_loopback or own.is_unspecified:
        raise KeepalivedConfigError(f"NODE_IP must be the node's address on the LAN, got {own}")
    if peer == own:
        raise KeepalivedConfigError(f"PEER_NODE_IP must differ from NODE_IP, both are {own}")
    if vip in (own, peer):
        raise KeepalivedConfigError(
            f"VIP_ADDRESS must be an address of its own, not a node's address ({vip})"
        )
    if vip.is_loopback or vip.is_unspecified or vip.is_multicast:
        raise KeepalivedConfigError(f"VIP_ADDRESS cannot be used as a virtual address: {vip}")
    if (
        not isinstance(vrrp_interface, str)
        or not _IFACE.fullmatch(vrrp_interface.strip())
        or (vrrp_interface.strip() in (".", ".."))
    ):
        raise KeepalivedConfigError(
            "VRRP_INTERFACE must be an interface name (1-15 letters, digits, '_', '.', '-'), "
            f"got {vrrp_interface!r}"
        )
    max_prefix = 32 if vip.version == 4 else 128
    prefix = max_prefix if vip_prefix is None else _integer("VIP_PREFIX", vip_prefix, 1, max_prefix)
    # 255 would mean "address owner", which always starts as MASTER and defeats nopreempt.
    priority = _integer("VRRP_PRIORITY", vrrp_priority, 1, 254)
    router_id = _integer("VRRP_ROUTER_ID", virtual_router_id, 1, 255)
    advert = advert_interval(vrrp_advert_int)
    for name, path in (("check script", check_script), ("notify FIFO", notify_fifo)):
        if not _PATH.fullmatch(path) or "/../" in f"{path}/":
            raise KeepalivedConfigError(f"the {name} must be a plain absolute path, got {path!r}")
    if not _USER.fullmatch(script_user):
        raise KeepalivedConfigError(f"the script user must be a user name, got {script_user!r}")

    values = {
        "NODE_ID": node_id,
        "NODE_IP": str(own),
        "PEER_NODE_IP": str(peer),
        "VIP_ADDRESS": str(vip),
        "VIP_PREFIX": str(prefix),
        "INTERFACE": vrrp_interface.strip(),
        "PRIORITY": str(priority),
        "ADVERT_INT": advert,
        "ROUTER_ID": str(router_id),
        "CHECK_SCRIPT": check_script,
        "NOTIFY_FIFO": notify_fifo,
        "SCRIPT_USER": script_user,
    }
    return fill(template.read_text(), values)


def fill(text: str, values: dict[str, str]) -> str:
    """Replace every {{NAME}}; a placeholder without a value is an error, not an empty string."""
    missing = sorted({name for name in _PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise KeepalivedConfigError(f"the template needs values for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def render_from_settings(settings: Any, **overrides: Any) -> str:
    """render_config() with the values of an app.settings.Settings.

    VRRP_ADVERT_INT and VRRP_INTERFACE are read from the settings object when it has them
    (vrrp_advert_int, vrrp_interface) and default to 1 s and eth0 otherwise.
    """
    values: dict[str, Any] = {
        "node_id": settings.node_id,
        "node_ip": settings.node_ip,
        "peer_node_ip": settings.peer_node_ip,
        "vip_address": settings.vip_address,
        "vrrp_priority": settings.vrrp_priority,
        "vrrp_advert_int": getattr(settings, "vrrp_advert_int", 1),
        "vrrp_interface": getattr(settings, "vrrp_interface", "eth0"),
    }
    for name in ("vip_prefix", "virtual_router_id"):
        if getattr(settings, name, None) is not None:
            values[name] = getattr(settings, name)
    values.update(overrides)
    return render_config(**values)
