"""The two cluster backends keep the same contract: the event log in order after a cursor,
hash writes and deletions in one step with the event, and leases that expire. Redis is a real
redis-server; the SQLite file is a real file."""

from __future__ import annotations

import asyncio
import time

import pytest

from orpoll.cluster.backend import BackendDown
from orpoll.cluster.rediskv import RedisBackend
from orpoll.cluster.sqlitekv import LocalBackend
from tests.cluster_helpers import RedisServer


@pytest.fixture(params=["redis", "local"])
def backends(request, tmp_path, io_loop):
    """Two handles on one backend (as two instances hold), closed at the end."""
    server = None
    if request.param == "redis":
        server = RedisServer(str(tmp_path / "redis"))
        server.start()
        made = [RedisBackend(server.url), RedisBackend(server.url)]
    else:
        made = [LocalBackend(str(tmp_path)), LocalBackend(str(tmp_path))]
    yield made
    for backend in made:
        io_loop.run_sync(backend.close)
    if server is not None:
        server.kill()


async def test_events_arrive_in_order_after_the_cursor_with_their_snapshot(backends):
    one, two = backends
    await one.connect()
    cursor = await two.tail()
    await one.commit({"t": "a"}, put={"keys": {"k1": "v1", "k2": "v2"}})
    await one.commit({"t": "b"}, drop={"keys": ["k1"]}, put={"gone": {"k1": "5.0"}})
    cursor, events = await two.read(cursor, 1.0)
    assert [e["t"] for e in events] == ["a", "b"]
    assert await two.hmget("keys", ["k1", "k2", "k3"]) == [None, "v2", None]
    assert await two.hgetall("gone") == {"k1": "5.0"}
    started = time.monotonic()
    assert (await two.read(cursor, 0.3))[1] == []  # nothing new: waits, then returns
    assert time.monotonic() - started >= 0.25
    await one.commit(None, drop={"keys": None})
    assert await two.hgetall("keys") == {}


async def test_a_read_waiting_on_the_log_returns_as_soon_as_an_event_comes(backends):
    one, two = backends
    cursor = await two.tail()
    waiting = asyncio.ensure_future(two.read(cursor, 5.0))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await one.commit({"t": "now"})
    _, events = await waiting
    assert [e["t"] for e in events] == ["now"] and time.monotonic() - started < 0.5


async def test_a_lease_goes_to_one_holder_until_it_expires(backends):
    one, two = backends
    assert await one.claim(["probe:1:a", "probe:1:b"], "one", 0.5) == [True, True]
    assert await two.claim(["probe:1:a", "probe:1:c"], "two", 0.5) == [False, True]
    assert await two.get("probe:1:a") == "one"
    await asyncio.sleep(0.6)
    assert await two.claim(["probe:1:a"], "two", 0.5) == [True]


async def test_an_unreachable_redis_is_backend_down(tmp_path):
    server = RedisServer(str(tmp_path / "redis"))  # never started: nothing listens
    backend = RedisBackend(server.url)
    try:
        with pytest.raises(BackendDown):
            await backend.connect()
        with pytest.raises(BackendDown):
            await backend.commit({"t": "x"}, put={"keys": {"k": "v"}})
    finally:
        await backend.close()
