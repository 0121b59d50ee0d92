"""The admin in a real browser: Playwright (sync API) drives Debian's chromium against
``python run.py`` in a subprocess. Plain (non-async) tests, so no event loop runs in this
thread while Playwright's sync API does.

Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request

import pytest

from orpoll.keys import key_id
from tests.admin_helpers import (
    PASSWORD,
    ROOT,
    FakeUpstream,
    OrpollProcess,
    SyncAdmin,
    child_env,
)
from tests.conftest import KEYS
from tests.dash_helpers import CHROMIUM, AppThread

sync_api = pytest.importorskip("playwright.sync_api")
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
XSS = '<img src=x onerror="window.__xss=1;alert(1)">'
XSS_KEY = "sk-or-v1-xss-dddd4444"
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="chromium is not installed")


@pytest.fixture
def server(tmp_path):
    """orpoll in a subprocess with the 3 test keys plus one whose label is an XSS probe."""
    upstream = FakeUpstream()
    env = child_env(
        upstream,
        str(tmp_path / "data"),
        ADMIN_PASSWORD=PASSWORD,
        OPENROUTER_API_KEYS=",".join(KEYS),
    )
    proc = OrpollProcess(env, str(tmp_path / "orpoll.log"))
    try:
        proc.wait_ready()
        api = SyncAdmin(proc.url)
        api.login()
        api.ok("POST", "/admin/add-key", {"openrouter_api_key": XSS_KEY, "label": XSS})
        traffic(proc, api, upstream)
        yield proc, api, upstream
    finally:
        proc.stop()
        upstream.stop()


def traffic(proc: OrpollProcess, api: SyncAdmin, upstream: FakeUpstream) -> None:
    """Chat until the XSS key is rate limited (cooling, with a countdown and a reason) and the
    first key has failed once (a last error)."""
    limited = {"code": 429, "message": "Rate limit exceeded: 20 requests per minute"}
    upstream.state.script(
        XSS_KEY, {"status": 429, "headers": {"Retry-After": "754"}, "error": limited}
    )
    upstream.state.script(KEYS[0], {"status": 502}, {"chunks": 3})
    body = json.dumps({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    for _ in range(200):
        req = urllib.request.Request(
            proc.url + "/v1/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert urllib.request.urlopen(req, timeout=10).status == 200
        keys = {k["id"]: k for k in api.ok("GET", "/admin/key-status")["keys"]}
        if keys[key_id(XSS_KEY)]["status"] == "cooling" and keys[key_id(KEYS[0])]["errors"]:
            return
    raise AssertionError("the scripted failures never happened")


class Watch:
    """Console errors, page errors and dialogs of a page (confirm() dialogs are accepted)."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[tuple[str, str]] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", self.on_dialog)

    def on_dialog(self, dialog) -> None:
        self.dialogs.append((dialog.type, dialog.message))
        dialog.accept()


def row(page, key: str):
    return page.locator(f'#keys tbody tr[data-id="{key_id(key)}"]')


def test_admin_end_to_end_in_chromium(server, browser):
    proc, api, _ = server
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    watch = Watch(page)
    expect = sync_api.expect

    # Log in through the form (the dashboard redirects to it).
    page.goto(proc.url + "/admin/dashboard")
    expect(page).to_have_url(proc.url + "/admin/login?next=%2Fadmin%2Fdashboard")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(proc.url + "/admin/dashboard")
    expect(page.locator("#keys tbody tr")).to_have_count(4)
    expect(page.locator('[data-count="available"]')).to_have_text("3")
    expect(page.locator('[data-count="cooling"]')).to_have_text("1")
    expect(row(page, XSS_KEY).locator(".countdown")).to_contain_text("m")
    expect(row(page, KEYS[0]).locator(".last-error")).to_contain_text("502")

    # The XSS label is shown as text; nothing ran.
    expect(page.get_by_text(XSS)).to_be_visible()
    assert page.locator("#keys tbody img").count() == 0
    assert page.evaluate("window.__xss") is None

    # Bulk add: counts of added / duplicate / invalid.
    page.fill("#bulk", f"sk-or-v1-ui-0001:2\nsk-or-v1-ui-0002\n{KEYS[0]}\nnot a key")
    page.click("#add")
    expect(page.locator("#add-result")).to_have_text("2 added · 1 duplicate · 1 invalid")
    expect(page.locator("#keys tbody tr")).to_have_count(6)
    expect(page.locator("#add-errors li")).to_have_count(1)
    expect(page.locator("#add-errors li")).to_contain_text("line 4")
    expect(page.locator("#bulk")).to_have_value("not a key")  # the refused line stays

    # Edit a weight in place.
    weight = row(page, KEYS[0]).locator("input.weight")
    weight.fill("7")
    weight.press("Tab")
    expect(page.locator("#toast")).to_contain_text("set to 7")
    assert api.ok("GET", "/admin/key-status?q=1111")["keys"][0]["weight"] == 7

    # Pause one key; filter by state; search.
    row(page, KEYS[1]).get_by_role("button", name="Pause").click()
    expect(row(page, KEYS[1]).locator(".badge")).to_have_text("Paused")
    page.select_option("#status", "paused")
    expect(page.locator("#keys tbody tr")).to_have_count(1)
    page.select_option("#status", "")
    page.fill("#q", "...0002")
    expect(page.locator("#keys tbody tr")).to_have_count(1)
    page.fill("#q", "")
    expect(page.locator("#keys tbody tr")).to_have_count(6)

    # Delete one (confirm dialog), then select two and delete them.
    row(page, KEYS[2]).get_by_role("button", name="Delete").click()
    expect(row(page, KEYS[2])).to_have_count(0)
    row(page, "sk-or-v1-ui-0001").locator(".sel input").check()
    row(page, "sk-or-v1-ui-0002").locator(".sel input").check()
    expect(page.locator("#delete-selected")).to_have_text("Delete selected (2)")
    page.click("#delete-selected")
    expect(page.locator("#keys tbody tr")).to_have_count(3)
    assert api.ok("GET", "/admin/key-status")["total_keys"] == 3

    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "dashboard.png"), full_page=True)
    assert watch.errors == []

    # Change a setting (and see a bad value refused next to its field).
    page.click("text=Settings")
    expect(page).to_have_url(proc.url + "/admin/settings-page")
    page.fill("#s-RETRY_WITH_NEW_KEY_COUNT", "-3")
    page.click("#save-settings")
    expect(
        page.locator('.field[data-name="RETRY_WITH_NEW_KEY_COUNT"] .field-error')
    ).to_be_visible()
    page.fill("#s-RETRY_WITH_NEW_KEY_COUNT", "6")
    page.click("#save-settings")
    expect(page.locator("#toast")).to_contain_text("RETRY_WITH_NEW_KEY_COUNT")
    page.wait_for_load_state("load")
    expect(page.locator('.field[data-name="RETRY_WITH_NEW_KEY_COUNT"] .tag')).to_be_visible()
    assert api.ok("GET", "/admin/settings")["settings"]["RETRY_WITH_NEW_KEY_COUNT"] == 6
    page.screenshot(path=os.path.join(ARTIFACTS, "settings.png"), full_page=True)

    # Log out: the session is gone, the dashboard sends us to the login page.
    page.click("#logout")
    expect(page.locator(".notice")).to_have_text("You are signed out.")
    page.goto(proc.url + "/admin/dashboard")
    expect(page).to_have_url(proc.url + "/admin/login?next=%2Fadmin%2Fdashboard")

    # The one console error is the browser noting the refused setting's 400.
    assert watch.errors == [
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]
    assert [kind for kind, _ in watch.dialogs] == ["confirm", "confirm"]  # the two deletes


def log_in(page, url: str) -> None:
    page.goto(url + "/admin/login")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    sync_api.expect(page).to_have_url(url + "/admin/dashboard")


def shot(page, name: str) -> None:
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, name), full_page=True)


def assert_actions_in_view(page) -> None:
    """Every action button of every row lies wholly inside the window and the table's box."""
    clipped = page.evaluate(
        """() => {
        const box = document.querySelector(".table-wrap").getBoundingClientRect();
        const out = [];
        for (const b of document.querySelectorAll("#keys td.actions button")) {
            const r = b.getBoundingClientRect();
            if (r.width === 0 || r.left < Math.max(0, box.left) - 0.5
                || r.right > Math.min(window.innerWidth, box.right) + 0.5)
                out.push(b.textContent + " " + JSON.stringify([r.left, r.right, box.right]));
        }
        return out;
    }"""
    )
    assert clipped == []


def test_dashboard_shows_probes_usage_and_offers_the_right_actions(server, browser):
    proc, api, upstream = server
    fake = upstream.state
    usage = {"usage": 3.5, "usage_daily": 0.25, "usage_monthly": 3.5, "is_free_tier": True}
    fake.key_info[KEYS[1]] = (200, {**usage, "limit": 10, "limit_remaining": 6.5})
    fake.key_info[KEYS[2]] = (401, {})
    fake.probe_delay = 1.0  # long enough to see the progress
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    watch = Watch(page)
    expect = sync_api.expect
    log_in(page, proc.url)
    expect(page.locator("#keys tbody tr")).to_have_count(4)

    # Check one key: progress on the button, then the probe's result, latency and usage.
    good = row(page, KEYS[1])
    good.get_by_role("button", name="Check").click()
    expect(good.locator("td.actions")).to_contain_text("Checking")
    expect(good.locator("td.probe")).to_contain_text("ok", timeout=10_000)
    expect(good.locator("td.probe")).to_contain_text("ms")
    expect(good.locator("td.usage")).to_contain_text("today $0.25")
    expect(good.locator("td.usage")).to_contain_text("month $3.50")
    expect(good.locator("td.usage")).to_contain_text("limit $10.00 ($6.50 left)")
    expect(good.locator("td.usage")).to_contain_text("free tier")
    expect(page.locator("#toast")).to_contain_text("ok")

    # A key the probe finds revoked (401) is disabled and offers Enable.
    bad = row(page, KEYS[2])
    bad.get_by_role("button", name="Check").click()
    expect(bad.locator(".badge")).to_have_text("Disabled", timeout=10_000)
    expect(bad.locator("td.probe")).to_contain_text("invalid")
    bad.get_by_role("button", name="Enable").click()
    expect(bad.locator(".badge")).to_have_text("Available")

    # A cooling key's cooldown can be ended by hand.
    cooling = row(page, XSS_KEY)
    expect(cooling.locator(".badge")).to_have_text("Cooling")
    cooling.get_by_role("button", name="Readmit").click()
    expect(cooling.locator(".badge")).to_have_text("Available")
    expect(cooling.locator(".countdown")).to_have_count(0)
    # Its failed requests still show, and nothing says "0 failures" beside them.
    expect(cooling.locator("td.traffic")).to_contain_text("failed")
    assert "Failures 0" not in page.inner_text("#keys")

    # "Check keys now" shows progress, then the breakdown of the sweep.
    page.click("#check-all")
    expect(page.locator("#check-result")).to_contain_text("Checking")
    expect(page.locator("#check-result")).to_contain_text("Checked 4 keys", timeout=15_000)
    expect(page.locator("#check-result")).to_contain_text("1 invalid")

    # The Actions column never clips, wide or narrow.
    for width in (1440, 1180, 1000, 800):
        page.set_viewport_size({"width": width, "height": 900})
        assert_actions_in_view(page)
    shot(page, "dashboard-800.png")
    page.set_viewport_size({"width": 1440, "height": 900})
    shot(page, "dashboard-details.png")
    assert watch.errors == []


def test_dashboard_is_usable_at_phone_width(server, browser):
    proc, _, _ = server
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    watch = Watch(page)
    log_in(page, proc.url)
    sync_api.expect(page.locator("#keys tbody tr")).to_have_count(4)
    # Neither the page nor the key list scrolls sideways: each key is a card.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate(
        "(() => { const w = document.querySelector('.table-wrap');"
        " return w.scrollWidth <= w.clientWidth; })()"
    )
    for control in ("#q", "#status", "#add", "#logout", "#check-all"):
        assert page.locator(control).is_visible()
    card = row(page, XSS_KEY)
    for part in ("td.key", ".badge", "td.traffic", "td.actions"):
        assert card.locator(part).first.is_visible()
    shot(page, "dashboard-phone.png")
    text = card.inner_text().lower()
    for label in ("status", "requests", "in flight", "probe", "usage"):
        assert label in text  # each value is labelled in a card
    assert_actions_in_view(page)
    assert watch.errors == []


def test_dashboard_shows_in_flight_requests_and_an_upstream_outage(tmp_path, browser):
    upstream = FakeUpstream()
    env = child_env(
        upstream, str(tmp_path / "data"), ADMIN_PASSWORD=PASSWORD, OPENROUTER_API_KEYS=KEYS[0]
    )
    served = AppThread(env)
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        watch = Watch(page)
        log_in(page, served.url)
        expect = sync_api.expect
        expect(page.locator("#upstream-banner")).to_be_hidden()

        def outage(app) -> None:
            ks = app.scheduler.get(key_id(KEYS[0]))
            ks.inflight, ks.oldest_inflight = 3, time.time() - 42
            up = app.scheduler.upstream
            up.down, up.since, up.reason = True, time.time() - 65, "connection refused"

        served.call(outage)
        banner = page.locator("#upstream-banner")
        expect(banner).to_be_visible(timeout=10_000)
        expect(banner).to_contain_text("connection refused")
        expect(banner).to_contain_text(f"retry in {served.app.scheduler.upstream.retry_after()} s")
        cell = row(page, KEYS[0]).locator("td.inflight")
        expect(cell).to_have_text(re.compile(r"3 · oldest ([4-9]\d|\d{3})s"))  # 42 s, counting
        shot(page, "dashboard-outage.png")

        def recovered(app) -> None:
            app.scheduler.get(key_id(KEYS[0])).inflight = 0
            app.scheduler.upstream.down = False

        served.call(recovered)
        expect(banner).to_be_hidden(timeout=10_000)
        expect(cell).not_to_contain_text("oldest")
        assert watch.errors == []
    finally:
        served.stop()
        upstream.stop()
