"""Blame rules: when failures seen on keys are the upstream's doing rather than the keys'.

Two patterns read as OpenRouter's trouble, not any key's: transient failures on several keys in
a row with no answer anywhere between (a burst), and 401s from most of the pool at once (an
incident). Pure bookkeeping; KeyScheduler acts on what these report.
"""

from __future__ import annotations

from collections import deque

# Transient failures on this many distinct keys in a row (no success anywhere between, within the
# window) are the upstream's, not the keys': none of them counts, and cooldowns they caused end.
BURST_KEYS, BURST_WINDOW = 3, 30.0
# 401s from this share of the pool within the window read as an OpenRouter incident.
INCIDENT_WINDOW, INCIDENT_SHARE, INCIDENT_MIN_KEYS, INCIDENT_COOLDOWN = 120.0, 0.5, 3, 60.0


class Burst:
    """Keys with a transient failure since the last answer anywhere."""

    __slots__ = ("streak", "on")

    def __init__(self) -> None:
        # key id -> (time of its failure, its failure count before it), oldest first
        self.streak: dict[str, tuple[float, int]] = {}
        self.on = False  # a burst is recognised: transient failures do not count until an answer

    def answered(self) -> None:
        """Some key answered: the streak is broken."""
        if self.streak:
            self.streak.clear()
            self.on = False

    def failed(self, kid: str, failures: int, now: float) -> dict[str, tuple[float, int]] | None:
        """A transient failure on key ``kid`` (with ``failures`` counted before it).

        None: not part of a burst, the failure counts. Otherwise it does not count, and the
        dict (empty once the burst is known) holds the keys whose failures the new-found burst
        caused, with their counts before it, for the caller to restore.
        """
        if self.on:
            return {}
        streak = self.streak
        while streak:
            first, (at, _) = next(iter(streak.items()))
            if at >= now - BURST_WINDOW:
                break
            del streak[first]
        streak.setdefault(kid, (now, failures))
        if len(streak) < BURST_KEYS:
            return None
        self.on = True
        return streak


class Incidents:
    """Recent 401s, to tell an upstream incident from keys that really were revoked."""

    __slots__ = ("recent",)

    def __init__(self) -> None:
        self.recent: deque[tuple[float, str]] = deque()

    def unauthorized(self, kid: str, now: float, pool_size: int) -> set[str] | None:
        """A 401 on key ``kid``; the ids with a 401 in the window when most of the pool has had
        one (an incident), else None."""
        recent = self.recent
        recent.append((now, kid))
        while recent and recent[0][0] < now - INCIDENT_WINDOW:
            recent.popleft()
        hit = {k for _, k in recent}
        if len(hit) < INCIDENT_MIN_KEYS or len(hit) < INCIDENT_SHARE * pool_size:
            return None
        return hit
