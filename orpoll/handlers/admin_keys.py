"""/admin JSON API for the key pool: the paged listing, add, delete, reload, and per-key weight,
label, enable/disable and health check. Keys are shown as id + "...abcd", never in full.

Every change is committed to the store (on its worker thread) before the scheduler changes
and before the answer, so an acknowledged change survives a crash.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import re
import urllib.parse
from collections.abc import Callable, Collection, Iterable
from typing import Any

from .. import errors
from ..keys import MAX_WEIGHT, KeyScheduler, KeyState, key_id, parse_keys
from .admin import AdminApiHandler, text_field

log = logging.getLogger("orpoll.admin")
STATUSES = ("available", "cooling", "disabled", "paused")
STATUS_RANK = {"disabled": 0, "cooling": 1, "paused": 2, "available": 3}
CREDIT_FIELDS = ("limit", "limit_remaining", "limit_reset", "usage", "usage_daily")
CREDIT_FIELDS += ("usage_monthly", "is_free_tier")
MAX_LABEL = 200
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
    rows: Collection[KeyState] = sched.keys.values()
    if q or status:
        rows = [
            ks
            for ks in rows
            if (not status or ks.status_at(now) == status) and (not q or matches(ks, q))
        ]
    start, end = (page - 1) * limit, page * limit
    if func is None:
        ordered: Iterable[KeyState] = reversed(rows) if desc else rows  # type: ignore[call-overload]
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


def label_of(body: dict[str, Any]) -> str:
    label = text_field(body, "label", limit=MAX_LABEL)
    return re.sub(r"[\x00-\x1f\x7f]", " ", label).strip()


class KeysHandler(AdminApiHandler):
    """Shared steps of the key endpoints."""

    def now(self) -> float:
        return self.scheduler.clock()

    async def add_entries(self, entries: list[tuple[str, int]], label: str = "") -> list[KeyState]:
        """Store, then pool, the entries not already pooled; returns the added keys."""
        sched, store, now = self.scheduler, self.application.store, self.now()
        fresh = [
            KeyState(key, weight, label, added_at=now)
            for key, weight in entries
            if key_id(key) not in sched.keys
        ]
        if fresh:
            await store.run(store.insert_keys, fresh)
        added = [sched.add(ks.key, ks.weight, ks.label, added_at=ks.added_at) for ks in fresh]
        return [ks for ks in added if ks is not None]

    async def remove_keys(self, keys: list[KeyState]) -> None:
        store = self.application.store
        await store.run(store.delete_keys, [ks.id for ks in keys])
        for ks in keys:
            self.scheduler.remove(ks.id)
        log.info("admin deleted %d keys (%s)", len(keys), ", ".join(k.id for k in keys[:5]))


class KeyStatusHandler(KeysHandler):
    """GET ?page=1&limit=50&q=&status=&sort=added: one page of keys, totals and counts."""

    def get(self) -> None:
        page = self.int_arg("page", 1, 1, 10**9)
        limit = self.int_arg("limit", 50, 1, 500)
        status = self.get_argument("status", "").strip().lower()
        if status in ("", "all"):
            status = ""
        elif status not in STATUSES:
            raise errors.BadRequest(
                f"status must be one of {', '.join(STATUSES)}",
                param="status",
                code="invalid_status",
            )
        q, sort = self.get_argument("q", "")[:100], self.get_argument("sort", "added")
        now = self.now()
        rows, total = page_of(
            self.scheduler, now, q=q, status=status, sort=sort, page=page, limit=limit
        )
        self.write_json(
            {
                "keys": [key_row(ks, now) for ks in rows],
                "total_keys": total,
                "page": page,
                "limit": limit,
                "total_pages": max(1, math.ceil(total / limit)),
                "counts": self.scheduler.counts(),
                "requests": self.application.traffic.summary(),
                "now": now,
            }
        )

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_argument(name, "")
        if not raw:
            return default
        if not raw.isdigit():
            raise errors.BadRequest(f"{name} must be an integer", param=name, code="invalid_type")
        return min(max(int(raw), low), high)


class AddKeyHandler(KeysHandler):
    """POST ``{"openrouter_api_key": "key[:weight]", "label": "..."}``: 409 if already pooled."""

    async def post(self) -> None:
        body = self.json_body()
        entries, problems = parse_keys(text_field(body, "openrouter_api_key", limit=600))
        if problems or len(entries) != 1:
            message = problems[0] if problems else "give exactly one key as key[:weight]"
            raise errors.BadRequest(message, param="openrouter_api_key", code="invalid_key_format")
        if key_id(entries[0][0]) in self.scheduler.keys:
            raise errors.Conflict("that key is already in the pool", code="key_already_exists")
        added = await self.add_entries(entries, label_of(body))
        if not added:
            raise errors.Conflict("that key is already in the pool", code="key_already_exists")
        ks = added[0]
        log.info("admin added key %s", ks.id)
        self.write_json({"message": f"key {ks.masked} added", "key": key_row(ks, self.now())})


def entry_count(text: str) -> int:
    return sum(1 for raw in re.split(r"[,\n\r]+", text) if raw.strip())


class AddKeysHandler(KeysHandler):
    """POST ``{"key_data": "k1:2\\nk2, k3"}`` (newline or comma separated): counts and messages
    (duplicates count keys already pooled and repeats within the input)."""

    async def post(self) -> None:
        body = self.json_body()
        name = next((n for n in ("key_data", "keys", "openrouter_api_keys_str") if n in body), "")
        text = text_field(body, name or "key_data", limit=64 * 1024 * 1024)
        entries, problems = parse_keys(text)
        added = await self.add_entries(entries, label_of(body))
        duplicates = entry_count(text) - len(problems) - len(added)
        log.info(
            "admin batch add: %d added, %d duplicate, %d invalid",
            len(added),
            duplicates,
            len(problems),
        )
        self.write_json(
            {
                "added_count": len(added),
                "duplicate_count": duplicates,
                "invalid_count": len(problems),
                "error_messages": problems,
                "added": [ks.id for ks in added],
            }
        )


class DeleteKeyHandler(KeysHandler):
    """DELETE /admin/delete-key/<id or suffix>: 409 with the matches if a suffix is ambiguous."""

    async def delete(self, ref: str) -> None:
        ks = resolve(self.scheduler, urllib.parse.unquote(ref))
        await self.remove_keys([ks])
        self.write_json({"message": f"key {ks.masked} deleted", "id": ks.id})


class DeleteKeysBatchHandler(KeysHandler):
    """POST ``{"ids": [...]}`` or the original's ``{"suffixes": [...]}``: deletes every key named
    unambiguously, in one transaction; reports the rest."""

    async def post(self) -> None:
        body = self.json_body()
        refs = body.get("ids", body.get("suffixes"))
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise errors.BadRequest(
                "give ids (or suffixes) as a non-empty list of strings", param="ids"
            )
        found: dict[str, KeyState] = {}
        missing: list[str] = []
        ambiguous: dict[str, Any] = {}
        index = suffix_index(self.scheduler)
        for ref in refs:
            try:
                ks = resolve(self.scheduler, ref, index)
            except errors.Conflict as e:
                ambiguous[ref] = e.metadata["matches"]
            except errors.NotFound:
                missing.append(ref)
            else:
                found[ks.id] = ks
        await self.remove_keys(list(found.values()))
        self.write_json(
            {
                "message": f"{len(found)} keys deleted",
                "deleted_count": len(found),
                "requested_count": len(refs),
                "deleted": list(found),
                "not_found": missing,
                "ambiguous": ambiguous,
            }
        )


class ReloadKeysHandler(KeysHandler):
    """POST ``{"openrouter_api_keys_str": "..."}``: the pool becomes exactly this list, in one
    transaction. Kept keys keep their state and counters; any invalid entry changes nothing."""

    async def post(self) -> None:
        body = self.json_body()
        entries, problems = parse_keys(text_field(body, "openrouter_api_keys_str", limit=64 << 20))
        if problems:
            raise errors.BadRequest(
                f"nothing changed: {len(problems)} invalid entries ({problems[0]})",
                param="openrouter_api_keys_str",
                code="invalid_key_format",
                metadata={"error_messages": problems},
            )
        sched, store, now = self.scheduler, self.application.store, self.now()
        wanted = {key_id(key): (key, weight) for key, weight in entries}
        remove = [kid for kid in sched.keys if kid not in wanted]
        add = [
            KeyState(k, w, added_at=now) for kid, (k, w) in wanted.items() if kid not in sched.keys
        ]
        pooled = [(w, kid) for kid, (_, w) in wanted.items() if kid in sched.keys]
        await store.run(store.replace_keys, remove, add, pooled)
        for kid in remove:  # no await from here on: the pool changes in one step
            sched.remove(kid)
        for ks in add:
            sched.add(ks.key, ks.weight, added_at=ks.added_at)
        for weight, kid in pooled:
            if kid in sched.keys:
                sched.set_weight(sched.keys[kid], weight)
        log.warning(
            "admin reloaded the pool: %d added, %d removed, %d kept",
            len(add),
            len(remove),
            len(pooled),
        )
        self.write_json(
            {
                "message": "keys reloaded",
                "added_count": len(add),
                "removed_count": len(remove),
                "kept_count": len(pooled),
                "invalid_count": 0,
                "error_messages": [],
                "total": len(sched),
            }
        )


class KeyActionHandler(KeysHandler):
    """POST /admin/keys/<id>/{weight,label,enable,disable,check}; answers with the key's row
    (``check`` adds the probe's ``result``)."""

    async def post(self, ref: str, action: str) -> None:
        ks = resolve(self.scheduler, urllib.parse.unquote(ref))
        store, sched = self.application.store, self.scheduler
        out: dict[str, Any] = {}
        if action == "weight":
            weight = self.weight_of(self.json_body())
            await store.run(lambda: store.update_key(ks.id, weight=weight))
            sched.set_weight(ks, weight)
        elif action == "label":
            label = label_of(self.json_body())
            await store.run(lambda: store.update_key(ks.id, label=label))
            ks.label = label
        elif action in ("enable", "disable"):
            enabled = action == "enable"
            await store.run(lambda: store.update_key(ks.id, enabled=int(enabled)))
            sched.set_enabled(ks, enabled)
            if enabled and ks.state == "disabled":
                sched.readmit(ks)  # the operator vouches for it; a 401 will disable it again
        else:
            out["result"] = await self.application.health.probe(ks)
        log.info("admin: %s key %s", action, ks.id)
        self.write_json({**out, "key": key_row(ks, self.now())})

    @staticmethod
    def weight_of(body: dict[str, Any]) -> int:
        weight = body.get("weight")
        if isinstance(weight, str) and weight.strip().isdigit():
            weight = int(weight)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            raise errors.BadRequest(
                f"weight must be an integer from 1 to {MAX_WEIGHT}",
                param="weight",
                code="invalid_weight",
            )
        return weight


class CheckKeysHandler(KeysHandler):
    """POST: run one health-check sweep now; answers with its summary."""

    async def post(self) -> None:
        self.write_json(await self.application.health.check_once())


routes = [
    (r"/admin/key-status", KeyStatusHandler),
    (r"/admin/add-key", AddKeyHandler),
    (r"/admin/add-keys", AddKeysHandler),
    (r"/admin/delete-key/(.+)", DeleteKeyHandler),
    (r"/admin/delete-keys-batch", DeleteKeysBatchHandler),
    (r"/admin/reload-keys", ReloadKeysHandler),
    (r"/admin/check-keys", CheckKeysHandler),
    (r"/admin/keys/([^/]+)/(weight|label|enable|disable|check)", KeyActionHandler),
]
