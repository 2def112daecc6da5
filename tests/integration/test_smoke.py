from tests.conftest import login


async def test_it_creates_the_default_admin_who_must_change_the_password(client):
    response = await login(client, "admin", "Admin123")
    assert response.status_code == 303
    assert response.headers["location"] == "/password"
    page = await client.get("/domains", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/password"
