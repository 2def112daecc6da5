"""A stored SMTP AUTH password belongs to the relay it was typed for: moving the route to another
host, port or TLS mode drops it, and the form asks for it again instead of sending it elsewhere."""

from __future__ import annotations

import pytest

from app.config import service
from app.config.validation import FieldErrors
from app.db.tables import ConfigVersion, RelayRoute
from tests.conftest import csrf

ACTOR = service.Actor("t")
SECRET = "stored-Pa55word"
STORED = {"host": "smtp.example.net", "port": 587, "tls_mode": "encrypt"}


async def _stored_route(app) -> None:
    await service.add_domain(ACTOR, "example.com")
    await service.set_route(
        ACTOR, app.state.box, "example.com", **STORED, auth_user="relayuser", auth_password=SECRET
    )


@pytest.mark.parametrize(
    "change", [{"host": "evil.example.org"}, {"port": 2525}, {"tls_mode": "may"}]
)
async def test_changing_a_routes_host_drops_its_stored_password(app, change) -> None:
    await _stored_route(app)
    versions = await ConfigVersion.count()
    with pytest.raises(FieldErrors) as caught:
        await service.set_route(
            ACTOR, app.state.box, "example.com", **(STORED | change), auth_user="relayuser"
        )
    assert "type the SMTP AUTH password again" in caught.value.errors["auth_password"]
    route = await RelayRoute.select().first()
    assert (route["host"], route["port"], route["tls_mode"]) == tuple(STORED.values())
    assert app.state.box.decrypt(route["auth_password_enc"]) == SECRET
    assert await ConfigVersion.count() == versions

    # Without SMTP AUTH the route moves, and the old password goes with the old settings.
    await service.set_route(ACTOR, app.state.box, "example.com", **(STORED | change))
    route = await RelayRoute.select().first()
    assert route["auth_user"] is None and route["auth_password_enc"] is None


async def test_a_moved_route_keeps_auth_with_a_newly_typed_password(app) -> None:
    await _stored_route(app)
    await service.set_route(
        ACTOR,
        app.state.box,
        "example.com",
        **(STORED | {"host": "relay2.example.net"}),
        auth_user="relayuser",
        auth_password="new-Pa55word",
    )
    route = await RelayRoute.select().first()
    assert route["host"] == "relay2.example.net"
    assert app.state.box.decrypt(route["auth_password_enc"]) == "new-Pa55word"


async def test_saving_the_same_relay_keeps_the_stored_password(app) -> None:
    await _stored_route(app)
    await service.set_route(
        ACTOR,
        app.state.box,
        "example.com",
        "SMTP.Example.NET",
        " 587 ",
        "Encrypt",
        auth_user="other-user",
    )
    route = await RelayRoute.select().first()
    assert route["auth_user"] == "other-user"
    assert app.state.box.decrypt(route["auth_password_enc"]) == SECRET


async def test_the_route_form_says_the_password_must_be_typed_again(login_as, app) -> None:
    await _stored_route(app)
    client = await login_as("operator")
    page = await client.get("/routes/example.com")
    assert "It is dropped when the host, port or TLS mode change" in page.text
    response = await client.post(
        "/routes/example.com",
        data={
            "host": "evil.example.org",
            "port": "587",
            "tls_mode": "encrypt",
            "auth_user": "relayuser",
            "auth_password": "",
        },
        headers=csrf(client) | {"hx-request": "true"},
        follow_redirects=False,
    )
    assert response.status_code == 422
    assert 'id="route-form"' in response.text and "<html" not in response.text
    assert 'id="e-auth_password"' in response.text
    assert "type the SMTP AUTH password again" in response.text
    assert 'value="evil.example.org"' in response.text  # what was typed stays in the form
    assert (await RelayRoute.select().first())["host"] == "smtp.example.net"

    german = await client.get("/routes/example.com", headers={"accept-language": "de"})
    assert "Es wird verworfen, wenn sich Host, Port oder TLS-Modus ändern" in german.text
