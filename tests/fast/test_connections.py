"""Client connections: the idle timeout (a sweep, not a timer per request), and handlers that
start in the pass that read their request (fast.start_eagerly)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.tcpclient import TCPClient

from orpoll.fast.connections import Server
from orpoll.fast.eager import _resume, start_eagerly
from orpoll.limits import Limits
from tests.conftest import raw_chat_request

PAID = "openai/gpt-4o"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def quick_idle(io_loop, app):
    """orpoll served with 0.4 s client time limits; yields its port."""
    sock = bind_sockets(0, "127.0.0.1")[0]
    server = Server(app, limits=Limits(header=0.4, body=0.4, idle=0.4))
    server.add_socket(sock)
    yield sock.getsockname()[1]
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=10)


def request(stream: bool) -> bytes:
    return raw_chat_request(json.dumps({"model": PAID, "messages": MSG, "stream": stream}))


async def closed_after(stream) -> float:
    """Seconds until the server closes ``stream`` (reading whatever comes first)."""
    start = time.monotonic()
    try:
        while True:
            await stream.read_bytes(65536, partial=True)
    except StreamClosedError:
        return time.monotonic() - start


async def test_a_silent_connection_is_closed_after_the_idle_timeout(quick_idle):
    stream = await TCPClient().connect("127.0.0.1", quick_idle)
    took = await asyncio.wait_for(closed_after(stream), 5)
    assert 0.4 <= took < 1.5


async def test_headers_sent_too_slowly_are_cut(quick_idle):
    stream = await TCPClient().connect("127.0.0.1", quick_idle)
    start = time.monotonic()
    with pytest.raises(StreamClosedError):
        for byte in request(False)[:60]:
            await stream.write(bytes([byte]))
            await asyncio.sleep(0.05)
    assert 0.4 <= time.monotonic() - start < 2.5


async def test_keep_alive_is_closed_after_idling_and_a_long_stream_is_not(quick_idle, fake):
    fake.default = {"chunks": 10, "interval": 0.1}  # a 1 s stream, longer than the timeout
    stream = await TCPClient().connect("127.0.0.1", quick_idle)
    await stream.write(request(True))
    start = time.monotonic()
    got = await asyncio.wait_for(stream.read_until(b"data: [DONE]\n\n\r\n0\r\n\r\n"), 10)
    assert time.monotonic() - start >= 0.9 and got.startswith(b"HTTP/1.1 200")
    await stream.write(request(False))  # the same connection serves the next request
    head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    took = await asyncio.wait_for(closed_after(stream), 5)  # then idles out
    assert took < 1.5


async def test_pipelined_requests_are_answered_in_order_when_one_ends_at_once(base_url, fake):
    """A handler runs in the pass that read its request: a 400 for a bad body is written
    before Tornado's connection loop has moved on. The next request, already in the buffer,
    is still read and answered after it, on the same connection."""
    fake.default = {"chunks": 2}
    port = int(base_url.rsplit(":", 1)[1])
    stream = await TCPClient().connect("127.0.0.1", port)
    await stream.write(raw_chat_request(b"{not json") + request(True) + request(False))
    first = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 400")
    length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert b"invalid_json" in await stream.read_bytes(length)
    second = await asyncio.wait_for(stream.read_until(b"data: [DONE]\n\n\r\n0\r\n\r\n"), 5)
    assert (
        second.startswith(b"HTTP/1.1 200") and second.count(b'"delta"') == 2
    )  # and the usage chunk
    third = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), 5)
    assert third.startswith(b"HTTP/1.1 200")
    stream.close()


async def test_start_eagerly_runs_the_first_step_now_and_the_rest_in_a_task():
    steps = []
    gate = asyncio.get_running_loop().create_future()

    async def job():
        steps.append("first")
        value = await gate
        steps.append("after")
        return value * 2

    task = start_eagerly(job())
    assert steps == ["first"] and not task.done()
    gate.set_result(21)
    assert await task == 42 and steps == ["first", "after"]

    async def at_once():
        steps.append("whole")

    assert start_eagerly(at_once()) is None and steps[-1] == "whole"


async def test_start_eagerly_passes_errors_and_cancellation_through():
    loop = asyncio.get_running_loop()
    gate, cleaned = loop.create_future(), []

    async def fails():
        await gate
        raise ValueError("later")

    task = start_eagerly(fails())
    gate.set_result(None)
    with pytest.raises(ValueError, match="later"):
        await task

    async def waits_forever():
        try:
            await loop.create_future()
        finally:
            cleaned.append(True)

    task = start_eagerly(waits_forever())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True] and task.cancelled()


async def test_a_cancelled_eager_task_logs_nothing(caplog):
    """As Tornado's own handler start: a cancelled handler task is not an error to log."""
    loop = asyncio.get_running_loop()

    async def waits_forever():
        await loop.create_future()

    task = start_eagerly(waits_forever())
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        task.cancel()
        for _ in range(3):  # the Task ends, then its done-callbacks run
            await asyncio.sleep(0)
    assert task.cancelled()
    assert not [r for r in caplog.records if "CancelledError" in r.getMessage() + str(r.exc_info)]


async def test_a_dropped_eager_task_closes_its_coroutine():
    """Closing the rest (as the GC does with a Task dropped unfinished) ends the coroutine
    that ran its first step eagerly: its ``finally`` runs."""
    cleaned = []

    async def waits():
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            cleaned.append(True)

    coro = waits()
    rest = _resume(coro, coro.send(None))
    next(rest)
    rest.close()
    assert cleaned == [True]
