"""UpstreamHealth: an upstream outage is the upstream's state, never a key's. Clients get a
short Retry-After while it lasts, and a probe ends it without waiting for traffic.

The HTTP tests run a real orpoll app in front of their own fake OpenRouter, which they stop and
start again on the same port.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from orpoll.keys import CooldownPolicy, Outcome, Verdict
from orpoll.outage import MAX_RETRY_AFTER, OUTAGE_WINDOW, UpstreamHealth
from orpoll.scheduler import KeyScheduler
from tests.conftest import assert_openai_error, bound_port
from tests.fake_upstream import make_fake_app
from tests.pool_helpers import CHAT, MSG, PAID, Clock, set_config

SIX = [f"sk-or-v1-pool-{c * 4}{i}{i}{i}{i}" for i, c in enumerate("abcdef")]


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


# ---- pure: the detector -------------------------------------------------------------------------


def test_one_refused_connection_is_not_an_outage_two_are():
    up = UpstreamHealth(Clock())
    up.failure("connection refused")
    assert not up.down
    up.failure("connection refused")
    assert up.down and up.state()["reason"] == "connection refused"
    assert 1 <= up.retry_after() <= MAX_RETRY_AFTER


def test_failures_far_apart_or_with_an_answer_between_are_no_outage():
    clock = Clock()
    up = UpstreamHealth(clock)
    up.failure("reset")
    clock.advance(OUTAGE_WINDOW + 1)
    up.failure("reset")
    assert not up.down
    up.answered()
    up.failure("reset")
    assert not up.down


def test_an_answer_ends_an_outage():
    up = UpstreamHealth(Clock())
    up.failure("refused")
    up.failure("refused")
    up.answered()
    assert not up.down and up.state()["retry_after"] is None


def test_upstream_failures_never_count_against_a_key():
    sched = KeyScheduler(CooldownPolicy(max_failures=1), clock=Clock())
    ks = sched.add("sk-a")
    sched.report(ks, Outcome(Verdict.UPSTREAM, 502, "connection refused"))
    assert ks.failures == 0 and ks.state == "available" and not sched.upstream.down
    sched.report(ks, Outcome(Verdict.UPSTREAM, 502, "connection refused"))
    assert ks.failures == 0 and ks.state == "available" and sched.upstream.down
    assert sched.upstream.state()["reason"] == "connection refused"


# ---- through HTTP ------------------------------------------------------------------------------


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
