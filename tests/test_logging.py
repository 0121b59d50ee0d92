"""Logging: no full key anywhere (logs at DEBUG, bodies, headers), the access line, JSON logs."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from orpoll.keys import key_id
from tests.conftest import KEYS, assert_openai_error

A, B, C = KEYS
PAID = "openai/gpt-4o"
MSG = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def err(status: int, message: str, **metadata) -> dict:
    e = {"code": status, "message": message}
    if metadata:
        e["metadata"] = metadata
    return {"status": status, "error": e}


def every_verdict() -> list[dict]:
    """One scripted answer per verdict row (and the stream-only ones)."""
    reset = str(int((time.time() + 5) * 1000))
    return [
        err(400, "bad request"),
        err(401, "User not found."),
        err(402, "Insufficient credits"),
        err(402, "This request requires more credits, or fewer max_tokens. can only afford 5"),
        err(403, "Key limit exceeded (total limit)"),
        err(403, "flagged", reasons=["x"], flagged_input="hi"),
        err(404, "No endpoints found"),
        err(404, "No endpoints found matching your data policy"),
        {"status": 429, "headers": {"X-RateLimit-Reset": reset}, "error": {"code": 429}},
        err(429, "Rate limit exceeded: free-models-per-min."),
        err(429, "Provider returned error", raw="rate-limited upstream", provider_name="P"),
        err(500, "Internal Server Error"),
        err(502, "Provider returned error"),
        err(503, "overloaded"),
        err(524, "timeout"),
        {"inband_error": {"code": "server_error", "message": "in band"}},
        {"choice_error": {"code": 502, "message": "choice error"}},
        {"error_first": {"code": 502, "message": "error first"}},
        {"comments": 2, "error_first": {"code": 429, "message": "error after comments"}},
        {"chunks": 3, "mid_error": (1, {"code": 502, "message": "mid-stream"})},
        {"chunks": 5, "drop_after": 2},
        {"chunks": 2},
    ]


def assert_no_key(text: str) -> None:
    for key in KEYS:
        assert key not in text, f"...{key[-4:]} leaked: {text[:300]}"


def all_log_text(records) -> str:
    out = []
    for r in records:
        out.append(r.getMessage())
        out.append(repr(r.args))
        if r.exc_info:
            out.append(logging.Formatter().formatException(r.exc_info))
        if r.exc_text:
            out.append(r.exc_text)
    return "\n".join(out)


async def test_no_key_in_logs_bodies_or_headers_for_any_verdict(app, fake, api, caplog):
    caplog.set_level(logging.DEBUG)  # the whole logger tree, tornado's curl log included
    texts = []
    for script in every_verdict():
        for key in KEYS:
            fake.script(key, script, {"chunks": 2})
        for stream in (False, True):
            resp = await api(CHAT, {"model": PAID, "messages": MSG, "stream": stream})
            texts += [resp.body.decode("utf-8", "replace"), repr(dict(resp.headers))]
        for key in KEYS:
            app.scheduler.readmit(app.scheduler.get(key_id(key)))
    resp = await api("/v1/embeddings", {"model": "m", "input": "x"})
    texts.append(resp.body.decode())
    await app.health.check_once()
    texts.append((await api("/healthz")).body.decode())
    assert sum(fake.requests.values()) > 40
    names = {r.name for r in caplog.records}
    assert {"orpoll.access", "orpoll.relay"} <= names
    assert_no_key("\n".join(texts))
    assert_no_key(all_log_text(caplog.records))


async def test_errors_never_echo_the_key(app, fake, api, in_order, caplog):
    caplog.set_level(logging.DEBUG)
    for key in KEYS:
        fake.script(
            key,
            err(
                401,
                f"Invalid API key {key}",
                raw=f"upstream said: bad token {key}",
                provider_name=None,
            ),
        )
    resp = await api(CHAT, {"model": PAID, "messages": MSG})
    e = assert_openai_error(resp, 401)
    assert e["message"] == f"Invalid API key ...{C[-4:]}"  # the last error, key masked
    assert_no_key(resp.body.decode())
    assert_no_key(all_log_text(caplog.records))
    for ks in app.scheduler:  # what the admin will show
        assert_no_key(ks.last_error + ks.reason)


# ---- the access line ---------------------------------------------------------------------------


def access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "orpoll.access"]


async def test_access_line_per_request(app, fake, api, in_order, caplog):
    caplog.set_level(logging.INFO, logger="orpoll.access")
    fake.script(A, err(502, "Provider returned error"))
    resp = await api(
        CHAT, {"model": PAID, "messages": MSG, "stream": True}, headers={"X-Request-Id": "req-42"}
    )
    assert resp.code == 200 and resp.headers["X-Request-Id"] == "req-42"
    lines = access_lines(caplog)
    assert len(lines) == 1
    line = lines[0]
    ids = [key_id(A), key_id(B)]
    assert line.startswith("req-42 200 POST /v1/chat/completions")
    assert f"model={PAID}" in line and "stream=True" in line
    assert f"keys={ids[0]}:transient:502,{ids[1]}:ok:200" in line
    ttfb = float(line.split("ttfb=")[1].split("ms")[0])
    total = float(line.split("total=")[1].split("ms")[0])
    assert 0 < ttfb <= total


async def test_access_line_for_errors_and_other_routes(app, fake, api, caplog):
    caplog.set_level(logging.INFO, logger="orpoll.access")
    for key in KEYS:
        fake.script(key, err(400, "bad"))
    await api(CHAT, {"model": PAID, "messages": MSG})
    await api(CHAT, body=b"{nope")
    await api("/healthz")
    await api("/nope")
    lines = access_lines(caplog)
    assert len(lines) == 4
    assert " 400 POST /v1/chat/completions model=openai/gpt-4o stream=False keys=" in lines[0]
    assert ":request:400" in lines[0]
    assert " 400 POST /v1/chat/completions" in lines[1] and "keys=-" in lines[1]
    assert " 200 GET /healthz " in lines[2]
    assert " 404 GET /nope " in lines[3]
    ids = {line.split()[0] for line in lines}
    assert len(ids) == 4  # a distinct request id each


async def test_a_failed_request_logs_one_line_with_its_error(fake, api, caplog):
    """The access line carries the error (JSON-quoted, so an upstream message with a line
    break cannot forge a log line); Tornado's own warning for it is not logged as well."""
    caplog.set_level(logging.DEBUG)
    for key in KEYS:
        fake.script(key, err(400, 'bad "input"\n2026-01-01 I orpoll.access: forged'))
    resp = await api(CHAT, {"model": PAID, "messages": MSG})
    assert resp.code == 400
    await api(CHAT, body=b"{nope")
    errors = [r for r in caplog.records if r.name == "tornado.general"]
    assert errors == []
    lines = access_lines(caplog)
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    upstream = lines[0].split(" error=", 1)[1]
    assert json.loads(upstream) == 'bad "input"\n2026-01-01 I orpoll.access: forged'
    assert json.loads(lines[1].split(" error=", 1)[1]).startswith("request body is not valid JSON")


async def test_access_line_levels(fake, api, caplog):
    caplog.set_level(logging.INFO, logger="orpoll.access")
    for key in KEYS:
        fake.script(key, err(503, "overloaded"))
    await api(CHAT, {"model": PAID, "messages": MSG})
    rec = [r for r in caplog.records if r.name == "orpoll.access"]
    assert len(rec) == 1 and rec[0].levelno == logging.WARNING and " 503 " in rec[0].getMessage()


# ---- LOG_FORMAT=json ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fmt", ["json"])
def test_log_format_json_writes_json_lines(tmp_path, fmt):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER", "LOG_"))}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        LOG_FORMAT=fmt,
        LOG_LEVEL="info",
        DATA_DIR=str(tmp_path / "data"),
        OPENROUTER_API_KEYS="sk-or-v1-json-test-key-9999",
        OPENROUTER_API_URL="http://127.0.0.1:1/api/v1/chat/completions",
        RETRY_WITH_NEW_KEY_COUNT="0",
    )
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "run.py")],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps({"model": PAID, "messages": MSG}).encode(),
            headers={"Content-Type": "application/json", "X-Request-Id": "json-req-1"},
        )
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code == 502
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    lines = [line for line in stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "orpoll.access"]
    assert len(access) == 2
    assert " 200 GET /healthz " in access[0]["message"]
    assert access[1]["message"].startswith("json-req-1 502 POST /v1/chat/completions")
    assert ":upstream:502" in access[1]["message"] and access[1]["level"] == "warning"
    assert "sk-or-v1-json-test-key-9999" not in stderr
