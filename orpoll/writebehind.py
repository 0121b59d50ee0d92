"""The pool's persistence: ``load_pool`` fills the scheduler from the store at start, and
WriteBehind saves what the scheduler changed since, off the proxy path."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from tornado.ioloop import PeriodicCallback

from .keys import KeyState
from .logs import plural
from .scheduler import KeyScheduler
from .store import Row, Store, counter_row, state_row

log = logging.getLogger("orpoll.store")
# Keys that only served requests (counters moved, state did not) are saved this often.
COUNTERS_SECONDS = 30.0


def load_pool(store: Store, scheduler: KeyScheduler) -> bool:
    """Fill an empty scheduler from the store; returns False when the store holds no keys.

    A scheduler that already holds keys (a test seam) is the pool: the store is made to match.
    """
    if len(scheduler):
        store.replace_keys(store.key_ids(), list(scheduler), ())
        return True
    for row in store.iter_keys():
        scheduler.add(row.pop("key"), row.pop("weight"), row.pop("label"), **row)
    scheduler.changes.clear()
    return bool(len(scheduler))


class WriteBehind:
    """Writes the scheduler's changed runtime state to the store, about once a second
    (counters of keys that only served requests every COUNTERS_SECONDS).

    ``flush()`` is a plain async method; ``start()``/``stop()`` wrap it in a PeriodicCallback
    (only server.py starts it; tests await ``flush()``).
    """

    def __init__(self, store: Store, scheduler: KeyScheduler, interval: float = 1.0) -> None:
        self.store, self.scheduler, self.interval = store, scheduler, interval
        self._periodic: PeriodicCallback | None = None
        self._ticks = 0
        # Also handed the keys whose state changed, as they are saved (a cluster publishes
        # them: the write-behind already knows which keys changed).
        self.publish: Callable[[list[KeyState]], None] | None = None

    def start(self) -> None:
        self.stop()
        self._periodic = PeriodicCallback(self.tick, timedelta(seconds=self.interval))
        self._periodic.start()

    def stop(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None

    def take(self, counters: bool = True) -> tuple[list[Row], list[Row]]:
        """Snapshot (on the loop thread) and clear the changed keys: full rows for state
        changes, and with ``counters`` also counter rows for keys that only served requests."""
        state, served = self.scheduler.changes.take(counters)
        get = self.scheduler.keys.get
        changed = [ks for kid in state if (ks := get(kid)) is not None]
        if self.publish is not None and changed:
            self.publish(changed)
        counts = [counter_row(ks) for kid in served if (ks := get(kid)) is not None]
        return [state_row(ks) for ks in changed], counts

    async def tick(self) -> int:
        """The periodic flush: state every time, counters every COUNTERS_SECONDS, because
        a busy pool moves thousands of keys' counters a second and rewriting them all each
        second would take the proxy's time for little worth keeping."""
        self._ticks += 1
        every = max(1, round(COUNTERS_SECONDS / self.interval))
        return await self.flush(counters=self._ticks % every == 0)

    async def flush(self, counters: bool = True) -> int:
        """Save what changed; returns the number of keys written. Never raises."""
        rows, counts = self.take(counters)
        if not rows and not counts:
            return 0
        try:
            await self.store.run(self.store.save_state, rows, counts)
        except Exception:
            n = len(rows) + len(counts)
            log.exception("saving the state of %s failed; will retry", plural(n, "key"))
            self.scheduler.changes.restore((r[-1] for r in rows), (r[-1] for r in counts))
            return 0
        return len(rows) + len(counts)
