"""The admin in Chinese in a real browser (Playwright, Debian's chromium): the switch in the
header, the scripts' text and number formats, translated API errors, and the choice surviving a
reload; a browser that prefers Chinese gets it without switching."""

from __future__ import annotations

import shutil

import pytest

from tests.admin_helpers import PASSWORD
from tests.dash_helpers import CHROMIUM, served_app
from tests.test_browser import Watch, shot

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="chromium is not installed")


@pytest.fixture
def served(tmp_path):
    with served_app(str(tmp_path / "data")) as app:
        yield app


def test_switching_to_chinese_translates_every_page_and_is_remembered(served, browser):
    context = browser.new_context(locale="en-US", viewport={"width": 1440, "height": 900})
    page = context.new_page()
    watch = Watch(page)
    expect = sync_api.expect
    page.goto(served.url + "/admin/login")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(served.url + "/admin/dashboard")
    expect(page.locator("#keys tbody tr")).to_have_count(3)
    expect(page.locator("#page-info")).to_have_text("Page 1 of 1 · 3 matching")

    # The switch in the header: the page comes back in Chinese, rows drawn by the script too.
    page.click("#lang-zh")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("h2").last).to_have_text("添加密钥")
    expect(page.locator("#keys tbody tr")).to_have_count(3)
    expect(page.locator("#page-info")).to_have_text("第 1 / 1 页 · 匹配 3 个")
    first = page.locator("#keys tbody tr").first
    expect(first.locator(".badge")).to_have_text("可用")
    expect(first.get_by_role("button", name="暂停")).to_be_visible()
    expect(first.locator("td.traffic")).to_contain_text("暂无")
    expect(page.locator("#lang-zh")).to_have_attribute("aria-current", "true")

    # An action's toast and a refused request's error, in Chinese.
    first.get_by_role("button", name="暂停").click()
    expect(page.locator("#toast")).to_contain_text("已暂停")
    expect(first.locator(".badge")).to_have_text("已暂停")
    page.fill("#bulk", "not a key")
    page.click("#add")
    expect(page.locator("#add-result")).to_have_text("新增 0 个 · 重复 0 个 · 无效 1 个")
    shot(page, "dashboard-zh.png")

    # The settings page: static text, the scripts' messages, a translated field error.
    page.click('nav a[href="/admin/settings-page"]')
    expect(page).to_have_url(served.url + "/admin/settings-page")
    expect(page.locator("#save-settings")).to_have_text("保存修改")
    page.click("#save-settings")
    expect(page.locator("#settings-result")).to_have_text("没有任何修改。")
    page.fill("#s-RETRY_WITH_NEW_KEY_COUNT", "-3")
    page.click("#save-settings")
    error = page.locator('.field[data-name="RETRY_WITH_NEW_KEY_COUNT"] .field-error')
    expect(error).to_contain_text("设置值无效")
    shot(page, "settings-zh.png")

    # A reload (and a fresh visit) keeps Chinese: the cookie remembers it.
    page.reload()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.goto(served.url + "/admin/dashboard")
    expect(page.locator("h2").last).to_have_text("添加密钥")
    cookie = next(c for c in context.cookies() if c["name"] == "orpoll_lang")
    assert cookie["value"] == "zh" and cookie["sameSite"] == "Lax" and not cookie["httpOnly"]

    # And back to English.
    page.click("#lang-en")
    expect(page.locator("h2").last).to_have_text("Add keys")
    expect(page.locator("#keys tbody tr").first.locator(".badge")).to_have_text("Paused")
    assert watch.errors == [
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]
    context.close()


def test_a_browser_that_prefers_chinese_gets_it_at_once(served, browser):
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    watch = Watch(page)
    expect = sync_api.expect
    page.goto(served.url + "/admin/dashboard")
    expect(page.locator("label[for=password]")).to_have_text("管理员密码")
    page.fill("#password", "wrong-password")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("密码错误")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#keys tbody tr")).to_have_count(3)
    expect(page.locator(".card-label").first).to_have_text("可用")
    expect(page.locator("#logout")).to_have_text("退出登录")
    assert watch.errors == [
        "Failed to load resource: the server responded with a status of 403 (Forbidden)"
    ]
    context.close()
