"""What a request counts as: a stream that broke after its 200 is a failed request, a wrong
client key is counted apart, and an upstream 200 that is not JSON fails over to the next key.

A real orpoll app with a client key set (APP_API_KEY), the fake OpenRouter behind it.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import tornado.web
from tornado.httpserver import HTTPServer

from tests.conftest import KEYS, assert_openai_error, bound_port
from tests.fake_upstream import completion, make_fake_app

A, B, C = KEYS
PAID = "openai/gpt-4o"
MSG = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
AUTH = {"Authorization": "Bearer client-key-one"}


class NotJsonHandler(tornado.web.RequestHandler):
    """A 200 whose body is cut short for key A; a good answer for the others."""

    def post(self) -> None:
        key = self.request.headers.get("Authorization", "")[-4:]
        self.set_header("Content-Type", "application/json")
        if key == A[-4:]:
            self.finish(b'{"id":"gen-1","choices":[{"message":{"content":"par')
        else:
            self.finish(json.dumps(completion(PAID, f"answer from {key}")))


@pytest.fixture
def upstream_url(io_loop, fake):
    app = make_fake_app(fake)
    app.add_handlers(r".*", [(r"/notjson/chat/completions", NotJsonHandler)])
    sock, port = bound_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}/api/v1"
    server.stop()


@pytest.fixture
def env(env):
    env["APP_API_KEY"] = "client-key-one"
    return env


async def test_a_stream_broken_after_its_200_counts_as_failed(fake, app, api, in_order, caplog):
    fake.script(A, {"chunks": 5, "drop_after": 2})
    with caplog.at_level(logging.INFO, "orpoll.access"):
        resp = await api(CHAT, {"model": PAID, "messages": MSG, "stream": True}, headers=AUTH)
        assert resp.code == 200 and b"upstream_disconnected" in resp.body
        resp = await api(CHAT, {"model": PAID, "messages": MSG}, headers=AUTH)
        assert resp.code == 200
        bad = await api(CHAT, {"model": PAID, "messages": MSG}, headers={"Authorization": "x"})
        assert_openai_error(bad, 401)
    counts = app.traffic.summary()
    assert counts["requests_total"] == 2 and counts["errors_total"] == 1
    assert counts["rejected_total"] == 1 and counts["rejected_last_hour"] == 1
    access = [r for r in caplog.records if r.name == "orpoll.access"]
    broke = next(r for r in access if "stream=true" in r.getMessage())
    assert broke.levelname == "WARNING" and "failed=stream-broke" in broke.getMessage()


async def test_a_mid_stream_error_event_counts_as_failed(fake, app, api, in_order):
    fake.script(A, {"chunks": 4, "mid_error": (2, {"code": 502, "message": "Provider gone"})})
    resp = await api(CHAT, {"model": PAID, "messages": MSG, "stream": True}, headers=AUTH)
    assert resp.code == 200 and b"Provider gone" in resp.body
    assert app.traffic.summary()["errors_total"] == 1


async def test_a_non_json_200_fails_over(fake, app, api, in_order, upstream_url):
    url = upstream_url.removesuffix("/api/v1") + "/notjson/chat/completions"
    app.apply_settings(dataclasses.replace(app.config, openrouter_api_url=url))
    resp = await api(CHAT, {"model": PAID, "messages": MSG}, headers=AUTH)
    assert resp.code == 200, resp.body
    assert json.loads(resp.body)["choices"][0]["message"]["content"] == f"answer from {B[-4:]}"
    assert resp.headers["X-Orpoll-Attempts"] == "2"
    a = next(k for k in app.scheduler if k.key == A)
    assert a.errors == 1 and "not JSON" in a.last_error


async def test_a_stream_whose_first_event_is_not_json_fails_over(fake, app, sdk, in_order):
    sdk.api_key = "client-key-one"
    fake.script(A, {"raw": [b'data: {"id":"gen-1","choices":[{"delta":\n\n', b"data: [DONE]\n\n"]})
    chunks = [
        c async for c in await sdk.chat.completions.create(model=PAID, messages=MSG, stream=True)
    ]
    assert chunks and fake.requests[A] == 1 and fake.requests[B] == 1
    a = next(k for k in app.scheduler if k.key == A)
    assert a.errors == 1 and "not JSON" in a.last_error
