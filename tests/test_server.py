"""The real ``python run.py`` process: proxy headers, the root path, graceful shutdown."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

from tests.admin_helpers import PASSWORD, SyncAdmin, child_env
from tests.fake_upstream import content_of


def env_for(upstream, tmp_path, **extra):
    return child_env(
        upstream,
        str(tmp_path / "data"),
        ADMIN_PASSWORD=PASSWORD,
        OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111",
        LOGIN_MAX_FAILURES="3",
        **extra,
    )


def bad_login(base: str, forwarded_for: str) -> int:
    req = urllib.request.Request(
        base + "/admin/login",
        data=json.dumps({"password": "wrong-password"}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Real-Ip": forwarded_for,
            "X-Forwarded-For": forwarded_for,
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_forwarded_headers_cannot_dodge_the_login_throttle(upstream, spawn, tmp_path):
    """By default X-Real-Ip/X-Forwarded-For are not trusted: the throttle sees the real peer."""
    proc = spawn(env_for(upstream, tmp_path))
    codes = [bad_login(proc.url, f"10.0.0.{i}") for i in range(1, 6)]
    assert codes[:3] == [401, 401, 401]
    assert codes[3:] == [429, 429]


def test_behind_a_trusted_proxy_each_client_address_is_throttled_apart(upstream, spawn, tmp_path):
    proc = spawn(env_for(upstream, tmp_path, TRUST_PROXY_HEADERS="true"))
    codes = [bad_login(proc.url, f"10.0.0.{i}") for i in range(1, 6)]
    assert codes == [401] * 5


def test_root_leads_to_the_admin_login(upstream, spawn, tmp_path):
    proc = spawn(env_for(upstream, tmp_path))
    with urllib.request.urlopen(proc.url + "/", timeout=10) as resp:
        assert resp.status == 200
        assert "/admin/login" in resp.url
        assert b"password" in resp.read().lower()


def test_sigterm_lets_a_stream_in_flight_finish(upstream, spawn, tmp_path):
    upstream.state.default = {"chunks": 10, "interval": 0.2}
    proc = spawn(env_for(upstream, tmp_path))
    body = json.dumps(
        {"model": "openai/gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    req = urllib.request.Request(
        proc.url + "/v1/chat/completions",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    got: dict[str, bytes] = {}

    def read() -> None:
        with urllib.request.urlopen(req, timeout=30) as resp:
            got["first"] = resp.read(20)
            got["rest"] = resp.read()

    reader = threading.Thread(target=read)
    reader.start()
    while upstream.state.active == 0:  # the stream is under way upstream
        threading.Event().wait(0.02)
    assert proc.stop() == 0
    reader.join(30)
    text = (got["first"] + got["rest"]).decode()
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == content_of(10)
    assert text.rstrip().endswith("data: [DONE]")
    assert "shutting down" in proc.log()


def test_first_health_sweep_runs_soon_after_start(upstream, spawn, tmp_path):
    """Keys never probed get their account and credit figures without waiting an interval."""
    upstream.state.key_info["sk-or-v1-test-aaaa1111"] = (
        200,
        {"label": "x", "limit": 10.0, "limit_remaining": 4.5, "creator_user_id": "user_9"},
    )
    proc = spawn(env_for(upstream, tmp_path))  # HEALTH_CHECK_INTERVAL_SECONDS=3600
    deadline = time.monotonic() + 15
    while not upstream.state.key_probes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert upstream.state.key_probes["sk-or-v1-test-aaaa1111"] == 1
    admin = SyncAdmin(proc.url)
    admin.login()
    while time.monotonic() < deadline:
        row = admin.ok("GET", "/admin/key-status")["keys"][0]
        if row["group"]:
            break
        time.sleep(0.1)
    assert row["group"] == "user_9" and row["credit"]["limit_remaining"] == 4.5
