"""Admin auth and sessions: JSON and form login, throttling, CSRF, revocation, the generated
password, pages, and the settings and app-status endpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import urllib.parse

import pytest
from tornado.testing import ExpectLog

from orpoll.app import make_app
from orpoll.auth import SESSION_COOKIE, verify_password
from orpoll.config import load_settings
from tests.admin_helpers import PASSWORD, AdminClient
from tests.conftest import assert_openai_error

API = [
    ("GET", "/admin/key-status"),
    ("GET", "/admin/app-status"),
    ("GET", "/admin/settings"),
    ("POST", "/admin/settings"),
    ("POST", "/admin/add-key"),
    ("POST", "/admin/add-keys"),
    ("DELETE", "/admin/delete-key/aaaa"),
    ("POST", "/admin/delete-keys-batch"),
    ("POST", "/admin/reload-keys"),
    ("POST", "/admin/check-keys"),
    ("POST", "/admin/keys/0123456789ab/weight"),
    ("POST", "/admin/keys/0123456789ab/enable"),
    ("POST", "/admin/password"),
]


@pytest.fixture
def client(base_url) -> AdminClient:
    return AdminClient(base_url)


def set_cookie_header(resp, name: str) -> str:
    return next(h for h in resp.headers.get_list("Set-Cookie") if h.startswith(name + "="))


# ---- login --------------------------------------------------------------------------------


async def test_json_login_then_the_cookie_like_the_original(client):
    resp = await client.login()
    assert resp.code == 200
    body = json.loads(resp.body)
    assert body["message"] == "logged in" and body["expires_at"] > 0
    assert SESSION_COOKIE in client.cookies
    status = await client.json("GET", "/admin/key-status")
    assert status["total_keys"] == 3


async def test_session_cookie_is_httponly_strict_and_scoped(client, app):
    cookie = set_cookie_header(await client.login(), SESSION_COOKIE)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie
    app.config = dataclasses.replace(app.config, cookie_secure=True)
    cookie = set_cookie_header(await AdminClient(client.base).login(), SESSION_COOKIE)
    assert "Secure" in cookie


async def test_wrong_password_is_401_and_logged_without_the_password(client, caplog):
    caplog.set_level(logging.INFO)
    with ExpectLog("orpoll.admin", "wrong admin password from 127.0.0.1 \\(1 in a row\\)"):
        resp = await client.login("guess-one-two-three")
    assert_openai_error(resp, 401, "authentication_error")
    assert SESSION_COOKIE not in client.cookies
    assert all("guess-one-two-three" not in r.getMessage() for r in caplog.records)


async def test_login_is_throttled_with_retry_after_then_recovers(client, app):
    now = [1000.0]
    app.login_throttle.clock = lambda: now[0]
    for _ in range(app.config.login_max_failures):
        assert (await client.login("wrong-password!")).code == 401
    resp = await client.login()  # even the right password waits now
    err = assert_openai_error(resp, 429, "rate_limit_error")
    assert err["code"] == "login_throttled" and int(resp.headers["Retry-After"]) == 30
    now[0] += 31
    assert (await client.login("wrong-password!")).code == 401
    assert int((await client.login()).headers["Retry-After"]) == 60  # doubles per failure
    now[0] += 61
    assert (await client.login()).code == 200
    assert app.login_throttle.retry_after("127.0.0.1") == 0


async def test_form_login_needs_the_xsrf_token_and_redirects_to_next(client):
    page = await client.get("/admin/login?next=/admin/settings-page")
    assert page.code == 200 and "_xsrf" in client.cookies
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    assert b'value="/admin/settings-page"' in page.body
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = urllib.parse.urlencode({"password": PASSWORD, "next": "/admin/settings-page"})
    resp = await client.request("POST", "/admin/login", raw=body, headers=form)
    assert_openai_error(resp, 403)  # no _xsrf
    bad = urllib.parse.urlencode({"password": "nope", "_xsrf": token})
    resp = await client.request("POST", "/admin/login", raw=bad, headers=form)
    assert resp.code == 403 and b"wrong password" in resp.body and b"<form" in resp.body
    good = body + "&_xsrf=" + urllib.parse.quote(token)
    resp = await client.request("POST", "/admin/login", raw=good, headers=form)
    assert resp.code == 302 and resp.headers["Location"] == "/admin/settings-page"
    assert (await client.get("/admin/settings-page")).code == 200


async def test_next_must_be_a_local_path(client):
    page = await client.get("/admin/login?next=//evil.example/x")
    assert b'value="/admin/dashboard"' in page.body


# ---- CSRF -----------------------------------------------------------------------------------


async def test_cross_origin_json_is_refused(admin, base_url):
    evil = {"Origin": "http://evil.example"}
    resp = await admin.post("/admin/add-key", {"openrouter_api_key": "sk-or-x-1234"}, headers=evil)
    assert assert_openai_error(resp, 403)["code"] == "bad_origin"
    resp = await admin.delete("/admin/delete-key/aaaa1111", headers={"Origin": "null"})
    assert_openai_error(resp, 403)
    same = {"Origin": base_url}
    resp = await admin.post("/admin/add-key", {"openrouter_api_key": "sk-or-x-1234"}, headers=same)
    assert resp.code == 200


async def test_form_posts_to_the_json_api_need_a_token_and_then_get_415(admin):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    raw = "openrouter_api_key=sk-x-1234"
    resp = await admin.request("POST", "/admin/add-key", raw=raw, headers=form)
    assert_openai_error(resp, 403)
    await admin.get("/admin/dashboard")  # a page sets the _xsrf cookie
    headers = {**form, "X-XSRFToken": admin.cookies["_xsrf"]}
    resp = await admin.request("POST", "/admin/add-key", raw=raw, headers=headers)
    assert assert_openai_error(resp, 415)["code"] == "unsupported_media_type"


async def test_a_wrong_xsrf_header_is_refused_even_with_json(admin):
    resp = await admin.post(
        "/admin/add-key", {"openrouter_api_key": "k-1"}, headers={"X-XSRFToken": "2|x|y|1"}
    )
    assert_openai_error(resp, 403)


# ---- sessions -------------------------------------------------------------------------------


async def test_every_api_path_answers_401_without_a_session(client):
    for method, path in API:
        resp = await client.request(method, path, {} if method == "POST" else None)
        err = assert_openai_error(resp, 401, "authentication_error")
        assert err["code"] == "admin_session_required", path


async def test_pages_redirect_to_login(client):
    for path in ("/admin/dashboard", "/admin/settings-page"):
        resp = await client.get(path)
        assert resp.code == 302
        assert resp.headers["Location"] == "/admin/login?next=" + urllib.parse.quote(path, safe="")
    resp = await client.get("/admin")
    assert resp.code == 302 and resp.headers["Location"] == "/admin/dashboard"


async def test_logout_revokes_the_session_at_once(admin, app, base_url):
    stolen = AdminClient(base_url)
    stolen.cookies = dict(admin.cookies)
    assert (await stolen.get("/admin/key-status")).code == 200
    assert (await admin.post("/admin/logout")).code == 200
    assert SESSION_COOKIE not in admin.cookies
    assert_openai_error(await stolen.get("/admin/key-status"), 401)
    assert app.store.load_sessions(now=0) == []


async def test_session_slides_and_expires(admin, app):
    now = [app.sessions.clock()]
    app.sessions.clock = lambda: now[0]
    life = app.config.session_lifetime
    now[0] += life * 0.6
    assert (await admin.get("/admin/key-status")).code == 200  # slides the expiry
    now[0] += life * 0.6
    assert (await admin.get("/admin/key-status")).code == 200
    stored = app.store.load_sessions(now=0)[0]
    assert stored[2] == pytest.approx(now[0] + life)  # saved, not just in memory
    now[0] += life + 1
    assert_openai_error(await admin.get("/admin/key-status"), 401)


async def test_password_from_env_cannot_be_changed_here(admin):
    body = {"current_password": PASSWORD, "new_password": "another-long-password"}
    err = assert_openai_error(await admin.post("/admin/password", body), 409)
    assert err["code"] == "password_from_env"


@pytest.fixture
def generated(env, serve):
    """An app with ADMIN_PASSWORD unset: (app, base URL)."""
    app = make_app(load_settings({**env, "ADMIN_PASSWORD": ""}))
    return app, serve(app)


async def test_generated_password_is_strong_hashed_and_kept(generated, env, serve):
    app, url = generated
    password = app.generated_password
    assert password and len(password) >= 20
    stored = app.store.get_meta("admin_password")
    assert stored.startswith("scrypt$") and password not in stored
    assert verify_password(password, stored)
    assert (await AdminClient(url).login(password)).code == 200
    again = make_app(load_settings({**env, "ADMIN_PASSWORD": ""}))
    assert again.generated_password is None  # logged once, on the first start only
    assert (await AdminClient(serve(again)).login(password)).code == 200


async def test_password_change_revokes_every_other_session(generated):
    app, url = generated
    old = app.generated_password
    first, second = AdminClient(url), AdminClient(url)
    assert (await first.login(old)).code == 200 and (await second.login(old)).code == 200
    weak = {"current_password": old, "new_password": "admin"}
    assert assert_openai_error(await first.post("/admin/password", weak), 400)["param"] == (
        "new_password"
    )
    body = {"current_password": old, "new_password": "a-new-long-password"}
    wrong = {**body, "current_password": "not-it"}
    for _ in range(app.config.login_max_failures):
        assert_openai_error(await first.post("/admin/password", wrong), 403)
    # Guessing the current password is throttled like a login.
    assert_openai_error(await first.post("/admin/password", body), 429)
    app.login_throttle.succeeded("127.0.0.1")
    result = await first.json("POST", "/admin/password", body)
    assert result["sessions_revoked"] == 2
    assert_openai_error(await second.get("/admin/key-status"), 401)
    assert (await first.get("/admin/key-status")).code == 200  # the changer got a new session
    assert (await AdminClient(url).login(old)).code == 401
    assert (await AdminClient(url).login("a-new-long-password")).code == 200


async def test_a_changed_env_password_ends_sessions_at_restart(admin, env, app, serve):
    await admin.get("/admin/key-status")
    assert app.store.load_sessions(now=0)
    again = make_app(load_settings({**env, "ADMIN_PASSWORD": "a-different-password"}))
    url = serve(again)
    stale = AdminClient(url)
    stale.cookies = dict(admin.cookies)
    assert_openai_error(await stale.get("/admin/key-status"), 401)
    assert again.store.load_sessions(now=0) == []


async def test_sessions_survive_a_restart_with_the_same_password(admin, env, serve):
    again = make_app(load_settings(env))
    kept = AdminClient(serve(again))
    kept.cookies = dict(admin.cookies)
    assert (await kept.get("/admin/key-status")).code == 200


def test_admin_as_password_is_accepted_with_a_loud_warning(env):
    with ExpectLog("orpoll.admin", "INSECURE: ADMIN_PASSWORD is 'admin'"):
        app = make_app(load_settings({**env, "ADMIN_PASSWORD": "admin"}))
    app.upstream.close()


# ---- pages ----------------------------------------------------------------------------------


async def test_dashboard_and_settings_pages_render_with_a_strict_csp(admin):
    for path in ("/admin/dashboard", "/admin/settings-page"):
        resp = await admin.get(path)
        assert resp.code == 200, path
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert b'name="xsrf-token"' in resp.body
        assert b"<script>" not in resp.body  # scripts only from /static
        for asset in re.findall(rb'(?:src|href)="(/static/[^"]+)"', resp.body):
            assert (await admin.get(asset.decode())).code == 200, asset
    settings = (await admin.get("/admin/settings-page")).body
    assert b"RETRY_WITH_NEW_KEY_COUNT" in settings and PASSWORD.encode() not in settings


async def test_logout_form_redirects_to_the_login_page(admin):
    page = await admin.get("/admin/dashboard")
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await admin.request("POST", "/admin/logout", raw=f"_xsrf={token}", headers=form)
    assert resp.code == 302 and resp.headers["Location"] == "/admin/login?reason=logged_out"
    page = await admin.get("/admin/login?reason=logged_out")
    assert b"You are signed out." in page.body


# ---- settings -------------------------------------------------------------------------------


async def test_settings_get_lists_editable_settings_with_help(admin):
    data = await admin.json("GET", "/admin/settings")
    names = {f["name"] for f in data["fields"]}
    assert "RETRY_WITH_NEW_KEY_COUNT" in names and "HEALTH_CHECK_INTERVAL_SECONDS" in names
    assert "ADMIN_PASSWORD" not in names and "APP_API_KEY" not in names and "PORT" not in names
    assert data["retry_with_new_key_count"] == 3 == data["settings"]["RETRY_WITH_NEW_KEY_COUNT"]
    field = next(f for f in data["fields"] if f["name"] == "RETRY_WITH_NEW_KEY_COUNT")
    assert field["help"] and field["min"] == 0 and field["max"] == 100


async def test_settings_post_validates_persists_and_applies(admin, app):
    app.health.start()
    body = {"retry_with_new_key_count": "5", "HEALTH_CHECK_INTERVAL_SECONDS": 42}
    data = await admin.json("POST", "/admin/settings", body)
    assert data["changed"] == ["HEALTH_CHECK_INTERVAL_SECONDS", "RETRY_WITH_NEW_KEY_COUNT"]
    assert app.config.retry_count == 5 and app.config.health_interval == 42.0
    assert app.health._periodic.callback_time == 42_000  # applied without a restart
    assert app.store.load_settings() == {
        "RETRY_WITH_NEW_KEY_COUNT": "5",
        "HEALTH_CHECK_INTERVAL_SECONDS": "42.0",
    }
    app.health.stop()


@pytest.mark.parametrize(
    "body,param",
    [
        ({"REQUEST_TIMEOUT_SECONDS": "-1"}, "REQUEST_TIMEOUT_SECONDS"),
        ({"RETRY_WITH_NEW_KEY_COUNT": "many"}, "RETRY_WITH_NEW_KEY_COUNT"),
        ({"RETRY_WITH_NEW_KEY_COUNT": 2, "PORT": 9}, "PORT"),
        ({"ADMIN_PASSWORD": "x"}, "ADMIN_PASSWORD"),
        ({"NO_SUCH_THING": 1}, "NO_SUCH_THING"),
    ],
)
async def test_settings_post_is_all_or_nothing(admin, app, body, param):
    err = assert_openai_error(await admin.post("/admin/settings", body), 400)
    assert err["param"] == param and err["code"] == "invalid_setting"
    assert app.config.retry_count == 3 and app.store.load_settings() == {}


async def test_settings_reset_returns_to_the_env_value(admin, app):
    await admin.json("POST", "/admin/settings", {"DEFAULT_MODEL": "a/b"})
    assert app.config.default_model == "a/b"
    data = await admin.json("POST", "/admin/settings", {"settings": {"DEFAULT_MODEL": None}})
    assert (
        data["settings"]["DEFAULT_MODEL"]
        == app.env_config.default_model
        == app.config.default_model
    )
    assert app.store.load_settings() == {}


async def test_stored_settings_override_the_environment_on_restart(admin, env, serve):
    await admin.json("POST", "/admin/settings", {"KEY_FAILURE_COOLDOWN_SECONDS": "77"})
    again = make_app(load_settings({**env, "KEY_FAILURE_COOLDOWN_SECONDS": "10"}))
    assert again.config.key_cooldown == 77.0 and again.scheduler.policy.base == 77.0
    assert again.env_config.key_cooldown == 10.0


# ---- app status ------------------------------------------------------------------------------


async def test_app_status_counts_requests_and_shows_no_secret(env, serve, sdk):
    app = make_app(load_settings({**env, "APP_API_KEY": "client-secret-key-1"}))
    url = serve(app)
    c = AdminClient(url)
    await c.login()
    headers = {"Authorization": "Bearer client-secret-key-1", "Content-Type": "application/json"}
    chat = json.dumps({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    for auth in (headers, {}):
        await c.http.fetch(
            f"{url}/v1/chat/completions", method="POST", body=chat, headers=auth, raise_error=False
        )
    resp = await c.get("/admin/app-status")
    data = json.loads(resp.body)
    assert data["keys"]["total"] == 3 and data["keys"]["available"] == 3
    # The request with no client key is counted apart: not an upstream failure.
    counts = data["requests"]
    assert counts["requests_last_hour"] == 1 and counts["errors_last_hour"] == 0
    assert counts["rejected_last_hour"] == 1
    assert data["uptime_seconds"] >= 0 and data["version"]
    assert data["settings"]["APP_API_KEY"] is True and data["settings"]["ADMIN_PASSWORD"] is True
    for secret in ("client-secret-key-1", PASSWORD, "sk-or-v1-test-aaaa1111", "sk-or-v1-test"):
        assert secret.encode() not in resp.body
