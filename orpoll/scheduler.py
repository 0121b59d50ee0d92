"""KeyScheduler: the pool's weighted pick, cooldowns, re-admission and account groups.

Pure Python with an injected clock (wall-clock seconds, so rate-limit reset times and persisted
cooldowns mean the same thing). One event loop uses it, so there are no locks.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from .inflight import InFlight
from .keys import (
    BURST_KEYS,
    BURST_WINDOW,
    INCIDENT_COOLDOWN,
    INCIDENT_MIN_KEYS,
    INCIDENT_SHARE,
    INCIDENT_WINDOW,
    MAX_WEIGHT,
    STUCK_MIN_SECONDS,
    CooldownPolicy,
    KeyState,
    Outcome,
    Verdict,
    is_free_model,
    key_id,
)
from .outage import UpstreamHealth

log = logging.getLogger("orpoll.keys")


class _Fenwick:
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


class KeyScheduler(InFlight):
    """The key pool. ``pick`` chooses by weight among usable keys; ``report`` applies outcomes."""

    def __init__(
        self,
        policy: CooldownPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy or CooldownPolicy()
        self.clock = clock
        self.rng = rng or random.Random()
        self.keys: dict[str, KeyState] = {}
        self._slots: list[KeyState | None] = []
        self._free_slots: list[int] = []
        self._trees = {"all": _Fenwick(64), "free": _Fenwick(64)}
        self._wake: list[tuple[float, int, str, str]] = []  # (time, seq, key id, scope)
        self._seq = 0
        self._recent_401: deque[tuple[float, str]] = deque()
        self.groups: dict[str, set[str]] = {}  # account -> key ids
        self.dirty: set[str] = set()  # ids whose state changed since the store last saved
        # ids whose counters (requests, successes, last used) alone changed: saved less often
        self.touched: set[str] = set()
        self.version = 0  # bumps when keys are added or removed
        self.upstream = UpstreamHealth(clock)  # OpenRouter's own state, apart from the keys'
        self._latency: dict[str | None, float] = {}  # model -> moving average seconds to answer
        self._stuck: set[str] = set()  # ids of keys out of the pick for an unanswered attempt
        # keys with a transient failure since the last success anywhere: id -> (time, failures
        # before it); BURST_KEYS of them make a burst, the upstream's and not the keys'
        self._streak: dict[str, tuple[float, int]] = {}
        self._bursting = False

    # ---- membership -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[KeyState]:
        return iter(self.keys.values())

    def get(self, kid: str) -> KeyState | None:
        return self.keys.get(kid)

    def add(self, key: str, weight: int = 1, label: str = "", **state) -> KeyState | None:
        """Add a key; returns None if it is already in the pool."""
        kid = key_id(key)
        if kid in self.keys:
            return None
        ks = KeyState(key, weight, label, kid, added_at=state.pop("added_at", self.clock()))
        for name, value in state.items():
            setattr(ks, name, value)
        now = self.clock()
        if ks.state == "cooling" and ks.until <= now:
            ks.state, ks.until, ks.reason, ks.kind = "available", 0.0, "", ""
        if ks.free_until <= now:
            ks.free_until = 0.0
        ks.slot = self._free_slots.pop() if self._free_slots else self._grow()
        self._slots[ks.slot] = ks
        self.keys[kid] = ks
        if ks.group:
            self.groups.setdefault(ks.group, set()).add(kid)
        self._sync(ks)
        if ks.state == "cooling":
            self._schedule(ks, ks.until, "all")
        if ks.free_until:
            self._schedule(ks, ks.free_until, "free")
        self.version += 1
        return ks

    def remove(self, kid: str) -> KeyState | None:
        ks = self.keys.pop(kid, None)
        if ks is None:
            return None
        for name, tree in self._trees.items():
            w = self._tree_weight(ks, name)
            if w:
                tree.add(ks.slot, -w)
        self._slots[ks.slot] = None
        self._free_slots.append(ks.slot)
        self._stuck.discard(kid)
        self._leave_group(ks)
        self.version += 1
        self.dirty.discard(kid)
        self.touched.discard(kid)
        return ks

    def set_group(self, ks: KeyState, group: str) -> None:
        """Record the account a key belongs to (learned from /api/v1/key)."""
        if ks.group == group:
            return
        self._leave_group(ks)
        ks.group = group
        if group:
            self.groups.setdefault(group, set()).add(ks.id)
        self.dirty.add(ks.id)

    def _leave_group(self, ks: KeyState) -> None:
        members = self.groups.get(ks.group)
        if members is not None:
            members.discard(ks.id)
            if not members:
                del self.groups[ks.group]

    def group_of(self, ks: KeyState) -> list[KeyState]:
        """The key and every other key of its account (just the key when it has none)."""
        if not ks.group:
            return [ks]
        return [self.keys[kid] for kid in self.groups.get(ks.group, ()) if kid in self.keys]

    def _grow(self) -> int:
        slot = len(self._slots)
        self._slots.append(None)
        cap = self._trees["all"].cap
        if slot >= cap:
            self._rebuild(cap * 2)
        return slot

    def _rebuild(self, cap: int) -> None:
        self._trees = {"all": _Fenwick(cap), "free": _Fenwick(cap)}
        for ks in self._slots:
            if ks is not None:
                for name, tree in self._trees.items():
                    w = self._tree_weight(ks, name)
                    if w:
                        tree.add(ks.slot, w)

    # ---- tree weights -----------------------------------------------------------------------

    @staticmethod
    def _tree_weight(ks: KeyState, tree: str, stuck_too: bool = False) -> int:
        """Weight the key has in a tree right now, from its recorded state alone (as if it were
        not stuck when ``stuck_too``)."""
        if not ks.enabled or ks.state != "available" or ks.stuck and not stuck_too:
            return 0
        if tree == "free" and ks.free_until:
            return 0
        return ks.weight

    def _sync(self, ks: KeyState, old: tuple[int, int] = (0, 0)) -> None:
        """Bring both trees in line with ``ks`` after a state change (old = previous weights)."""
        for (name, tree), before in zip(self._trees.items(), old, strict=True):
            delta = self._tree_weight(ks, name) - before
            if delta:
                tree.add(ks.slot, delta)

    def _weights(self, ks: KeyState) -> tuple[int, int]:
        return self._tree_weight(ks, "all"), self._tree_weight(ks, "free")

    def _schedule(self, ks: KeyState, at: float, scope: str) -> None:
        self._seq += 1
        heapq.heappush(self._wake, (at, self._seq, ks.id, scope))

    def _release(self, now: float) -> None:
        """Re-admit keys whose cooldown has passed (at the moment it passes, not at a sweep)."""
        wake = self._wake
        while wake and wake[0][0] <= now:
            at, _, kid, scope = heapq.heappop(wake)
            ks = self.keys.get(kid)
            if ks is None:
                continue
            if scope == "all" and ks.state == "cooling" and ks.until <= now:
                self._set_state(ks, "available", until=0.0)
            elif scope == "free" and ks.free_until and ks.free_until <= now:
                old = self._weights(ks)
                ks.free_until = 0.0
                self._sync(ks, old)
                self.dirty.add(ks.id)
                log.info("%s: available for :free models", ks.who)

    def _set_state(
        self, ks: KeyState, state: str, *, until: float = 0.0, reason: str = "", kind: str = ""
    ) -> None:
        old = self._weights(ks)
        changed = ks.state != state or ks.kind != kind
        ks.state, ks.until = state, until
        ks.reason, ks.kind = (reason, kind) if state != "available" else ("", "")
        self._sync(ks, old)
        self.dirty.add(ks.id)
        if changed:
            self._log_change(ks, state, until, reason, kind)

    def _log_change(self, ks: KeyState, state: str, until: float, reason: str, kind: str) -> None:
        """One line per change of a key's state: id, suffix, label, verdict and cooldown."""
        if state == "available":
            log.info("%s: available", ks.who)
            return
        cooldown = f"{until - self.clock():.0f}s" if until else "until proven"
        log.warning(
            "%s: %s (verdict %s, cooldown %s): %s",
            ks.who,
            state,
            kind or "-",
            cooldown,
            reason,
        )

    # ---- picking ----------------------------------------------------------------------------

    def pick(self, exclude: Iterable[str] = (), model: str | None = None) -> KeyState | None:
        """A usable key chosen by weight, not in ``exclude`` (ids); None if there is none.

        O(log n) per pick plus O(log n) per excluded key.
        """
        now = self.clock()
        self._release(now)
        name = "free" if is_free_model(model) else "all"
        tree = self._trees[name]
        held = []
        for kid in exclude:
            ks = self.keys.get(kid)
            if ks is not None:
                w = self._tree_weight(ks, name)
                if w:
                    tree.add(ks.slot, -w)
                    held.append((ks.slot, w))
        try:
            stuck_after = self.stuck_after(model)
            first = self._draw(tree, now, stuck_after)
            if first is None:
                return self._least_stuck(exclude, name) if self._stuck else None
            if not first.waiting:
                return first
            # Two choices: the less loaded of two keys drawn by weight (as Finagle's and
            # Envoy's least-request balancers), so a key with unanswered attempts piling up or
            # hanging loses to any key that answers.
            w = self._tree_weight(first, name)
            tree.add(first.slot, -w)
            held.append((first.slot, w))
            second = self._draw(tree, now, stuck_after)
            if second is None:
                return first
            ref = self._latency.get(model) or self._latency.get(None) or STUCK_MIN_SECONDS
            return second if self._load(second, now, ref) < self._load(first, now, ref) else first
        finally:
            for slot, w in held:
                tree.add(slot, w)

    # ---- outcomes ---------------------------------------------------------------------------

    def report(self, ks: KeyState, outcome: Outcome, started: float = 0.0) -> None:
        """Apply one attempt's outcome to the key (cooldowns, counters, last error).

        ``started`` (from ``begin``; 0 = unknown): a failure of an attempt that began before the
        key's last counted failure overlapped it, and the two count as one. An UPSTREAM verdict
        goes to ``upstream`` (the outage detector) and leaves the key as it was; so does a
        transient failure that is part of a burst across the pool.
        """
        v = outcome.verdict
        if v is Verdict.LOCAL:
            return  # nothing happened between the key and OpenRouter
        up = self.upstream
        if v is Verdict.UPSTREAM:  # the upstream's state, never the key's
            up.failure(outcome.message)
            return
        now = self.clock()
        ks.last_used = now
        ks.requests += 1
        if v is Verdict.OK or v is Verdict.REQUEST:
            ks.successes += 1
            if ks.failures:
                ks.failures = 0
                self.dirty.add(ks.id)
            else:
                self.touched.add(ks.id)
            if up.failures or up.down:
                up.answered()
            if self._streak:
                self._streak.clear()
                self._bursting = False
            return
        self.dirty.add(ks.id)
        ks.errors += 1
        ks.last_status, ks.last_error = outcome.status, outcome.message[:300]
        if v is not Verdict.TRANSIENT and (up.failures or up.down):
            up.answered()  # an HTTP answer, whatever it says
        if v is Verdict.PROVIDER or v is Verdict.KEY_LOW_CREDIT:
            return
        if v is Verdict.TRANSIENT and self._burst(ks, now):
            return
        counted = not started or started > ks.failed_at
        if counted:
            ks.failures += 1
            ks.failed_at = now
        if v is Verdict.TRANSIENT:
            seconds = self.policy.transient(ks.failures) if counted else 0.0
            if seconds:
                self.cool(ks, now + seconds, f"{ks.failures} failures in a row", v.value)
        elif v is Verdict.KEY_RATE_LIMIT:
            until = outcome.retry_at or now + self.policy.rate_limited(ks.failures)
            for member in self._scope(ks, outcome):
                self.cool(member, until, outcome.message or "rate limited", v.value, outcome.scope)
        elif v is Verdict.KEY_CREDIT:
            until = outcome.retry_at or now + self.policy.credit
            for member in self._scope(ks, outcome):
                self.cool(member, until, outcome.message or "out of credit", v.value)
        elif v is Verdict.KEY_INVALID:
            if self._incident(now, ks):
                self.cool(ks, now + INCIDENT_COOLDOWN, "401 during an upstream incident", v.value)
            else:
                self.disable(ks, outcome.message or "invalid key")

    def _burst(self, ks: KeyState, now: float) -> bool:
        """True if this transient failure is part of a burst across the pool (the upstream's
        trouble): then it does not count, and cooldowns the burst caused end now."""
        if self._bursting:
            return True
        streak = self._streak
        while streak:
            kid, (at, _) = next(iter(streak.items()))
            if at >= now - BURST_WINDOW:
                break
            del streak[kid]
        streak.setdefault(ks.id, (now, ks.failures))
        if len(streak) < BURST_KEYS:
            return False
        self._bursting = True
        log.warning(
            "transient failures on %d keys in a row, none answering between: the upstream's "
            "trouble, not the keys' (last: %s); these failures do not count",
            len(streak),
            ks.last_error,
        )
        for kid, (_, failures) in streak.items():
            other = self.keys.get(kid)
            if other is None:
                continue
            other.failures = failures
            if other.state == "cooling" and other.kind == Verdict.TRANSIENT.value:
                self._set_state(other, "available")
        return True

    def _scope(self, ks: KeyState, outcome: Outcome) -> list[KeyState]:
        """Keys an outcome applies to: the account's group for account-wide verdicts."""
        return self.group_of(ks) if outcome.account else [ks]

    def _incident(self, now: float, ks: KeyState) -> bool:
        """True when most of the pool has turned 401 within a short window.

        Once recognised, keys that were disabled by a 401 earlier in the window get the short
        incident cooldown too: they were most likely victims of the same incident.
        """
        recent = self._recent_401
        recent.append((now, ks.id))
        while recent and recent[0][0] < now - INCIDENT_WINDOW:
            recent.popleft()
        hit = {kid for _, kid in recent}
        if len(hit) < INCIDENT_MIN_KEYS or len(hit) < INCIDENT_SHARE * len(self.keys):
            return False
        for kid in hit:
            other = self.keys.get(kid)
            if other is not None and other.state == "disabled" and other.kind == "key_invalid":
                self._set_state(
                    other,
                    "cooling",
                    until=now + INCIDENT_COOLDOWN,
                    reason="401 during an upstream incident",
                    kind="key_invalid",
                )
                self._schedule(other, now + INCIDENT_COOLDOWN, "all")
        return True

    def cool(self, ks: KeyState, until: float, reason: str, kind: str = "", scope: str = "all"):
        """Take the key out until ``until`` (for ":free" models only when scope is "free")."""
        if scope == "free":
            old = self._weights(ks)
            if not ks.free_until:
                self._log_change(ks, "cooling for :free models", until, reason, kind)
            ks.free_until = max(ks.free_until, until)
            ks.reason, ks.kind = reason, kind
            self._sync(ks, old)
            self._schedule(ks, ks.free_until, "free")
            self.dirty.add(ks.id)
            return
        if ks.state == "disabled":
            return
        self._set_state(ks, "cooling", until=until, reason=reason, kind=kind)
        self._schedule(ks, until, "all")

    def disable(self, ks: KeyState, reason: str) -> None:
        """Out until proven (a health check or the operator re-admits it)."""
        self._set_state(ks, "disabled", reason=reason, kind=Verdict.KEY_INVALID.value)

    def readmit(self, ks: KeyState) -> None:
        """Back to available now, counters reset (health check or operator).

        A ":free"-only cooldown is left to expire at its known reset time.
        """
        ks.failures = 0
        self._set_state(ks, "available")

    def set_enabled(self, ks: KeyState, enabled: bool) -> None:
        old = self._weights(ks)
        ks.enabled = enabled
        self._sync(ks, old)
        self.dirty.add(ks.id)

    def set_weight(self, ks: KeyState, weight: int) -> None:
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be 1..{MAX_WEIGHT}")
        old = self._weights(ks)
        ks.weight = weight
        self._sync(ks, old)
        self.dirty.add(ks.id)

    # ---- summaries --------------------------------------------------------------------------

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
