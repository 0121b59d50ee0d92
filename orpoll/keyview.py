"""What operators see of the key pool: rows without key material, filtered, sorted and paged;
naming a key by id or by its shown suffix; the plan of a reload. Pure: no I/O."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, ValuesView
from typing import Any

from . import errors
from .keys import KeyState, key_id
from .scheduler import KeyScheduler

STATUSES = ("available", "cooling", "disabled", "paused")
STATUS_RANK = {"disabled": 0, "cooling": 1, "paused": 2, "available": 3}
CREDIT_FIELDS = (
    "limit",
    "limit_remaining",
    "limit_reset",
    "usage",
    "usage_daily",
    "usage_monthly",
    "is_free_tier",
)
SUFFIX_CHARS = 4  # a suffix names at most the last 4 characters, the ones already shown


def sort_key(name: str, now: float) -> Callable[[KeyState], Any] | None:
    """Key function of a ``sort`` name (None = the order keys were added)."""

    def credit(ks: KeyState) -> float:
        remaining = ks.info.get("limit_remaining")
        return remaining if isinstance(remaining, (int, float)) else -math.inf

    funcs: dict[str, Callable[[KeyState], Any] | None] = {
        "added": None,
        "status": lambda ks: STATUS_RANK[ks.status_at(now)],
        "cooldown": lambda ks: ks.until if ks.state == "cooling" else 0.0,
        "weight": lambda ks: ks.weight,
        "failures": lambda ks: ks.failures,
        "requests": lambda ks: ks.requests,
        "errors": lambda ks: ks.errors,
        "success_rate": lambda ks: ks.successes / ks.requests if ks.requests else -1.0,
        "last_used": lambda ks: ks.last_used,
        "credit": credit,
        "label": lambda ks: ks.label.lower(),
        "group": lambda ks: ks.group,
        "id": lambda ks: ks.id,
    }
    if name not in funcs:
        raise errors.BadRequest(
            f"sort must be one of {', '.join(funcs)} (prefix - for descending)",
            param="sort",
            code="invalid_sort",
        )
    return funcs[name]


def matches(ks: KeyState, q: str) -> bool:
    """Search by id, the shown suffix, label or account (never by the hidden part of a key)."""
    return (
        q in ks.id
        or q in ks.key[-SUFFIX_CHARS:].lower()
        or q in ks.label.lower()
        or q in ks.group.lower()
    )


def page_of(
    sched: KeyScheduler, now: float, *, q: str, status: str, sort: str, page: int, limit: int
) -> tuple[list[KeyState], int]:
    """One page of keys and how many match. Filters are one O(n) pass; a sorted page is
    ``heapq.nsmallest`` (O(n log k)) for early pages, a full sort only for late ones."""
    desc, name = sort.startswith("-"), sort.lstrip("-")
    func = sort_key(name, now)
    q = q.strip().lstrip(".").lower()
    rows: list[KeyState] | ValuesView[KeyState] = sched.keys.values()  # in the order added
    if q or status:
        rows = [
            ks
            for ks in rows
            if (not status or ks.status_at(now) == status) and (not q or matches(ks, q))
        ]
    start, end = (page - 1) * limit, page * limit
    if func is None:
        # dict values reverse in place (Python 3.8+); typeshed does not say so
        ordered = reversed(rows) if desc else rows  # type: ignore[arg-type]
        return list(itertools.islice(ordered, start, end)), len(rows)
    if end * 8 < len(rows):
        pick = heapq.nlargest if desc else heapq.nsmallest
        return pick(end, rows, key=func)[start:], len(rows)
    return sorted(rows, key=func, reverse=desc)[start:end], len(rows)


def key_row(ks: KeyState, now: float) -> dict[str, Any]:
    """What the admin sees of a key (plus the original's field names)."""
    status = ks.status_at(now)
    cooling = status == "cooling"
    free_until = ks.free_until if ks.free_until > now else None
    shown_reason = cooling or status == "disabled" or free_until
    info = ks.info
    credit = {k: info[k] for k in CREDIT_FIELDS if k in info}
    return {
        "id": ks.id,
        "key_suffix": ks.masked,
        "label": ks.label,
        "group": ks.group,
        "weight": ks.weight,
        "enabled": ks.enabled,
        "status": status,
        "is_active": status == "available",
        "reason": ks.reason if shown_reason else "",
        "kind": ks.kind if shown_reason else "",
        "cooldown_until": ks.until if cooling else None,
        "free_cooldown_until": free_until,
        "failures": ks.failures,
        "failure_count": ks.failures,
        "last_status": ks.last_status or None,
        "last_error": ks.last_error,
        "last_used": ks.last_used or None,
        "requests": ks.requests,
        "successes": ks.successes,
        "errors": ks.errors,
        "success_rate": round(ks.successes / ks.requests, 4) if ks.requests else None,
        "inflight": ks.inflight,
        "oldest_inflight_age": (
            round(now - ks.oldest_inflight, 1) if ks.inflight and ks.oldest_inflight else None
        ),
        "credit": credit or None,
        "probe": info.get("probe"),
        "added_at": ks.added_at,
    }


def suffix_index(sched: KeyScheduler) -> dict[str, list[KeyState]]:
    index: dict[str, list[KeyState]] = {}
    for ks in sched:
        index.setdefault(ks.key[-SUFFIX_CHARS:], []).append(ks)
    return index


def resolve(
    sched: KeyScheduler, ref: str, index: dict[str, list[KeyState]] | None = None
) -> KeyState:
    """The key named by ``ref``: its id, or a suffix ("...abcd" or "abcd") matching one key.

    NotFound if none; Conflict listing the matches if several (nothing is guessed).
    """
    ref = ref.strip()
    ks = sched.get(ref)
    if ks is not None:
        return ks
    suffix = ref.lstrip(".")
    if not suffix or len(suffix) > SUFFIX_CHARS:
        raise errors.NotFound(f"no key with id {ref!r}", code="key_not_found")
    if len(suffix) == SUFFIX_CHARS and index is not None:
        found = index.get(suffix, [])
    else:
        found = [ks for ks in sched if ks.key.endswith(suffix)]
    if not found:
        raise errors.NotFound(f"no key ends with {suffix!r}", code="key_not_found")
    if len(found) > 1:
        listed = [{"id": k.id, "key_suffix": k.masked, "label": k.label} for k in found]
        raise errors.Conflict(
            f"{len(found)} keys end with {suffix!r}; nothing was deleted: name one by id",
            code="ambiguous_key",
            metadata={"matches": listed},
        )
    return found[0]


def resolve_many(
    sched: KeyScheduler, refs: list[str]
) -> tuple[dict[str, KeyState], list[str], dict[str, Any]]:
    """Resolve each ref: (found by id, refs not found, ambiguous ref -> its matches)."""
    found: dict[str, KeyState] = {}
    missing: list[str] = []
    ambiguous: dict[str, Any] = {}
    index = suffix_index(sched)
    for ref in refs:
        try:
            ks = resolve(sched, ref, index)
        except errors.Conflict as e:
            ambiguous[ref] = (e.metadata or {}).get("matches", [])
        except errors.NotFound:
            missing.append(ref)
        else:
            found[ks.id] = ks
    return found, missing, ambiguous


def reload_plan(
    sched: KeyScheduler, entries: list[tuple[str, int]], now: float
) -> tuple[list[str], list[KeyState], list[tuple[int, str]]]:
    """What makes the pool exactly ``entries``: (ids to remove, keys to add, (weight, id) of
    keys kept, which keep their state and counters)."""
    wanted = {key_id(key): (key, weight) for key, weight in entries}
    remove = [kid for kid in sched.keys if kid not in wanted]
    add = [
        KeyState(key, weight, added_at=now)
        for kid, (key, weight) in wanted.items()
        if kid not in sched.keys
    ]
    kept = [(weight, kid) for kid, (_, weight) in wanted.items() if kid in sched.keys]
    return remove, add, kept


def apply_reload(
    sched: KeyScheduler,
    remove: list[str],
    add: list[KeyState],
    kept: list[tuple[int, str]],
    rev: float = 0.0,
) -> None:
    """Apply a reload plan to the pool in one step (no await inside); ``rev`` is the
    change's time."""
    for kid in remove:
        sched.remove(kid)
    for ks in add:
        sched.add(ks.key, ks.weight, added_at=ks.added_at, rev=rev)
    for weight, kid in kept:
        if kid in sched.keys:
            sched.set_weight(sched.keys[kid], weight)
            sched.keys[kid].rev = rev
