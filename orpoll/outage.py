"""UpstreamHealth: whether OpenRouter itself is reachable, apart from any key's state.

A failure no key can cause (refused connection, reset before any answer, DNS, TLS) is the
upstream's state. While it is down, clients get a short Retry-After, no key is cooled for it,
and one cheap request every PROBE_SECONDS (half-open) tells when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("orpoll.outage")
MAX_RETRY_AFTER = 10  # seconds a client is told to wait while the upstream is down, at most
# This many failures without any answer, within the window and with no HTTP answer between,
# take the upstream down (one refused connection may be a connection the upstream just closed).
OUTAGE_FAILURES, OUTAGE_WINDOW = 2, 10.0
PROBE_SECONDS = 1.0  # half-open: how often a down upstream is tried


class UpstreamHealth:
    """Up or down, since when and why; the relay reports to it through the scheduler.

    ``probe`` (set by the HealthChecker) is an async callable answering True once the upstream
    answers anything at all; while down it runs every PROBE_SECONDS on the running loop.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.down = False
        self.since = 0.0  # wall-clock time of the last change
        self.reason = ""
        self.failures = 0  # failures without an answer since the last answer
        self.first_failure = 0.0
        self.probe: Callable[[], Awaitable[bool]] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def failure(self, reason: str) -> None:
        """An attempt got no answer at all (the Verdict.UPSTREAM kind)."""
        if self.down:
            return
        now = self.clock()
        if not self.failures or now - self.first_failure > OUTAGE_WINDOW:
            self.failures, self.first_failure = 0, now
        self.failures += 1
        if self.failures >= OUTAGE_FAILURES:
            self._go_down(now, reason)

    def answered(self) -> None:
        """The upstream answered (any HTTP status): it is reachable."""
        self.failures = 0
        if self.down:
            self._go_up()

    def _go_down(self, now: float, reason: str) -> None:
        self.down, self.since, self.reason = True, now, reason
        log.warning(
            "upstream unreachable (%s): /v1 answers 503 upstream_unavailable, no key is "
            "blamed; trying it every %gs",
            reason,
            PROBE_SECONDS,
        )
        self._schedule()

    def _go_up(self) -> None:
        now = self.clock()
        log.warning("upstream reachable again after %.1fs down", now - self.since)
        self.down, self.since, self.reason, self.failures = False, now, "", 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        if self.probe is None or self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test with a fake clock): nothing to probe on
            return
        self._timer = loop.call_later(PROBE_SECONDS, self._probe_now)

    def _probe_now(self) -> None:
        self._timer = None
        if self.down and self.probe is not None:
            asyncio.ensure_future(self._run_probe())

    async def _run_probe(self) -> None:
        probe = self.probe
        if probe is None:
            return
        try:
            ok = await probe()
        except Exception:  # a probe must never stop the probing
            log.exception("upstream probe failed")
            ok = False
        if ok:
            self.answered()
        elif self.down:
            self._schedule()

    def retry_after(self) -> int:
        """Seconds a client should wait before trying again (1..MAX_RETRY_AFTER): the next
        probe, and a second for it to answer."""
        return min(MAX_RETRY_AFTER, int(PROBE_SECONDS) + 1) if self.down else 1

    def state(self) -> dict[str, Any]:
        return {
            "down": self.down,
            "since": self.since or None,
            "reason": self.reason,
            "retry_after": self.retry_after() if self.down else None,
        }
