"""Many streams at once over the curl pool: its shards, their shared cap and queue, and
connection reuse."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from orpoll.fast import heap
from orpoll.fast.shards import SHARD_TRANSFERS
from orpoll.keys import key_id
from tests.conftest import fast_only
from tests.test_streaming import assert_clean_sse, expected_stream, stream_raw, wait_for

pytestmark = fast_only("the fallback pool is one Tornado curl client: no shards, no queue")


@pytest.fixture
def cap_2(env):
    env["UPSTREAM_MAX_CONNECTIONS"] = "2"


@pytest.fixture
def cap_300(env):
    env["UPSTREAM_MAX_CONNECTIONS"] = "300"


@pytest.fixture
def h2c_on(env):
    env["UPSTREAM_H2C"] = "1"


async def test_streams_beyond_a_shard_run_on_another_within_the_cap(cap_300, app, fake, base_url):
    """Past SHARD_TRANSFERS at once, transfers run on a second curl multi (libcurl's search for
    a connection to reuse then walks one shard, not every connection); UPSTREAM_MAX_CONNECTIONS
    still caps all shards together, the rest wait for whichever frees first, and every stream
    arrives whole. A light load afterwards runs on the first shard and reuses its connections."""
    assert SHARD_TRANSFERS == 256
    fake.default = {"chunks": 2, "interval": 1.2}
    pool = app.upstream.pool
    job = asyncio.gather(*(stream_raw(base_url) for _ in range(320)))
    await wait_for(lambda: fake.active == 300 and len(pool.waiting) == 20, 10)
    assert [shard.limit for shard in pool.shards] == [256, 44]
    assert [len(shard.running) for shard in pool.shards] == [256, 44]
    raws = await job
    assert fake.peak == 300  # the cap held, across both shards
    for raw in raws:
        assert raw.code == 200
        assert_clean_sse(raw)
        assert raw.body == expected_stream(2)
    assert not pool.waiting and not any(shard.running for shard in pool.shards)
    connections = len(fake.peers)
    assert connections <= 300

    fake.peak, fake.default = 0, {"chunks": 2, "interval": 0.2}
    raws = await asyncio.gather(*(stream_raw(base_url) for _ in range(20)))
    assert all(raw.code == 200 and raw.body == expected_stream(2) for raw in raws)
    assert fake.peak == 20
    assert len(pool.shards) == 2
    assert len(fake.peers) == connections  # all 20 on connections the first wave opened


async def test_model_list_does_not_wait_behind_streams_at_the_cap(cap_2, app, fake, api, base_url):
    """The model list and health probes run on a curl client of their own: with every relay
    slot held by long streams (and more waiting), /v1/models is still fetched at once."""
    fake.default = {"chunks": 2, "interval": 1.5}
    pool = app.upstream.pool
    job = asyncio.gather(*(stream_raw(base_url) for _ in range(3)))
    await wait_for(lambda: fake.active == 2 and len(pool.waiting) == 1, 5)
    start = time.monotonic()
    resp = await api("/v1/models")
    assert resp.code == 200 and fake.models_calls == 1
    assert time.monotonic() - start < 1.0 and fake.active == 2  # the streams still run
    assert all(raw.code == 200 for raw in await job)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_an_idle_extra_shard_is_closed_with_its_connections(cap_300, app, fake, base_url):
    """After a burst past one shard, a shard past the first that ran nothing for idle_seconds
    is closed: its handles and idle upstream connections (descriptors) go. The first shard
    keeps its connections for the next request, and the next burst opens a shard again."""
    pool = app.upstream.pool
    pool.idle_seconds = 0.5  # before the burst: the trim timer's period follows it
    fake.default = {"chunks": 2, "interval": 1.0}
    job = asyncio.gather(*(stream_raw(base_url) for _ in range(300)))
    await wait_for(lambda: fake.active == 300, 10)
    assert [shard.limit for shard in pool.shards] == [256, 44]
    assert heap.in_burst()  # the extra shard's upload buffers are mmap'd (test_heap.py)
    extra = pool.shards[1]
    raws = await job
    assert all(raw.code == 200 and raw.body == expected_stream(2) for raw in raws)
    assert len(extra._curls) == 44
    before = open_fds()
    await wait_for(lambda: len(pool.shards) == 1, 5)
    assert open_fds() <= before - 44  # its idle connections, closed on our side at once
    assert pool.room == 44 and extra._fds == {}
    assert not heap.in_burst()

    peers = len(fake.peers)
    raw = await stream_raw(base_url)
    assert raw.code == 200 and raw.body == expected_stream(2)
    assert len(fake.peers) == peers  # on a connection the first shard kept

    job = asyncio.gather(*(stream_raw(base_url) for _ in range(300)))
    await wait_for(lambda: fake.active == 300, 10)
    assert [shard.limit for shard in pool.shards] == [256, 44]
    raws = await job
    assert all(raw.code == 200 and raw.body == expected_stream(2) for raw in raws)
    await wait_for(lambda: len(pool.shards) == 1, 5)
    assert pool._trimmer is None  # stopped with one shard left; the next burst restarts it
    assert not heap.in_burst()


async def test_h2c_to_an_http1_only_upstream_falls_back_without_failing_anything(
    cap_300, h2c_on, env, app, fake, keys, base_url, caplog
):
    """UPSTREAM_H2C=1, but the upstream (the Tornado fake) speaks HTTP/1.1 only: the burst's
    HTTP/2 transfers are refused before any answer. They run again over HTTP/1.1, invisibly to
    clients and keys; h2c goes off for good, with one error in the log that says so."""
    assert env["UPSTREAM_H2C"] == "1"
    fake.default = {"chunks": 2, "interval": 0.6}
    pool = app.upstream.pool
    raws = await asyncio.gather(*(stream_raw(base_url) for _ in range(300)))
    for raw in raws:
        assert raw.code == 200
        assert raw.body == expected_stream(2)
    assert len(pool.shards) == 2 and pool.shards[1].h2c is pool.h2c
    assert not pool.h2c.on
    for key in keys:
        ks = app.scheduler.get(key_id(key))
        assert ks.errors == 0 and ks.failures == 0
    refused = [r for r in caplog.records if "does not speak HTTP/2" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    assert "UPSTREAM_H2C=0" in refused[0].getMessage()
    assert fake.peak == 300
