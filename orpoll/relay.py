"""Failover: pick a key, send upstream, report the outcome, try the next key until a first byte.

``Relay.run`` drives one client request; the handler supplies a ``Sink`` that owns the client
connection, and each try is an ``attempt.Attempt``. Nothing reaches the client before an
attempt is known good, so failures before the first data event fail over invisibly.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from urllib.parse import urlsplit

from . import errors
from .attempt import Attempt, Attempts, Sink
from .keys import KeyState, Outcome, Verdict, is_free_model
from .scheduler import KeyScheduler
from .upstream import OpenRouterClient

log = logging.getLogger("orpoll.relay")


class Relay:
    """Runs one request through the pool with failover."""

    __slots__ = ("scheduler", "upstream", "retries", "backoff", "attempts")

    def __init__(
        self,
        scheduler: KeyScheduler,
        upstream: OpenRouterClient,
        *,
        retries: int,
        backoff: float,
        attempts: Attempts,
    ) -> None:
        self.scheduler, self.upstream = scheduler, upstream
        self.retries, self.backoff = retries, backoff
        self.attempts = attempts

    async def run(
        self,
        sink: Sink,
        url: str,
        body: bytes | None,
        *,
        model: str | None,
        stream: bool,
        method: str = "POST",
        content_type: str | None = None,
    ) -> None:
        """Answer the request through ``sink``; raises ApiError if no attempt succeeds."""
        sched = self.scheduler
        if sched.upstream.down:
            raise self.upstream_down_error()
        tried: list[str] = []
        last: Outcome | None = None
        for n in range(self.retries + 1):
            ks = self.scheduler.pick(tried, model)
            if ks is None:
                break
            tried.append(ks.id)
            if (
                last is not None
                and self.backoff
                and last.verdict in (Verdict.TRANSIENT, Verdict.PROVIDER)
            ):
                log.debug("waiting %.2fs before trying key %s", self.backoff * n, ks.id)
                await asyncio.sleep(self.backoff * n)
            if sink.client_gone:
                return
            once = Attempt(self.upstream, ks, sink, self.attempts, stream, sched, model)
            try:
                # Awaited here, not in a method of Attempt: one coroutine frame less per stream.
                await once.start(url, body, method, content_type)
                outcome = once.result()
            finally:  # whatever ends it (disconnect, cancellation): the key's count goes down
                sched.end(ks, once.begun, once.waiting)
                once.waiting = False
            self.attempts.add(ks, outcome, 1000.0 * (time.monotonic() - once.started))
            if outcome is None:  # client went away: nothing to say about the key
                return
            _mask_key(outcome, ks)
            sched.report(ks, outcome, once.begun)
            if log.isEnabledFor(logging.DEBUG):
                _log_attempt(sink, ks, outcome)
            if once.committed or not outcome.try_another_key:
                if not once.committed:
                    raise self._relay_error(outcome)
                return
            if sched.upstream.down:
                raise self.upstream_down_error()
            last = outcome
        if last is None:
            raise self.no_key_error(model)
        raise self._relay_error(last, model)

    def upstream_down_error(self) -> errors.ApiError:
        """503 while OpenRouter itself is unreachable: no key is at fault, come back soon."""
        up = self.scheduler.upstream
        host = urlsplit(self.upstream.config.openrouter_api_url).hostname or "the upstream"
        return errors.NoKeyAvailable(
            f"the upstream {host} is unreachable ({up.reason}); orpoll tries it every second "
            "and serves again as soon as it answers",
            code="upstream_unavailable",
            headers={"Retry-After": str(up.retry_after())},
        )

    def _relay_error(self, outcome: Outcome, model: str | None = None) -> errors.ApiError:
        """The upstream's status and message; a 429/503 also says when to come back."""
        err = errors.upstream_error(
            outcome.status or 502, outcome.message, outcome.code, outcome.metadata
        )
        if err.status in (429, 503):
            at = outcome.retry_at or self.scheduler.next_available_at(model)
            if at:
                err.headers["Retry-After"] = self._seconds_until(at)
        return err

    def _seconds_until(self, at: float) -> str:
        """A Retry-After value: whole seconds until ``at``, at least 1."""
        return str(max(1, math.ceil(at - self.scheduler.clock())))

    def no_key_error(self, model: str | None) -> errors.ApiError:
        """503 (429 if every key is rate limited) with Retry-After = earliest re-admission."""
        counts = self.scheduler.counts()
        if not counts["total"]:
            return errors.NoKeyAvailable("no OpenRouter API keys are configured", code="no_keys")
        at = self.scheduler.next_available_at(model)
        headers = {"Retry-After": self._seconds_until(at)} if at else {}
        message = (
            f"no OpenRouter key is available: {counts['total']} keys, "
            f"{counts['cooling']} cooling ({counts['rate_limited']} rate limited, "
            f"{counts['no_credit']} out of credit), {counts['disabled']} disabled, "
            f"{counts['paused']} paused"
        )
        if is_free_model(model) and counts["free_limited"]:
            message += f", {counts['free_limited']} out of :free quota"
        if at:
            message += f"; the next returns in {headers['Retry-After']} s"
        cls = errors.RateLimited if self.scheduler.exhausted_kind(model) == "rate_limited" else None
        return (cls or errors.NoKeyAvailable)(message, code="no_key_available", headers=headers)


def _log_attempt(sink: Sink, ks: KeyState, outcome: Outcome) -> None:
    log.debug(
        "%s attempt key=%s verdict=%s status=%s",
        sink.request_id,
        ks.id,
        outcome.verdict.value,
        outcome.status,
    )


def _mask_key(outcome: Outcome, ks: KeyState) -> None:
    """Replace the key with its masked form wherever the upstream's error echoes it: the
    message and metadata reach the client, the logs and the admin's last_error."""
    outcome.message = _masked(outcome.message, ks)
    outcome.code = _masked(outcome.code, ks)
    if outcome.metadata:
        outcome.metadata = _masked(outcome.metadata, ks)


def _masked(obj, ks: KeyState):
    # Module level, not a closure: a recursive closure is a reference cycle per request.
    if isinstance(obj, str):
        return obj.replace(ks.key, ks.masked) if ks.key in obj else obj
    if isinstance(obj, dict):
        return {k: _masked(v, ks) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_masked(v, ks) for v in obj]
    return obj
