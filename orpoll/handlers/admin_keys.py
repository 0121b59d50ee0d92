"""/admin JSON API for the key pool: the paged listing, add, delete, reload, and per-key weight,
label, enable/disable and health check. Keys are shown as id + "...abcd", never in full.

Every change is committed to the store (on its worker thread) before the scheduler changes
and before the answer, so an acknowledged change survives a crash.
"""

from __future__ import annotations

import heapq
import logging
import math
import re
import urllib.parse
from typing import Any

from .. import errors
from ..keylist import parse_key_text
from ..keys import MAX_WEIGHT, KeyState, key_id
from ..keyview import STATUSES, apply_reload, key_row, page_of, reload_plan, resolve, resolve_many
from ..logs import plural
from .admin import AdminApiHandler, text_field

log = logging.getLogger("orpoll.admin")
MAX_LABEL = 200
# Sorts by today's ledger figures (the names Ledger.today gives them).
TODAY_SORTS = ("today_requests", "today_errors", "today_cost", "today_tokens")


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
            KeyState(key, weight, label, added_at=now, rev=now)
            for key, weight in entries
            if key_id(key) not in sched.keys
        ]
        if fresh:
            await store.run(store.insert_keys, fresh)
        added = [
            sched.add(ks.key, ks.weight, ks.label, added_at=ks.added_at, rev=ks.rev) for ks in fresh
        ]
        pooled = [ks for ks in added if ks is not None]
        self.application.cluster.keys_edited([ks.id for ks in pooled])
        return pooled

    async def remove_keys(self, keys: list[KeyState]) -> None:
        store, at = self.application.store, self.now()
        await store.run(store.delete_keys, [ks.id for ks in keys], at)
        for ks in keys:
            self.scheduler.remove(ks.id)
        self.application.cluster.keys_removed([ks.id for ks in keys], at)
        ids = ", ".join(k.id for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        log.info("admin deleted %s (%s)", plural(len(keys), "key"), ids)


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
        now, ledger = self.now(), self.application.ledger
        if sort.lstrip("-") in TODAY_SORTS:
            rows, total = self.page_by_today(now, q, status, sort, page, limit)
        else:
            rows, total = page_of(
                self.scheduler, now, q=q, status=status, sort=sort, page=page, limit=limit
            )
        self.write_json(
            {
                "keys": [{**key_row(ks, now), **ledger.today(ks.id)} for ks in rows],
                "total_keys": total,
                "page": page,
                "limit": limit,
                "total_pages": max(1, math.ceil(total / limit)),
                "counts": self.scheduler.counts(),
                "requests": self.application.traffic.summary(),
                "upstream": self.scheduler.upstream.state(),
                "cluster": self.application.cluster.state(),
                "health": self.application.health.last_sweep,
                "now": now,
            }
        )

    def page_by_today(
        self, now: float, q: str, status: str, sort: str, page: int, limit: int
    ) -> tuple[list[KeyState], int]:
        """A page ordered by one of today's ledger figures (the ledger's sums, not the key's),
        ties in the order keys were added."""
        rows, total = page_of(
            self.scheduler, now, q=q, status=status, sort="added", page=1, limit=10**9
        )
        name, today = sort.lstrip("-"), self.application.ledger.today
        figures = {ks.id: today(ks.id)[name] for ks in rows}
        end = page * limit
        pick = heapq.nlargest if sort.startswith("-") else heapq.nsmallest
        return pick(end, rows, key=lambda ks: figures[ks.id])[end - limit :], total

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
        entries, problems, notes, *_ = parse_key_text(
            text_field(body, "openrouter_api_key", limit=600)
        )
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
        self.write_json(
            {"message": f"key {ks.masked} added", "notes": notes, "key": key_row(ks, self.now())}
        )


class AddKeysHandler(KeysHandler):
    """POST ``{"key_data": "k1:2\\nk2, k3"}`` (newline or comma separated): counts and messages
    (duplicates count keys already pooled and repeats within the input), and the numbers of the
    lines holding a rejected entry, so that a form can keep those lines (never the text: a line
    may hold a full key)."""

    async def post(self) -> None:
        body = self.json_body()
        name = next((n for n in ("key_data", "keys", "openrouter_api_keys_str") if n in body), "")
        text = text_field(body, name or "key_data", limit=64 * 1024 * 1024)
        parsed = parse_key_text(text)
        problems = parsed.problems
        added = await self.add_entries(parsed.entries, label_of(body))
        duplicates = parsed.seen - len(problems) - len(added)
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
                "rejected_lines": parsed.rejected_lines,
                "notes": parsed.notes,
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
        found, missing, ambiguous = resolve_many(self.scheduler, refs)
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


FIELD = "openrouter_api_keys_str"


class ReloadKeysHandler(KeysHandler):
    """POST ``{"openrouter_api_keys_str": "..."}``: the pool becomes exactly this list, in one
    transaction. Kept keys keep their state and counters; any invalid entry changes nothing.
    A list that would empty the pool needs ``"allow_empty": true`` (a misspelled request must not
    delete every key)."""

    async def post(self) -> None:
        body = self.json_body()
        if FIELD not in body:
            raise errors.BadRequest(
                f"missing field {FIELD}: give the whole key list (nothing changed)",
                param=FIELD,
                code="missing_field",
            )
        entries, problems, notes, *_ = parse_key_text(text_field(body, FIELD, limit=64 << 20))
        if problems:
            raise errors.BadRequest(
                f"nothing changed: {len(problems)} invalid entries ({problems[0]})",
                param=FIELD,
                code="invalid_key_format",
                metadata={"error_messages": problems},
            )
        if not entries and len(self.scheduler) and body.get("allow_empty") is not True:
            raise errors.BadRequest(
                f"nothing changed: the list holds no key, so the reload would delete all "
                f'{len(self.scheduler)} keys; send "allow_empty": true to do that',
                param=FIELD,
                code="would_empty_pool",
            )
        now = self.now()
        remove, add, kept = reload_plan(self.scheduler, entries, now)
        store = self.application.store
        await store.run(store.replace_keys, remove, add, kept, now)
        apply_reload(self.scheduler, remove, add, kept, now)  # no await before: one step
        cluster = self.application.cluster
        cluster.keys_removed(remove, now)
        cluster.keys_edited([ks.id for ks in add] + [kid for _, kid in kept])
        log.warning(
            "admin reloaded the pool: %d added, %d removed, %d kept",
            len(add),
            len(remove),
            len(kept),
        )
        self.write_json(
            {
                "message": "keys reloaded",
                "added_count": len(add),
                "removed_count": len(remove),
                "kept_count": len(kept),
                "invalid_count": 0,
                "error_messages": [],
                "notes": notes,
                "total": len(self.scheduler),
            }
        )


class KeyActionHandler(KeysHandler):
    """POST /admin/keys/<id>/{weight,label,enable,disable,readmit,check}; answers with the key's
    row (``check`` adds the probe's ``result``)."""

    async def post(self, ref: str, action: str) -> None:
        ks = resolve(self.scheduler, urllib.parse.unquote(ref))
        out = await getattr(self, "do_" + action)(ks)
        log.info("admin: %s key %s", action, ks.id)
        self.write_json({**out, "key": key_row(ks, self.now())})

    async def save(self, ks: KeyState, **columns: Any) -> None:
        """Store operator columns; the key's rev moves (the in-memory one once the caller
        applied the change, which it does before its next await)."""
        store, rev = self.application.store, self.now()
        await store.run(lambda: store.update_key(ks.id, rev=rev, **columns))
        ks.rev = rev
        self.application.cluster.keys_edited([ks.id])

    async def do_weight(self, ks: KeyState) -> dict[str, Any]:
        weight = self.weight_of(self.json_body())
        await self.save(ks, weight=weight)
        self.scheduler.set_weight(ks, weight)
        return {}

    async def do_label(self, ks: KeyState) -> dict[str, Any]:
        label = label_of(self.json_body())
        await self.save(ks, label=label)
        ks.label = label
        return {}

    async def do_enable(self, ks: KeyState) -> dict[str, Any]:
        await self.save(ks, enabled=1)
        self.scheduler.set_enabled(ks, True)
        if ks.state == "disabled":
            self.scheduler.readmit(ks)  # the operator vouches for it; a 401 disables it again
        return {}

    async def do_disable(self, ks: KeyState) -> dict[str, Any]:
        await self.save(ks, enabled=0)
        self.scheduler.set_enabled(ks, False)
        return {}

    async def do_readmit(self, ks: KeyState) -> dict[str, Any]:
        # Ends a cooldown now. The state is runtime state, saved by the write-behind like any
        # scheduler change; a key that fails again simply cools again.
        self.scheduler.readmit(ks)
        return {}

    async def do_check(self, ks: KeyState) -> dict[str, Any]:
        return {"result": await self.application.health.probe(ks)}

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
    """POST: probe every enabled key now; answers with the sweep's summary."""

    async def post(self) -> None:
        self.write_json(await self.application.health.check_once(everything=True))


routes = [
    (r"/admin/key-status", KeyStatusHandler),
    (r"/admin/add-key", AddKeyHandler),
    (r"/admin/add-keys", AddKeysHandler),
    (r"/admin/delete-key/(.+)", DeleteKeyHandler),
    (r"/admin/delete-keys-batch", DeleteKeysBatchHandler),
    (r"/admin/reload-keys", ReloadKeysHandler),
    (r"/admin/check-keys", CheckKeysHandler),
    (r"/admin/keys/([^/]+)/(weight|label|enable|disable|readmit|check)", KeyActionHandler),
]
