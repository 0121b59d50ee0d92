"""Shared fixtures.

Things (nouns):
- ``fake``: the FakeOpenRouter state (script it per key, read counters back)
- ``upstream_url``: base URL of the running fake (``http://127.0.0.1:PORT/api/v1``)
- ``keys``: the OpenRouter keys the app starts with (override by parametrizing or per module)
- ``config``: Settings pointing at the fake
- ``app``: the orpoll app under test (pytest-tornasync serves it on ``http_server_port``)
- ``base_url``: ``http://127.0.0.1:PORT`` of the app
- ``sdk``: an ``openai.AsyncOpenAI`` client pointed at the app
- ``api``: ``await api(path, obj, body=..., method=..., headers=...)`` -> HTTPResponse of the app
  (``obj`` is sent as JSON; never raises on an error status)

Behaviours (adjectives):
- ``in_order``: the scheduler picks keys in the order they were added (``keys[0]`` first), so
  tests can say which key fails and which one serves

Helpers: ``assert_openai_error(resp, status, type)``, ``InOrder`` (the rng behind ``in_order``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import sys

import pytest
import uvloop
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orpoll.app import make_app  # noqa: E402
from orpoll.config import load_settings  # noqa: E402
from orpoll.fast import make_server  # noqa: E402
from tests.fake_upstream import FakeOpenRouter, make_fake_app  # noqa: E402

# The loop ``python run.py`` runs by default (EVENT_LOOP), for every in-process test too.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

# FAST=0 runs the suite on the fallbacks (Tornado's and pycurl's public APIs only).
FAST = os.environ.get("FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def fast_only(reason: str):
    """Skip a test of a fast path's own behaviour under FAST=0, saying what the fallback lacks."""
    return pytest.mark.skipif(not FAST, reason=f"FAST=0: {reason}")


KEYS = ["sk-or-v1-test-aaaa1111", "sk-or-v1-test-bbbb2222", "sk-or-v1-test-cccc3333"]


def bound_port() -> tuple:
    """``bind_unused_port()`` with a listen queue for bursts: Tornado's 128 dropped SYNs when
    a test opened 300 connections at once, and each dropped SYN waits 1, 3, 7 s to retry."""
    sock, port = bind_unused_port()
    sock.listen(1024)
    return sock, port


@pytest.fixture
def http_server_port():
    """pytest-tornasync's, with ``bound_port``'s listen queue."""
    return bound_port()


@pytest.fixture
def fake() -> FakeOpenRouter:
    return FakeOpenRouter()


@pytest.fixture
def upstream_url(io_loop, fake):
    sock, port = bound_port()
    server = HTTPServer(make_fake_app(fake))
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}/api/v1"
    server.stop()


@pytest.fixture
def keys() -> list[str]:
    return list(KEYS)


@pytest.fixture
def env(upstream_url, keys, tmp_path) -> dict[str, str]:
    """Environment the app is configured from (tests may add to it before ``app`` is built)."""
    return {
        "OPENROUTER_API_KEYS": ",".join(keys),
        "OPENROUTER_API_URL": f"{upstream_url}/chat/completions",
        "OPENROUTER_MODELS_URL": f"{upstream_url}/models",
        "RETRY_BACKOFF_SECONDS": "0",
        "DATA_DIR": str(tmp_path / "data"),
        "ADMIN_PASSWORD": "test-admin-password",
        "LOG_LEVEL": "debug",
        "FAST": "1" if FAST else "0",  # the suite runs both ways
    }


@pytest.fixture
def config(env):
    return load_settings(env)


@pytest.fixture
def app(config):
    app = make_app(config)
    yield app
    app.upstream.close()


@pytest.fixture
def http_server(request, io_loop, app, http_server_port):
    """pytest-tornasync's fixture, serving ``app`` with the server FAST chooses."""
    server = make_server(app, fast=app.config.fast)
    server.add_socket(http_server_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=10)


@pytest.fixture
def base_url(http_server, http_server_port) -> str:
    return f"http://127.0.0.1:{http_server_port[1]}"


class InOrder(random.Random):
    """An rng whose draws are always 0: a weighted pick takes the first usable key by slot."""

    def randrange(self, *args, **kwargs) -> int:
        return 0


@pytest.fixture
def in_order(app):
    app.scheduler.rng = InOrder()
    return app.scheduler


@pytest.fixture
def api(base_url):
    client = AsyncHTTPClient(force_instance=True, max_clients=50)

    async def fetch(
        path: str,
        obj=None,
        *,
        body: bytes | str | None = None,
        method: str | None = None,
        headers: dict | None = None,
        **kw,
    ):
        if obj is not None:
            body = json.dumps(obj)
        if method is None:
            method = "GET" if body is None else "POST"
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        return await client.fetch(
            base_url + path,
            method=method,
            body=body,
            headers=hdrs,
            raise_error=False,
            request_timeout=30,
            allow_nonstandard_methods=True,
            **kw,
        )

    yield fetch
    client.close()


@pytest.fixture
def sdk(base_url, io_loop):
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    yield client
    # The SDK leaves async generators half-iterated after [DONE]; finalize them (and close the
    # client) on the test's loop while it still runs, not at interpreter exit.
    gc.collect()
    io_loop.run_sync(client.close)


def raw_chat_request(body: bytes | str) -> bytes:
    """POST /v1/chat/completions carrying ``body``, as the bytes an HTTP/1.1 client sends."""
    data = body.encode() if isinstance(body, str) else body
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )


def assert_openai_error(resp, status: int, etype: str | None = None) -> dict:
    """The response is an OpenAI-shaped error with this status (and type); returns ``error``."""
    assert resp.code == status, (resp.code, resp.body)
    assert resp.headers["Content-Type"].startswith("application/json")
    body = json.loads(resp.body)
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if etype is not None:
        assert err["type"] == etype, err
    return err


@pytest.fixture
def admin(io_loop, base_url):
    """A client logged in with the original's JSON flow."""
    from tests.admin_helpers import AdminClient

    c = AdminClient(base_url)
    assert io_loop.run_sync(c.login).code == 200
    return c


@pytest.fixture
def serve(io_loop):
    """serve(app) -> base URL of one more server (apps built inside a test)."""
    started = []

    def _serve(app) -> str:
        sock, port = bound_port()
        server = make_server(app, fast=app.config.fast)
        server.add_sockets([sock])
        started.append((server, app))
        return f"http://127.0.0.1:{port}"

    yield _serve
    for server, app in started:
        server.stop()
        app.upstream.close()


@pytest.fixture
def upstream():
    """The fake OpenRouter on a thread of its own, for orpoll running as a subprocess."""
    from tests.admin_helpers import FakeUpstream

    fake = FakeUpstream()
    yield fake
    fake.stop()


@pytest.fixture
def data_dir(tmp_path) -> str:
    return str(tmp_path / "data")


@pytest.fixture
def spawn(tmp_path):
    """spawn(env) -> a ready OrpollProcess (each with its own log file); stopped at the end."""
    from tests.admin_helpers import OrpollProcess

    started = []

    def _spawn(env: dict[str, str]):
        proc = OrpollProcess(env, str(tmp_path / f"orpoll-{len(started)}.log"))
        started.append(proc)
        proc.wait_ready()
        return proc

    yield _spawn
    for proc in started:
        proc.stop()


@pytest.fixture
def browser():
    """Debian's chromium, headless, driven by Playwright."""
    from tests.dash_helpers import ARGS, CHROMIUM

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()
