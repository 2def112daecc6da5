"""Which source network a failed login is counted against: an IPv4 address, an IPv6 /64."""

from __future__ import annotations

from app.auth.throttle import network_of


def test_an_ipv4_address_is_its_own_network() -> None:
    assert network_of("198.18.0.30") == "198.18.0.30"
    assert network_of("198.18.0.31") != network_of("198.18.0.30")


def test_every_address_of_an_ipv6_64_is_one_network() -> None:
    first = network_of("2001:db8:0:1::1")
    assert first == "2001:db8:0:1::/64"
    assert network_of("2001:DB8:0:1:ffff:ffff:ffff:ffff") == first
    assert network_of("2001:db8:0:2::1") != first


def test_an_ipv4_mapped_ipv6_address_counts_as_the_ipv4_address() -> None:
    assert network_of("::ffff:198.18.0.30") == "198.18.0.30"


def test_a_source_that_is_no_ip_address_is_taken_as_it_is_but_bounded() -> None:
    assert network_of("") == ""
    assert network_of("x" * 500) == "x" * 64
