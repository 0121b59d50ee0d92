"""Key health: /api/v1/key probes, reset-aware cooldowns, account groups, model scope."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from orpoll.config import load_settings
from orpoll.health import HealthChecker, limit_reset_at
from orpoll.keys import Verdict
from orpoll.scheduler import KeyScheduler
from tests.conftest import KEYS, assert_openai_error
from tests.pool_helpers import CHAT, MSG, set_config

A, B, C = KEYS
PAID, FREE = "openai/gpt-4o", "deepseek/deepseek-chat-v3-0324:free"


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ks_of(app, key):
    return next(k for k in app.scheduler if k.key == key)


async def chat(base_url, model=PAID, stream=False):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return await AsyncHTTPClient().fetch(
        f"{base_url}/v1/chat/completions",
        method="POST",
        body=json.dumps(body),
        raise_error=False,
    )


def account(user: str, **extra) -> tuple[int, dict]:
    data = {
        "label": "sk-or-v1-ab...xyz",
        "limit": None,
        "limit_remaining": None,
        "usage": 1.0,
        "usage_daily": 0.1,
        "usage_monthly": 0.5,
        "is_free_tier": False,
        "creator_user_id": user,
        **extra,
    }
    return 200, data


def test_rotation_probes_every_healthy_key_within_the_rotation_period():
    """10,000 healthy keys, interval 300 s, rotation 1800 s: 6 sweeps cover every key once."""
    sched = KeyScheduler()
    for i in range(10_000):
        sched.add(f"sk-or-v1-{i:040x}").info["probe"] = {"result": "ok"}
    config = load_settings(
        {"HEALTH_CHECK_INTERVAL_SECONDS": "300", "HEALTH_CHECK_ROTATION_SECONDS": "1800"}
    )
    checker = HealthChecker(sched, upstream=None, config=lambda: config)
    seen: list[str] = []
    for _ in range(6):
        due = checker.due()
        assert len(due) == math.ceil(10_000 / 6)
        seen += [k.id for k in due]
    assert len(set(seen)) == 10_000


def test_troubled_keys_are_probed_first_and_rate_limits_are_left_alone():
    clock = Clock()
    sched = KeyScheduler(clock=clock)
    ok, cooling, disabled, limited = (sched.add(k) for k in (A, B, C, "sk-or-v1-test-dddd4444"))
    ok.info["probe"] = {"result": "ok"}
    sched.cool(cooling, clock.t + 100, "5 failures", Verdict.TRANSIENT.value)
    sched.disable(disabled, "invalid key")
    sched.cool(limited, clock.t + 100, "rate limited", Verdict.KEY_RATE_LIMIT.value)
    limited.info["probe"] = {"result": "ok"}
    config = load_settings({"HEALTH_CHECK_INTERVAL_SECONDS": "1800"})
    due = HealthChecker(sched, None, lambda: config).due()
    assert due[:2] == [cooling, disabled]
    assert limited not in due[:2]


def test_limit_reset_boundaries():
    now = 1_764_000_000.0  # 2025-11-24 (a Monday) 16:00 UTC
    assert limit_reset_at("daily", now) == 1_764_028_800.0
    assert limit_reset_at("weekly", now) == 1_764_028_800.0 + 6 * 86400
    assert limit_reset_at("monthly", now) == 1_764_547_200.0  # 2025-12-01
    assert limit_reset_at(None, now) is None


# ---- integration: probes against the fake /api/v1/key --------------------------------------


async def test_revoked_key_is_never_readmitted_by_a_sweep(app, fake, base_url):
    fake.script(A, {"status": 401, "error": {"code": 401, "message": "User not found."}})
    fake.key_info[A] = (401, {})
    while ks_of(app, A).state != "disabled":  # the pick is random: go on until A was tried
        assert (await chat(base_url)).code == 200
    a = ks_of(app, A)
    assert a.state == "disabled"
    for _ in range(3):
        await app.health.check_once()
        assert a.state == "disabled"
        assert a.info["probe"]["result"] == "invalid"
    assert fake.key_probes[A] == 3


async def test_sweep_readmits_a_failing_key_that_proves_healthy(app, fake, base_url):
    fake.script(A, {"status": 401, "error": {"code": 401, "message": "User not found."}})
    while ks_of(app, A).state != "disabled":
        assert (await chat(base_url)).code == 200
    fake.script(A, {"chunks": 1})  # the key works again (an OpenRouter incident ended)
    result = await app.health.check_once()
    a = ks_of(app, A)
    assert a.state == "available" and a.failures == 0
    assert result["results"].get("readmitted") == 1
    assert a.info["probe"]["status"] == 200 and a.info["probe"]["latency_ms"] >= 0


async def test_probe_does_not_cut_short_a_known_rate_limit_reset(app, fake, base_url):
    reset_ms = int((time.time() + 3600) * 1000)
    fake.script(
        A,
        {
            "status": 429,
            "headers": {"X-RateLimit-Reset": str(reset_ms)},
            "error": {"code": 429, "message": "Rate limit exceeded"},
        },
    )
    while ks_of(app, A).state != "cooling":
        assert (await chat(base_url)).code == 200
    a = ks_of(app, A)
    assert a.until == pytest.approx(reset_ms / 1000)
    await app.health.check_once()
    assert a.state == "cooling" and a.until == pytest.approx(reset_ms / 1000)


@pytest.mark.parametrize("keys", [[A]])
async def test_key_returns_at_a_short_real_reset(app, fake, base_url):
    reset_ms = int((time.time() + 1.2) * 1000)
    fake.script(
        A,
        {
            "status": 429,
            "headers": {"X-RateLimit-Reset": str(reset_ms)},
            "error": {"code": 429, "message": "Rate limit exceeded"},
        },
        {"chunks": 1},
    )
    first = await chat(base_url)
    assert_openai_error(first, 429, "rate_limit_error")
    assert first.headers["Retry-After"] in ("1", "2")  # the relayed 429 says when to return
    second = await chat(base_url)
    err = assert_openai_error(second, 429, "rate_limit_error")
    assert "1 cooling" in err["message"]
    assert second.headers["Retry-After"] in ("1", "2")
    await asyncio.sleep(max(0.0, reset_ms / 1000 - time.time()) + 0.05)
    third = await chat(base_url)
    assert third.code == 200, third.body
    assert fake.requests[A] == 2  # the cooling key was not hammered in between


async def test_account_group_cooling_end_to_end(app, fake, base_url):
    fake.key_info[A] = account("user_1")
    fake.key_info[B] = account("user_1")
    fake.key_info[C] = account("user_2")
    await app.health.check_once()
    assert ks_of(app, A).group == ks_of(app, B).group == "user_1"
    fake.script(A, {"status": 402, "error": {"code": 402, "message": "Insufficient credits"}})
    fake.script(B, {"status": 402, "error": {"code": 402, "message": "Insufficient credits"}})
    while fake.requests[A] + fake.requests[B] == 0:  # until the random pick tried the account
        assert (await chat(base_url)).code == 200
    for _ in range(10):
        assert (await chat(base_url)).code == 200
    assert ks_of(app, A).state == ks_of(app, B).state == "cooling"
    assert ks_of(app, C).state == "available"
    # At most one request reached the empty account: its first 402 cooled both keys.
    assert fake.requests[A] + fake.requests[B] == 1


async def test_free_daily_quota_cools_free_models_only(app, fake, base_url):
    for key in KEYS:
        fake.key_info[key] = account("user_1")
    await app.health.check_once()
    daily = {
        "code": 429,
        "message": "Rate limit exceeded: free-models-per-day. Add 10 credits",
        "metadata": {"headers": {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0"}},
    }
    for key in KEYS:
        fake.script(key, {"status": 429, "error": daily}, {"chunks": 1})
    resp = await chat(base_url, FREE)
    assert_openai_error(resp, 429)
    # One 429 took the whole account out for :free models: no second key was tried.
    assert sum(fake.requests.values()) == 1
    resp = await chat(base_url, FREE)
    err = assert_openai_error(resp, 429, "rate_limit_error")
    assert "no OpenRouter key is available" in err["message"]
    assert int(resp.headers["Retry-After"]) > 60
    for key in KEYS:
        fake.script(key, {"chunks": 1})
    assert (await chat(base_url, PAID)).code == 200  # paid models still use the same keys
    assert (await chat(base_url, FREE)).code == 429


async def test_probe_records_credit_and_cools_a_capped_key(app, fake, base_url):
    fake.key_info[A] = account("user_1", limit=5.0, limit_remaining=0.0, limit_reset="daily")
    fake.key_info[B] = account("user_1", limit=5.0, limit_remaining=2.5)
    await app.health.check_once()
    a, b = ks_of(app, A), ks_of(app, B)
    assert a.state == "cooling" and a.kind == Verdict.KEY_CREDIT.value
    assert a.until == limit_reset_at("daily", time.time())
    assert b.state == "available" and b.info["limit_remaining"] == 2.5
    assert b.info["usage_daily"] == 0.1
    fake.key_info[A] = account("user_1", limit=5.0, limit_remaining=1.0, limit_reset="daily")
    await app.health.check_once()
    assert a.state == "available"  # a probe that shows credit ends the out-of-credit state


@pytest.fixture
def many_keys():
    return [f"sk-or-v1-many-{i:06d}" for i in range(300)]


async def test_sweep_respects_the_concurrency_cap(app, fake, env, many_keys):
    for key in many_keys:
        app.scheduler.add(key)
    fake.probe_delay = 0.02
    result = await app.health.check_once()
    assert result["probed"] == len(many_keys) + 3
    assert fake.probe_peak == app.config.health_concurrency == 8


async def test_sweep_of_10k_keys_finishes_in_bounded_time(app, fake):
    for i in range(10_000):
        app.scheduler.add(f"sk-or-v1-sweep-{i:06d}")
    started = time.monotonic()
    result = await app.health.check_once()
    assert result["probed"] == 10_003
    assert sum(fake.key_probes.values()) == 10_003
    assert time.monotonic() - started < 30


# ---- a probe does not outvote real traffic ------------------------------------------------


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
