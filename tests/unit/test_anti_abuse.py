"""The optional protections: off by default, each variable checked, trusted clients exempt from
DNSBL lookups. (Not exercised against a live DNSBL: these machines have no internet.)"""

import pytest

from app.agent.postfix import FRAGMENT, anti_abuse, parse_fragment
from app.settings import SettingsError, load_agent_settings


def protections(env: dict[str, str]):
    return anti_abuse(load_agent_settings(env).protections)


def test_everything_is_off_by_default():
    assert protections({}) == ({}, [])


def test_the_rbl_list_spares_trusted_clients():
    params, master = protections({"POSTFIX_RBL_LIST": "zen.example.org, bl.example.net=127.0.0.2"})
    assert params["smtpd_client_restrictions"] == (
        "permit_mynetworks, reject_rbl_client zen.example.org, "
        "reject_rbl_client bl.example.net=127.0.0.2"
    )
    assert master == []


def test_the_rate_limit_exempts_nobody():
    params, _ = protections({"POSTFIX_CLIENT_RATE_LIMIT": "120"})
    assert params["smtpd_client_message_rate_limit"] == "120"
    assert params["smtpd_client_event_limit_exceptions"] == ""


def test_postscreen_takes_port_25():
    params, master = protections({"POSTFIX_POSTSCREEN": "yes", "POSTFIX_RBL_LIST": "zen.example"})
    assert "smtp/inet=smtp inet n - n - 1 postscreen" in master
    assert params["postscreen_dnsbl_sites"] == "zen.example"
    assert params["postscreen_access_list"] == "permit_mynetworks"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POSTFIX_RBL_LIST", "zen.example, evil\nline"),
        ("POSTFIX_CLIENT_RATE_LIMIT", "lots"),
        ("POSTFIX_POSTSCREEN", "maybe"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(name, value):
    with pytest.raises(SettingsError, match=name):
        load_agent_settings({name: value})


def test_the_fragment_parses_with_continuation_lines():
    settings = dict(parse_fragment(FRAGMENT.read_text()))
    assert settings["enable_long_queue_ids"] == "yes"
    assert settings["smtpd_relay_restrictions"] == "permit_mynetworks, reject_unauth_destination"
    assert settings["smtpd_sender_restrictions"].startswith("check_sender_access hash:")
    assert "smtpd_access_maps" not in settings["parent_domain_matches_subdomains"]
