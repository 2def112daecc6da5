"""Server-side messages, dates and numbers in the user's language on real pages."""

from __future__ import annotations

import re

from app.config import service
from tests.conftest import csrf

GERMAN = {"accept-language": "de-DE,de;q=0.9,en;q=0.5"}


async def _post(client, path, data, headers=None, htmx=False):
    headers = csrf(client) | (headers or {}) | ({"hx-request": "true"} if htmx else {})
    return await client.post(path, data=data, headers=headers, follow_redirects=False)


async def test_a_duplicate_sender_domain_is_refused_in_german_on_a_german_page(login_as):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("operator")
    response = await _post(client, "/domains", {"name": "Example.com"}, GERMAN)
    assert response.status_code == 422
    assert "Die Absenderdomain example.com gibt es bereits." in response.text
    assert "exists already" not in response.text
    english = await _post(client, "/domains", {"name": "example.com"}, htmx=True)
    assert "The sender domain example.com exists already." in english.text


async def test_the_language_chosen_in_the_profile_turns_field_errors_german(login_as):
    client = await login_as("operator")
    assert (await _post(client, "/language", {"language": "de"})).status_code == 303
    response = await _post(client, "/networks", {"cidr": "10.0.0.0"}, htmx=True)
    assert response.status_code == 422
    assert "Geben Sie auch die Präfixlänge an, wie 10.0.0.0/32 oder 10.0.0.0/8." in response.text
    wide = await _post(client, "/networks", {"cidr": "10.0.0.0/4"}, htmx=True)
    assert "10.0.0.0/4 hat gesetzte Host-Bits; meinten Sie 0.0.0.0/4?" in wide.text


async def test_a_nested_reason_is_translated_inside_its_sentence(login_as):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("operator")
    response = await _post(
        client,
        "/routes/example.com",
        {"host": "127.0.0.1", "port": "25", "tls_mode": "may"},
        GERMAN,
        htmx=True,
    )
    assert response.status_code == 422
    assert "Der Relay-Host 127.0.0.1 ist eine Loopback-Adresse: Eine Route muss" in response.text


async def test_a_missing_sender_domain_is_reported_in_german(login_as):
    client = await login_as("readonly")
    response = await client.get("/routes/nowhere.example", headers=GERMAN)
    assert response.status_code == 404
    assert "Es gibt keine Absenderdomain nowhere.example." in response.text


async def test_which_route_explains_a_bad_address_in_german(login_as):
    client = await login_as("readonly")
    response = await _post(
        client,
        "/routes/which",
        {"sender": "a b@example.com", "recipient": "b@example.net"},
        GERMAN,
        htmx=True,
    )
    assert "Die Absenderadresse darf keine Leerzeichen enthalten." in response.text


async def test_dates_are_written_the_german_way_on_a_german_page(login_as):
    await service.add_domain(service.Actor("t"), "example.com")
    client = await login_as("readonly")
    german = (await client.get("/versions", headers=GERMAN)).text
    english = (await client.get("/versions")).text
    assert re.search(r"<td>\d\d\.\d\d\.\d{4} \d\d:\d\d:\d\d</td>", german)
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>", english)
