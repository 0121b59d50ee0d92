"""Changes: which keys' runtime state moved since the store last saved it.

The scheduler reports what it changed; the write-behind takes the sets and saves those keys.
Two sets, because a request that only moves a key's counters (requests, successes, last used)
is far more common than a change of state, and is saved less often.
"""

from __future__ import annotations

from collections.abc import Iterable


class Changes:
    """Ids of keys whose state changed (``state``) or whose counters alone moved (``counters``)."""

    __slots__ = ("state", "counters")

    def __init__(self) -> None:
        self.state: set[str] = set()
        self.counters: set[str] = set()

    def changed(self, kid: str) -> None:
        """The key's state changed: its whole row is saved at the next write."""
        self.state.add(kid)

    def served(self, kid: str) -> None:
        """Only the key's counters moved."""
        self.counters.add(kid)

    def forget(self, kid: str) -> None:
        """The key left the pool: nothing of it is to be saved."""
        self.state.discard(kid)
        self.counters.discard(kid)

    def clear(self) -> None:
        self.state.clear()
        self.counters.clear()

    def take(self, counters: bool = True) -> tuple[list[str], list[str]]:
        """Ids to save, cleared here: (whole rows, counters only). With ``counters`` False the
        counter-only ids stay for a later take; a whole row carries the counters anyway."""
        state: list[str] = []
        served: list[str] = []
        if self.state:
            state = list(self.state)
            self.state.clear()
            self.counters.difference_update(state)
        if counters and self.counters:
            served = list(self.counters)
            self.counters.clear()
        return state, served

    def restore(self, state: Iterable[str], served: Iterable[str]) -> None:
        """Ids whose save failed, kept for the next write."""
        self.state.update(state)
        self.counters.update(served)
