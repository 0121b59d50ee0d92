"""changes.py: which keys the write-behind saves, whole or counters only, and what a failed save
keeps; and that the scheduler reports every change to it."""

from __future__ import annotations

from orpoll.changes import Changes
from orpoll.keys import Outcome, Verdict
from orpoll.scheduler import KeyScheduler


def test_a_whole_row_takes_the_counters_along():
    changes = Changes()
    changes.served("a")
    changes.served("b")
    changes.changed("b")
    state, served = changes.take()
    assert state == ["b"] and served == ["a"]
    assert changes.take() == ([], [])


def test_counters_can_wait_for_a_later_take():
    changes = Changes()
    changes.served("a")
    changes.changed("b")
    assert changes.take(counters=False) == (["b"], [])
    assert changes.take() == ([], ["a"])


def test_a_failed_save_is_kept_and_a_removed_key_forgotten():
    changes = Changes()
    changes.restore(["a"], ["b"])
    changes.forget("b")
    assert changes.take() == (["a"], [])


def test_the_scheduler_reports_state_changes_and_served_requests_apart():
    changes = Changes()
    sched = KeyScheduler(changes=changes)
    a, b = sched.add("sk-a"), sched.add("sk-b")
    assert changes.take() == ([], [])  # adding is the store's insert, not a change
    sched.report(a, Outcome(Verdict.OK, 200))
    sched.report(b, Outcome(Verdict.TRANSIENT, 502, "bad gateway"))
    assert changes.take() == ([b.id], [a.id])
    sched.set_weight(a, 3)
    sched.set_group(b, "user_1")
    assert sorted(changes.take()[0]) == sorted([a.id, b.id])
    sched.report(a, Outcome(Verdict.OK, 200))
    sched.remove(a.id)
    assert changes.take() == ([], [])
