"""Whether this node holds the VIP: reading `ip -o addr show`, and asking this machine's `ip`."""

from __future__ import annotations

import shutil

import pytest

from app.cluster.vip import VipCheckError, addresses, vip_held

IP_OUTPUT = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever
6: eth0    inet 198.18.6.11/24 brd 198.18.6.255 scope global eth0\\       valid_lft forever preferred_lft forever
6: eth0    inet 198.18.6.100/32 scope global eth0\\       valid_lft forever preferred_lft forever
6: eth0    inet6 2001:db8::100/128 scope global tentative \\       valid_lft forever preferred_lft forever
6: eth0    inet6 2001:db8::101/64 scope global dadfailed tentative \\       valid_lft forever preferred_lft forever
6: eth0    inet6 fe80::a0fc:32ff:fec1:2ff7/64 scope link \\       valid_lft forever preferred_lft forever
"""  # noqa: E501


def test_it_reads_the_addresses_from_ip_output():
    found = {str(address) for address in addresses(IP_OUTPUT)}
    assert found == {"127.0.0.1", "::1", "198.18.6.11", "198.18.6.100", "fe80::a0fc:32ff:fec1:2ff7"}


needs_ip = pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed")


@needs_ip
def test_the_vip_is_found_on_this_machine():
    assert vip_held("127.0.0.1")
    assert not vip_held("198.18.255.254")


@needs_ip
def test_an_unknown_namespace_is_an_error_not_a_no():
    with pytest.raises(VipCheckError):
        vip_held("198.18.6.100", netns="mr-no-such-namespace")
