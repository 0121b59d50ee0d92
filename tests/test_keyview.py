"""keyview: paging agrees with a plain sort on every path, suffixes never guess, reload plans."""

from __future__ import annotations

import random
import time

import pytest

from orpoll import errors
from orpoll.keyview import apply_reload, key_row, page_of, reload_plan, resolve, sort_key
from orpoll.scheduler import KeyScheduler

NOW = 1_800_000_000.0


@pytest.fixture
def sched() -> KeyScheduler:
    rng = random.Random(7)
    s = KeyScheduler(clock=lambda: NOW)
    for i in range(500):
        ks = s.add(f"sk-or-v1-view-{i:05d}", rng.randint(1, 5), rng.choice(["", "a", "B", "c"]))
        ks.requests, ks.successes = rng.randint(0, 20), rng.randint(0, 20)
        ks.last_used = rng.choice([0.0, NOW - rng.randint(1, 999)])
        if i % 7 == 0:
            s.cool(ks, NOW + rng.randint(1, 999), "rate limited", "key_rate_limit")
        if i % 11 == 0:
            s.set_enabled(ks, False)
    return s


SORTS = ["added", "-added", "weight", "-requests", "status", "label", "-last_used"]
SORTS += ["success_rate", "credit", "-cooldown"]


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("page,limit", [(1, 10), (2, 50), (7, 50), (10, 50), (1, 500)])
def test_pages_match_a_full_stable_sort(sched, sort, page, limit):
    keys = list(sched)
    func = sort_key(sort.lstrip("-"), NOW)
    expected = keys[::-1] if sort == "-added" else keys
    if func is not None:
        expected = sorted(keys, key=func, reverse=sort.startswith("-"))
    rows, total = page_of(sched, NOW, q="", status="", sort=sort, page=page, limit=limit)
    assert total == 500
    assert rows == expected[(page - 1) * limit : page * limit]


def test_filters_and_search(sched):
    rows, total = page_of(sched, NOW, q="", status="paused", sort="added", page=1, limit=500)
    assert total == len(rows) == sum(1 for ks in sched if not ks.enabled)
    rows, total = page_of(sched, NOW, q="...0042", status="", sort="added", page=1, limit=9)
    assert [ks.key for ks in rows] == ["sk-or-v1-view-00042"] and total == 1
    # The hidden part of a key is not searchable (it would leak the key a query at a time).
    assert page_of(sched, NOW, q="view-0004", status="", sort="added", page=1, limit=9)[1] == 0


def test_rows_hold_no_key_material(sched):
    for ks in sched:
        text = repr(key_row(ks, NOW))
        assert ks.key not in text and ks.key[:-4] not in text


def test_resolve_by_id_or_unique_suffix_only():
    s = KeyScheduler()
    a, b = s.add("sk-one-aaaa1234"), s.add("sk-two-bbbb1234")
    c = s.add("sk-three-9999")
    assert resolve(s, a.id) is a and resolve(s, "...9999") is c and resolve(s, "99") is c
    with pytest.raises(errors.Conflict) as info:
        resolve(s, "1234")
    assert {m["id"] for m in info.value.metadata["matches"]} == {a.id, b.id}
    for ref in ("a1234", "", "...", "0000"):
        with pytest.raises(errors.NotFound):
            resolve(s, ref)


def test_reload_plan_keeps_known_keys():
    s = KeyScheduler()
    kept, gone = s.add("sk-kept-0001", 2), s.add("sk-gone-0002")
    kept.requests = 9
    remove, add, weights = reload_plan(s, [("sk-kept-0001", 4), ("sk-new-0003", 1)], time.time())
    assert remove == [gone.id] and [ks.key for ks in add] == ["sk-new-0003"]
    assert weights == [(4, kept.id)]
    apply_reload(s, remove, add, weights)
    assert {ks.key for ks in s} == {"sk-kept-0001", "sk-new-0003"}
    assert kept.weight == 4 and kept.requests == 9


def test_rows_show_in_flight_requests_and_the_oldest_age():
    s = KeyScheduler(clock=lambda: NOW)
    busy, idle, odd = (
        s.add("sk-or-v1-busy-0001"),
        s.add("sk-or-v1-idle-0002"),
        s.add("sk-or-v1-x-3"),
    )
    busy.inflight, busy.oldest_inflight = 2, NOW - 12.345
    odd.inflight = 1  # no start time on record: no age rather than one of 56 years
    assert (key_row(busy, NOW)["inflight"], key_row(busy, NOW)["oldest_inflight_age"]) == (2, 12.3)
    assert key_row(idle, NOW)["inflight"] == 0 and key_row(idle, NOW)["oldest_inflight_age"] is None
    assert key_row(odd, NOW)["oldest_inflight_age"] is None
