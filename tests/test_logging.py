"""Logging: no full key anywhere (logs at DEBUG, bodies, headers), the access line, JSON logs."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from orpoll.keys import key_id
from orpoll.logs import plural
from orpoll.scheduler import KeyScheduler
from orpoll.seeding import load_env_keys, note_env_keys
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
    assert f"model={PAID}" in line and "stream=true" in line
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
    assert " 400 POST /v1/chat/completions model=openai/gpt-4o stream=false keys=" in lines[0]
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
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)
    stamp = datetime.datetime.strptime(records[-1]["time"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert abs(stamp.timestamp() - time.time()) < 60  # UTC, not local time marked Z
    access = [r for r in records if r["logger"] == "orpoll.access"]
    assert len(access) == 2
    health, chat = access
    assert " 200 GET /healthz " in health["message"]
    assert health["request_id"] and health["status"] == 200 and health["path"] == "/healthz"
    assert health["model"] is None and health["keys"] is None and health["ttfb_ms"] is None
    assert chat["message"].startswith("json-req-1 502 POST /v1/chat/completions")
    assert chat["level"] == "warning"
    (tried,) = chat.pop("keys")
    assert tried["id"] == key_id("sk-or-v1-json-test-key-9999") and tried["status"] == 502
    assert tried["verdict"] in ("transient", "upstream")
    assert isinstance(chat.pop("total_ms"), float) and chat.pop("error")
    assert {k: chat[k] for k in ("request_id", "status", "method", "path")} == {
        "request_id": "json-req-1",
        "status": 502,
        "method": "POST",
        "path": "/v1/chat/completions",
    }
    assert chat["model"] == PAID and chat["stream"] is False and chat["ttfb_ms"] is None
    assert chat["client"] == "127.0.0.1"
    assert "sk-or-v1-json-test-key-9999" not in stderr


# ---- one line per event ------------------------------------------------------------------------


async def test_refusals_and_unknown_routes_log_one_line_each(app, api, caplog):
    """401, 403 and 404 answers are the access line alone: no second warning from Tornado."""
    caplog.set_level(logging.DEBUG)
    cross = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    statuses = [
        (await api("/nope")).code,
        (await api("/admin/key-status")).code,
        (await api("/admin/logout", body=b"{}", headers=cross)).code,
    ]
    assert statuses == [404, 401, 403]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tornado")] == []
    lines = access_lines(caplog)
    assert [line.split()[1] for line in lines] == ["404", "401", "403"]
    assert 'error="unknown route: GET /nope"' in lines[0]
    assert "error=" in lines[1] and 'error="cross-origin request refused:' in lines[2]


async def test_a_static_file_logs_one_access_line_and_no_traceback(api, caplog):
    caplog.set_level(logging.DEBUG)
    resp = await api("/static/admin.js")
    assert resp.code == 200 and resp.body
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    lines = access_lines(caplog)
    assert len(lines) == 1 and " 200 GET /static/admin.js " in lines[0], lines


async def test_debug_attempt_lines_carry_the_request_id(fake, api, in_order, caplog):
    caplog.set_level(logging.DEBUG, logger="orpoll")
    fake.script(A, err(502, "Provider returned error"))
    headers = {"X-Request-Id": "req-dbg-7"}
    assert (await api(CHAT, {"model": PAID, "messages": MSG}, headers=headers)).code == 200
    attempts = [r.getMessage() for r in caplog.records if "attempt key=" in r.getMessage()]
    assert len(attempts) == 2, attempts
    assert all(line.startswith("req-dbg-7 attempt key=") for line in attempts), attempts
    assert attempts[0].endswith("status=502") and attempts[1].endswith("verdict=ok status=200")


# ---- wording: plurals, no Python reprs ---------------------------------------------------------

REPR = re.compile(r"'[^' ]*'|\bNone\b|\bTrue\b|\bFalse\b|[{}]|\(\d+, |\[\]|\b1 \w+s\b")


def assert_plain(messages: list[str]) -> None:
    """No Python repr (quotes, None, booleans, dicts, tuples) and no "1 keys"."""
    bad = [m for m in messages if REPR.search(m)]
    assert bad == [], bad


def test_counts_read_as_english(caplog):
    caplog.set_level(logging.DEBUG)
    one = logging.getLogger("orpoll.test")
    for n in (0, 1, 2):
        one.info("%s, %s", plural(n, "key"), plural(n, "idle upstream pool"))
    assert [r.getMessage() for r in caplog.records] == [
        "0 keys, 0 idle upstream pools",
        "1 key, 1 idle upstream pool",
        "2 keys, 2 idle upstream pools",
    ]


async def test_startup_and_health_lines_count_keys_plainly(app, fake, caplog):
    caplog.set_level(logging.DEBUG)
    sched = KeyScheduler(app.scheduler.policy)
    load_env_keys(sched, A)
    load_env_keys(sched, f"{B},{C}")
    note_env_keys(sched, f"{A},sk-or-v1-test-dddd4444")
    await app.health.check_once(everything=True)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("orpoll")]
    assert f"loaded 1 key (...{A[-4:]})" in messages
    assert f"loaded 2 keys (...{B[-4:]}, ...{C[-4:]})" in messages
    assert any(
        m.startswith("OPENROUTER_API_KEYS lists 1 key not in the store, ignored") for m in messages
    )
    sweep = [m for m in messages if m.startswith("health sweep:")]
    assert len(sweep) == 1 and re.fullmatch(
        r"health sweep: 3 keys probed in [\d.]+s: \w+ 3", sweep[0]
    )
    assert_plain(messages)


async def test_request_lines_have_no_python_reprs(app, fake, api, caplog):
    caplog.set_level(logging.DEBUG)
    scripts = every_verdict()
    for script in scripts:
        fake.script(A, script, {"chunks": 2})
        for stream in (False, True):
            await api(CHAT, {"model": PAID, "messages": MSG, "stream": stream})
        app.scheduler.readmit(app.scheduler.get(key_id(A)))
    await api(CHAT, body=b"{nope")
    await api(CHAT, {"messages": MSG})
    await api("/nope")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("orpoll")]
    assert sum(1 for r in caplog.records if r.name == "orpoll.access") == 2 * len(scripts) + 3
    assert_plain(messages)
