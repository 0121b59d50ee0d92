"""Admin hardening: the login throttle under concurrency, bounded settings, deep JSON, the
``next=`` target, the origin check's trusted headers, static files and security headers."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import urllib.parse

import pytest
from tornado.httpclient import AsyncHTTPClient

from orpoll.app import make_app
from orpoll.config import ENV_FIELDS, load_settings
from tests.admin_helpers import PASSWORD, AdminClient
from tests.conftest import assert_openai_error

SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy")


@pytest.fixture
def client(base_url) -> AdminClient:
    return AdminClient(base_url)


def numeric_editable() -> list[str]:
    return [
        env
        for env, f in ENV_FIELDS.items()
        if f.metadata["editable"] and type(f.default) in (int, float)
    ]


# ---- login throttle -------------------------------------------------------------------------


async def test_concurrent_wrong_passwords_are_throttled_like_sequential_ones(env, serve):
    # The generated password: each check is scrypt in a thread, slow enough that without a
    # reservation every concurrent try would be checked before the first one failed.
    app = make_app(load_settings({**env, "ADMIN_PASSWORD": ""}))
    url = serve(app)
    http = AsyncHTTPClient(force_instance=True, max_clients=200)
    body = json.dumps({"password": "not-the-password"})
    try:
        answers = await asyncio.gather(
            *(
                http.fetch(
                    url + "/admin/login",
                    method="POST",
                    body=body,
                    headers={"Content-Type": "application/json"},
                    raise_error=False,
                    request_timeout=120,
                )
                for _ in range(200)
            )
        )
    finally:
        http.close()
    codes = sorted(r.code for r in answers)
    checked = codes.count(401)
    assert checked == app.config.login_max_failures, codes
    assert codes.count(429) == 200 - checked
    for resp in answers:
        if resp.code == 429:
            assert assert_openai_error(resp, 429)["code"] == "login_throttled"
            assert int(resp.headers["Retry-After"]) >= 1


async def test_a_right_password_clears_its_own_reservation(client, app):
    assert (await client.login("wrong-password!")).code == 401
    assert (await client.login()).code == 200
    assert app.login_throttle.retry_after("127.0.0.1") == 0
    assert "127.0.0.1" not in app.login_throttle.failures


# ---- settings bounds --------------------------------------------------------------------------


def test_every_numeric_setting_has_finite_bounds():
    for env, f in ENV_FIELDS.items():
        if type(f.default) in (int, float):
            low, high = f.metadata.get("min"), f.metadata.get("max")
            assert low is not None and high is not None, env
            assert math.isfinite(low) and math.isfinite(high) and low <= f.default <= high, env


@pytest.mark.parametrize("raw", ["1e300", "Infinity", "-Infinity", "NaN"])
async def test_absurd_numbers_are_refused_and_never_stored(admin, app, raw):
    before = app.config
    for name in numeric_editable():
        resp = await admin.request(
            "POST",
            "/admin/settings",
            raw=f'{{"{name}": {raw}}}',
            headers={"Content-Type": "application/json"},
        )
        err = assert_openai_error(resp, 400, "invalid_request_error")
        assert err["param"] == name and err["code"] == "invalid_setting", (name, err)
    assert app.config == before and app.store.load_settings() == {}


async def test_absurd_numbers_as_strings_are_refused_too(admin, app):
    for name in numeric_editable():
        for raw in ("1e300", "inf", "nan", "9" * 400):
            resp = await admin.post("/admin/settings", {name: raw})
            assert assert_openai_error(resp, 400)["param"] == name, (name, raw)
    assert app.store.load_settings() == {}


async def test_a_stored_value_out_of_bounds_never_bricks_start_up(env, app, caplog):
    app.store.save_settings(
        {
            "HEALTH_CHECK_INTERVAL_SECONDS": "1e+300",
            "SESSION_LIFETIME_SECONDS": "inf",
            "CONNECT_TIMEOUT_SECONDS": "nan",
            "RETRY_WITH_NEW_KEY_COUNT": "5",
        }
    )
    again = make_app(load_settings(env))
    try:
        assert again.config.health_interval == 300.0 and again.config.retry_count == 5
        assert again.config.session_lifetime == 7 * 86400.0
        assert again.config.connect_timeout == 10.0
        again.health.start()  # the OverflowError of the unbounded value came from here
        again.health.stop()
    finally:
        again.upstream.close()
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "stored setting" in r.msg]
    assert len(errors) == 3, [r.getMessage() for r in caplog.records]


# ---- deep JSON --------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/admin/login"),
        ("POST", "/admin/settings"),
        ("POST", "/admin/password"),
        ("POST", "/admin/add-key"),
        ("POST", "/admin/reload-keys"),
    ],
)
async def test_deeply_nested_json_is_a_400_with_or_without_a_session(base_url, method, path):
    anonymous, admin = AdminClient(base_url), AdminClient(base_url)
    assert (await admin.login()).code == 200
    for client in (anonymous, admin):
        for body in (DEEP, '{"password": ' + DEEP + "}"):
            resp = await client.request(
                method, path, raw=body, headers={"Content-Type": "application/json"}
            )
            assert resp.code in (400, 401), (path, resp.code, resp.body[:200])
            assert_openai_error(resp, resp.code)
    resp = await admin.request(
        "POST", "/admin/settings", raw=DEEP, headers={"Content-Type": "application/json"}
    )
    assert assert_openai_error(resp, 400)["code"] == "invalid_json"


# ---- next= -------------------------------------------------------------------------------------


async def form_login(client: AdminClient, next_target: str):
    page = await client.get("/admin/login")
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    body = urllib.parse.urlencode({"password": PASSWORD, "next": next_target, "_xsrf": token})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    return await client.request("POST", "/admin/login", raw=body, headers=form)


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example",
        "/\n/evil.example",
        "/admin\r\nSet-Cookie: x=1",
        "/\x00x",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/admin/\u00e9",
    ],
)
async def test_next_that_is_not_a_plain_local_path_goes_to_the_dashboard(base_url, target):
    resp = await form_login(AdminClient(base_url), target)
    assert resp.code == 302, resp.body[:300]
    assert resp.headers["Location"] == "/admin/dashboard"
    page = await AdminClient(base_url).get("/admin/login?next=" + urllib.parse.quote(target))
    assert b'name="next" value="/admin/dashboard"' in page.body


async def test_a_plain_local_next_is_honoured(base_url):
    resp = await form_login(AdminClient(base_url), "/admin/settings-page?tab=a%20b")
    assert resp.headers["Location"] == "/admin/settings-page?tab=a%20b"


# ---- origin check -----------------------------------------------------------------------------


async def test_x_forwarded_host_is_ignored_unless_proxy_headers_are_trusted(admin):
    spoof = {"Origin": "http://evil.example", "X-Forwarded-Host": "evil.example"}
    resp = await admin.post("/admin/settings", {"DEFAULT_MODEL": "a/b"}, headers=spoof)
    assert assert_openai_error(resp, 403)["code"] == "bad_origin"


async def test_x_forwarded_host_counts_behind_a_trusted_proxy(env, serve):
    app = make_app(load_settings({**env, "TRUST_PROXY_HEADERS": "true"}))
    admin = AdminClient(serve(app))
    assert (await admin.login()).code == 200
    fwd = {"Origin": "https://orpoll.example", "X-Forwarded-Host": "orpoll.example"}
    resp = await admin.post("/admin/settings", {"DEFAULT_MODEL": "a/b"}, headers=fwd)
    assert resp.code == 200, resp.body


async def test_public_url_is_an_accepted_origin(env, serve):
    app = make_app(load_settings({**env, "PUBLIC_URL": "https://orpoll.example/"}))
    admin = AdminClient(serve(app))
    ours = {"Origin": "https://orpoll.example"}
    assert (
        await admin.request("POST", "/admin/login", {"password": PASSWORD}, headers=ours)
    ).code == 200
    other = {"Origin": "https://other.example"}
    resp = await admin.post("/admin/settings", {"DEFAULT_MODEL": "a/b"}, headers=other)
    assert_openai_error(resp, 403)


async def test_a_malformed_origin_is_refused_not_a_500(admin):
    for origin in ("http://[", "http://[::1", "http://a b", "null", ""):
        resp = await admin.post(
            "/admin/settings", {"DEFAULT_MODEL": "a/b"}, headers={"Origin": origin}
        )
        assert assert_openai_error(resp, 403)["code"] == "bad_origin", origin


# ---- static files and security headers --------------------------------------------------------


def assert_security_headers(resp) -> None:
    for name in SECURITY_HEADERS:
        assert resp.headers.get(name), (name, resp.effective_url)
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_static_paths_with_a_nul_or_traversal_are_404(client):
    for path in ("/static/admin.js%00.css", "/static/%00", "/static/..%2f..%2fREADME.md"):
        resp = await client.get(path)
        assert resp.code in (403, 404), (path, resp.code)
        assert_security_headers(resp)


async def test_static_files_carry_the_security_headers(client):
    for name in ("admin.js", "admin.css", "favicon.svg"):
        resp = await client.get(f"/static/{name}")
        assert resp.code == 200, name
        assert_security_headers(resp)


async def test_admin_pages_redirects_and_errors_carry_the_security_headers(admin, client):
    for c, path in (
        (admin, "/admin/dashboard"),
        (admin, "/admin/settings-page"),
        (client, "/admin/login"),
        (client, "/admin/dashboard"),  # a redirect to the login page
        (client, "/admin/key-status"),  # 401
    ):
        resp = await c.get(path)
        assert_security_headers(resp)
    assert (await admin.get("/admin/dashboard")).headers["Referrer-Policy"] == "same-origin"


async def test_a_browser_refused_by_the_origin_check_gets_a_page_saying_what_to_set(client):
    page = await client.get("/admin/login")
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    body = urllib.parse.urlencode({"password": PASSWORD, "_xsrf": token})
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "text/html,*/*;q=0.8",
        "Origin": "https://orpoll.example",
    }
    resp = await client.request("POST", "/admin/login", raw=body, headers=headers)
    assert resp.code == 403 and resp.headers["Content-Type"].startswith("text/html")
    html = resp.body.decode()
    assert '<code id="origin">https://orpoll.example</code>' in html
    assert f'<code id="host">{client.base.removeprefix("http://")}</code>' in html
    assert "PUBLIC_URL=https://orpoll.example" in html
    assert_security_headers(resp)
    # The same refusal without Accept: text/html (a script) stays JSON.
    del headers["Accept"]
    resp = await client.request("POST", "/admin/login", raw=body, headers=headers)
    assert assert_openai_error(resp, 403)["code"] == "bad_origin"


async def test_public_url_https_marks_the_cookie_secure(env, serve):
    app = make_app(load_settings({**env, "PUBLIC_URL": "https://orpoll.example"}))
    resp = await AdminClient(serve(app)).login()
    cookie = next(h for h in resp.headers.get_list("Set-Cookie") if "orpoll_session=" in h)
    assert "Secure" in cookie


async def test_a_static_file_logs_one_access_line_and_no_error(client, caplog):
    caplog.set_level(logging.INFO)
    resp = await client.get("/static/admin.js", headers={"X-Request-Id": "static-probe-1"})
    assert resp.code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await client.get("/static/admin.js%00.css")).code == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
