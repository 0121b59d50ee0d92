"""KeyScheduler: the weighted pick, cooldowns, re-admission, account groups, overlapping
failures and state-change logs. Pure tests with a fake clock and a seeded rng (no sleeping);
one test sends real requests through an orpoll app to the fake OpenRouter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections import Counter

import pytest
from tornado.httpclient import AsyncHTTPClient

from orpoll.blame import INCIDENT_COOLDOWN
from orpoll.keys import CooldownPolicy, Outcome, Verdict, key_id
from orpoll.scheduler import KeyScheduler
from tests.conftest import KEYS
from tests.pool_helpers import CHAT, FREE, MSG, PAID, Clock, ks_of, set_config

A, B, C = KEYS


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy() -> CooldownPolicy:
    return CooldownPolicy(base=10.0, cap=100.0, credit=3600.0, max_failures=3)


@pytest.fixture
def sched(clock, policy) -> KeyScheduler:
    return KeyScheduler(policy, clock=clock, rng=random.Random(1234))


def fill(sched: KeyScheduler, n: int, weight: int = 1) -> list:
    return [sched.add(f"sk-or-v1-unit-{i:06d}", weight) for i in range(n)]


def drain(sched: KeyScheduler, model: str | None = None) -> list[str]:
    """Pick as a request does: excluding what was tried, until nothing is left."""
    tried: list[str] = []
    while (ks := sched.pick(tried, model)) is not None:
        tried.append(ks.id)
    return tried


def test_key_id_is_stable_and_display_is_masked(sched):
    ks = sched.add("sk-or-v1-unit-abcd")
    assert ks.id == key_id("sk-or-v1-unit-abcd") and len(ks.id) == 12
    assert "sk-or" not in ks.id
    assert ks.masked == "...abcd"


# ---- picking ----------------------------------------------------------------------------------


def test_weighted_split_one_to_three(sched):
    light = sched.add("sk-light", 1)
    heavy = sched.add("sk-heavy", 3)
    n = 40_000
    seen = Counter(sched.pick().id for _ in range(n))
    # Binomial(n, 1/4): sd = sqrt(n * 1/4 * 3/4) ~ 87; allow 5 sd.
    assert abs(seen[light.id] - n / 4) < 5 * (n * 0.25 * 0.75) ** 0.5
    assert seen[light.id] + seen[heavy.id] == n


def test_weighted_split_holds_after_exclusion(sched):
    a, b, c = sched.add("sk-a", 1), sched.add("sk-b", 3), sched.add("sk-c", 100)
    n = 20_000
    seen = Counter(sched.pick([c.id]).id for _ in range(n))
    assert c.id not in seen
    assert abs(seen[a.id] - n / 4) < 5 * (n * 0.25 * 0.75) ** 0.5
    assert seen[b.id] == n - seen[a.id]


def test_pick_excludes_tried_keys(sched):
    keys = fill(sched, 5)
    ids = [k.id for k in keys]
    for _ in range(200):
        assert sched.pick(ids[:4]).id == ids[4]
    assert sched.pick(ids) is None


def test_never_the_same_key_twice_per_request(sched):
    fill(sched, 50)
    for _ in range(20):
        order = drain(sched)
        assert len(order) == 50 and len(set(order)) == 50


def test_empty_pool_picks_nothing(sched):
    assert sched.pick() is None
    assert sched.next_available_at() is None
    assert sched.counts()["total"] == 0


# ---- cooldowns --------------------------------------------------------------------------------


def test_transient_cooldown_grows_and_is_capped(policy):
    # base * 2 ** (failures - max_failures), from the max_failures-th failure, capped.
    assert [policy.transient(n) for n in range(1, 8)] == [0, 0, 10, 20, 40, 80, 100]
    assert policy.transient(10_000) == 100
    assert [policy.rate_limited(n) for n in range(1, 6)] == [10, 20, 40, 80, 100]


def test_transient_failures_cool_the_key_at_the_limit(sched, clock):
    ks = sched.add("sk-flaky")
    fail = Outcome(Verdict.TRANSIENT, 502, "bad gateway")
    sched.report(ks, fail)
    sched.report(ks, fail)
    assert sched.pick() is ks and ks.failures == 2
    sched.report(ks, fail)
    assert sched.pick() is None
    assert ks.state == "cooling" and ks.until == clock.now + 10
    clock.advance(10)
    assert sched.pick() is ks
    sched.report(ks, fail)  # 4th in a row: twice as long
    assert ks.until == clock.now + 20


def test_success_resets_failures(sched, clock):
    ks = sched.add("sk-flaky")
    fail = Outcome(Verdict.TRANSIENT, 503, "overloaded")
    sched.report(ks, fail)
    sched.report(ks, fail)
    sched.report(ks, Outcome(Verdict.OK, 200))
    assert ks.failures == 0
    sched.report(ks, fail)
    sched.report(ks, fail)
    assert ks.state == "available" and sched.pick() is ks
    assert ks.successes == 1 and ks.errors == 4 and ks.requests == 5


def test_request_fault_does_not_penalize(sched):
    ks = sched.add("sk-a")
    for _ in range(10):
        sched.report(ks, Outcome(Verdict.REQUEST, 400, "bad"))
    assert ks.failures == 0 and ks.state == "available" and sched.pick() is ks


def test_rate_limit_cools_until_reset_and_readmits_exactly_then(sched, clock):
    ks = sched.add("sk-rl")
    reset = clock.now + 42.5
    sched.report(ks, Outcome(Verdict.KEY_RATE_LIMIT, 429, "slow down", retry_at=reset))
    assert ks.state == "cooling" and ks.until == reset
    assert sched.next_available_at() == reset
    clock.now = reset - 0.001
    assert sched.pick() is None
    clock.now = reset
    assert sched.pick() is ks
    assert ks.state == "available"


def test_rate_limit_without_reset_uses_growing_base(sched, clock):
    ks = sched.add("sk-rl")
    sched.report(ks, Outcome(Verdict.KEY_RATE_LIMIT, 429, "slow down"))
    assert ks.until == clock.now + 10
    clock.advance(10)
    sched.report(ks, Outcome(Verdict.KEY_RATE_LIMIT, 429, "slow down"))
    assert ks.until == clock.now + 20


def test_credit_cooldown_is_long(sched, clock, policy):
    ks = sched.add("sk-broke")
    sched.report(ks, Outcome(Verdict.KEY_CREDIT, 402, "Insufficient credits"))
    assert ks.state == "cooling" and ks.until == clock.now + policy.credit
    assert ks.kind == Verdict.KEY_CREDIT.value


def test_low_credit_and_provider_outcomes_keep_the_key(sched):
    ks = sched.add("sk-a")
    for _ in range(5):
        sched.report(ks, Outcome(Verdict.KEY_LOW_CREDIT, 402, "can only afford 10"))
        sched.report(ks, Outcome(Verdict.PROVIDER, 429, "rate-limited upstream"))
    assert ks.state == "available" and ks.failures == 0 and sched.pick() is ks


def test_free_scope_cooldown_only_blocks_free_models(sched, clock):
    ks = sched.add("sk-free")
    reset = clock.now + 3600
    sched.report(
        ks,
        Outcome(Verdict.KEY_RATE_LIMIT, 429, "free-models-per-day", retry_at=reset, scope="free"),
    )
    assert sched.pick(model="deepseek/deepseek-chat-v3-0324:free") is None
    assert sched.pick(model="openai/gpt-4o") is ks
    assert sched.pick() is ks
    assert sched.next_available_at("x/y:free") == reset
    assert sched.next_available_at("openai/gpt-4o") == clock.now
    clock.now = reset
    assert sched.pick(model="x/y:free") is ks


def test_free_scope_picks_stay_weighted(sched, clock):
    a, b, c = sched.add("sk-a", 1), sched.add("sk-b", 3), sched.add("sk-c", 5)
    sched.cool(c, clock.now + 60, "free-models-per-min", Verdict.KEY_RATE_LIMIT.value, "free")
    n = 20_000
    seen = Counter(sched.pick(model="m:free").id for _ in range(n))
    assert set(seen) == {a.id, b.id}
    assert abs(seen[a.id] - n / 4) < 5 * (n * 0.25 * 0.75) ** 0.5


def test_disable_and_readmit(sched):
    a, b = sched.add("sk-a"), sched.add("sk-b")
    sched.report(a, Outcome(Verdict.KEY_INVALID, 401, "User not found."))
    assert a.state == "disabled"
    assert drain(sched) == [b.id]
    assert sched.counts()["disabled"] == 1
    sched.readmit(a)
    assert a.state == "available" and a.failures == 0
    assert sorted(drain(sched)) == sorted([a.id, b.id])


def test_disabled_key_is_not_revived_by_a_cooldown(sched, clock):
    a = sched.add("sk-a")
    sched.disable(a, "invalid")
    sched.cool(a, clock.now + 1, "whatever")
    clock.advance(5)
    assert sched.pick() is None and a.state == "disabled"


def test_operator_pause(sched):
    a, b = sched.add("sk-a"), sched.add("sk-b")
    sched.set_enabled(a, False)
    assert drain(sched) == [b.id]
    assert sched.counts()["paused"] == 1
    sched.set_enabled(a, True)
    assert len(drain(sched)) == 2


def test_401_from_most_keys_reads_as_incident(sched, clock):
    keys = fill(sched, 5)
    bad = Outcome(Verdict.KEY_INVALID, 401, "User not found.")
    sched.report(keys[0], bad)
    clock.advance(1)
    sched.report(keys[1], bad)
    assert keys[0].state == keys[1].state == "disabled"
    clock.advance(1)
    sched.report(keys[2], bad)  # 3 of 5 within the window: an OpenRouter incident
    assert keys[2].state == "cooling"
    assert keys[2].until == clock.now + INCIDENT_COOLDOWN
    clock.advance(INCIDENT_COOLDOWN)
    assert keys[2].id in drain(sched)


def test_scattered_401s_are_not_an_incident(sched, clock):
    keys = fill(sched, 5)
    bad = Outcome(Verdict.KEY_INVALID, 401, "User not found.")
    for ks in keys[:3]:
        sched.report(ks, bad)
        clock.advance(600)  # far apart: each is just a bad key
    assert [k.state for k in keys[:3]] == ["disabled"] * 3


# ---- membership -------------------------------------------------------------------------------


def test_add_remove_at_run_time_past_tree_capacity(sched):
    keys = fill(sched, 300)  # the Fenwick trees start at 64 slots and must grow
    assert len(sched) == 300
    assert len(set(drain(sched))) == 300
    for ks in keys[:150]:
        assert sched.remove(ks.id) is ks
    assert sched.remove(keys[0].id) is None
    left = set(drain(sched))
    assert left == {k.id for k in keys[150:]}
    more = [sched.add(f"sk-or-v1-more-{i}", 2) for i in range(100)]  # reuse freed slots
    assert set(drain(sched)) == left | {k.id for k in more}
    assert sched.add(more[0].key) is None  # duplicates are refused
    assert sched.counts()["total"] == 250


def test_weights_right_after_growth(sched):
    light = [sched.add(f"sk-l-{i}", 1) for i in range(100)]
    heavy = [sched.add(f"sk-h-{i}", 3) for i in range(100)]
    light_ids = {k.id for k in light}
    n = 40_000
    hits = sum(sched.pick().id in light_ids for _ in range(n))
    assert abs(hits - n / 4) < 5 * (n * 0.25 * 0.75) ** 0.5
    assert len(heavy) == 100


def test_counts_and_next_available_at(sched, clock):
    a, b, c, d = fill(sched, 4)
    sched.cool(a, clock.now + 30, "x")
    sched.cool(b, clock.now + 10, "y")
    sched.disable(c, "invalid")
    sched.set_enabled(d, False)
    counts = sched.counts()
    expected = {"total": 4, "available": 0, "cooling": 2, "disabled": 1, "paused": 1}
    assert {k: counts[k] for k in expected} == expected
    assert sched.pick() is None
    assert sched.next_available_at() == clock.now + 10
    clock.advance(10)
    assert sched.counts()["available"] == 1
    assert sched.pick() is b
    assert sched.next_available_at() == clock.now


def test_next_available_at_is_none_when_nothing_returns_by_itself(sched):
    a, b = fill(sched, 2)
    sched.disable(a, "invalid")
    sched.set_enabled(b, False)
    assert sched.next_available_at() is None


def test_set_weight_changes_the_split(sched):
    a, b = sched.add("sk-a", 1), sched.add("sk-b", 1)
    sched.set_weight(b, 3)
    n = 20_000
    seen = Counter(sched.pick().id for _ in range(n))
    assert abs(seen[a.id] - n / 4) < 5 * (n * 0.25 * 0.75) ** 0.5
    with pytest.raises(ValueError):
        sched.set_weight(a, 0)


def test_account_wide_verdict_cools_every_key_of_the_account(sched, clock):
    a, b, c = fill(sched, 3)
    sched.set_group(a, "user_1")
    sched.set_group(b, "user_1")
    reset = clock.now + 500
    sched.report(
        a,
        Outcome(
            Verdict.KEY_RATE_LIMIT,
            429,
            "free-models-per-day",
            retry_at=reset,
            scope="free",
            account=True,
        ),
    )
    assert drain(sched, "m:free") == [c.id]
    assert len(drain(sched, "openai/gpt-4o")) == 3
    sched.report(c, Outcome(Verdict.KEY_CREDIT, 402, "Insufficient credits", account=True))
    assert c.state == "cooling" and a.state == b.state == "available"


def test_incident_also_spares_the_keys_that_401ed_first(sched, clock):
    keys = fill(sched, 4)
    for ks in keys:
        sched.report(ks, Outcome(Verdict.KEY_INVALID, 401, "User not found."))
        clock.advance(1)
    assert [k.state for k in keys] == ["cooling"] * 4
    clock.advance(INCIDENT_COOLDOWN)
    assert len(drain(sched)) == 4


# ---- reset times, :free quotas and account groups -----------------------------------------------


def test_key_readmitted_exactly_at_rate_limit_reset():
    clock = Clock(1_800_000_000.0)
    sched = KeyScheduler(clock=clock, rng=random.Random(3))
    ks = sched.add(A)
    reset = clock.now + 42.5
    sched.report(ks, Outcome(Verdict.KEY_RATE_LIMIT, 429, "rate limited", retry_at=reset))
    clock.now = reset - 0.001
    assert sched.pick() is None
    assert sched.next_available_at() == reset
    clock.now = reset
    assert sched.pick() is ks
    assert ks.status_at(clock.now) == "available" and ks.reason == ""


def test_free_quota_takes_key_out_for_free_models_only():
    clock = Clock(1_800_000_000.0)
    sched = KeyScheduler(clock=clock)
    ks = sched.add(A)
    sched.report(
        ks,
        Outcome(
            Verdict.KEY_RATE_LIMIT,
            429,
            "free-models-per-day",
            retry_at=clock.now + 3600,
            scope="free",
        ),
    )
    assert sched.pick(model=FREE) is None
    assert sched.pick(model=PAID) is ks
    assert sched.next_available_at(FREE) == clock.now + 3600
    clock.now += 3600
    assert sched.pick(model=FREE) is ks


def test_account_wide_verdict_cools_the_whole_group_only():
    clock = Clock(1_800_000_000.0)
    sched = KeyScheduler(clock=clock)
    a, b, c = sched.add(A), sched.add(B), sched.add(C)
    sched.set_group(a, "user_1")
    sched.set_group(b, "user_1")
    sched.set_group(c, "user_2")
    sched.report(a, Outcome(Verdict.KEY_CREDIT, 402, "Insufficient credits", account=True))
    assert [k.status_at(clock.now) for k in (a, b, c)] == ["cooling", "cooling", "available"]
    # A key-scoped verdict (the key's own cap) touches only that key.
    sched.report(c, Outcome(Verdict.KEY_CREDIT, 403, "Key limit exceeded"))
    assert c.status_at(clock.now) == "cooling"
    assert sched.counts()["no_credit"] == 3


def test_groups_keep_weight_shares():
    sched = KeyScheduler(rng=random.Random(7))
    a, b = sched.add(A, 1), sched.add(B, 3)
    sched.set_group(a, "user_1")
    sched.set_group(b, "user_1")
    n = 20_000
    picks = [sched.pick().key for _ in range(n)]
    share = picks.count(B) / n
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)


# ---- overlapping failures are one failure -------------------------------------------------------


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


@pytest.mark.parametrize("keys", [KEYS[:1]])
async def test_concurrent_failures_on_one_key_count_once(fake, app, base_url):
    set_config(app, retry_count=0)
    client = AsyncHTTPClient(force_instance=True, max_clients=20)
    body = json.dumps({"model": PAID, "messages": MSG})
    # The fake answers each after a moment, so the 20 overlap.
    fake.script(KEYS[0], {"first_delay": 0.3, "status": 200, "inband_error": {"code": 502}})
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
    ks = ks_of(app, KEYS[0])
    assert ks.errors == 20 and ks.failures == 1 and ks.state == "available"


# ---- every state change of a key is logged once -------------------------------------------------


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
