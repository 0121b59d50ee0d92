"""The dashboard's usage views and the Requests page in a real browser (Playwright, Debian's
chromium), with records written through the app's ledger: the charts draw their series, the
cards and top lists hold the ledger's figures, a trace lists the keys tried in order, in
English and in Chinese, and the log becomes cards at phone width."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from orpoll.keys import key_id, mask
from orpoll.usage import RequestRecord
from tests.admin_helpers import PASSWORD
from tests.conftest import KEYS
from tests.dash_helpers import CHROMIUM, served_app
from tests.test_browser import Watch, shot

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="chromium is not installed")
A, B, C = KEYS
NOW = time.time()
# The requests series' stroke in usage.js (#4f46e5).
REQUESTS_RGB = (79, 70, 229)


def record(at: float, i: int, key: str, *, failed: bool = False, cost: float = 0.001):
    r = RequestRecord(
        time=at,
        request_id=f"req-{i}",
        route="/v1/chat/completions",
        model="openai/gpt-4o" if i % 2 else "anthropic/claude-3.5-sonnet",
        stream=bool(i % 3),
        status=502 if failed else 200,
        client="c0ffee00",
        prompt_tokens=10,
        completion_tokens=20,
        cost=cost,
        usage_known=True,
        duration_ms=321.0,
    )
    if not failed:
        r.attempt(key_id(B), "key_rate_limit", 429, 12.5)
        r.attempt(key_id(key), "ok", 200, 80.0)
        r.serve(key_id(key), mask(key), "user_1")
    else:
        r.attempt(key_id(key), "upstream", 502, 40.0)
    return r


def records() -> list[RequestRecord]:
    out = []
    for i in range(30):  # the last hour: every 10th failed
        out.append(record(NOW - 60 * i - 30, i, (A, C)[i % 2], failed=i % 10 == 0))
    for i in range(30, 60):  # earlier today and yesterday
        out.append(record(NOW - 3600 * (i - 28), i, A))
    for i in range(60, 66):  # earlier days: C costs most
        out.append(record(NOW - 86400 * (i - 59), i, C, cost=0.5))
    return sorted(out, key=lambda r: r.time)  # the order requests finish in


@pytest.fixture
def served(tmp_path):
    with served_app(str(tmp_path / "data")) as app:
        rows = records()
        app.call(lambda a: [a.ledger.add(r) for r in rows])
        asyncio.run_coroutine_threadsafe(app.app.ledger.flush(), app.loop).result(30)
        yield app


def login(page, url: str, lang: str = "") -> None:
    page.goto(url + "/admin/login" + (f"?lang={lang}" if lang else ""))
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    sync_api.expect(page).to_have_url(url + "/admin/dashboard")


def painted(page, selector: str, rgb: tuple[int, int, int]) -> int:
    """How many pixels of the chart's canvas are (nearly) the colour ``rgb``."""
    return page.evaluate(
        """([selector, rgb]) => {
          const canvas = document.querySelector(selector + " canvas");
          const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
          let n = 0;
          for (let i = 0; i < data.length; i += 4) {
            const near = [0, 1, 2].every((c) => Math.abs(data[i + c] - rgb[c]) < 12);
            if (data[i + 3] > 200 && near) n++;
          }
          return n;
        }""",
        [selector, list(rgb)],
    )


def check_charts(page) -> None:
    expect = sync_api.expect
    for chart in ("#chart-1h", "#chart-24h", "#chart-cost"):
        expect(page.locator(chart + " canvas")).to_have_count(1)
    expect(page.locator("#chart-1h")).to_have_attribute("data-points", "60")
    expect(page.locator("#chart-24h")).to_have_attribute("data-points", "1440")
    expect(page.locator("#chart-cost")).to_have_attribute("data-points", "30")
    assert painted(page, "#chart-1h", REQUESTS_RGB) > 50
    assert painted(page, "#chart-24h", REQUESTS_RGB) > 50
    assert painted(page, "#chart-cost", (5, 150, 105)) > 50  # the cost bars (#059669)


def test_dashboard_usage_and_request_traces_in_english(served, browser):
    page = browser.new_context(locale="en-US", viewport={"width": 1440, "height": 1000}).new_page()
    watch = Watch(page)
    expect = sync_api.expect
    login(page, served.url)
    check_charts(page)
    expect(page.locator('[data-kpi="requests_1h"]')).to_have_text("30")
    expect(page.locator('[data-kpi="error_rate_1h"]')).to_have_text("10.0% errors")
    today = sum(r.tokens for r in records() if r.time // 86400 == time.time() // 86400)
    expect(page.locator('[data-kpi="tokens_today"]')).to_have_text(f"{today:,}")
    expect(page.locator('[data-kpi="streams_open"]')).to_have_text("0")
    first_key = page.locator("#top-key tbody tr").first
    expect(first_key).to_contain_text(mask(C))
    expect(page.locator("#top-model tbody tr")).to_have_count(2)
    expect(page.locator("#top-client tbody tr").first).to_contain_text("c0ffee00")
    expect(page.locator(f'#keys tbody tr[data-id="{key_id(A)}"] td.today')).to_contain_text("req")
    shot(page, "dashboard-usage.png")
    for key in KEYS:
        assert key not in page.content()

    # A key's link opens the Requests page filtered to it.
    page.locator(f'#keys tbody tr[data-id="{key_id(C)}"] td.today a').click()
    expect(page.locator("#f-key")).to_have_value(key_id(C))
    expect(page.locator("#log-total")).to_have_text("(21 matching)")
    page.click("#clear")
    expect(page).to_have_url(served.url + "/admin/requests-log")

    page.click('nav a[href="/admin/requests-log"]')
    expect(page.locator("#log tbody tr.log-row")).to_have_count(50)
    expect(page.locator("#log-total")).to_have_text("(66 matching)")
    page.select_option("#f-status", "error")
    page.click("#apply")
    expect(page.locator("#log tbody tr.log-row")).to_have_count(3)
    assert "status=error" in page.get_attribute("#csv", "href")

    # A time from the browser's own clock and zone: the last 90 minutes hold the first 30.
    since = page.evaluate(
        """() => { const d = new Date(Date.now() - 90 * 60000);
          const p = (n) => String(n).padStart(2, "0");
          const day = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
          return `${day}T${p(d.getHours())}:${p(d.getMinutes())}`; }"""
    )
    page.select_option("#f-status", "")
    page.fill("#f-since", since)
    page.click("#apply")
    expect(page.locator("#log-total")).to_have_text("(30 matching)")
    assert "since=" in page.get_attribute("#csv", "href")
    page.fill("#f-since", "")

    page.select_option("#f-status", "ok")
    page.click("#apply")
    newest = page.locator("#log tbody tr.log-row").first
    newest.get_by_role("button", name="Trace").click()
    steps = page.locator(".trace-row .attempt")
    expect(steps).to_have_count(2)
    expect(steps.nth(0)).to_contain_text(key_id(B))
    expect(steps.nth(0)).to_contain_text("key rate-limited")
    expect(steps.nth(0)).to_contain_text("429")
    expect(steps.nth(1)).to_contain_text(key_id(C))
    expect(steps.nth(1)).to_contain_text("answered")
    for key in KEYS:
        assert key not in page.content()
    page.click("#older")
    expect(page.locator("#log-page")).to_contain_text("51–")
    shot(page, "requests.png")
    assert watch.errors == []


def test_dashboard_and_requests_page_in_chinese(served, browser):
    page = browser.new_context(locale="zh-CN", viewport={"width": 1440, "height": 1000}).new_page()
    watch = Watch(page)
    expect = sync_api.expect
    login(page, served.url)
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    check_charts(page)
    expect(page.locator("figcaption").first).to_contain_text("每分钟")
    expect(page.locator('[data-kpi="error_rate_1h"]')).to_contain_text("错误率")
    expect(page.locator("#chart-1h .u-legend")).to_contain_text("请求")

    page.click('nav a[href="/admin/requests-log"]')
    expect(page.locator("h1")).to_contain_text("请求")
    page.select_option("#f-status", "ok")
    page.click("#apply")
    page.locator("#log tbody tr.log-row").first.get_by_role("button", name="追踪").click()
    steps = page.locator(".trace-row .attempt")
    expect(steps).to_have_count(2)
    expect(steps.nth(0)).to_contain_text("密钥被限流")
    expect(steps.nth(1)).to_contain_text("已应答")
    shot(page, "requests-zh.png")
    assert watch.errors == []


def test_the_request_log_becomes_cards_at_phone_width(served, browser):
    context = browser.new_context(locale="en-US", viewport={"width": 390, "height": 844})
    page = context.new_page()
    login(page, served.url)
    check_charts(page)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390
    shot(page, "dashboard-usage-phone.png")
    page.goto(served.url + "/admin/requests-log")
    expect = sync_api.expect
    expect(page.locator("#log tbody tr.log-row")).to_have_count(50)
    expect(page.locator("#log thead")).to_be_hidden()
    expect(page.locator("#log tbody tr.log-row").first.locator(".cell-label").first).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    shot(page, "requests-phone.png")
