"""keys.py: key ids and what may be shown of a key, the cooldown arithmetic, the status an
operator sees, and which verdicts send a request to another key."""

from __future__ import annotations

import pytest

from orpoll.keys import CooldownPolicy, KeyState, Outcome, Verdict, is_free_model, key_id, mask

KEY = "sk-or-v1-0123456789abcdef-secret-wxyz"


def test_a_key_is_named_by_id_suffix_and_label_never_whole():
    ks = KeyState(KEY, label="team-a")
    assert ks.id == key_id(KEY) and len(ks.id) == 12 and key_id(KEY) == ks.id
    assert mask(KEY) == ks.masked == "...wxyz"
    assert ks.who == f"key {ks.id} ...wxyz (team-a)"
    assert "secret" not in ks.who and KEY not in ks.who
    assert KeyState(KEY).who == f"key {ks.id} ...wxyz"


def test_transient_cooldowns_start_at_the_limit_and_double_to_the_cap():
    policy = CooldownPolicy(base=10.0, cap=100.0, max_failures=3)
    assert [policy.transient(n) for n in range(1, 8)] == [0.0, 0.0, 10.0, 20.0, 40.0, 80.0, 100.0]
    assert policy.transient(10_000) == 100.0  # no overflow however long the streak


def test_rate_limit_cooldowns_double_from_the_first():
    policy = CooldownPolicy(base=10.0, cap=100.0)
    assert [policy.rate_limited(n) for n in range(0, 6)] == [10.0, 10.0, 20.0, 40.0, 80.0, 100.0]


def test_a_cooldown_that_has_passed_shows_as_available():
    ks = KeyState(KEY, state="cooling", until=100.0)
    assert ks.status_at(99.0) == "cooling" and ks.status_at(100.0) == "available"
    ks.enabled = False
    assert ks.status_at(50.0) == "paused"


@pytest.mark.parametrize(
    "model,free",
    [("deepseek/deepseek-r1:free", True), ("openai/gpt-4o", False), ("", False), (None, False)],
)
def test_free_models_are_the_free_variants(model, free):
    assert is_free_model(model) is free


def test_only_key_and_upstream_verdicts_try_another_key():
    stay = {Verdict.OK, Verdict.REQUEST, Verdict.LOCAL}
    for verdict in Verdict:
        assert Outcome(verdict).try_another_key is (verdict not in stay)
