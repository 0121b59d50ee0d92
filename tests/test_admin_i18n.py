"""The admin pages' language on a real server: Accept-Language, the orpoll_lang cookie (which
wins), the ?lang= switch (which sets the cookie), the English fallback, and the JSON API, which
stays as it is whatever the language."""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest

from orpoll import i18n
from tests.admin_helpers import PASSWORD, AdminClient
from tests.conftest import assert_openai_error

ZH_LOGIN = "管理员密码"
EN_LOGIN = "Admin password"


@pytest.fixture
def client(base_url) -> AdminClient:
    return AdminClient(base_url)


def html_lang(body: bytes) -> str:
    return re.search(rb'<html lang="([^"]+)">', body).group(1).decode()


def embedded(body: bytes) -> dict[str, str]:
    """The catalogue the page hands its scripts."""
    raw = re.search(rb'<script type="application/json" id="i18n">(.*?)</script>', body, re.S)
    return json.loads(raw.group(1))


async def login_page(client: AdminClient, query: str = "", **headers: str):
    resp = await client.get("/admin/login" + query, headers=headers)
    assert resp.code == 200
    return resp


@pytest.mark.parametrize("header", ["zh-CN", "zh-CN,zh;q=0.9,en;q=0.8", "zh", "zh-TW"])
async def test_a_chinese_browser_gets_the_chinese_login_page(client, header):
    resp = await login_page(client, **{"Accept-Language": header})
    page = resp.body.decode()
    assert html_lang(resp.body) == "zh-CN"
    assert ZH_LOGIN in page and EN_LOGIN not in page
    assert "<title>登录 · orpoll</title>" in page
    assert embedded(resp.body) == dict(i18n.catalogue("zh"))


@pytest.mark.parametrize("header", [None, "en", "en-GB,en;q=0.9", "fr-FR,de;q=0.8", "*"])
async def test_english_is_the_answer_to_english_and_to_unknown_languages(client, header):
    resp = await login_page(client, **({"Accept-Language": header} if header else {}))
    assert html_lang(resp.body) == "en"
    assert EN_LOGIN in resp.body.decode() and ZH_LOGIN not in resp.body.decode()
    assert embedded(resp.body)["login.submit"] == "Sign in"


async def test_the_cookie_wins_over_the_header(client):
    client.cookies[i18n.COOKIE] = "zh"
    resp = await login_page(client, **{"Accept-Language": "en-US,en"})
    assert html_lang(resp.body) == "zh-CN" and ZH_LOGIN in resp.body.decode()
    client.cookies[i18n.COOKIE] = "en"
    resp = await login_page(client, **{"Accept-Language": "zh-CN"})
    assert html_lang(resp.body) == "en" and EN_LOGIN in resp.body.decode()
    client.cookies[i18n.COOKIE] = "klingon"  # not a catalogue: the header decides
    resp = await login_page(client, **{"Accept-Language": "zh-CN"})
    assert html_lang(resp.body) == "zh-CN"


async def test_the_switch_sets_a_lax_readable_cookie_and_keeps_next(client):
    resp = await login_page(client, "?next=%2Fadmin%2Fsettings-page&lang=zh")
    assert html_lang(resp.body) == "zh-CN"
    cookie = next(h for h in resp.headers.get_list("Set-Cookie") if h.startswith(i18n.COOKIE + "="))
    assert cookie.startswith("orpoll_lang=zh;")
    assert "SameSite=Lax" in cookie and "Path=/admin" in cookie and "HttpOnly" not in cookie
    assert "expires=" in cookie.lower()
    page = resp.body.decode()
    # The switch links back to this page with the other language; next= stays.
    assert 'href="/admin/login?next=%2Fadmin%2Fsettings-page&amp;lang=en"' in page
    assert 'value="/admin/settings-page"' in page
    # The cookie now chooses for the next page, whatever the browser asks for.
    resp = await login_page(client, **{"Accept-Language": "en"})
    assert html_lang(resp.body) == "zh-CN"
    # Without a lang argument no cookie is set.
    assert not any(h.startswith(i18n.COOKIE) for h in resp.headers.get_list("Set-Cookie"))


async def test_a_refused_form_login_says_why_in_the_pages_language(client):
    page = await login_page(client, "?lang=zh")
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    body = urllib.parse.urlencode({"password": "nope", "_xsrf": token})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await client.request("POST", "/admin/login", raw=body, headers=form)
    assert resp.code == 403 and html_lang(resp.body) == "zh-CN"
    assert '<p class="error" id="login-error">密码错误</p>' in resp.body.decode()


async def test_the_logged_out_notice_is_translated(client):
    resp = await login_page(client, "?reason=logged_out", **{"Accept-Language": "zh-CN"})
    assert '<p class="notice">你已退出登录。</p>' in resp.body.decode()


async def test_dashboard_and_settings_pages_in_chinese(client):
    await client.login()
    headers = {"Accept-Language": "zh-CN"}
    dash = (await client.get("/admin/dashboard", headers=headers)).body.decode()
    assert html_lang(dash.encode()) == "zh-CN"
    for text in ("添加密钥", "立即检查密钥", "退出登录", "冷却中", 'aria-current="true">中文</a>'):
        assert text in dash
    assert "Add keys" not in dash and "Sign out" not in dash
    settings = (await client.get("/admin/settings-page", headers=headers)).body.decode()
    assert "保存修改" in settings and "当前生效的配置" in settings
    assert "同一地址登录失败多少次后开始限流" in settings  # a setting's help, translated
    assert "<td>已设置</td>" in settings or "<td>未设置</td>" in settings  # a secret's state
    english = (await client.get("/admin/settings-page")).body.decode()
    assert "failed admin logins per address before throttling" in english
    assert "Save changes" in english


async def test_the_origin_error_page_speaks_chinese(client):
    page = await login_page(client, "?lang=zh")
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    body = urllib.parse.urlencode({"password": PASSWORD, "_xsrf": token})
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "text/html",
        "Origin": "https://orpoll.example",
    }
    resp = await client.request("POST", "/admin/login", raw=body, headers=headers)
    html = resp.body.decode()
    assert resp.code == 403 and html_lang(resp.body) == "zh-CN"
    assert "请求被拒绝" in html and '<code id="origin">https://orpoll.example</code>' in html
    assert "<code>PUBLIC_URL=https://orpoll.example</code>" in html


async def test_the_json_api_is_the_same_in_every_language(client):
    client.cookies[i18n.COOKIE] = "zh"
    headers = {"Accept-Language": "zh-CN"}
    resp = await client.request("POST", "/admin/login", {"password": "nope"}, headers=headers)
    err = assert_openai_error(resp, 401)
    assert err["message"] == "wrong password" and err["code"] == "invalid_password"
    await client.login()
    status = await client.request("GET", "/admin/key-status?status=bogus", headers=headers)
    assert assert_openai_error(status, 400)["code"] == "invalid_status"
    assert "状态" not in status.body.decode()
