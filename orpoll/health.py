"""HealthChecker: probes keys with GET /api/v1/key (free, runs no model) and reports to the pool.

``check_once()`` is a plain async method; ``start()``/``stop()`` wrap it in a PeriodicCallback.
Troubled keys are probed first, then a slow rotation over the rest keeps credit figures fresh.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tornado.ioloop import IOLoop, PeriodicCallback

from .config import Settings
from .keys import KeyState, Verdict
from .keyview import CREDIT_FIELDS
from .logs import plural
from .scheduler import KeyScheduler
from .upstream import OpenRouterClient

log = logging.getLogger("orpoll.health")
PROBE_DISPROVES = (Verdict.KEY_INVALID.value, Verdict.KEY_CREDIT.value)
INFO_FIELDS = ("label", *CREDIT_FIELDS, "creator_user_id")


class HealthChecker:
    def __init__(
        self,
        scheduler: KeyScheduler,
        upstream: OpenRouterClient,
        config: Callable[[], Settings],
    ) -> None:
        self.scheduler, self.upstream, self.config = scheduler, upstream, config
        self._periodic: PeriodicCallback | None = None
        self._first: object | None = None
        self._cursor = 0
        self.last_sweep: dict[str, Any] = {}
        # Narrows a sweep's keys to this instance's share when several instances share the
        # pool (each key is probed once per interval by all of them together).
        self.claim: Callable[[list[KeyState]], Awaitable[list[KeyState]]] | None = None
        scheduler.upstream.probe = self.probe_upstream

    async def probe_upstream(self) -> bool:
        """True if OpenRouter answers anything at all to a GET of the key-info URL (with a
        key when there is one: no model runs, nothing is billed)."""
        ks = next(iter(self.scheduler), None)
        status, _, _ = await self.upstream.get_json(
            self.config().key_info_url, ks.key if ks is not None else None
        )
        return 0 < status < 599  # 599: no HTTP answer (refused, reset, DNS, TLS, timeout)

    def start(self, first_after: float | None = None) -> None:
        """Sweep every HEALTH_CHECK_INTERVAL_SECONDS; also once ``first_after`` seconds from now
        (at start-up, so keys never probed get their account and credit figures soon)."""
        self.stop()
        interval = timedelta(seconds=self.config().health_interval)
        self._periodic = PeriodicCallback(self.check_once, interval, jitter=0.1)
        self._periodic.start()
        if first_after is not None:
            self._first = IOLoop.current().call_later(first_after, self.check_once)

    def stop(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None
        if self._first is not None:
            IOLoop.current().remove_timeout(self._first)
            self._first = None

    def restart_if_running(self) -> None:
        """Apply a new interval (settings changed at run time)."""
        if self._periodic is not None:
            self.start()

    def due(self) -> list[KeyState]:
        """Keys to probe this sweep: troubled ones first, then a slice of the healthy ones."""
        troubled, healthy = [], []
        for ks in self.scheduler:
            if not ks.enabled:
                continue
            rate_limited = ks.state == "cooling" and ks.kind == Verdict.KEY_RATE_LIMIT.value
            if ks.state == "disabled" or ks.state == "cooling" and not rate_limited:
                troubled.append(ks)
            elif ks.failures or not ks.info:
                troubled.append(ks)
            else:
                healthy.append(ks)
        if healthy:
            cfg = self.config()
            share = cfg.health_interval / max(cfg.health_rotation, cfg.health_interval)
            n = min(len(healthy), max(1, math.ceil(len(healthy) * share)))
            start = self._cursor % len(healthy)
            troubled += (healthy + healthy)[start : start + n]
            self._cursor = start + n
        return troubled

    async def check_once(self, everything: bool = False) -> dict[str, Any]:
        """One sweep (of every enabled key when ``everything``); returns counts by result.

        Never raises.
        """
        keys = [k for k in self.scheduler if k.enabled] if everything else self.due()
        if self.claim is not None and not everything:
            keys = await self.claim(keys)
        sem = asyncio.Semaphore(self.config().health_concurrency)
        results: dict[str, int] = {}

        async def one(ks: KeyState) -> None:
            async with sem:
                result = await self.probe(ks)
            results[result] = results.get(result, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(one(ks) for ks in keys))
        self.last_sweep = {
            "at": time.time(),
            "probed": len(keys),
            "results": results,
            "seconds": round(time.monotonic() - started, 3),
        }
        if keys:
            log.info(
                "health sweep: %s probed in %.1fs: %s",
                plural(len(keys), "key"),
                self.last_sweep["seconds"],
                ", ".join(f"{name} {n}" for name, n in sorted(results.items())),
            )
        return self.last_sweep

    async def probe(self, ks: KeyState) -> str:
        """Probe one key and apply what it shows; returns the result name."""
        try:
            status, body, latency = await self.upstream.get_json(self.config().key_info_url, ks.key)
        except Exception:  # a probe must never take the sweep down
            log.exception("probe of key %s failed", ks.id)
            return "error"
        now = self.scheduler.clock()
        data = body.get("data") if isinstance(body, dict) else None
        result = self.apply(ks, status, data if isinstance(data, dict) else None, now)
        ks.info["probe"] = {
            "at": now,
            "result": result,
            "status": status,
            "latency_ms": round(latency * 1000, 1),
        }
        self.scheduler.changes.changed(ks.id)
        return result

    def apply(self, ks: KeyState, status: int, data: dict[str, Any] | None, now: float) -> str:
        sched = self.scheduler
        if status == 401:
            sched.disable(ks, "invalid key (health check: 401)")
            return "invalid"
        if status != 200 or data is None:
            return "inconclusive"  # 429/5xx/timeout on the probe: no state change
        ks.info.update({k: data.get(k) for k in INFO_FIELDS if k in data})
        if isinstance(data.get("free_model_daily_requests"), dict):
            ks.info["free_daily"] = data["free_model_daily_requests"]
        account = data.get("creator_user_id") or data.get("organization_id")
        if isinstance(account, str) and account:
            sched.set_group(ks, account)
        remaining = data.get("limit_remaining")
        if isinstance(remaining, (int, float)) and remaining <= 0:
            until = limit_reset_at(data.get("limit_reset"), now) or now + sched.policy.credit
            if ks.state != "cooling" or ks.kind != Verdict.KEY_CREDIT.value:
                sched.cool(ks, until, "key credit limit reached", Verdict.KEY_CREDIT.value)
            return "no_credit"
        # A probe ends only what it disproves: an invalid key (it just authenticated) and an
        # exhausted credit (it shows credit left). Cooldowns from failures of real requests
        # (transient, rate limits) run their course, and a failure streak of an available key
        # is left as it is: one GET /key passing says nothing about the requests that failed.
        if ks.state == "disabled" or ks.state == "cooling" and ks.kind in PROBE_DISPROVES:
            sched.readmit(ks)
            return "readmitted"
        return "ok"


def limit_reset_at(period: object, now: float) -> float | None:
    """When a key's spend cap resets: the next UTC day, week (Monday) or month boundary."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return (day + timedelta(days=1)).timestamp()
    if period == "weekly":
        return (day + timedelta(days=7 - day.weekday())).timestamp()
    if period == "monthly":
        first = day.replace(day=1)
        return (
            first.replace(year=first.year + 1, month=1)
            if first.month == 12
            else first.replace(month=first.month + 1)
        ).timestamp()
    return None  # never resets by itself: until a probe shows credit
