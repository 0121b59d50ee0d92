"""WeightedPool: the keys by id, each in a slot of two weight trees, and what the pool holds.

One Fenwick tree weighs every usable key, the other only those usable for ":free" models, so a
weighted pick and a weight change are both O(log n) however large the pool. The pool records;
KeyScheduler (built on it) decides.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from .keys import KeyState, Verdict, is_free_model


class Fenwick:
    """Prefix sums over slot weights: O(log n) update and weighted search."""

    __slots__ = ("cap", "tree", "total")

    def __init__(self, cap: int) -> None:
        self.cap, self.tree, self.total = cap, [0] * (cap + 1), 0

    def add(self, slot: int, delta: int) -> None:
        self.total += delta
        i, cap, tree = slot + 1, self.cap, self.tree
        while i <= cap:
            tree[i] += delta
            i += i & -i

    def find(self, r: int) -> int:
        """Slot whose cumulative range holds ``r`` (0 <= r < total)."""
        pos, step, tree = 0, self.cap, self.tree
        while step:
            nxt = pos + step
            if nxt <= self.cap and tree[nxt] <= r:
                pos = nxt
                r -= tree[nxt]
            step >>= 1
        return pos


def tree_weight(ks: KeyState, tree: str, stuck_too: bool = False) -> int:
    """Weight the key has in a tree right now, from its recorded state alone (as if it were not
    stuck when ``stuck_too``)."""
    if not ks.enabled or ks.state != "available" or ks.stuck and not stuck_too:
        return 0
    if tree == "free" and ks.free_until:
        return 0
    return ks.weight


class WeightedPool:
    """Keys by id, their slots in the "all" and "free" weight trees, and accounts' key groups.

    A subclass changes a key's state between ``_weights`` (before) and ``_sync`` (after).
    """

    def __init__(self, clock: Callable[[], float], rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self.keys: dict[str, KeyState] = {}
        self.groups: dict[str, set[str]] = {}  # account -> key ids
        self._slots: list[KeyState | None] = []
        self._free_slots: list[int] = []
        self._trees = {"all": Fenwick(64), "free": Fenwick(64)}

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[KeyState]:
        return iter(self.keys.values())

    def get(self, kid: str) -> KeyState | None:
        return self.keys.get(kid)

    def group_of(self, ks: KeyState) -> list[KeyState]:
        """The key and every other key of its account (just the key when it has none)."""
        if not ks.group:
            return [ks]
        return [self.keys[kid] for kid in self.groups.get(ks.group, ()) if kid in self.keys]

    # ---- slots and trees ----------------------------------------------------------------------

    def _place(self, ks: KeyState) -> None:
        """Give a new key a slot, its weight in the trees and its place in its group."""
        ks.slot = self._free_slots.pop() if self._free_slots else self._grow()
        self._slots[ks.slot] = ks
        self.keys[ks.id] = ks
        if ks.group:
            self.groups.setdefault(ks.group, set()).add(ks.id)
        self._sync(ks)

    def _unplace(self, ks: KeyState) -> None:
        """Take a key out of the trees, its slot and its group."""
        del self.keys[ks.id]
        for name, tree in self._trees.items():
            w = tree_weight(ks, name)
            if w:
                tree.add(ks.slot, -w)
        self._slots[ks.slot] = None
        self._free_slots.append(ks.slot)
        self._leave_group(ks)

    def _join_group(self, ks: KeyState, group: str) -> None:
        self._leave_group(ks)
        ks.group = group
        if group:
            self.groups.setdefault(group, set()).add(ks.id)

    def _leave_group(self, ks: KeyState) -> None:
        members = self.groups.get(ks.group)
        if members is not None:
            members.discard(ks.id)
            if not members:
                del self.groups[ks.group]

    def _grow(self) -> int:
        slot = len(self._slots)
        self._slots.append(None)
        cap = self._trees["all"].cap
        if slot >= cap:
            self._rebuild(cap * 2)
        return slot

    def _rebuild(self, cap: int) -> None:
        self._trees = {"all": Fenwick(cap), "free": Fenwick(cap)}
        for ks in self._slots:
            if ks is not None:
                for name, tree in self._trees.items():
                    w = tree_weight(ks, name)
                    if w:
                        tree.add(ks.slot, w)

    def _sync(self, ks: KeyState, old: tuple[int, int] = (0, 0)) -> None:
        """Bring both trees in line with ``ks`` after a state change (old = previous weights)."""
        for (name, tree), before in zip(self._trees.items(), old, strict=True):
            delta = tree_weight(ks, name) - before
            if delta:
                tree.add(ks.slot, delta)

    @staticmethod
    def _weights(ks: KeyState) -> tuple[int, int]:
        return tree_weight(ks, "all"), tree_weight(ks, "free")

    # ---- summaries ----------------------------------------------------------------------------

    def next_available_at(self, model: str | None = None) -> float | None:
        """Earliest time a cooling key returns (for Retry-After); None if none will by itself."""
        now = self.clock()
        free = is_free_model(model)
        best = None
        for ks in self.keys.values():
            if not ks.enabled or ks.state == "disabled":
                continue
            t = ks.until if ks.state == "cooling" else now
            if free and ks.free_until > t:
                t = ks.free_until
            if best is None or t < best:
                best = t
        return best

    def counts(self) -> dict[str, int]:
        """Keys by operator-visible status."""
        now = self.clock()
        out = {
            "total": len(self.keys),
            "available": 0,
            "cooling": 0,
            "disabled": 0,
            "paused": 0,
            "no_credit": 0,
            "rate_limited": 0,
            "free_limited": 0,
        }
        for ks in self.keys.values():
            status = ks.status_at(now)
            out[status] += 1
            if status == "cooling":
                if ks.kind == Verdict.KEY_CREDIT.value:
                    out["no_credit"] += 1
                elif ks.kind == Verdict.KEY_RATE_LIMIT.value:
                    out["rate_limited"] += 1
            if ks.free_until > now:
                out["free_limited"] += 1
        return out

    def exhausted_kind(self, model: str | None = None) -> str:
        """Why nothing is usable for ``model``: "rate_limited" if every enabled key is rate
        limited for it (a :free quota counts only for :free models), else "unavailable"."""
        now = self.clock()
        free = is_free_model(model)

        def limited(k: KeyState) -> bool:
            if k.state == "cooling" and k.until > now:
                return k.kind == Verdict.KEY_RATE_LIMIT.value
            return k.state != "disabled" and free and k.free_until > now

        enabled = [k for k in self.keys.values() if k.enabled]
        return "rate_limited" if enabled and all(map(limited, enabled)) else "unavailable"
