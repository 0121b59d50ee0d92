"""pool.py: the Fenwick tree against brute force, and WeightedPool's slots, weights, groups
and summaries (pure, a fake clock)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from orpoll.keys import KeyState, Verdict
from orpoll.pool import Fenwick, WeightedPool, tree_weight
from tests.pool_helpers import FREE, PAID, Clock


@given(st.lists(st.integers(0, 9), min_size=1, max_size=40), st.data())
def test_fenwick_find_agrees_with_a_linear_scan(weights, data):
    tree = Fenwick(64)
    for slot, w in enumerate(weights):
        if w:
            tree.add(slot, w)
    assert tree.total == sum(weights)
    if not tree.total:
        return
    r = data.draw(st.integers(0, tree.total - 1))
    ends = [sum(weights[: i + 1]) for i in range(len(weights))]
    expected = next(slot for slot, end in enumerate(ends) if r < end)
    assert tree.find(r) == expected


def test_a_key_weighs_only_while_usable():
    ks = KeyState("sk-a", 5)
    assert tree_weight(ks, "all") == tree_weight(ks, "free") == 5
    ks.free_until = 1.0
    assert (tree_weight(ks, "all"), tree_weight(ks, "free")) == (5, 0)
    ks.stuck = True
    assert tree_weight(ks, "all") == 0 and tree_weight(ks, "all", stuck_too=True) == 5
    ks.stuck, ks.enabled = False, False
    assert tree_weight(ks, "all") == 0
    ks.enabled, ks.state = True, "cooling"
    assert tree_weight(ks, "all") == 0


def pool_of(n: int) -> WeightedPool:
    pool = WeightedPool(Clock(), random.Random(1))
    for i in range(n):
        pool._place(KeyState(f"sk-{i}", i + 1))
    return pool


def test_slots_are_reused_and_the_trees_grow_past_their_capacity():
    pool = pool_of(100)  # past the first capacity of 64
    assert pool._trees["all"].total == sum(range(1, 101))
    gone = pool.keys[KeyState("sk-10").id]
    pool._unplace(gone)
    assert len(pool) == 99 and pool.get(gone.id) is None
    assert pool._trees["all"].total == sum(range(1, 101)) - 11
    again = KeyState("sk-new", 1)
    pool._place(again)
    assert again.slot == gone.slot


def test_groups_follow_their_keys():
    pool = pool_of(3)
    a, b, c = pool
    pool._join_group(a, "user_1")
    pool._join_group(b, "user_1")
    assert {k.id for k in pool.group_of(a)} == {a.id, b.id}
    assert pool.group_of(c) == [c]
    pool._join_group(b, "user_2")
    assert pool.group_of(a) == [a] and pool.groups["user_2"] == {b.id}
    pool._unplace(b)
    assert "user_2" not in pool.groups


def test_counts_and_why_nothing_is_usable():
    pool = pool_of(3)
    clock = pool.clock
    a, b, c = pool
    for ks in (a, b):
        ks.state, ks.until, ks.kind = "cooling", clock() + 60, Verdict.KEY_RATE_LIMIT.value
    c.enabled = False
    counts = pool.counts()
    assert counts["total"] == 3 and counts["cooling"] == 2 and counts["paused"] == 1
    assert counts["rate_limited"] == 2 and counts["available"] == 0
    assert pool.exhausted_kind(PAID) == "rate_limited"  # every key the operator left on
    c.enabled, c.state = True, "disabled"
    assert pool.exhausted_kind(PAID) == "unavailable"
    c.state = "available"
    c.free_until = clock() + 30
    assert pool.exhausted_kind(FREE) == "rate_limited"
    assert pool.next_available_at(PAID) == clock()  # c serves paid models now
    assert pool.next_available_at(FREE) == clock() + 30
