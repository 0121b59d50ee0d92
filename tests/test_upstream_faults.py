"""Failures that are no key's fault: a request curl refuses to send, and an upstream that gives
no answer at all. Neither may cool, disable or count against a key, however often it happens."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import struct

import pytest

from tests.conftest import assert_openai_error

CHAT = "/v1/chat/completions"
BODY = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def point_at(app, port: int) -> None:
    url = f"http://127.0.0.1:{port}/api/v1/chat/completions"
    app.apply_settings(dataclasses.replace(app.config, openrouter_api_url=url))


def assert_no_key_blamed(app) -> None:
    for ks in app.scheduler:
        assert ks.state == "available" and not ks.until, (ks.id, ks.state, ks.reason)
        assert ks.failures == 0 and ks.errors == 0, (ks.id, ks.failures, ks.errors)


@pytest.mark.parametrize(
    "path",
    ["/v1/%00", "/v1/a%20b", "/v1/%7f", "/v1/caf%C3%A9", "/v1/x%0d%0aHost:%20evil"],
    ids=["nul", "space", "del", "non-ascii", "crlf"],
)
async def test_a_path_curl_cannot_send_is_a_400_and_blames_no_key(app, fake, api, path):
    # More requests than KEY_MAX_FAILURES: each used to cost every key a failure, and a few
    # of them cooled the whole pool.
    for _ in range(app.config.key_max_failures + 2):
        resp = await api(path)
        assert_openai_error(resp, 400)
    assert sum(fake.requests.values()) == 0
    assert_no_key_blamed(app)
    health = await api("/healthz")
    assert health.code == 200


async def test_a_refused_connection_cools_no_key(app, api):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    point_at(app, port)
    for _ in range(app.config.key_max_failures + 1):
        assert_upstream_down(await api(CHAT, BODY))
    assert all(ks.state == "available" and not ks.failures for ks in app.scheduler)


def assert_upstream_down(resp) -> None:
    """Two failures with no answer at all (two keys tried) say the upstream is down: 503
    upstream_unavailable with a short Retry-After, and no third key is tried for nothing."""
    e = assert_openai_error(resp, 503)
    assert e["code"] == "upstream_unavailable"
    assert 1 <= int(resp.headers["Retry-After"]) <= 10
    assert int(resp.headers.get("X-Orpoll-Attempts", "0")) <= 2


@pytest.fixture
def hangup_port(io_loop):
    """A listener that accepts and at once closes (``reset``: with an RST) each connection,
    before any byte of an answer."""
    servers = []

    async def start(reset: bool) -> int:
        def accepted(reader, writer):
            sock = writer.get_extra_info("socket")
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()

        server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_connection_ended_before_any_answer_cools_no_key(app, api, hangup_port, reset):
    point_at(app, await hangup_port(reset))
    for _ in range(app.config.key_max_failures + 1):
        assert_upstream_down(await api(CHAT, BODY))
    assert all(ks.state == "available" and not ks.failures for ks in app.scheduler)


def nested(depth: int) -> bytes:
    """A JSON body that mentions "error" and nests ``depth`` arrays deep."""
    return b'{"error": {"message": "x", "metadata": ' + b"[" * depth + b"]" * depth + b"}}"


@pytest.mark.parametrize("depth", [100_000, 990, 960, 930, 700, 450])
async def test_a_200_of_deeply_nested_json_fails_over(app, fake, api, in_order, depth):
    a, b = list(app.scheduler)[:2]
    fake.script(a.key, {"body": nested(depth)})
    resp = await api(CHAT, BODY)
    assert resp.code == 200, resp.body
    assert resp.headers["X-Orpoll-Attempts"] == "2"
    assert json.loads(resp.body)["choices"][0]["message"]["content"] == f"answer from {b.key[-4:]}"


@pytest.mark.parametrize("depth", [100_000, 990, 960, 930, 700, 450])
async def test_a_stream_whose_first_event_is_deeply_nested_fails_over(
    app, fake, api, in_order, depth
):
    a, b = list(app.scheduler)[:2]
    fake.script(a.key, {"raw": [b"data: " + nested(depth) + b"\n\n"]})
    resp = await api(CHAT, {**BODY, "stream": True})
    assert resp.code == 200, resp.body
    assert resp.headers["X-Orpoll-Attempts"] == "2"
    assert b"[[[" not in resp.body and resp.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "99999999999999999999"])
async def test_an_absurd_retry_after_is_not_believed(app, fake, api, value):
    error = {"code": 503, "message": "overloaded"}
    for ks in app.scheduler:
        fake.script(ks.key, {"status": 503, "error": error, "headers": {"Retry-After": value}})
    resp = await api(CHAT, BODY)
    assert_openai_error(resp, 503)
    assert 1 <= int(resp.headers["Retry-After"]) <= 31 * 86400
