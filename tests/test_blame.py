"""blame.py: a burst of transient failures across the pool and a wave of 401s are the
upstream's trouble, not the keys'."""

from __future__ import annotations

from orpoll.blame import BURST_KEYS, BURST_WINDOW, INCIDENT_MIN_KEYS, Burst, Incidents
from orpoll.keys import CooldownPolicy, Outcome, Verdict
from orpoll.scheduler import KeyScheduler
from tests.pool_helpers import Clock


def test_a_burst_needs_distinct_keys_in_a_row():
    burst = Burst()
    assert burst.failed("a", 0, 0.0) is None
    assert burst.failed("a", 1, 1.0) is None  # the same key again is no burst
    for i in range(1, BURST_KEYS - 1):
        assert burst.failed(f"k{i}", 0, 2.0) is None
    caused = burst.failed("last", 2, 3.0)
    assert caused is not None and set(caused) == {
        "a",
        *(f"k{i}" for i in range(1, BURST_KEYS - 1)),
        "last",
    }
    assert caused["a"] == (0.0, 0)  # the count before its first failure in the streak
    assert burst.failed("more", 0, 4.0) == {}  # inside a known burst: does not count


def test_an_answer_or_time_breaks_the_streak():
    burst = Burst()
    burst.failed("a", 0, 0.0)
    burst.failed("b", 0, 0.0)
    burst.answered()
    assert burst.failed("c", 0, 0.0) is None and not burst.on
    assert burst.failed("d", 0, BURST_WINDOW + 1) is None  # "c" is too old to count
    assert list(burst.streak) == ["d"]


def test_401s_from_most_of_the_pool_are_an_incident():
    incidents = Incidents()
    assert incidents.unauthorized("a", 0.0, pool_size=4) is None
    assert incidents.unauthorized("b", 1.0, pool_size=4) is None
    assert incidents.unauthorized("c", 2.0, pool_size=4) == {"a", "b", "c"}


def test_401s_from_a_small_share_of_a_big_pool_are_not():
    incidents = Incidents()
    for i in range(INCIDENT_MIN_KEYS + 1):
        assert incidents.unauthorized(f"k{i}", 0.0, pool_size=100) is None


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
