"""The pool's part of the cluster: publishing this instance's key changes, and merging other
instances' into the local store and scheduler without publishing them again.

Membership and operator columns merge by ``rev`` (the newer change wins; a deletion is a
tombstone with its time). Shared runtime state follows the snapshot, except for keys whose
local change is still on its way out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..keys import KeyState
from .backend import Backend
from .rows import Shared, decode_key, decode_state, encode_key, encode_state, shared, state_of

if TYPE_CHECKING:
    from ..app import OrpollApp
    from ..seal import Sealer

log = logging.getLogger("orpoll.cluster")
BATCH = 1000  # key ids per commit and per event
YIELD_EVERY = 5000


class KeySync:
    def __init__(self, app: OrpollApp, backend: Backend, origin: str) -> None:
        self.app, self.backend, self.origin = app, backend, origin
        self.sealer: Sealer | None = None
        self.gone: dict[str, float] = {}  # local tombstones: key id -> deleted at
        self.known: dict[str, Shared] = {}  # shared state last sent or taken, per key
        self.seen: dict[str, str] = {}  # the state text last sent or taken, per key
        # Keys published since the current pull or merge read the snapshot: what it read of
        # them may predate our own change, which must not be undone.
        self.fresh: set[str] = set()
        self.out_keys: set[str] = set()  # operator rows to publish (added, edited)
        self.out_state: set[str] = set()  # shared runtime state to publish
        self.out_gone: dict[str, float] = {}  # deletions to publish

    @property
    def pending(self) -> bool:
        return bool(self.out_keys or self.out_state or self.out_gone)

    # ---- local changes ---------------------------------------------------------------------

    def edited(self, ids: Iterable[str]) -> None:
        for kid in ids:
            self.out_keys.add(kid)
            self.out_gone.pop(kid, None)
            self.gone.pop(kid, None)

    def removed(self, ids: Iterable[str], at: float) -> None:
        for kid in ids:
            self.out_gone[kid] = self.gone[kid] = at
            self.out_keys.discard(kid)
            self.out_state.discard(kid)
            self.known.pop(kid, None)
            self.seen.pop(kid, None)

    def states(self, keys: Iterable[KeyState]) -> bool:
        """Keys whose state the write-behind is saving: those whose shared state differs from
        what the cluster last saw are queued. True if any was."""
        now, queued = self.app.scheduler.clock(), False
        for ks in keys:
            mine = shared(state_of(ks), now)
            if self.known.get(ks.id) != mine:
                self.known[ks.id] = mine
                self.out_state.add(ks.id)
                queued = True
        return queued

    async def flush(self) -> None:
        """Publish what is queued; on BackendDown it stays queued (nothing is lost)."""
        keys, state, gone = self.out_keys, self.out_state, self.out_gone
        self.out_keys, self.out_state, self.out_gone = set(), set(), {}
        self.fresh |= keys | state
        try:
            await self._publish(keys, state, gone)
        except BaseException:
            self.out_keys |= keys - set(self.out_gone)
            self.out_state |= state - set(self.out_gone)
            self.out_gone = {**gone, **self.out_gone}
            raise

    async def _publish(self, keys: set[str], state: set[str], gone: dict[str, float]) -> None:
        pool = self.app.scheduler.keys
        edited = [pool[k] for k in keys if k in pool]
        for i in range(0, len(edited), BATCH):
            part = edited[i : i + BATCH]
            rows = {ks.id: encode_key(ks, self.sealer) for ks in part}
            revs = {ks.id: repr(ks.rev) for ks in part}
            await self.backend.commit(
                self._event("keys", list(rows)),
                put={"keys": rows, "revs": revs, "state": self._states(part)},
                drop={"gone": list(rows)},
            )
        only = [pool[k] for k in state - keys if k in pool]
        for i in range(0, len(only), BATCH):
            states = self._states(only[i : i + BATCH])
            await self.backend.commit(self._event("state", list(states)), put={"state": states})
        dead = list(gone.items())
        for i in range(0, len(dead), BATCH):
            tombs = dict(dead[i : i + BATCH])
            await self.backend.commit(
                self._event("keys", list(tombs)),
                put={"gone": {kid: repr(at) for kid, at in tombs.items()}},
                drop={"keys": list(tombs), "revs": list(tombs), "state": list(tombs)},
            )

    def _states(self, keys: list[KeyState]) -> dict[str, str]:
        states = {ks.id: encode_state(ks) for ks in keys}
        self.seen.update(states)
        return states

    def _event(self, kind: str, ids: list[str]) -> dict[str, Any]:
        return {"o": self.origin, "t": kind, "ids": ids}

    # ---- other instances' changes ----------------------------------------------------------

    async def pull(self, ids: list[str], with_keys: bool = True) -> None:
        """Take the snapshot of ``ids`` (after an event naming them)."""
        b = self.backend
        self.fresh.clear()
        states = dict(zip(ids, await b.hmget("state", ids), strict=True))
        if not with_keys:
            self.take_states(states)
            return
        revs, gone = await b.hmget("revs", ids), await b.hmget("gone", ids)
        await self.merge(
            {k: float(v) for k, v in zip(ids, revs, strict=True) if v is not None},
            {k: float(v) for k, v in zip(ids, gone, strict=True) if v is not None},
            {k: v for k, v in states.items() if v is not None},
            ids,
        )
        self.take_states({k: v for k, v in states.items() if k in self.app.scheduler.keys})

    async def reconcile(self, restored: bool = False) -> None:
        """Merge the whole snapshot with the local pool both ways (the backstop for a lost
        message, and how a restarted or emptied backend is filled again). Only revision times
        and state texts are compared; rows are fetched for the keys that changed.

        ``restored``: the backend restarted while this instance ran, so its states may be an
        older snapshot's: this instance's are published instead of taken."""
        b = self.backend
        self.fresh.clear()
        revs = {k: float(v) for k, v in (await b.hgetall("revs")).items()}
        gone = {k: float(v) for k, v in (await b.hgetall("gone")).items()}
        states = await b.hgetall("state")
        ids = set(revs) | set(gone) | set(self.app.scheduler.keys) | set(self.gone)
        await self.merge(revs, gone, states, ids)
        if restored:
            self.out_state.update(kid for kid in self.app.scheduler.keys)
        else:
            self.take_states({k: states.get(k) for k in ids if k in self.app.scheduler.keys})

    async def merge(
        self, revs: dict[str, float], gone: dict[str, float], states: dict[str, str], ids: Any
    ) -> None:
        """Merge the snapshot of ``ids`` (their revs, tombstones and states) into the pool:
        the newer side wins; where ours is newer it is queued to be published."""
        pool = self.app.scheduler.keys
        need: list[str] = []
        drop: list[tuple[str, float]] = []
        for n, kid in enumerate(ids):
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a large pool's merge leaves the loop to requests
            local = pool.get(kid)
            mine = local.rev if local is not None else self.gone.get(kid)
            theirs = revs.get(kid, gone.get(kid))
            if mine is not None and (theirs is None or mine > theirs):
                self.edited([kid]) if local is not None else self.removed([kid], mine)
            elif theirs is not None and (mine is None or theirs > mine):
                if kid in revs:
                    need.append(kid)
                else:
                    drop.append((kid, theirs))
            elif local is not None and kid not in states:
                self.out_state.add(kid)  # the snapshot lacks it (an emptied backend)
        rows = await self.backend.hmget("keys", need)
        add: list[tuple[str, dict[str, Any]]] = []
        edit: list[tuple[str, dict[str, Any]]] = []
        for kid, row in zip(need, rows, strict=True):
            if row is None:
                continue  # deleted since: its tombstone's event follows
            try:
                entry = decode_key(row, kid, self.sealer)
            except ValueError as e:
                log.error("key %s from the shared pool skipped: %s", kid, e)
                continue
            (add if kid not in pool else edit).append((kid, entry))
        await self._apply(add, edit, drop, states)

    async def _apply(
        self,
        add: list[tuple[str, dict[str, Any]]],
        edit: list[tuple[str, dict[str, Any]]],
        drop: list[tuple[str, float]],
        states: dict[str, str],
    ) -> None:
        if not (add or edit or drop):
            return
        fresh = []
        for kid, e in add:
            ks = KeyState(e["key"], e["weight"], e["label"], kid, enabled=e["enabled"])
            ks.added_at, ks.rev = e["added_at"], e["rev"]
            if kid in states:
                for name, value in decode_state(states[kid]).items():
                    setattr(ks, name, value)
            fresh.append(ks)
        store = self.app.store

        def save() -> None:
            if fresh:
                store.insert_keys(fresh)
            for kid, e in edit:
                cols = {n: e[n] for n in ("weight", "label", "rev")}
                store.update_key(kid, enabled=int(e["enabled"]), **cols)
            for kid, at in drop:
                store.delete_keys([kid], at)

        await store.run(save)
        self._to_pool(fresh, edit, drop)

    def _to_pool(
        self,
        fresh: list[KeyState],
        edit: list[tuple[str, dict[str, Any]]],
        drop: list[tuple[str, float]],
    ) -> None:
        sched, now = self.app.scheduler, self.app.scheduler.clock()
        for ks in fresh:
            state = {n: getattr(ks, n) for n in state_of(ks)}
            added = sched.add(ks.key, ks.weight, ks.label, **self._extra(ks), **state)
            if added is not None:
                self.known[ks.id] = shared(state_of(added), now)
                self.gone.pop(ks.id, None)
        for kid, e in edit:
            mine = sched.keys.get(kid)
            if mine is not None:
                sched.set_weight(mine, e["weight"])
                sched.set_enabled(mine, e["enabled"])
                mine.label, mine.rev = e["label"], e["rev"]
        for kid, at in drop:
            sched.remove(kid)
            self.gone[kid] = at
            self.known.pop(kid, None)
            self.seen.pop(kid, None)
        if fresh or drop:
            log.info("shared pool: %d keys added, %d removed", len(fresh), len(drop))

    @staticmethod
    def _extra(ks: KeyState) -> dict[str, Any]:
        return {"enabled": ks.enabled, "added_at": ks.added_at, "rev": ks.rev}

    def take_states(self, states: dict[str, str | None]) -> None:
        """Adopt the snapshot's shared state of keys with no local change on its way out."""
        sched = self.app.scheduler
        now, pending = sched.clock(), sched.changes.state
        for kid, text in states.items():
            if text is None or text == self.seen.get(kid):
                continue  # as last sent or taken: nothing new
            ks = sched.keys.get(kid)
            if ks is None or kid in pending or kid in self.out_state or kid in self.fresh:
                continue
            self.seen[kid] = text
            theirs = decode_state(text)
            target = shared(theirs, now)
            if shared(state_of(ks), now) != target:
                sched.assume(ks, theirs)
            self.known[kid] = target
