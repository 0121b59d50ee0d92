"""/healthz (liveness) and /readyz (readiness); /v1 while the process drains."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.api_helpers import connect
from tests.conftest import KEYS, assert_openai_error

CHAT = "/v1/chat/completions"
GOOD = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


async def probe(api, path: str) -> tuple[int, dict]:
    resp = await api(path)
    assert resp.headers["Content-Type"].startswith("application/json")
    assert all(k not in resp.body.decode() for k in KEYS)
    return resp.code, json.loads(resp.body)


async def test_ok_when_ready_with_usable_keys(client_keys, app, api):
    for path in ("/healthz", "/readyz"):
        code, body = await probe(api, path)
        assert code == 200
        assert body["status"] == "ok" and body["ready"] is True
        assert body["keys"]["total"] == 3 and body["keys"]["available"] == 3
        assert body["upstream"]["down"] is False


@pytest.fixture
def client_keys(env):
    env["APP_API_KEY"] = "client-one"  # the probes need no client key


async def test_no_usable_key_is_degraded_and_not_ready(app, api):
    for ks in app.scheduler:
        app.scheduler.disable(ks, "invalid")
    code, body = await probe(api, "/healthz")
    assert code == 200 and body["status"] == "degraded" and body["ready"] is False
    code, body = await probe(api, "/readyz")
    assert code == 503 and body["status"] == "degraded"


async def test_upstream_down_is_degraded_and_not_ready(app, api):
    up = app.scheduler.upstream
    up.down, up.since, up.reason = True, 1.0, "connection refused"
    code, body = await probe(api, "/healthz")
    assert code == 200 and body["status"] == "degraded"
    assert body["upstream"]["down"] is True and body["upstream"]["reason"] == "connection refused"
    assert (await probe(api, "/readyz"))[0] == 503
    up.down = False
    assert (await probe(api, "/readyz"))[0] == 200


async def test_not_ready_until_loaded(app, api):
    app.ready = False
    code, body = await probe(api, "/readyz")
    assert code == 503 and body["ready"] is False
    assert (await probe(api, "/healthz"))[0] == 200  # alive all the same
    app.ready = True
    assert (await probe(api, "/readyz"))[0] == 200


async def test_draining(app, fake, api):
    app.draining = True
    code, body = await probe(api, "/healthz")
    assert code == 200 and body["status"] == "draining"
    code, body = await probe(api, "/readyz")
    assert code == 503 and body["status"] == "draining"
    for path, obj in ((CHAT, GOOD), ("/v1/embeddings", {"input": "x"}), ("/v1/models", None)):
        resp = await api(path, obj)
        e = assert_openai_error(resp, 503, "server_error")
        assert e["code"] == "server_shutting_down"
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["Connection"] == "close"
    assert not fake.requests and fake.models_calls == 0 and app.inflight == 0
    app.draining = False
    assert (await api(CHAT, GOOD)).code == 200


async def test_draining_closes_the_connection(app, base_url):
    """A keep-alive client is told to go, and the connection is closed after the answer."""
    app.draining = True
    reader, writer = await connect(base_url)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)  # returns at EOF: the server closed
    writer.close()
    assert data.startswith(b"HTTP/1.1 503")
    assert b"server_shutting_down" in data
