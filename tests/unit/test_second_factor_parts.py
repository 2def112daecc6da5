"""The pure parts of the second factor: which TOTP step a code matches, the WebAuthn relying
party a page gets, and the WEBAUTHN_RP_ID setting."""

from __future__ import annotations

import pyotp
import pytest

from app.auth import totp
from app.auth.securitykeys import SecurityKeyError, relying_party
from app.settings import SettingsError, load_settings
from app.tls import ensure_certificate, served_names

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW = 1_800_000_015.0  # step 60_000_000, 15 s into it


def test_a_code_matches_its_step_and_one_step_either_side_only() -> None:
    otp = pyotp.TOTP(SECRET)
    assert totp.matching_step(SECRET, otp.at(NOW), NOW) == 60_000_000
    assert totp.matching_step(SECRET, otp.at(NOW - 30), NOW) == 59_999_999
    assert totp.matching_step(SECRET, otp.at(NOW + 30), NOW) == 60_000_001
    assert totp.matching_step(SECRET, otp.at(NOW - 60), NOW) is None
    assert totp.matching_step(SECRET, otp.at(NOW + 60), NOW) is None


def test_a_code_is_six_ascii_digits_with_spaces_allowed() -> None:
    code = pyotp.TOTP(SECRET).at(NOW)
    assert totp.matching_step(SECRET, f" {code[:3]} {code[3:]} ", NOW) == 60_000_000
    for bad in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦"):
        assert totp.matching_step(SECRET, bad, NOW) is None


def test_the_enrolment_qr_code_is_inline_svg_without_inline_style() -> None:
    svg = totp.qr_svg(totp.provisioning_uri(SECRET, "admin", "mailrelay a"))
    assert svg.startswith("<svg")
    assert "style=" not in svg
    assert "<script" not in svg


def test_the_relying_party_is_the_host_name_of_the_page() -> None:
    rp = relying_party("relay.example.com", "https://relay.example.com:8443", None, "n")
    assert (rp.id, rp.origin) == ("relay.example.com", "https://relay.example.com:8443")


SERVED = frozenset({"a.relay.example.com", "*.nodes.example.com"})


def test_a_configured_relying_party_covers_the_names_below_it_only() -> None:
    rp = relying_party(
        "a.relay.example.com", "https://a.relay.example.com", "example.com", "n", SERVED
    )
    assert rp.id == "example.com"
    with pytest.raises(SecurityKeyError, match=r"only under example\.com"):
        relying_party("evil-example.com", "https://evil-example.com", "example.com", "n", SERVED)


def test_under_a_configured_relying_party_only_the_names_this_node_serves_are_pages() -> None:
    """A key bound to example.com answers for evil.example.com too: a relay there must not
    pass its own origin as the page's by sending its name as the Host header."""
    rp = relying_party(
        "b.nodes.example.com", "https://b.nodes.example.com", "example.com", "n", SERVED
    )
    assert rp.origin == "https://b.nodes.example.com"
    for host in ("evil.example.com", "x.b.nodes.example.com", "nodes.example.com"):
        with pytest.raises(SecurityKeyError, match="name of this node's HTTPS certificate"):
            relying_party(host, f"https://{host}", "example.com", "n", SERVED)


def test_the_served_names_are_read_from_the_certificate(tmp_path) -> None:
    """The node's generated certificate names its host (and localhost); its addresses are not
    names a key could be bound to."""
    settings = load_settings(
        env={
            "DATABASE_URL": "postgresql:///x",
            "STATE_DIR": str(tmp_path),
            "NODE_HOSTNAME": "Relay-A.Example.com",
            "NODE_IP": "198.18.0.10",
        }
    )
    cert, _key, made = ensure_certificate(settings)
    assert made
    assert served_names(cert) == {"relay-a.example.com", "localhost"}


@pytest.mark.parametrize("host", ["127.0.0.1", "198.18.0.100", "[::1]", "::1"])
def test_an_ip_address_cannot_be_a_relying_party(host: str) -> None:
    with pytest.raises(SecurityKeyError, match="host name"):
        relying_party(host, f"https://{host}", None, "n")


def test_the_rp_id_setting_takes_a_name_and_refuses_an_address() -> None:
    base = {"DATABASE_URL": "postgresql://mailrelay@localhost/mailrelay"}
    assert load_settings(env=base).webauthn_rp_id is None
    assert load_settings(env={**base, "WEBAUTHN_RP_ID": "Relay.Example.COM."}).webauthn_rp_id == (
        "relay.example.com"
    )
    for bad in ("10.0.0.1", "https://relay.example.com", "relay example.com", "-x.example.com"):
        with pytest.raises(SettingsError, match="WEBAUTHN_RP_ID"):
            load_settings(env={**base, "WEBAUTHN_RP_ID": bad})
