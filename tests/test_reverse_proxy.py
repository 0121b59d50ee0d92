"""orpoll behind a real nginx (Debian's, started by the test on loopback): without Host
forwarding a browser's login gets an HTML page that says what to set; with the README's nginx
block (or PUBLIC_URL) login works and a stream passes through whole and unbuffered.

Skipped when nginx is not installed, except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse

import pytest

from orpoll.app import make_app
from orpoll.config import load_settings
from tests.admin_helpers import (
    PASSWORD,
    ROOT,
    AdminClient,
    FakeUpstream,
    OrpollProcess,
    child_env,
    free_port,
)

NGINX = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
if NGINX is None and not os.environ.get("CI"):
    pytest.skip("nginx is not installed (tests/install.sh installs it)", allow_module_level=True)

BROWSER = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Content-Type": "application/x-www-form-urlencoded",
}
PLAIN = "proxy_pass http://127.0.0.1:8000;"  # what a first try at a proxy often looks like


def readme_location() -> str:
    """The body of ``location /`` in the README's nginx block."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        block = re.search(r"```nginx\n(.*?)```", f.read(), re.S).group(1)
    return re.search(r"location / \{\n(.*?)\n    \}", block, re.S).group(1)


class Nginx:
    """nginx in the foreground with its own prefix, config, logs and temp paths."""

    def __init__(self, prefix: str, port: int, location: str, backend_port: int) -> None:
        self.port, self.prefix = port, prefix
        location = location.replace("127.0.0.1:8000", f"127.0.0.1:{backend_port}")
        user = "user root;" if os.geteuid() == 0 else ""  # workers then read our temp dirs
        temps = []
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(f"{prefix}/{kind}")
            temps.append(f"    {kind}_temp_path {prefix}/{kind};")
        temps = "\n".join(temps)
        conf = f"""
{user}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
{temps}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
{location}
        }}
    }}
}}
"""
        with open(f"{prefix}/nginx.conf", "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(
            [NGINX, "-p", prefix, "-c", f"{prefix}/nginx.conf"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, self.log()
                time.sleep(0.05)

    def log(self) -> str:
        with open(f"{self.prefix}/error.log", encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()


@pytest.fixture
def behind(env, serve, tmp_path):
    """behind(location, **env) -> (nginx, the app) with nginx's ``location /`` in front;
    ``{proxy}`` in an env value is nginx's URL."""
    started = []

    async def _behind(location: str, **extra: str):
        assert NGINX, "nginx is missing: CI must install it (tests/install.sh)"
        nginx_port = free_port()
        proxy_url = f"http://127.0.0.1:{nginx_port}"
        extra = {name: value.format(proxy=proxy_url) for name, value in extra.items()}
        app = make_app(load_settings({**env, **extra}))
        port = int(serve(app).rsplit(":", 1)[1])
        proxy = Nginx(str(tmp_path / f"nginx-{len(started)}"), nginx_port, location, port)
        started.append(proxy)
        proxy.wait_listening()
        return proxy, app

    yield _behind
    for proxy in started:
        proxy.stop()


async def browser_login(proxy: Nginx) -> tuple[AdminClient, object]:
    """What a browser does: load the login page, post the form with its Origin."""
    browser = AdminClient(proxy.url)
    page = await browser.get("/admin/login", headers={"Accept": BROWSER["Accept"]})
    assert page.code == 200, page.body
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    form = urllib.parse.urlencode(
        {"_xsrf": token, "next": "/admin/dashboard", "password": PASSWORD}
    )
    headers = {**BROWSER, "Origin": proxy.url}
    return browser, await browser.request("POST", "/admin/login", raw=form, headers=headers)


async def test_without_host_forwarding_the_browser_is_told_what_to_set(behind):
    proxy, app = await behind(PLAIN)
    browser, resp = await browser_login(proxy)
    assert resp.code == 403
    assert resp.headers["Content-Type"].startswith("text/html")
    page = resp.body.decode()
    assert f'<code id="origin">{proxy.url}</code>' in page
    backend = re.search(r'<code id="host">([^<]+)</code>', page).group(1)
    assert backend != proxy.url.removeprefix("http://")  # what nginx sent: its upstream's
    assert f"PUBLIC_URL={proxy.url}" in page and "proxy_set_header Host $http_host;" in page
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    # A script using the JSON API gets the JSON error, with the same advice in its message.
    resp = await browser.request(
        "POST", "/admin/login", {"password": PASSWORD}, headers={"Origin": proxy.url}
    )
    assert resp.code == 403 and json.loads(resp.body)["error"]["code"] == "bad_origin"
    assert "PUBLIC_URL" in json.loads(resp.body)["error"]["message"]


async def test_public_url_makes_the_plain_proxy_work(behind):
    proxy, _ = await behind(PLAIN, PUBLIC_URL="{proxy}")
    browser, resp = await browser_login(proxy)
    assert resp.code == 302, resp.body
    assert (await browser.get("/admin/dashboard")).code == 200


async def test_readme_block_logs_in_and_streams_unbuffered(behind, keys, fake):
    proxy, app = await behind(readme_location(), TRUST_PROXY_HEADERS="true")
    browser, resp = await browser_login(proxy)
    assert resp.code == 302, resp.body
    assert resp.headers["Location"] == "/admin/dashboard"
    assert (await browser.get("/admin/dashboard")).code == 200
    status = await browser.json("GET", "/admin/app-status")
    assert status["sessions"] == 1
    session = next(iter(app.sessions.active.values()))
    assert session.addr == "127.0.0.1"  # X-Forwarded-For, trusted

    import openai

    for key in keys:
        fake.script(key, {"chunks": 4, "silence": 2.0})
    sdk = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        arrivals, content = [], []
        async for chunk in stream:
            if chunk.choices:  # the last chunk carries only usage
                arrivals.append(time.monotonic())
                content.append(chunk.choices[0].delta.content or "")
    finally:
        await sdk.close()
    assert len(arrivals) == 4 and all(content)
    # The first chunk was in the client's hands while the upstream was still silent: nginx
    # passed it on at once instead of buffering the answer.
    assert arrivals[0] < fake.last_chunk_at - 1.0, (arrivals, fake.last_chunk_at)


# ---- a real browser ----------------------------------------------------------------------------


def test_chromium_is_told_what_to_set_then_logs_in_through_the_readme_block(tmp_path):
    """Debian's chromium (Playwright) through nginx to ``python run.py``: the browser's own
    Origin and form post, not a client imitating them."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.dash_helpers import ARGS, CHROMIUM

    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed")
    upstream = FakeUpstream()
    env = child_env(upstream, str(tmp_path / "data"), ADMIN_PASSWORD=PASSWORD)
    orpoll = OrpollProcess({**env, "TRUST_PROXY_HEADERS": "true"}, str(tmp_path / "orpoll.log"))
    proxies: list[Nginx] = []
    try:
        orpoll.wait_ready()
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for location in (PLAIN, readme_location()):
                proxy = Nginx(
                    str(tmp_path / f"nginx-{len(proxies)}"), free_port(), location, orpoll.port
                )
                proxies.append(proxy)
                proxy.wait_listening()
                page = browser.new_page()
                page.goto(proxy.url + "/admin/login")
                page.fill("#password", PASSWORD)
                page.click("button[type=submit]")
                if location == PLAIN:
                    explained = page.locator("#origin-error")
                    sync_api.expect(explained).to_contain_text("PUBLIC_URL=" + proxy.url)
                    sync_api.expect(page.locator("#origin")).to_have_text(proxy.url)
                    sync_api.expect(page.locator("#host")).to_have_text(f"127.0.0.1:{orpoll.port}")
                else:
                    sync_api.expect(page).to_have_url(proxy.url + "/admin/dashboard")
                    sync_api.expect(page.locator("#keys")).to_be_visible()
                page.close()
            browser.close()
    finally:
        for proxy in proxies:
            proxy.stop()
        orpoll.stop()
        upstream.stop()
