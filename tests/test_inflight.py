"""InFlight: attempts in flight per key and the pick that uses them. A key whose attempts go
unanswered gets no new requests; its streams move on; counts never leak.

The HTTP tests run a real orpoll app with the fake OpenRouter behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from orpoll.inflight import MAX_MODELS
from orpoll.scheduler import KeyScheduler
from tests.conftest import InOrder
from tests.pool_helpers import CHAT, MSG, PAID, Clock, ks_of, set_config

SIX = [f"sk-or-v1-pool-{c * 4}{i}{i}{i}{i}" for i, c in enumerate("abcdef")]
HANG = "sk-or-v1-pool-hang9999"


async def test_a_stuck_key_is_out_of_the_pick_until_its_attempt_ends(caplog):
    clock = Clock()
    sched = KeyScheduler(clock=clock)
    hang, good = sched.add("sk-hang"), sched.add("sk-good")
    started, other = sched.begin(hang), sched.begin(good)
    clock.now += 0.1
    sched.answered(good, other, PAID)  # the model usually answers in 0.1 s
    clock.now += 1.4
    with caplog.at_level(logging.INFO, "orpoll.keys"):
        assert all(sched.pick(model=PAID) is good for _ in range(50))
        assert hang.stuck and hang.inflight == 1 and hang.oldest_inflight == started
        assert sched.pick(exclude=[good.id], model=PAID) is hang  # a slow key beats none
        sched.end(hang, started, waiting=True)
    assert not hang.stuck and hang.inflight == 0 and hang.oldest_inflight == 0.0
    lines = [r.getMessage() for r in caplog.records]
    assert sum("stuck" in line for line in lines) == 1, lines
    assert any(hang.id in line and "answering again" in line for line in lines)


def test_the_less_loaded_of_two_draws_is_picked():
    clock = Clock()
    sched = KeyScheduler(clock=clock)
    busy, idle = sched.add("sk-busy"), sched.add("sk-idle")
    sched.begin(busy)
    sched.begin(busy)
    assert all(sched.pick() is idle for _ in range(50))


def test_made_up_model_names_cannot_grow_the_latency_table():
    sched = KeyScheduler()
    ks = sched.add("sk-or-v1-latency-test-1111")
    for i in range(MAX_MODELS + 500):
        started = sched.begin(ks)
        sched.answered(ks, started, f"made/up-{i}")
        sched.end(ks, started, False)
    assert len(sched._latency) <= MAX_MODELS + 1  # the models, and the overall average
    assert None in sched._latency and ks.inflight == 0


# ---- through HTTP ------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [[*SIX[:4], HANG]])
async def test_a_hanging_key_gets_no_new_requests_and_its_streams_move_on(fake, app, base_url):
    set_config(app, first_byte_timeout=2.0, request_timeout=60.0)
    fake.script(HANG, {"hang": True})
    fake.default = {"chunks": 3, "interval": 0.02}
    client = AsyncHTTPClient(force_instance=True, max_clients=20)
    body = json.dumps({"model": PAID, "messages": MSG, "stream": True})
    sem = asyncio.Semaphore(20)

    async def one() -> tuple[int, bytes, float]:
        async with sem:
            start = time.monotonic()
            resp = await client.fetch(
                base_url + CHAT, method="POST", body=body, raise_error=False, request_timeout=30
            )
            return resp.code, resp.body, time.monotonic() - start

    try:
        results = await asyncio.gather(*(one() for _ in range(200)))
    finally:
        client.close()
    assert all(code == 200 and b.endswith(b"data: [DONE]\n\n") for code, b, _ in results)
    # Only the first wave, sent before any key had answered anything (so before anything could
    # tell a hanging key from a slow start), reached it: none after.
    on_hang = [i for i, key in enumerate(fake.order) if key == HANG]
    assert on_hang and max(on_hang) < 20, on_hang
    slow = [took for _, _, took in results if took > 1.5]
    assert len(slow) == fake.requests[HANG]  # those waited the first-byte timeout, then moved
    assert all(2.0 <= took < 10 for took in slow), slow
    hang = ks_of(app, HANG)
    assert hang.inflight == 0 and hang.oldest_inflight == 0.0 and not hang.stuck
    assert all(k.inflight == 0 for k in app.scheduler)


async def test_a_silent_stream_moves_on_but_a_slow_non_stream_answer_is_kept(fake, app, api):
    set_config(app, first_byte_timeout=1.0, request_timeout=60.0)
    a, b, c = list(app.scheduler)
    fake.script(a.key, {"first_delay": 1.6, "chunks": 2})  # silent for 1.6 s, every time
    app.scheduler.rng = InOrder()
    start = time.monotonic()
    resp = await api(CHAT, {"model": PAID, "messages": MSG, "stream": True})
    took = time.monotonic() - start
    assert resp.code == 200 and resp.body.endswith(b"data: [DONE]\n\n")
    assert resp.headers["X-Orpoll-Attempts"] == "2" and 1.0 <= took < 5, took
    assert a.failures == 1 and a.last_error.startswith("upstream sent nothing for 1 s")
    # A non-stream answer may come only when complete: silence is no reason to cut it.
    start = time.monotonic()
    resp = await api(CHAT, {"model": PAID, "messages": MSG})
    assert resp.code == 200 and resp.headers["X-Orpoll-Attempts"] == "1"
    assert time.monotonic() - start >= 1.5


async def test_in_flight_counts_never_leak(fake, app, api, in_order):
    a, b, c = list(app.scheduler)
    fake.script(a.key, {"status": 502, "error": {"code": 502, "message": "bad gateway"}})
    fake.script(b.key, {"drop_after": 1})
    for stream in (False, True):
        resp = await api(CHAT, {"model": PAID, "messages": MSG, "stream": stream})
        assert resp.code == 200
    assert all(k.inflight == 0 and not k.waiting for k in (a, b, c))
