"""Streaming through the relay: invisible failover before the first data event, mid-stream
errors, drops, disconnects, timeouts, real streaming and many concurrent streams."""

from __future__ import annotations

import asyncio
import json
import random
import time

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.tcpclient import TCPClient

from tests.conftest import KEYS, assert_openai_error, fast_only, raw_chat_request
from tests.fake_upstream import chunk, content_of, usage_chunk

A, B, C = KEYS
PAID = "openai/gpt-4o"
MSG = [{"role": "user", "content": "hi"}]
DONE = b"data: [DONE]\n\n"


def ks_of(app, key):
    return next(k for k in app.scheduler if k.key == key)


def expected_stream(n: int, model: str = PAID) -> bytes:
    """The bytes the fake sends for a good stream of n chunks."""
    return b"".join(chunk(i, model) for i in range(n)) + usage_chunk(n, model) + DONE


async def sdk_text(sdk, **kw) -> str:
    stream = await sdk.chat.completions.create(model=PAID, messages=MSG, stream=True, **kw)
    text = ""
    async with stream:  # closed even when the SDK raises mid-stream
        async for ev in stream:
            if ev.choices:
                text += ev.choices[0].delta.content or ""
    return text


class Raw:
    """A streamed response read with a plain Tornado client: status, headers, timed chunks."""

    def __init__(self) -> None:
        self.code = 0
        self.headers = None
        self.chunks: list[tuple[float, bytes]] = []
        self.start = time.monotonic()

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def events(self) -> list[bytes]:
        return [e for e in self.body.split(b"\n\n") if e]

    def data(self) -> list[bytes]:
        """The data payloads, in order."""
        out = []
        for event in self.events():
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    out.append(line[6:])
        return out


async def stream_raw(base_url: str, client=None, **extra) -> Raw:
    raw = Raw()
    body = json.dumps({"model": PAID, "messages": MSG, "stream": True, **extra})
    own = client is None
    client = client or AsyncHTTPClient(force_instance=True)
    try:
        resp = await client.fetch(
            HTTPRequest(
                f"{base_url}/v1/chat/completions",
                method="POST",
                body=body,
                headers={"Content-Type": "application/json"},
                streaming_callback=lambda c: raw.chunks.append((time.monotonic(), c)),
                request_timeout=60,
            ),
            raise_error=False,
        )
    finally:
        if own:
            client.close()
    raw.code, raw.headers = resp.code, resp.headers
    return raw


def assert_clean_sse(raw: Raw) -> None:
    """Every data payload is JSON or [DONE]; exactly one [DONE], and it is last."""
    data = raw.data()
    assert data.count(b"[DONE]") == 1, raw.body
    assert data[-1] == b"[DONE]"
    for payload in data[:-1]:
        json.loads(payload)
    assert raw.body.endswith(DONE)


# ---- failover before the first data event ------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        {"status": 502, "error": {"code": 502, "message": "Provider returned error"}},
        {"status": 429, "error": {"code": 429, "message": "Rate limit exceeded"}},
        {"error_first": {"code": 502, "message": "Provider disconnected"}},
        {"comments": 3, "error_first": {"code": "server_error", "message": "overloaded"}},
        {"comments": 2, "chunks": 0, "done": False},  # ended before any data
    ],
    ids=["status-502", "status-429", "error-event-first", "comments-then-error", "no-data"],
)
async def test_failover_before_first_data_is_invisible(app, fake, sdk, in_order, script):
    fake.script(A, script)
    assert await sdk_text(sdk) == content_of(3)
    assert fake.order == [A, B]
    assert ks_of(app, A).errors == 1


async def test_failover_before_first_data_raw_bytes(fake, base_url, in_order):
    fake.script(A, {"comments": 2, "error_first": {"code": 503, "message": "overloaded"}})
    raw = await stream_raw(base_url)
    assert raw.code == 200
    assert raw.body == expected_stream(3)  # nothing of A's answer, B's byte for byte
    assert raw.headers["X-Orpoll-Attempts"] == "2"
    assert raw.headers["Content-Type"].startswith("text/event-stream")
    assert raw.headers["Cache-Control"] == "no-cache"


async def test_stream_error_everywhere_gives_the_last_error_as_json(fake, api, in_order):
    for key in KEYS:
        fake.script(key, {"error_first": {"code": 503, "message": f"overloaded {key[-4:]}"}})
    resp = await api("/v1/chat/completions", {"model": PAID, "messages": MSG, "stream": True})
    e = assert_openai_error(resp, 503)
    assert e["message"] == f"overloaded {C[-4:]}"


async def test_stream_request_fault_is_relayed_as_json(fake, api, in_order):
    fake.script(A, {"status": 400, "error": {"code": 400, "message": "bad model"}})
    resp = await api("/v1/chat/completions", {"model": PAID, "messages": MSG, "stream": True})
    e = assert_openai_error(resp, 400, "invalid_request_error")
    assert e["message"] == "bad model"
    assert fake.order == [A]


# ---- keep-alive comments -----------------------------------------------------------------------


async def test_comments_before_first_data_are_dropped_after_are_passed(fake, base_url):
    fake.default = {"comments": 3, "chunks": 3, "comments_between": True}
    raw = await stream_raw(base_url)
    assert raw.code == 200
    assert raw.body.startswith(b"data: ")  # the pre-data keep-alives are gone
    events = raw.events()
    assert events.count(b": OPENROUTER PROCESSING") == 3  # one after each data chunk
    assert events[1] == b": OPENROUTER PROCESSING"
    assert_clean_sse(raw)


@pytest.fixture
def quick_keepalive(env):
    env["STREAM_KEEPALIVE_AFTER_SECONDS"] = "0.1"


async def test_keepalives_pass_once_the_first_token_is_late(quick_keepalive, fake, base_url):
    """30 keep-alives over ~0.3 s: after 0.1 s the stream commits and the client sees them."""
    fake.default = {"comments": 30, "chunks": 3}
    raw = await stream_raw(base_url)
    assert raw.code == 200
    events = raw.events()
    assert events[0] == b": OPENROUTER PROCESSING"
    assert 10 <= events.count(b": OPENROUTER PROCESSING") < 30  # the first ~0.1 s held back
    assert raw.chunks[0][0] < fake.last_chunk_at  # the client heard from us before the data
    assert_clean_sse(raw)


async def test_error_after_passed_keepalives_is_a_mid_stream_error(
    quick_keepalive, fake, base_url, in_order
):
    """Committed by keep-alives, an error event can no longer fail over: it ends the stream."""
    fake.script(A, {"comments": 30, "error_first": {"code": 502, "message": "provider down"}})
    raw = await stream_raw(base_url)
    assert raw.code == 200
    assert_clean_sse(raw)
    assert json.loads(raw.data()[0])["error"]["message"] == "provider down"
    assert sum(fake.requests.values()) == 1


async def test_sdk_ignores_passed_comments(fake, sdk):
    fake.default = {"comments": 1, "chunks": 4, "comments_between": True}
    assert await sdk_text(sdk) == content_of(4)


# ---- after the first data event ----------------------------------------------------------------


@pytest.mark.parametrize("upstream_done", [True, False])
async def test_mid_stream_error_is_passed_and_ends_with_one_done(
    fake, base_url, in_order, upstream_done
):
    error = {"code": 502, "message": "Provider disconnected mid-generation"}
    fake.script(A, {"chunks": 5, "mid_error": (2, error), "done": upstream_done})
    raw = await stream_raw(base_url)
    assert raw.code == 200
    assert_clean_sse(raw)
    data = raw.data()
    assert json.loads(data[-2])["error"] == error  # passed through unchanged
    assert fake.order == [A]  # no retry once bytes reached the client


async def test_mid_stream_error_raises_in_the_sdk(fake, sdk, in_order):
    error = {"code": 429, "message": "Rate limit exceeded", "metadata": {"provider_code": 429}}
    fake.script(A, {"chunks": 5, "mid_error": (2, error)})
    stream = await sdk.chat.completions.create(model=PAID, messages=MSG, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as exc:
        async with stream:
            async for ev in stream:
                if ev.choices:
                    text += ev.choices[0].delta.content or ""
    assert "Rate limit exceeded" in str(exc.value)
    assert text == content_of(2)
    assert fake.order == [A]


async def test_upstream_drop_mid_stream_ends_with_error_event_and_done(app, fake, base_url):
    fake.default = {"chunks": 10, "drop_after": 3}
    raw = await stream_raw(base_url)
    assert raw.code == 200
    assert_clean_sse(raw)  # the half event the fake sent is never forwarded
    data = raw.data()
    assert data[:3] == [chunk(i, PAID)[6:-2] for i in range(3)]
    err = json.loads(data[3])["error"]
    assert err["code"] == "upstream_disconnected" and err["message"]
    assert len(data) == 5
    assert sum(fake.requests.values()) == 1  # never a second (duplicated) answer


async def test_upstream_drop_raises_in_the_sdk(fake, sdk):
    fake.default = {"chunks": 10, "drop_after": 2}
    with pytest.raises(openai.APIError):
        await sdk_text(sdk)
    assert sum(fake.requests.values()) == 1


async def test_missing_done_is_added(fake, base_url):
    fake.default = {"chunks": 4, "done": False}
    raw = await stream_raw(base_url)
    assert raw.body == expected_stream(4)


async def test_events_split_across_chunks_and_crlf_pass_through(fake, base_url):
    whole = chunk(0, PAID) + b": keep-alive\n\n" + chunk(1, PAID).replace(b"\n\n", b"\r\n\r\n")
    whole += b"data: [DONE]\n\n"
    pieces = [whole[i : i + 7] for i in range(0, len(whole), 7)]
    fake.default = {"raw": pieces, "interval": 0.001}
    raw = await stream_raw(base_url)
    assert raw.code == 200
    assert raw.body == whole  # byte for byte, however the upstream cut it


async def test_tool_call_stream_survives(fake, sdk):
    fake.default = {"chunks": 2, "tool_calls": True}
    stream = await sdk.chat.completions.create(
        model=PAID,
        messages=MSG,
        stream=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    calls = []
    async with stream:
        async for ev in stream:
            if ev.choices and ev.choices[0].delta.tool_calls:
                calls += ev.choices[0].delta.tool_calls
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}


# ---- streams really stream ---------------------------------------------------------------------


async def test_first_chunk_arrives_long_before_the_last_is_sent(fake, base_url):
    fake.default = {"chunks": 5, "interval": 0.3}
    raw = await stream_raw(base_url)
    assert raw.body == expected_stream(5)
    first_at = raw.chunks[0][0] - raw.start
    assert first_at < 0.6, first_at
    assert raw.chunks[0][0] < fake.last_chunk_at - 0.9  # while the fake still had 4 to send
    data_times = []
    for t, c in raw.chunks:
        data_times += [t] * c.count(b'"delta"')  # the content chunks, not the usage
    assert len(data_times) == 5
    assert data_times[-1] - data_times[0] > 0.9  # spread out as sent, not batched at the end


# ---- client disconnect -------------------------------------------------------------------------


async def open_raw_stream(base_url: str, **extra):
    """A raw TCP client that sends a streaming request; returns the stream."""
    host, port = base_url.removeprefix("http://").split(":")
    stream = await TCPClient().connect(host, int(port))
    body = json.dumps({"model": PAID, "messages": MSG, "stream": True, **extra})
    await stream.write(raw_chat_request(body))
    return stream


async def wait_for(cond, timeout: float) -> float:
    """Seconds until ``cond()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, "condition never held"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_client_disconnect_mid_stream_aborts_upstream(app, fake, base_url):
    fake.default = {"chunks": 200, "interval": 0.05}
    stream = await open_raw_stream(base_url)
    got = await stream.read_until(b"data: {")
    assert b"200 OK" in got
    await wait_for(lambda: fake.active == 1, 2)
    closed = time.monotonic()
    stream.close()
    await wait_for(lambda: fake.disconnects == 1, 2)
    assert fake.closed_at[0] - closed < 1.0
    assert fake.finished_streams == 0
    await wait_for(lambda: app.inflight == 0, 2)


async def test_client_disconnect_before_first_byte_aborts_upstream(app, fake, base_url):
    fake.default = {"hang": True}
    stream = await open_raw_stream(base_url)
    await wait_for(lambda: sum(fake.requests.values()) == 1, 2)
    closed = time.monotonic()
    stream.close()
    await wait_for(lambda: fake.disconnects == 1, 2)
    assert fake.closed_at[0] - closed < 1.0
    await wait_for(lambda: app.inflight == 0, 2)
    assert sum(fake.requests.values()) == 1  # no failover for a client that left
    assert all(k.errors == 0 for k in app.scheduler)


async def test_client_disconnect_non_stream_aborts_upstream(app, fake, base_url):
    fake.default = {"hang": True}
    stream = await open_raw_stream(base_url, stream=False)
    await wait_for(lambda: sum(fake.requests.values()) == 1, 2)
    closed = time.monotonic()
    stream.close()
    await wait_for(lambda: fake.disconnects == 1, 2)
    assert fake.closed_at[0] - closed < 1.0


# ---- timeouts ----------------------------------------------------------------------------------


@pytest.fixture
def short_timeout(env):
    env["REQUEST_TIMEOUT_SECONDS"] = "1"


async def test_hanging_upstream_fails_over_after_the_timeout(
    short_timeout, app, fake, sdk, in_order
):
    fake.script(A, {"hang": True})
    t0 = time.monotonic()
    assert await sdk_text(sdk) == content_of(3)
    took = time.monotonic() - t0
    assert 0.9 <= took < 3.0, took
    assert fake.order == [A, B]
    assert ks_of(app, A).failures == 1


async def test_hanging_upstream_non_stream_fails_over_after_the_timeout(
    short_timeout, app, fake, sdk, in_order
):
    fake.script(A, {"hang": True})
    t0 = time.monotonic()
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    assert time.monotonic() - t0 < 3.0


async def test_producing_stream_outlives_the_timeout(short_timeout, fake, base_url):
    fake.default = {"chunks": 8, "interval": 0.4}  # 3.2 s in all, never silent for 1 s
    raw = await stream_raw(base_url)
    assert raw.body == expected_stream(8)
    assert raw.chunks[-1][0] - raw.start > 2.5


async def test_silent_stream_is_cut_with_an_error_event(short_timeout, fake, base_url):
    fake.default = {"chunks": 3, "silence": 3.0}
    raw = await stream_raw(base_url)
    assert raw.code == 200
    assert_clean_sse(raw)
    data = raw.data()
    assert json.loads(data[0])["choices"][0]["delta"]["content"] == "tok0 "
    assert "error" in json.loads(data[1])
    assert raw.chunks[-1][0] - raw.start < 2.8


@pytest.fixture
def no_timeout(env):
    env["REQUEST_TIMEOUT_SECONDS"] = "0"


async def test_timeout_zero_means_no_limit(no_timeout, fake, base_url):
    """REQUEST_TIMEOUT_SECONDS=0, as in the original, never cuts a silent stream."""
    fake.default = {"chunks": 3, "silence": 2.5}
    raw = await stream_raw(base_url)
    assert raw.body == expected_stream(3)


# ---- load --------------------------------------------------------------------------------------


async def test_200_concurrent_streams_are_byte_exact(app, fake, base_url):
    fake.default = {"chunks": 20, "interval": 0.01}
    client = AsyncHTTPClient(force_instance=True, max_clients=200)
    try:
        results = await asyncio.gather(*(stream_raw(base_url, client) for _ in range(200)))
    finally:
        client.close()
    expected = expected_stream(20)
    assert [r.code for r in results] == [200] * 200
    assert sum(r.body == expected for r in results) == 200
    assert fake.finished_streams == 200
    assert sum(fake.requests.values()) == 200
    assert app.inflight == 0


async def test_http_1_0_client_gets_an_unframed_stream(fake, base_url):
    """HTTP/1.0 has no chunked encoding: the stream is the raw bytes, ended by the close."""
    fake.default = {"chunks": 5, "interval": 0.01}
    host, port = base_url.removeprefix("http://").split(":")
    stream = await TCPClient().connect(host, int(port))
    body = json.dumps({"model": PAID, "messages": MSG, "stream": True}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    await stream.write(head + body)
    received = await stream.read_until_close()
    head, _, payload = received.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"chunked" not in head.lower()
    assert payload == expected_stream(5)


async def test_a_slow_reader_gets_every_byte_in_order(fake, base_url):
    """Big chunks to a client that reads in small sips: sends go partial, the rest queues in
    the IOStream, and the stream still arrives whole and in order."""
    fake.default = {"chunks": 40, "pad": 200_000}  # 8 MB, far past the socket buffers
    stream = await open_raw_stream(base_url)
    received = bytearray()
    try:
        while not received.endswith(b"0\r\n\r\n"):
            received += await stream.read_bytes(65536, partial=True)
            await asyncio.sleep(0.002)
    finally:
        stream.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert b"200 OK" in head and b"chunked" in head.lower()
    decoded, rest = bytearray(), body
    while True:  # undo the chunked framing
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            break
        decoded += rest[:size]
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]
    expected = b"".join(chunk(i, PAID, "x" * 200_000) for i in range(40))
    expected += usage_chunk(40, PAID) + DONE
    assert bytes(decoded) == expected


@pytest.fixture
def small_backlog(env):
    env["MAX_STREAM_BACKLOG_BYTES"] = "65536"


async def test_client_that_stops_reading_is_dropped_and_upstream_aborted(
    small_backlog, app, fake, base_url
):
    fake.default = {"chunks": 2000, "pad": 32768}  # 64 MB: far past every socket buffer
    stream = await open_raw_stream(base_url)
    await stream.read_until(b"\r\n\r\n")  # the headers, then never read again
    try:
        await wait_for(lambda: fake.disconnects == 1, 10)
        assert fake.finished_streams == 0
        await wait_for(lambda: app.inflight == 0, 5)
    finally:
        stream.close()


async def test_streamed_completions_pass_through(fake, base_url):
    client = AsyncHTTPClient(force_instance=True)
    chunks: list[bytes] = []
    try:
        resp = await client.fetch(
            HTTPRequest(
                f"{base_url}/v1/completions",
                method="POST",
                body=json.dumps({"model": PAID, "prompt": "hi", "stream": True}),
                headers={"Content-Type": "application/json"},
                streaming_callback=chunks.append,
            )
        )
    finally:
        client.close()
    assert resp.code == 200
    assert b"".join(chunks) == expected_stream(3)
    assert fake.paths == ["completions"]


async def test_200_concurrent_streams_with_a_failing_key(app, fake, base_url):
    fake.default = {"chunks": 10, "interval": 0.01}
    fake.script(A, {"comments": 1, "error_first": {"code": 502, "message": "down"}})
    client = AsyncHTTPClient(force_instance=True, max_clients=200)
    try:
        results = await asyncio.gather(*(stream_raw(base_url, client) for _ in range(200)))
    finally:
        client.close()
    expected = expected_stream(10)
    assert sum(r.code == 200 and r.body == expected for r in results) == 200
    assert fake.requests[A] >= 1  # A was tried (and failed) before it cooled
    assert fake.finished_streams == 200
    assert sum(int(r.headers["X-Orpoll-Attempts"]) for r in results) == 200 + fake.requests[A]


@fast_only("reads the fast curl pool's handle lists")
async def test_churn_leaves_no_transfer_or_handle_behind(short_timeout, app, fake, base_url):
    """Streams that finish, clients that leave at random moments, and upstreams that go
    silent (cut by the stall sweep), all at once: afterwards every curl handle is back in the
    pool and no transfer is still tracked, so no later abort can reach a reused handle."""
    rng = random.Random(7)
    fake.default = {"chunks": 6, "interval": 0.05}
    fake.script(C, {"chunks": 2, "silence": 3.0})  # the sweep cuts these after 1 s

    async def leaver() -> None:
        stream = await open_raw_stream(base_url)
        await asyncio.sleep(rng.uniform(0, 0.3))
        stream.close()

    jobs = [leaver() for _ in range(40)] + [stream_raw(base_url) for _ in range(40)]
    rng.shuffle(jobs)
    results = await asyncio.gather(*jobs)
    raws = [r for r in results if r is not None]
    assert len(raws) == 40 and all(r.code == 200 for r in raws)
    for raw in raws:
        assert_clean_sse(raw)
    http = app.upstream.pool.first
    await wait_for(lambda: app.inflight == 0 and not http.running, 5)
    assert len(http._free_list) == len(http._curls)
    await wait_for(lambda: fake.active == 0, 5)  # the silent ones notice after their sleep


@pytest.fixture
def four_connections(env):
    env["UPSTREAM_MAX_CONNECTIONS"] = "4"


@fast_only("reads the fast curl pool's handle lists")
async def test_streams_beyond_upstream_max_connections_wait_their_turn(
    four_connections, app, fake, base_url
):
    """UPSTREAM_MAX_CONNECTIONS caps transfers running at once; the rest queue and complete in
    full, and a client that leaves while its transfer waits never reaches the upstream."""
    fake.default = {"chunks": 4, "interval": 0.05}
    http = app.upstream.pool.first
    raws_job = asyncio.gather(*(stream_raw(base_url) for _ in range(12)))
    await wait_for(lambda: fake.active == 4 and len(http._waiting) == 8, 5)
    leaver = await open_raw_stream(base_url)
    await wait_for(lambda: len(http._waiting) == 9, 5)
    leaver.close()  # while its transfer waits for a handle
    raws = await raws_job
    assert all(r.code == 200 for r in raws)
    for raw in raws:
        assert_clean_sse(raw)
        assert raw.body == expected_stream(4)
    assert fake.peak == 4
    await wait_for(lambda: app.inflight == 0 and not http.running and not http._waiting, 5)
    assert len(http._curls) == 4 and len(http._free_list) == 4
    assert sum(fake.requests.values()) == 12  # the leaver's transfer never started


@fast_only("Tornado's server turns Nagle on between responses")
async def test_client_connections_have_no_nagle_delay(fake, base_url):
    """TCP_NODELAY is on for every client connection, and stays on for the next request on a
    keep-alive connection (Tornado turns it off after each response), so a small chunk never
    waits for the client's ACK of the previous one."""
    import gc
    import socket

    from orpoll.handlers.api import ChatHandler

    fake.default = {"chunks": 2, "interval": 0.01}
    stream = await open_raw_stream(base_url)
    await stream.read_until(b"\r\n0\r\n\r\n")  # the first stream, whole
    fake.default = {"chunks": 20, "interval": 0.05}
    body = json.dumps({"model": PAID, "messages": MSG, "stream": True})
    await stream.write(raw_chat_request(body))
    await stream.read_until(b"data: {")
    handlers = [o for o in gc.get_objects() if isinstance(o, ChatHandler) and not o._finished]
    assert len(handlers) == 1
    sock = handlers[0].request.connection.stream.socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    stream.close()


# ---- usage, as OpenRouter sends it -------------------------------------------------------------


async def test_usage_reaches_the_client_as_openrouter_sends_it(fake, sdk):
    """Streams: once, in a last chunk with empty choices before [DONE]; answers: in the body.
    Both with the cost in USD, cached and reasoning token details, and the generation id."""
    fake.default = {"chunks": 3, "usage": {"cost": 0.25, "cached_tokens": 2, "reasoning_tokens": 1}}
    stream = await sdk.chat.completions.create(model=PAID, messages=MSG, stream=True)
    async with stream:
        events = [ev async for ev in stream]
    assert [bool(ev.usage) for ev in events] == [False] * 3 + [True]
    last = events[-1]
    assert last.choices == [] and last.id == "gen-fake"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        3,
        3,
        6,
    )
    assert last.usage.cost == 0.25
    assert last.usage.prompt_tokens_details.cached_tokens == 2
    assert last.usage.completion_tokens_details.reasoning_tokens == 1

    answer = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert answer.id == "gen-fake" and answer.usage.cost == 0.25
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 2
    assert answer.usage.prompt_tokens_details.cached_tokens == 2
