"""KeyScheduler: the decisions about the pool's keys: the weighted pick, cooldowns on failure,
re-admission when they end, and account-wide verdicts.

Pure Python with an injected clock (wall-clock seconds, so rate-limit reset times and persisted
cooldowns mean the same thing). One event loop uses it, so there are no locks. What it changes
is reported to ``changes`` for the store's write-behind.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from .blame import INCIDENT_COOLDOWN, Burst, Incidents
from .changes import Changes
from .inflight import STUCK_MIN_SECONDS, InFlight
from .keys import MAX_WEIGHT, CooldownPolicy, KeyState, Outcome, Verdict, is_free_model, key_id
from .outage import UpstreamHealth
from .pool import tree_weight

log = logging.getLogger("orpoll.keys")


class KeyScheduler(InFlight):
    """The key pool. ``pick`` chooses by weight among usable keys; ``report`` applies outcomes."""

    def __init__(
        self,
        policy: CooldownPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        changes: Changes | None = None,
    ) -> None:
        super().__init__(clock, rng or random.Random())
        self.policy = policy or CooldownPolicy()
        self.changes = changes or Changes()
        self.upstream = UpstreamHealth(clock)  # OpenRouter's own state, apart from the keys'
        self._wake: list[tuple[float, int, str, str]] = []  # (time, seq, key id, scope)
        self._seq = 0
        self._burst = Burst()
        self._incidents = Incidents()

    # ---- membership -------------------------------------------------------------------------

    def add(self, key: str, weight: int = 1, label: str = "", **state: Any) -> KeyState | None:
        """Add a key (with its stored state); returns None if it is already in the pool."""
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
        self._place(ks)
        if ks.state == "cooling":
            self._schedule(ks, ks.until, "all")
        if ks.free_until:
            self._schedule(ks, ks.free_until, "free")
        return ks

    def remove(self, kid: str) -> KeyState | None:
        ks = self.keys.get(kid)
        if ks is None:
            return None
        self._unplace(ks)
        self._stuck.discard(kid)
        self.changes.forget(kid)
        return ks

    def set_group(self, ks: KeyState, group: str) -> None:
        """Record the account a key belongs to (learned from /api/v1/key)."""
        if ks.group != group:
            self._join_group(ks, group)
            self.changes.changed(ks.id)

    def assume(self, ks: KeyState, shared: dict[str, Any]) -> None:
        """Take on the state another instance decided for the key (``cluster.rows.state_of``):
        the same cooldowns with the same reset times, as if the verdict had been ours."""
        old = self._weights(ks)
        ks.state, ks.until = shared["state"], shared["until"]
        ks.free_until, ks.reason, ks.kind = shared["free_until"], shared["reason"], shared["kind"]
        ks.info = shared["info"]
        self._sync(ks, old)
        if ks.group != shared["group"]:
            self._join_group(ks, shared["group"])
        if ks.state == "cooling":
            self._schedule(ks, ks.until, "all")
        if ks.free_until:
            self._schedule(ks, ks.free_until, "free")
        self.changes.changed(ks.id)

    # ---- state changes ----------------------------------------------------------------------

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
                self.changes.changed(ks.id)
                log.info("%s: available for :free models", ks.who)

    def _set_state(
        self, ks: KeyState, state: str, *, until: float = 0.0, reason: str = "", kind: str = ""
    ) -> None:
        old = self._weights(ks)
        changed = ks.state != state or ks.kind != kind
        ks.state, ks.until = state, until
        ks.reason, ks.kind = (reason, kind) if state != "available" else ("", "")
        self._sync(ks, old)
        self.changes.changed(ks.id)
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
                w = tree_weight(ks, name)
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
            w = tree_weight(first, name)
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
        if v is Verdict.UPSTREAM:  # the upstream's state, never the key's
            self.upstream.failure(outcome.message)
            return
        now = self.clock()
        ks.last_used = now
        ks.requests += 1
        if v is Verdict.OK or v is Verdict.REQUEST:  # inline: this runs once per request
            ks.successes += 1
            if ks.failures:
                ks.failures = 0
                self.changes.changed(ks.id)
            else:
                self.changes.counters.add(ks.id)  # Changes.served, without the call
            up = self.upstream
            if up.failures or up.down:
                up.answered()
            if self._burst.streak:
                self._burst.answered()
            return
        self._failed(ks, outcome, started, now)

    def _failed(self, ks: KeyState, outcome: Outcome, started: float, now: float) -> None:
        v, up = outcome.verdict, self.upstream
        self.changes.changed(ks.id)
        ks.errors += 1
        ks.last_status, ks.last_error = outcome.status, outcome.message[:300]
        if v is not Verdict.TRANSIENT and (up.failures or up.down):
            up.answered()  # an HTTP answer, whatever it says
        if v is Verdict.PROVIDER or v is Verdict.KEY_LOW_CREDIT:
            return
        if v is Verdict.TRANSIENT and self._in_burst(ks, now):
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
            self._unauthorized(ks, outcome, now)

    def _in_burst(self, ks: KeyState, now: float) -> bool:
        """True if this transient failure is part of a burst across the pool (the upstream's
        trouble): then it does not count, and cooldowns the burst caused end now."""
        caused = self._burst.failed(ks.id, ks.failures, now)
        if caused is None:
            return False
        if not caused:
            return True
        log.warning(
            "transient failures on %d keys in a row, none answering between: the upstream's "
            "trouble, not the keys' (last: %s); these failures do not count",
            len(caused),
            ks.last_error,
        )
        for kid, (_, failures) in caused.items():
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

    def _unauthorized(self, ks: KeyState, outcome: Outcome, now: float) -> None:
        """A 401 disables the key, unless most of the pool has turned 401 within a short window.

        Then it is an upstream incident: the key gets a short cooldown, and so do keys disabled
        by a 401 earlier in the window, most likely victims of the same incident.
        """
        hit = self._incidents.unauthorized(ks.id, now, len(self.keys))
        if hit is None:
            self.disable(ks, outcome.message or "invalid key")
            return
        reason, until = "401 during an upstream incident", now + INCIDENT_COOLDOWN
        for kid in hit:
            other = self.keys.get(kid)
            if other is not None and other.state == "disabled" and other.kind == "key_invalid":
                self._set_state(other, "cooling", until=until, reason=reason, kind="key_invalid")
                self._schedule(other, until, "all")
        self.cool(ks, until, reason, Verdict.KEY_INVALID.value)

    def cool(
        self, ks: KeyState, until: float, reason: str, kind: str = "", scope: str = "all"
    ) -> None:
        """Take the key out until ``until`` (for ":free" models only when scope is "free")."""
        if scope == "free":
            old = self._weights(ks)
            if not ks.free_until:
                self._log_change(ks, "cooling for :free models", until, reason, kind)
            ks.free_until = max(ks.free_until, until)
            ks.reason, ks.kind = reason, kind
            self._sync(ks, old)
            self._schedule(ks, ks.free_until, "free")
            self.changes.changed(ks.id)
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
        self.changes.changed(ks.id)

    def set_weight(self, ks: KeyState, weight: int) -> None:
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be 1..{MAX_WEIGHT}")
        old = self._weights(ks)
        ks.weight = weight
        self._sync(ks, old)
        self.changes.changed(ks.id)
