"""OrpollApp: the Tornado Application that owns every shared object; make_app builds one."""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any

import tornado.web

from .auth import parse_client_keys
from .catalog import ModelCatalog
from .config import Settings
from .handlers import api
from .handlers.base import NotFoundHandler
from .health import HealthChecker
from .keys import CooldownPolicy, KeyScheduler, mask, parse_keys
from .upstream import OpenRouterClient

access_log = logging.getLogger("orpoll.access")
log = logging.getLogger("orpoll")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policy_of(config: Settings) -> CooldownPolicy:
    return CooldownPolicy(
        base=config.key_cooldown,
        cap=max(config.key_max_cooldown, config.key_cooldown),
        credit=config.key_credit_cooldown,
        max_failures=config.key_max_failures,
    )


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One access line per request; relayed requests add model, keys tried and timings."""
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.WARNING
    if not access_log.isEnabledFor(level):
        return
    req = handler.request
    total = 1000.0 * req.request_time()
    attempts = getattr(handler, "attempts", None)
    if attempts is None:
        access_log.log(
            level, "%s %d %s %s %.1fms", handler.request_id, status, req.method, req.path, total
        )
        return
    ttfb = 1000.0 * (attempts.first_byte - req._start_time) if attempts.first_byte else 0.0
    access_log.log(
        level,
        "%s %d %s %s model=%s stream=%s keys=%s ttfb=%.1fms total=%.1fms",
        handler.request_id,
        status,
        req.method,
        req.path,
        getattr(handler, "model", None),
        getattr(handler, "streaming", False),
        attempts,
        ttfb,
        total,
    )


class OrpollApp(tornado.web.Application):
    def __init__(
        self,
        config: Settings,
        *,
        scheduler: KeyScheduler,
        upstream: OpenRouterClient,
        health: HealthChecker | None = None,
        **tornado_settings: Any,
    ) -> None:
        self.config = config
        self.scheduler, self.upstream = scheduler, upstream
        self.health = health or HealthChecker(scheduler, upstream, lambda: self.config)
        self.catalog = ModelCatalog(
            lambda: upstream.get_json(self.config.openrouter_models_url), ttl=config.models_cache
        )
        self.client_keys = parse_client_keys(config.app_api_key)
        self.inflight = 0  # relayed requests in progress (graceful shutdown waits for them)
        self._request_ids = itertools.count(1)
        self._id_prefix = os.urandom(3).hex()
        settings = {
            "default_handler_class": NotFoundHandler,
            "log_function": log_request,
            "static_path": os.path.join(ROOT, "static"),
            "template_path": os.path.join(ROOT, "templates"),
            **tornado_settings,
        }
        super().__init__(api.routes, **settings)

    def next_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._request_ids)}"

    async def shutdown(self) -> None:
        """Release what the app owns (after the server stopped taking requests)."""
        self.health.stop()
        self.upstream.close()

    def apply_settings(self, config: Settings) -> None:
        """Swap in new settings (admin edits); every component reads them from here."""
        self.config = config
        self.scheduler.policy = policy_of(config)
        self.upstream.configure(config)
        self.catalog.ttl = config.models_cache
        self.client_keys = parse_client_keys(config.app_api_key)
        self.health.restart_if_running()


def load_env_keys(scheduler: KeyScheduler, text: str) -> int:
    """Add OPENROUTER_API_KEYS to the pool; logs rejected entries; returns how many were added."""
    entries, problems = parse_keys(text)
    for problem in problems:
        log.warning("OPENROUTER_API_KEYS: %s", problem)
    added = sum(1 for key, weight in entries if scheduler.add(key, weight) is not None)
    if entries:
        log.info(
            "loaded %d keys (%s)",
            added,
            ", ".join(mask(k) for k, _ in entries[:3]) + (", ..." if len(entries) > 3 else ""),
        )
    return added


def make_app(config: Settings, **overrides: Any) -> OrpollApp:
    """Build the app; ``overrides`` may supply ready collaborators (scheduler, upstream, ...)
    or Tornado settings (the test seam)."""
    scheduler = overrides.pop("scheduler", None) or KeyScheduler(policy_of(config))
    upstream = overrides.pop("upstream", None) or OpenRouterClient(config)
    if not len(scheduler):
        load_env_keys(scheduler, config.openrouter_api_keys)
    app = OrpollApp(config, scheduler=scheduler, upstream=upstream, **overrides)
    return app
