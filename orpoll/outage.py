"""UpstreamHealth: whether OpenRouter itself is reachable, apart from any key's state.

A failure no key can cause (refused connection, reset before any answer, DNS, TLS, or the same
transient failure on many keys at once) is the upstream's state. While it is down, clients get a
short Retry-After, and no key is cooled for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

MAX_RETRY_AFTER = 10  # seconds a client is told to wait while the upstream is down


class UpstreamHealth:
    """Up or down, since when and why (the detection itself lives with the scheduler)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.down = False
        self.since = 0.0  # wall-clock time of the last change
        self.reason = ""

    def retry_after(self) -> int:
        """Seconds a client should wait before trying again (1..MAX_RETRY_AFTER)."""
        return MAX_RETRY_AFTER if self.down else 1

    def state(self) -> dict[str, Any]:
        return {
            "down": self.down,
            "since": self.since or None,
            "reason": self.reason,
            "retry_after": self.retry_after() if self.down else None,
        }
