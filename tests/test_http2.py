"""The relay over HTTP/2 with TLS, as OpenRouter serves it: many streams on one connection.
And over HTTP/2 without TLS (UPSTREAM_H2C), where only a burst's streams past the first curl
shard multiplex.

The fake upstream here is a small ASGI app served by hypercorn (HTTP/2 over TLS, which
Tornado's server does not speak); it streams SSE chunks and records, per request, the HTTP
version, the client connection it came on and whether the client left early.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from tornado.httpclient import AsyncHTTPClient
from tornado.tcpclient import TCPClient

from orpoll.fast.shards import SHARD_TRANSFERS
from tests.conftest import fast_only, raw_chat_request
from tests.fake_upstream import chunk, usage_chunk
from tests.test_streaming import (
    DONE,
    MSG,
    PAID,
    assert_clean_sse,
    expected_stream,
    stream_raw,
    wait_for,
)
from tests.test_tls import cert_files, trusted  # noqa: F401  (fixtures this module uses)

pytestmark = pytest.mark.usefixtures("trusted")  # the fake's certificate is trusted


class H2Upstream:
    """The fake's state and its ASGI app: ``chunks`` SSE chunks (the Tornado fake's own,
    tests.fake_upstream.chunk), ``interval`` s apart."""

    def __init__(self) -> None:
        self.chunks, self.interval = 3, 0.05
        self.seen: list[tuple[str, int]] = []  # (HTTP version, client port) per request
        self.left_early = 0  # streams whose client went away before the last chunk
        self.active = 0  # streams being answered now

    async def app(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.seen.append((scope["http_version"], scope["client"][1]))
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.ensure_future(self._disconnect(receive))
        self.active += 1
        try:
            for i in range(self.chunks):
                body = chunk(i, PAID)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                await asyncio.wait([gone], timeout=self.interval)
                if gone.done():
                    self.left_early += 1
                    return
            body = usage_chunk(self.chunks, PAID) + DONE
            await send({"type": "http.response.body", "body": body})
        finally:
            self.active -= 1
            gone.cancel()

    @staticmethod
    async def _disconnect(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


@pytest.fixture
def h2(io_loop, cert_files):  # noqa: F811
    """The HTTP/2 fake over TLS, served on the test's loop; yields (state, base URL)."""
    yield from served(io_loop, cert_files)


@pytest.fixture
def h2c(io_loop):
    """The fake without TLS: HTTP/1.1, and HTTP/2 to a client that starts with its preface."""
    yield from served(io_loop, None)


def served(io_loop, certs):
    state = H2Upstream()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    if certs:
        config.certfile, config.keyfile = certs
        config.alpn_protocols = ["h2"]
    config.graceful_timeout = 0.5
    config.backlog = 1024  # hypercorn's 100 drops SYNs in a 300-connection burst (1 s retries)
    stop = asyncio.Event()
    server = io_loop.asyncio_loop.create_task(serve(state.app, config, shutdown_trigger=stop.wait))

    async def listening() -> None:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return
        raise AssertionError("hypercorn did not start")

    io_loop.run_sync(listening)
    yield state, f"{'https' if certs else 'http'}://127.0.0.1:{port}/api/v1"
    stop.set()
    io_loop.run_sync(lambda: asyncio.wait([server], timeout=5))


@pytest.fixture
def upstream_url(request):
    """The TLS fake, or the cleartext one for tests that take ``h2c``."""
    return request.getfixturevalue("h2c" if "h2c" in request.fixturenames else "h2")[1]


async def test_a_stream_goes_over_http2(app, h2, sdk):
    state, _ = h2
    stream = await sdk.chat.completions.create(model=PAID, messages=MSG, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "tok0 tok1 tok2 "
    assert [version for version, _ in state.seen] == ["2"]


@fast_only("Tornado's curl setup has no PIPEWAIT: a cold burst opens connections")
async def test_a_cold_burst_shares_one_connection(app, h2, base_url):
    """20 streams at once, before any upstream connection exists, are multiplexed on one
    HTTP/2 connection (curl's PIPEWAIT: wait for the first connection's handshake instead of
    opening one TLS connection per stream), and each arrives whole."""
    state, _ = h2
    client = AsyncHTTPClient(force_instance=True, max_clients=20)
    raws = await asyncio.gather(*(stream_raw(base_url, client) for _ in range(20)))
    for raw in raws:
        assert raw.code == 200
        assert_clean_sse(raw)
        assert raw.body == expected_stream(3)
    assert len(state.seen) == 20
    assert len({port for _, port in state.seen}) == 1


async def test_a_client_that_leaves_ends_only_its_own_stream(app, h2, base_url):
    """Two streams on one HTTP/2 connection; the first client leaves mid-stream: its upstream
    stream is reset, and the other goes on to the end on the same connection."""
    state, _ = h2
    state.chunks, state.interval = 20, 0.05
    body = json.dumps({"model": PAID, "messages": MSG, "stream": True})
    leaving = await TCPClient().connect("127.0.0.1", int(base_url.rsplit(":", 1)[1]))
    await leaving.write(raw_chat_request(body))
    staying = asyncio.ensure_future(stream_raw(base_url))
    await leaving.read_until(b'"content"')  # its stream has begun
    leaving.close()
    raw = await staying
    assert raw.code == 200
    assert raw.body == expected_stream(20)
    assert state.left_early == 1
    assert len(state.seen) == 2 and len({port for _, port in state.seen}) == 1


@pytest.fixture
def with_h2c(env):
    env["UPSTREAM_H2C"] = "1"


@fast_only("the fallback pool has no shards and speaks HTTP/1.1 to http:// URLs")
async def test_h2c_multiplexes_only_the_streams_past_the_first_shard(with_h2c, app, h2c, base_url):
    """UPSTREAM_H2C=1, 300 streams at once: the first shard's 256 keep one HTTP/1.1 connection
    each (cheaper per chunk); the 44 past it share an HTTP/2 connection (curl's PIPEWAIT), and
    every stream arrives whole."""
    assert SHARD_TRANSFERS == 256
    state, _ = h2c
    state.chunks, state.interval = 3, 0.6
    pool = app.upstream.pool
    client = AsyncHTTPClient(force_instance=True, max_clients=300)
    job = asyncio.gather(*(stream_raw(base_url, client) for _ in range(300)))
    await wait_for(lambda: state.active == 300, 20)
    assert [len(shard.running) for shard in pool.shards] == [256, 44]
    for raw in await job:
        assert raw.code == 200
        assert_clean_sse(raw)
        assert raw.body == expected_stream(3)
    versions = [version for version, _ in state.seen]
    assert versions.count("1.1") == 256 and versions.count("2") == 44
    assert len({port for version, port in state.seen if version == "2"}) == 1
    assert len({port for version, port in state.seen if version == "1.1"}) == 256
