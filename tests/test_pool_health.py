"""Key health that blames only the key: upstream outages, hanging keys, overlapping failures,
probes against real traffic, state-change logs and failed streams in the counters.

A real orpoll app on loopback with the fake OpenRouter behind it; the outage test runs its own
fake, which it stops and starts again on the same port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from orpoll.keys import CooldownPolicy, Outcome, Verdict
from orpoll.scheduler import KeyScheduler
from tests.conftest import assert_openai_error, bound_port
from tests.fake_upstream import make_fake_app

PAID = "openai/gpt-4o"
MSG = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
SIX = [f"sk-or-v1-pool-{c * 4}{i}{i}{i}{i}" for i, c in enumerate("abcdef")]
HANG = "sk-or-v1-pool-hang9999"


def set_config(app, **changes) -> None:
    app.apply_settings(dataclasses.replace(app.config, **changes))


def ks_of(app, key):
    return next(k for k in app.scheduler if k.key == key)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """The fake OpenRouter on a fixed port, which a test can stop and start again."""

    def __init__(self, fake) -> None:
        self.fake = fake
        sock, self.port = bound_port()
        self.server = HTTPServer(make_fake_app(fake))
        self.server.add_sockets([sock])

    async def stop(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()

    def start(self) -> None:
        self.server = HTTPServer(make_fake_app(self.fake))
        self.server.add_sockets(bind_sockets(self.port, "127.0.0.1"))


@pytest.fixture
def restartable(io_loop, fake):
    up = Upstream(fake)
    yield up
    up.server.stop()


# ---- 1. an upstream outage is the upstream's state --------------------------------------------


@pytest.mark.parametrize("keys", [SIX])
async def test_outage_cools_no_key_and_service_resumes_within_two_seconds(
    restartable, app, base_url
):
    url = f"http://127.0.0.1:{restartable.port}/api/v1"
    set_config(app, openrouter_api_url=f"{url}/chat/completions", connect_timeout=2.0)
    client = AsyncHTTPClient(force_instance=True, max_clients=40)
    log: list[tuple[float, int, dict]] = []  # (monotonic end time, status, headers)
    stop = False

    async def worker(n: int) -> None:
        body = json.dumps({"model": PAID, "messages": MSG, "stream": n % 2 == 0})
        while not stop:
            resp = await client.fetch(
                base_url + CHAT, method="POST", body=body, raise_error=False, request_timeout=30
            )
            log.append((time.monotonic(), resp.code, resp))
            await asyncio.sleep(0.05)

    workers = [asyncio.ensure_future(worker(n)) for n in range(20)]
    try:
        await asyncio.sleep(1.0)
        await restartable.stop()
        down_at = time.monotonic()
        await asyncio.sleep(30)
        state = app.scheduler.upstream.state()
        assert state["down"] is True and 1 <= state["retry_after"] <= 10, state
        assert app.scheduler.counts()["cooling"] == 0
        restartable.start()
        up_at = time.monotonic()
        while not any(t > up_at and code == 200 for t, code, _ in log):
            assert time.monotonic() - up_at < 10, "no answer 10 s after the upstream came back"
            await asyncio.sleep(0.05)
        back = min(t for t, code, _ in log if t > up_at and code == 200) - up_at
        await asyncio.sleep(1.0)
    finally:
        stop = True
        await asyncio.gather(*workers)
        client.close()
    assert back < 2.0, back
    outage = [resp for t, _, resp in log if down_at + 3 < t < up_at]
    assert len(outage) > 100
    for resp in outage:
        e = assert_openai_error(resp, 503, "service_unavailable")
        assert e["code"] == "upstream_unavailable" and "127.0.0.1" in e["message"]
        assert 1 <= int(resp.headers["Retry-After"]) <= 10
    # Every key's state as before: none cooled or disabled, and all serve again.
    assert all(k.state == "available" for k in app.scheduler), [
        (k.state, k.reason) for k in app.scheduler
    ]
    assert app.scheduler.upstream.down is False
    assert all(code == 200 for t, code, _ in log if t > up_at + 2.0)


async def test_outage_ends_by_the_probe_without_traffic(restartable, app, api):
    set_config(
        app, openrouter_api_url=f"http://127.0.0.1:{restartable.port}/api/v1/chat/completions"
    )
    await restartable.stop()
    resp = await api(CHAT, {"model": PAID, "messages": MSG})
    assert_openai_error(resp, 503, "service_unavailable")
    assert app.scheduler.upstream.down
    restartable.start()
    start = time.monotonic()
    while app.scheduler.upstream.down:
        assert time.monotonic() - start < 5
        await asyncio.sleep(0.05)
    assert (await api(CHAT, {"model": PAID, "messages": MSG})).code == 200


def test_upstream_failures_never_count_against_a_key():
    sched = KeyScheduler(CooldownPolicy(max_failures=1), clock=Clock())
    ks = sched.add("sk-a")
    sched.report(ks, Outcome(Verdict.UPSTREAM, 502, "connection refused"))
    assert ks.failures == 0 and ks.state == "available" and not sched.upstream.down
    sched.report(ks, Outcome(Verdict.UPSTREAM, 502, "connection refused"))
    assert ks.failures == 0 and ks.state == "available" and sched.upstream.down
    assert sched.upstream.state()["reason"] == "connection refused"


def test_a_transient_burst_across_the_pool_leaves_no_key_cooled():
    clock = Clock()
    sched = KeyScheduler(CooldownPolicy(base=10, max_failures=1), clock=clock)
    keys = [sched.add(f"sk-{i}") for i in range(5)]
    fail = Outcome(Verdict.TRANSIENT, 504, "upstream sent nothing for 30 s")
    sched.report(keys[0], fail)
    sched.report(keys[1], fail)
    assert keys[0].state == keys[1].state == "cooling"
    sched.report(keys[2], fail)  # a third key in a row, nothing answering between
    assert all(k.state == "available" and k.failures == 0 for k in keys)
    sched.report(keys[3], fail)
    assert keys[3].state == "available"
    sched.report(keys[4], Outcome(Verdict.OK, 200))  # an answer ends the burst
    sched.report(keys[0], fail)
    assert keys[0].state == "cooling" and keys[0].failures == 1


# ---- 2. a hanging key stops getting requests --------------------------------------------------


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
    app.scheduler.rng = InOrderRng()
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


class InOrderRng(random.Random):
    def randrange(self, *args, **kwargs) -> int:
        return 0


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


async def test_in_flight_counts_never_leak(fake, app, api, in_order):
    a, b, c = list(app.scheduler)
    fake.script(a.key, {"status": 502, "error": {"code": 502, "message": "bad gateway"}})
    fake.script(b.key, {"drop_after": 1})
    for stream in (False, True):
        resp = await api(CHAT, {"model": PAID, "messages": MSG, "stream": stream})
        assert resp.code == 200
    assert all(k.inflight == 0 and not k.waiting for k in (a, b, c))


# ---- 3. overlapping failures are one failure --------------------------------------------------


def test_twenty_concurrent_failures_give_the_cooldown_of_one():
    clock = Clock()
    sched = KeyScheduler(CooldownPolicy(base=10, cap=3600, max_failures=1), clock=clock)
    ks = sched.add("sk-a")
    starts = [sched.begin(ks) for _ in range(20)]
    clock.now += 30  # all time out together
    for started in starts:
        sched.end(ks, started, waiting=True)
        sched.report(ks, Outcome(Verdict.TRANSIENT, 504, "timeout"), started)
    assert ks.failures == 1 and ks.errors == 20
    assert ks.state == "cooling" and ks.until == clock.now + 10
    clock.now += 10
    sched.report(ks, Outcome(Verdict.TRANSIENT, 504, "timeout"), sched.begin(ks))
    assert ks.failures == 2 and ks.until == clock.now + 20  # a later attempt counts again


@pytest.mark.parametrize("keys", [SIX[:1]])
async def test_concurrent_failures_on_one_key_count_once(fake, app, base_url):
    set_config(app, retry_count=0)
    client = AsyncHTTPClient(force_instance=True, max_clients=20)
    body = json.dumps({"model": PAID, "messages": MSG})
    # The fake answers each after a moment, so the 20 overlap.
    fake.script(SIX[0], {"first_delay": 0.3, "status": 200, "inband_error": {"code": 502}})
    try:
        codes = await asyncio.gather(
            *(
                client.fetch(base_url + CHAT, method="POST", body=body, raise_error=False)
                for _ in range(20)
            )
        )
    finally:
        client.close()
    assert [r.code for r in codes] == [502] * 20
    ks = ks_of(app, SIX[0])
    assert ks.errors == 20 and ks.failures == 1 and ks.state == "available"


# ---- 4. a probe does not outvote real traffic -------------------------------------------------


async def test_a_probe_passing_key_whose_requests_fail_stays_out(fake, app, api, in_order):
    set_config(app, key_cooldown=1.0, key_max_failures=3)
    a = next(iter(app.scheduler))
    fake.script(a.key, {"status": 500, "error": {"code": 500, "message": "broken"}})
    for _ in range(3):
        assert (await api(CHAT, {"model": PAID, "messages": MSG})).code == 200
    assert a.state == "cooling" and a.failures == 3
    first = a.until - time.time()
    await app.health.check_once(everything=True)  # /key answers 200 for it
    assert a.state == "cooling" and a.failures == 3
    while a.until > time.time():
        await asyncio.sleep(0.05)
    assert (await api(CHAT, {"model": PAID, "messages": MSG})).code == 200
    await app.health.check_once(everything=True)
    assert a.state == "cooling" and a.failures == 4
    assert a.until - time.time() > first  # the backoff grew
    assert fake.key_probes[a.key] == 2


async def test_a_probe_ends_what_it_disproves(fake, app, api, in_order):
    a = next(iter(app.scheduler))
    fake.script(a.key, {"status": 401, "error": {"code": 401, "message": "User not found."}})
    assert (await api(CHAT, {"model": PAID, "messages": MSG})).code == 200
    assert a.state == "disabled"
    await app.health.check_once(everything=True)
    assert a.state == "available"


# ---- 5. every state change of a key is logged once --------------------------------------------


def test_each_state_change_is_logged_once(caplog):
    clock = Clock()
    sched = KeyScheduler(CooldownPolicy(base=10, max_failures=1), clock=clock)
    ks = sched.add("sk-or-v1-secret-abcd", label="team-a")
    starts = [sched.begin(ks) for _ in range(3)]
    with caplog.at_level(logging.INFO, "orpoll.keys"):
        for started in starts:
            sched.report(ks, Outcome(Verdict.TRANSIENT, 502, "bad gateway"), started)
        clock.now += 11
        assert sched.pick() is ks
        sched.report(ks, Outcome(Verdict.KEY_INVALID, 401, "User not found."), sched.begin(ks))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "orpoll.keys"]
    assert len(lines) == 3, lines
    (lv1, cool), (lv2, back), (lv3, dead) = lines
    assert lv1 == "WARNING" and lv2 == "INFO" and lv3 == "WARNING"
    for line in (cool, back, dead):
        assert ks.id in line and "...abcd" in line and "team-a" in line
    assert "cooling" in cool and "verdict transient" in cool and "cooldown 10s" in cool
    assert "available" in back
    assert "disabled" in dead and "verdict key_invalid" in dead and "User not found." in dead
    assert all("secret" not in line for _, line in lines)


def test_made_up_model_names_cannot_grow_the_latency_table():
    from orpoll.inflight import MAX_MODELS
    from orpoll.scheduler import KeyScheduler

    sched = KeyScheduler()
    ks = sched.add("sk-or-v1-latency-test-1111")
    for i in range(MAX_MODELS + 500):
        started = sched.begin(ks)
        sched.answered(ks, started, f"made/up-{i}")
        sched.end(ks, started, False)
    assert len(sched._latency) <= MAX_MODELS + 1  # the models, and the overall average
    assert None in sched._latency and ks.inflight == 0
