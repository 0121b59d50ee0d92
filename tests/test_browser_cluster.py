"""The dashboard of an instance cut off from the cluster's Redis says so (chromium, Playwright's
sync API, against ``python run.py`` and a real redis-server)."""

from __future__ import annotations

import shutil

import pytest

from tests.admin_helpers import PASSWORD, child_env
from tests.cluster_helpers import RedisServer
from tests.conftest import KEYS
from tests.dash_helpers import CHROMIUM

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="chromium is not installed")


def test_dashboard_shows_the_cluster_backend_down_and_back(upstream, spawn, tmp_path, browser):
    redis = RedisServer(str(tmp_path / "redis"))
    redis.start()
    try:
        env = child_env(upstream, str(tmp_path / "a"), ADMIN_PASSWORD=PASSWORD)
        proc = spawn({**env, "OPENROUTER_API_KEYS": ",".join(KEYS), "REDIS_URL": redis.url})
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(proc.url + "/admin/login")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        expect = sync_api.expect
        expect(page).to_have_url(proc.url + "/admin/dashboard")
        banner = page.locator("#cluster-banner")
        expect(page.locator("#keys tbody tr")).to_have_count(len(KEYS))
        expect(banner).to_be_hidden()
        redis.kill()
        expect(banner).to_be_visible(timeout=15_000)
        expect(banner).to_contain_text("(redis) is unreachable")
        redis.start()
        expect(banner).to_be_hidden(timeout=15_000)
    finally:
        redis.kill()
