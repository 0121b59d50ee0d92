"""InFlight: what KeyScheduler knows of attempts in flight, and how it picks with it.

Each key counts its attempts in flight and keeps the start of each one still waiting for its
answer. The pick draws two keys by weight and takes the less loaded (unanswered attempts, plus
the oldest one's age in units of the model's usual time to an answer); a key whose oldest
unanswered attempt is far older than that leaves the pick until the attempt ends.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable

from .keys import KeyState
from .pool import Fenwick, WeightedPool, tree_weight

log = logging.getLogger("orpoll.keys")
# A key whose oldest unanswered attempt is older than STUCK_FACTOR times the usual time to an
# answer for that model (at least STUCK_MIN_SECONDS) gets no new attempt until that one ends.
STUCK_FACTOR, STUCK_MIN_SECONDS = 4.0, 1.0
LATENCY_ALPHA = 0.2  # weight of the newest sample in a model's moving average time to answer
# The time to answer assumed for a model with no answer yet: generous, as a first answer of a
# reasoning model may take minutes.
UNKNOWN_LATENCY = 30.0
MAX_MODELS = 2048  # models whose time to answer is tracked one by one


class InFlight(WeightedPool):
    """Attempts in flight per key, the moving time to answer per model, and stuck keys."""

    def __init__(self, clock: Callable[[], float], rng: random.Random) -> None:
        super().__init__(clock, rng)
        self._latency: dict[str | None, float] = {}  # model (None: any) -> average seconds
        self._stuck: set[str] = set()  # ids of keys out of the pick for an unanswered attempt

    def _draw(self, tree: Fenwick, now: float, stuck_after: float) -> KeyState | None:
        """A key drawn by weight; a key found stuck on the way (an attempt unanswered for
        ``stuck_after`` seconds) is taken out, and drawn again."""
        while tree.total > 0:
            ks = self._slots[tree.find(self.rng.randrange(tree.total))]
            assert ks is not None  # a slot with weight holds a key
            waiting = ks.waiting
            if not waiting or now - waiting[0] < stuck_after:
                return ks
            self._set_stuck(ks, True, now)
        return None

    @staticmethod
    def _load(ks: KeyState, now: float, ref: float) -> float:
        """Unanswered attempts, plus the oldest one's age in usual times to an answer (``ref``).
        A stream that flows costs nothing: its key is answering."""
        waiting = ks.waiting
        return len(waiting) + (now - waiting[0]) / ref if waiting else 0.0

    def stuck_after(self, model: str | None) -> float:
        """Seconds without an answer after which a key's attempt holds it out of the pick."""
        ref = self._latency.get(model) or self._latency.get(None) or UNKNOWN_LATENCY
        return max(STUCK_MIN_SECONDS, STUCK_FACTOR * ref)

    def _least_stuck(self, exclude: Iterable[str], name: str) -> KeyState | None:
        """When only stuck keys are left: the one with the fewest attempts in flight (a slow
        key beats no key)."""
        skip = set(exclude)
        usable = [
            ks
            for kid in self._stuck
            if kid not in skip
            and (ks := self.keys.get(kid)) is not None
            and tree_weight(ks, name, stuck_too=True)
        ]
        return min(usable, key=lambda k: k.inflight) if usable else None

    def _set_stuck(self, ks: KeyState, stuck: bool, now: float) -> None:
        old = self._weights(ks)
        ks.stuck = stuck
        self._sync(ks, old)
        if stuck:
            self._stuck.add(ks.id)
            log.warning(
                "%s: stuck (no answer for %.1fs, %d attempts in flight): no new "
                "requests until it answers",
                ks.who,
                now - ks.oldest_inflight,
                ks.inflight,
            )
        else:
            self._stuck.discard(ks.id)
            log.info("%s: answering again", ks.who)

    # ---- attempts in flight -----------------------------------------------------------------

    def begin(self, ks: KeyState) -> float:
        """An attempt with ``ks`` starts; returns its start time (for ``answered``/``end``)."""
        now = self.clock()
        waiting = ks.waiting
        if waiting is None:
            waiting = ks.waiting = []
        if not waiting:
            ks.oldest_inflight = now
        waiting.append(now)
        ks.inflight += 1
        return now

    def answered(self, ks: KeyState, started: float, model: str | None) -> None:
        """The attempt begun at ``started`` has its answer (a stream's first event, a body)."""
        self._unwait(ks, started)
        sample = max(self.clock() - started, 1e-3)  # never 0: 0 reads as "no answer yet"
        latency = self._latency
        # Model names come from clients: past MAX_MODELS only the overall average is kept, so
        # no stream of made-up names can grow the table.
        if model is not None and (model in latency or len(latency) < MAX_MODELS):
            old = latency.get(model)
            latency[model] = sample if old is None else old + LATENCY_ALPHA * (sample - old)
        old = latency.get(None)
        latency[None] = sample if old is None else old + LATENCY_ALPHA * (sample - old)

    def end(self, ks: KeyState, started: float, waiting: bool) -> None:
        """The attempt is over (whatever ended it); ``waiting``: it never got an answer."""
        if waiting:
            self._unwait(ks, started)
        ks.inflight -= 1

    def _unwait(self, ks: KeyState, started: float) -> None:
        waiting = ks.waiting
        assert waiting is not None  # made by begin()
        if waiting[0] == started:  # answers mostly come in the order attempts began
            del waiting[0]
        else:
            waiting.remove(started)
        ks.oldest_inflight = waiting[0] if waiting else 0.0
        if ks.stuck:  # its oldest attempt ended; a later pick looks at the next one afresh
            self._set_stuck(ks, False, 0.0)
