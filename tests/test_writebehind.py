"""The pool's persistence: load_pool seeds the scheduler from the store (or the store from a
given scheduler), and WriteBehind saves what changed, state at once and counters less often."""

from __future__ import annotations

import pytest

from orpoll.keys import KeyState
from orpoll.scheduler import KeyScheduler
from orpoll.store import Store
from orpoll.writebehind import COUNTERS_SECONDS, WriteBehind, load_pool

KEYS = ["sk-or-v1-store-aaaa1111", "sk-or-v1-store-bbbb2222", "sk-or-v1-store-cccc3333"]


@pytest.fixture
def store(tmp_path):
    s = Store.open(str(tmp_path / "data"))
    yield s
    s.close()


async def test_write_behind_saves_only_changed_keys(store):
    sched = KeyScheduler()
    for key in KEYS:
        sched.add(key)
    store.insert_keys(list(sched))
    wb = WriteBehind(store, sched)
    assert await wb.flush() == 0
    a = next(iter(sched))
    sched.cool(a, sched.clock() + 600, "rate limited", "key_rate_limit")
    a.requests = 4
    assert await wb.flush() == 1
    assert not sched.changes.state
    row = next(r for r in store.load_keys() if r["key"] == a.key)
    assert row["state"] == "cooling" and row["requests"] == 4 and row["reason"] == "rate limited"


async def test_served_requests_are_saved_less_often_than_state_changes(store):
    from orpoll.keys import Outcome, Verdict

    sched = KeyScheduler()
    a, b = sched.add(KEYS[0]), sched.add(KEYS[1])
    store.insert_keys(list(sched))
    wb = WriteBehind(store, sched)
    for _ in range(5):
        sched.report(a, Outcome(Verdict.OK, 200))
    sched.report(b, Outcome(Verdict.TRANSIENT, 502, "bad gateway"))
    assert sched.changes.state == {b.id} and sched.changes.counters == {a.id}
    assert await wb.tick() == 1  # b's failure at once; a's counters wait
    rows = {r["key"]: r for r in store.load_keys()}
    assert rows[b.key]["failures"] == 1 and rows[a.key]["requests"] == 0
    for _ in range(int(COUNTERS_SECONDS) - 1):
        await wb.tick()
    rows = {r["key"]: r for r in store.load_keys()}
    assert rows[a.key]["requests"] == rows[a.key]["successes"] == 5
    assert not sched.changes.counters


async def test_write_behind_retries_after_a_failed_write(store):
    sched = KeyScheduler()
    ks = sched.add(KEYS[0])
    store.insert_keys([ks])
    sched.changes.state.add(ks.id)
    wb = WriteBehind(store, sched)
    store.db.execute(
        "CREATE TRIGGER no_updates BEFORE UPDATE ON keys BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    assert await wb.flush() == 0
    assert ks.id in sched.changes.state  # kept for the next flush
    store.db.execute("DROP TRIGGER no_updates")
    assert await wb.flush() == 1


def test_load_pool_restores_state_and_cooldowns(store):
    sched = KeyScheduler()
    a = sched.add(KEYS[0], 2, "a")
    sched.cool(a, sched.clock() + 600, "rate limited", "key_rate_limit")
    sched.add(KEYS[1])
    store.insert_keys(list(sched))
    restored = KeyScheduler()
    assert load_pool(store, restored) is True
    ra = restored.get(a.id)
    assert (ra.weight, ra.label, ra.state, ra.until) == (2, "a", "cooling", a.until)
    assert restored.pick().key == KEYS[1]  # the cooling key is not picked
    assert not restored.changes.state
    assert (
        load_pool(store, KeyScheduler()) and load_pool(Store(":memory:"), KeyScheduler()) is False
    )


def test_a_given_scheduler_with_keys_becomes_the_stored_pool(store):
    store.insert_keys([KeyState(KEYS[0])])
    sched = KeyScheduler()
    sched.add(KEYS[1])
    assert load_pool(store, sched) is True
    assert [r["key"] for r in store.load_keys()] == [KEYS[1]]
