"""Limits on clients: the time limits of each phase of a request (headers, body silence, idle
keep-alive), the size of a request line and header block (414, 431), and which connections
are shed first when the process runs out of descriptors."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request

import pytest
from tornado.iostream import StreamClosedError
from tornado.tcpclient import TCPClient

from tests.admin_helpers import child_env, wait_healthy
from tests.conftest import fast_only, raw_chat_request
from tests.limits_helpers import run_with_fd_limit

BODY = json.dumps({"model": "a/b", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def env(env):
    return {
        **env,
        "CLIENT_HEADER_TIMEOUT_SECONDS": "1",
        "CLIENT_BODY_TIMEOUT_SECONDS": "1",
        "CLIENT_IDLE_TIMEOUT_SECONDS": "3",
    }


@pytest.fixture
def port(base_url) -> int:
    return int(base_url.rsplit(":", 1)[1])


async def answer_then_close(stream, limit: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, got = time.monotonic(), b""

    async def read_all() -> None:
        nonlocal got
        try:
            while True:
                got += await stream.read_bytes(65536, partial=True)
        except StreamClosedError:
            pass

    await asyncio.wait_for(read_all(), limit)
    return got, time.monotonic() - start


def error_of(answer: bytes, status: int) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    assert b"Content-Type: application/json" in head
    err = json.loads(body)["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    return err


async def assert_serving(api) -> None:
    resp = await api("/v1/chat/completions", json.loads(BODY))
    assert resp.code == 200, resp.body


@fast_only("Tornado's server closes the connection without an answer")
async def test_a_stalled_small_body_is_answered_408_and_closed(port, api):
    stream = await TCPClient().connect("127.0.0.1", port)
    whole = raw_chat_request(BODY)
    await stream.write(whole[: len(whole) - 20])  # headers and most of the body, then silence
    answer, took = await answer_then_close(stream)
    assert 0.8 <= took < 5, took
    assert error_of(answer, 408)["code"] == "request_timeout"
    await assert_serving(api)


async def test_a_stalled_large_body_is_cut(port, api, app):
    """A body over 256 KB goes to a handler that started on the headers: cut all the same."""
    stream = await TCPClient().connect("127.0.0.1", port)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    await stream.write(head + b"x" * 300_000)
    _, took = await answer_then_close(stream)
    assert 0.8 <= took < 5, took
    await assert_serving(api)


@fast_only("Tornado's body_timeout limits the whole body, not its silence")
async def test_a_body_that_keeps_arriving_is_not_cut(port, fake):
    """The limit is on silence: a body sent slowly but steadily, over 3 x the limit, is read."""
    stream = await TCPClient().connect("127.0.0.1", port)
    whole = raw_chat_request(BODY)
    cut = whole.index(b"\r\n\r\n") + 4
    await stream.write(whole[:cut])
    for i in range(cut, len(whole), 8):
        await stream.write(whole[i : i + 8])
        await asyncio.sleep(0.4 * 8 * 3 / (len(whole) - cut))
    head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head


@fast_only("Tornado's server closes the connection without an answer")
async def test_headers_sent_too_slowly_get_408(port):
    stream = await TCPClient().connect("127.0.0.1", port)
    await stream.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    answer, took = await answer_then_close(stream)
    assert 0.8 <= took < 5, took
    assert error_of(answer, 408)["code"] == "request_timeout"


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_limit(port):
    stream = await TCPClient().connect("127.0.0.1", port)
    answer, took = await answer_then_close(stream)
    assert answer == b"" and 0.8 <= took < 5, took


@fast_only("Tornado's server has one limit for idle and header time")
async def test_an_idle_keep_alive_connection_lasts_the_idle_limit(port):
    stream = await TCPClient().connect("127.0.0.1", port)
    await stream.write(raw_chat_request(BODY))
    head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    answer, took = await answer_then_close(stream)
    assert 2.5 <= took < 8, took  # the idle limit (3 s), not the header limit (1 s)


async def assert_refused(port: int, request: bytes, status: int) -> dict:
    """Send ``request`` from a thread (a blocking sendall, as a client would) and read the
    answer; returns its error object."""

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(request)
            except OSError:
                pass  # the server may stop reading once it has answered
            got = b""
            while True:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                got += data
            return got

    return error_of(await asyncio.get_running_loop().run_in_executor(None, exchange), status)


@fast_only("Tornado's server closes the connection without an answer")
async def test_a_header_block_over_64_kb_gets_431(port, api):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n"
    err = await assert_refused(port, request, 431)
    assert err["code"] == "headers_too_large" and err["type"] == "invalid_request_error"
    many = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"b" * 100) for i in range(1000))
    await assert_refused(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", 431)
    await assert_serving(api)


@pytest.mark.parametrize("length", [10_000, 100_000])
@fast_only("Tornado's server closes the connection without an answer")
async def test_a_request_line_over_8_kb_gets_414(port, api, length):
    request = b"GET /v1/models?q=" + b"a" * length + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    err = await assert_refused(port, request, 414)
    assert err["code"] == "request_line_too_long"
    await assert_serving(api)


async def test_a_request_line_of_8_kb_is_served(port):
    path = b"/healthz?q=" + b"a" * (8192 - 40)
    request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    stream = await TCPClient().connect("127.0.0.1", port)
    await stream.write(request)
    answer, _ = await answer_then_close(stream)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_out_of_descriptors_stalled_uploads_are_shed_first(upstream, tmp_path):
    """``python run.py`` under a 256-descriptor limit, and 300 clients that sent headers and
    half a body, then nothing: /healthz still answers (the stalled ones are closed to make
    room), long before the 60 s body limit."""
    env = child_env(upstream, str(tmp_path / "data"), OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111")
    proc, url, port, log_path = run_with_fd_limit(env, tmp_path, 256)
    half = raw_chat_request(BODY + " " * 1000)[:-600]
    stalled: list[socket.socket] = []
    try:
        wait_healthy(url, proc)
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(half)
            stalled.append(sock)
        start = time.monotonic()
        with urllib.request.urlopen(url + "/healthz", timeout=30) as resp:
            assert resp.status == 200
        assert time.monotonic() - start < 20
    finally:
        for sock in stalled:
            sock.close()
        proc.terminate()
        proc.wait(20)
    text = log_path.read_text()
    assert "pausing accept()" in text and "Traceback" not in text
