""" "Which route?" answered from map files rendered by render.py, with Postfix's lookup orders:
allowed with and without a route, blocked, subdomains (the product's main.cf and Postfix's
default), IDN, the null sender, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.crypto import SecretBox, ensure_secret_key
from app.postfix import render
from app.postfix.routecheck import (
    ALLOWED,
    DEFAULT_TLS_LEVEL,
    DIRECT_TO_MX,
    NULL_SENDER_REJECTED,
    REJECTED,
    RouteCheckError,
    access_maps_match_subdomains,
    which_route,
    which_route_in,
)

PASSWORD = "route-secret-42"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> SecretBox:
    key = tmp_path_factory.mktemp("key") / "secret.key"
    ensure_secret_key(key)
    return SecretBox(key)


@pytest.fixture
def live(tmp_path: Path, box: SecretBox) -> Path:
    snapshot = {
        "sender_domains": [
            {
                "name": "example.com",
                "comment": "",
                "route": {
                    "host": "smtp.example.net",
                    "port": 587,
                    "tls_mode": "encrypt",
                    "auth_user": "relay-user",
                    "auth_password_enc": box.encrypt(PASSWORD),
                },
            },
            {"name": "example.org", "comment": "", "route": None},
            {
                "name": "xn--bcher-kva.example",
                "comment": "",
                "route": {
                    "host": "192.0.2.25",
                    "port": 25,
                    "tls_mode": "verify",
                    "auth_user": None,
                    "auth_password_enc": None,
                },
            },
        ],
        "trusted_networks": [],
    }
    # Written the way the agent stages a set before it becomes `live`.
    render.write_directory(render.render(12, snapshot, box.decrypt), tmp_path / "live")
    return tmp_path / "live"


def test_it_gives_the_route_of_an_allowed_sender(live: Path) -> None:
    answer = which_route("Alice@Example.COM", "bob@example.net", live)
    assert answer.allowed
    assert answer.verdict == ALLOWED
    assert answer.sender == "Alice@example.com"
    assert answer.sender_domain == "example.com"
    assert answer.relayhost == "[smtp.example.net]:587"
    assert answer.next_hop == "[smtp.example.net]:587"
    assert answer.tls_mode == "encrypt"
    assert answer.tls_from_policy
    assert answer.auth_user == "relay-user"
    assert answer.maps_version == 12
    # The full address is tried first, then the domain, as check_sender_access does.
    access = answer.lookups[0]
    assert access.keys[:2] == ("alice@example.com", "example.com")
    assert access.matched_key == "example.com"
    assert answer.lookups[1].keys == ("alice@example.com", "@example.com")


def test_it_never_reveals_the_password(live: Path) -> None:
    answer = which_route("a@example.com", "b@example.net", live)
    assert PASSWORD not in repr(answer)
    assert answer.lookups[3].value == "relay-user:********"


def test_an_allowed_sender_without_route_goes_direct_to_the_mx(live: Path) -> None:
    answer = which_route("<ops@example.org>", "<someone@example.net>", live)
    assert answer.allowed
    assert answer.relayhost is None
    assert answer.route == DIRECT_TO_MX
    assert answer.next_hop == "example.net"
    assert answer.tls_mode == DEFAULT_TLS_LEVEL
    assert not answer.tls_from_policy
    assert answer.auth_user is None


def test_a_sender_domain_not_listed_is_rejected(live: Path) -> None:
    answer = which_route("spam@example.biz", "bob@example.net", live)
    assert not answer.allowed
    assert answer.verdict == REJECTED
    assert answer.lookups[0].matched_key is None
    # check_sender_access tries the address, the domain, its parents, then user@.
    assert answer.lookups[0].keys == ("spam@example.biz", "example.biz", ".biz", "spam@")


def test_the_products_postfix_matches_a_sender_domain_exactly() -> None:
    """postfix-conf/main.cf.fragment drops smtpd_access_maps from
    parent_domain_matches_subdomains: the answer must follow it."""
    assert access_maps_match_subdomains() is False


def test_a_subdomain_is_rejected_on_the_products_postfix(live: Path) -> None:
    answer = which_route("app@mail.sub.example.com", "bob@example.net", live)
    assert not answer.allowed
    assert answer.verdict == REJECTED
    # Dot-style parents: `.example.com` would match subdomains, `example.com` only itself.
    assert answer.lookups[0].keys == (
        "app@mail.sub.example.com",
        "mail.sub.example.com",
        ".sub.example.com",
        ".example.com",
        ".com",
        "app@",
    )
    assert any("add mail.sub.example.com as a sender domain" in n for n in answer.notes)


def test_with_postfixs_default_a_subdomain_is_allowed_but_has_no_route(live: Path) -> None:
    """Postfix 3.7's default lists smtpd_access_maps in parent_domain_matches_subdomains:
    `example.com OK` admits sub.example.com, while sender_dependent_relayhost_maps only tries
    `user@sub.example.com` and `@sub.example.com`, so such mail goes directly to the MX."""
    answer = which_route("app@mail.sub.example.com", "bob@example.net", live, parent_style=True)
    assert answer.allowed
    assert answer.lookups[0].keys == (
        "app@mail.sub.example.com",
        "mail.sub.example.com",
        "sub.example.com",
        "example.com",
        "com",
        "app@",
    )
    assert answer.lookups[0].matched_key == "example.com"
    assert answer.relayhost is None
    assert answer.lookups[1].keys == ("app@mail.sub.example.com", "@mail.sub.example.com")
    assert answer.auth_user is None
    assert any("the entry example.com for a parent domain" in n for n in answer.notes)
    assert any("directly to the recipient's MX" in n for n in answer.notes)


def test_the_fragment_decides_the_subdomain_style(tmp_path: Path) -> None:
    fragment = tmp_path / "main.cf.fragment"
    fragment.write_text(
        "# x\nparent_domain_matches_subdomains =\n    relay_domains,\n    smtpd_access_maps\n"
        "smtpd_sender_restrictions = reject\n"
    )
    assert access_maps_match_subdomains.__wrapped__(fragment) is True
    fragment.write_text("parent_domain_matches_subdomains = relay_domains, mynetworks\n")
    assert access_maps_match_subdomains.__wrapped__(fragment) is False
    fragment.write_text("compatibility_level = 3.6\n")  # not set: Postfix's default
    assert access_maps_match_subdomains.__wrapped__(fragment) is True


def test_a_name_that_merely_ends_like_a_listed_domain_is_rejected(live: Path) -> None:
    answer = which_route("a@notexample.com", "b@example.net", live, parent_style=True)
    assert not answer.allowed
    assert answer.lookups[0].keys[:3] == ("a@notexample.com", "notexample.com", "com")


def test_an_idn_sender_is_looked_up_as_punycode(live: Path) -> None:
    answer = which_route("info@Bücher.example", "kunde@müller.example", live)
    assert answer.allowed
    assert answer.sender_domain == "xn--bcher-kva.example"
    assert answer.recipient == "kunde@xn--mller-kva.example"
    assert answer.relayhost == "[192.0.2.25]:25"
    assert answer.tls_mode == "verify"


def test_the_null_sender_is_reported_as_bounces_only(live: Path) -> None:
    for sender in ("<>", ""):
        answer = which_route(sender, "bob@example.net", live)
        assert answer.null_sender
        assert not answer.allowed
        assert answer.verdict == NULL_SENDER_REJECTED
        assert answer.lookups[0].keys == ("<>",)
        assert answer.lookups[1].keys == ("<>",)
        assert any("only for bounces" in note for note in answer.notes)


@pytest.mark.parametrize(
    ("sender", "recipient", "field", "message"),
    [
        ("alice", "b@example.net", "sender", "an address like user@example.com"),
        ("a@example.com", "", "recipient", "an address like user@example.com"),
        ("a b@example.com", "b@example.net", "sender", "must not contain spaces"),
        ("a@example.com\nRCPT", "b@example.net", "sender", "control characters"),
        ("a@example.com", "b@exa mple.net", "recipient", "must not contain spaces"),
        ("a@example.com", "b@localhost", "recipient", "at least two labels"),
        ("a..b@example.com", "b@example.net", "sender", "two dots"),
        ("a,b@example.com", "b@example.net", "sender", "unquoted"),
        ("a@[192.0.2.1]", "b@example.net", "sender", "not an address literal"),
        ("x" * 65 + "@example.com", "b@example.net", "sender", "at most 64"),
    ],
)
def test_bad_input_gets_a_clear_error(live, sender, recipient, field, message) -> None:
    with pytest.raises(RouteCheckError) as caught:
        which_route(sender, recipient, live)
    assert message in caught.value.errors[field]


def test_both_fields_are_checked_at_once(live: Path) -> None:
    with pytest.raises(RouteCheckError) as caught:
        which_route("nope", "nope", live)
    assert set(caught.value.errors) == {"sender", "recipient"}


def test_without_maps_it_says_so(tmp_path: Path) -> None:
    for ask in (
        lambda: which_route("a@example.com", "b@example.net", tmp_path / "live"),
        lambda: which_route_in("a@example.com", "b@example.net", None),
    ):
        with pytest.raises(RouteCheckError) as caught:
            ask()
        assert "No config version has been applied" in caught.value.errors["form"]


def test_rendered_files_give_the_same_answer_as_the_directory(live: Path, box) -> None:
    files = {p.name: p.read_bytes() for p in live.iterdir()}
    assert which_route_in("a@example.com", "b@example.net", files) == which_route(
        "a@example.com", "b@example.net", live
    )
