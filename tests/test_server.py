"""The real ``python run.py`` process: proxy headers, the root path, graceful shutdown."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.admin_helpers import PASSWORD, SyncAdmin, child_env
from tests.conftest import raw_chat_request
from tests.fake_upstream import content_of
from tests.test_streaming import expected_stream


def env_for(upstream, tmp_path, **extra):
    return child_env(
        upstream,
        str(tmp_path / "data"),
        ADMIN_PASSWORD=PASSWORD,
        OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111",
        LOGIN_MAX_FAILURES="3",
        **extra,
    )


def stream_request(base: str) -> urllib.request.Request:
    body = json.dumps(
        {"model": "openai/gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    return urllib.request.Request(
        base + "/v1/chat/completions",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
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
    req = stream_request(proc.url)
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
    text_chunks = [c for c in chunks if c["choices"]]  # not the usage chunk
    assert "".join(c["choices"][0]["delta"]["content"] for c in text_chunks) == content_of(10)
    assert text.rstrip().endswith("data: [DONE]")
    assert "shutting down" in proc.log()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_either_event_loop_relays_a_stream_and_stops_cleanly(upstream, spawn, tmp_path, loop):
    """EVENT_LOOP picks the loop: uvloop (the default) or asyncio's own."""
    upstream.state.default = {"chunks": 5, "interval": 0.01}
    extra = {"EVENT_LOOP": "asyncio"} if loop == "asyncio" else {}
    proc = spawn(env_for(upstream, tmp_path, **extra))
    with urllib.request.urlopen(stream_request(proc.url), timeout=30) as resp:
        assert resp.read() == expected_stream(5)
    assert f" {loop} loop, " in proc.log()
    assert proc.stop() == 0


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


def test_out_of_file_descriptors_pauses_accepting_and_spares_the_keys(upstream, tmp_path):
    """``python run.py`` with a 100-descriptor limit and 150 idle client connections: it
    pauses accept() (one warning, no flood of tracebacks), a request that cannot open its
    upstream socket gets a 503 ``proxy_overloaded`` without any key being blamed, and once the
    idle clients leave it serves again with every key available. Then 90 keep-alive clients
    served one by one and left open: the idle ones are closed to make room for the next."""
    import socket

    from tests.admin_helpers import post_chat, wait_healthy
    from tests.limits_helpers import run_with_fd_limit

    env = child_env(
        upstream,
        str(tmp_path / "data"),
        OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111,sk-or-v1-test-bbbb2222",
    )
    proc, url, port, log_path = run_with_fd_limit(env, tmp_path, 100)
    body = json.dumps({"model": "a/b", "messages": [{"role": "user", "content": "hi"}]})
    request = raw_chat_request(body)
    idle: list[socket.socket] = []
    try:
        wait_healthy(url, proc)
        for _ in range(150):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(1.0)  # the proxy accepts until it runs out of descriptors
        first = idle[0]
        first.settimeout(10)
        first.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            answer += first.recv(65536)
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer
        assert json.loads(payload)["error"]["code"] == "proxy_overloaded"
        assert b"Retry-After: 1" in head
        for s in idle:
            s.close()
        idle.clear()
        time.sleep(0.5)
        # 90 keep-alive clients, one after the other, each served once and then silent: they
        # would hold every descriptor; the ones already served are closed to make room.
        for _ in range(90):
            client = socket.create_connection(("127.0.0.1", port))
            client.settimeout(10)
            client.sendall(request)
            answer = b""
            while not answer.rstrip().endswith(b"}"):
                answer += client.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            idle.append(client)
        closed_by_proxy = 0
        for client in idle:
            client.settimeout(0.01)
            try:
                closed_by_proxy += client.recv(1) == b""
            except TimeoutError:
                pass  # still open
        assert 0 < closed_by_proxy < 90
        assert post_chat(url, timeout=10) == 200
        with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
            counts = json.loads(resp.read())["keys"]
        assert counts["cooling"] == 0 and counts["available"] == 2, counts
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        proc.wait(20)
    text = log_path.read_text()
    assert "pausing accept()" in text
    assert "Too many open files" in text
    # No traceback per loop pass: one warning per 10 s, and the access lines.
    assert "Traceback" not in text
    assert text.count("pausing accept()") <= 2, text[-3000:]
