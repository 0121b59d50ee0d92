"""OrpollApp: the Tornado Application that owns every shared object; make_app builds one."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import jinja2
import tornado.web

from . import fast
from .access import Traffic, log_request
from .admission import Admission
from .auth import AdminPassword, LoginThrottle, Sessions, parse_client_keys
from .backfill import Backfill
from .catalog import ModelCatalog
from .cluster import NoCluster
from .config import Settings
from .handlers import admin, admin_keys, admin_settings, admin_usage, api
from .handlers.base import NotFoundHandler
from .handlers.static import StaticHandler
from .health import HealthChecker
from .keys import CooldownPolicy
from .ledger import Ledger
from .metrics import Collector, make_registry, pool_figures
from .overlay import overlay_settings
from .recording import record_of
from .scheduler import KeyScheduler
from .seal import ensure_secret
from .seeding import seed_pool
from .store import Store
from .upstream import OpenRouterClient
from .writebehind import WriteBehind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policy_of(config: Settings) -> CooldownPolicy:
    return CooldownPolicy(
        base=config.key_cooldown,
        cap=max(config.key_max_cooldown, config.key_cooldown),
        credit=config.key_credit_cooldown,
        max_failures=config.key_max_failures,
    )


class OrpollApp(tornado.web.Application):
    def __init__(
        self,
        config: Settings,
        *,
        scheduler: KeyScheduler,
        upstream: OpenRouterClient,
        store: Store,
        health: HealthChecker | None = None,
        ledger: Ledger | None = None,
        env_config: Settings | None = None,
        **tornado_settings: Any,
    ) -> None:
        self.config = config
        self.env_config = env_config or config  # before admin edits (what "reset" returns to)
        self.scheduler, self.upstream, self.store = scheduler, upstream, store
        self.writer = fast.writer(config.fast)  # how relay handlers write to their clients
        self.health = health or HealthChecker(scheduler, upstream, lambda: self.config)
        self.catalog = ModelCatalog(
            lambda: upstream.get_json(self.config.openrouter_models_url), ttl=config.models_cache
        )
        self.client_keys = parse_client_keys(config.app_api_key)
        self.inflight = 0  # relayed requests in progress (graceful shutdown waits for them)
        self.admission = Admission()  # requests in progress per client key
        self.ready = True  # pool and store loaded (/readyz); the server may hold it False
        self.draining = False  # SIGTERM received: no new requests, in-flight ones finish
        self.streams: set = set()  # relay handlers whose stream is open (shutdown ends them)
        self._request_ids = itertools.count(1)
        self._id_prefix = os.urandom(3).hex()
        self.started_at = time.time()
        self.traffic = Traffic()
        self.write_behind = WriteBehind(store, scheduler)
        self.cluster: NoCluster = NoCluster()  # server.py joins a cluster when configured
        self._open_usage(ledger)
        self._open_admin()
        settings = {
            "default_handler_class": NotFoundHandler,
            "static_path": os.path.join(ROOT, "static"),
            "static_handler_class": StaticHandler,
            "template_path": os.path.join(ROOT, "templates"),
            "cookie_secret": config.session_secret_key or ensure_secret(config.data_dir),
            # Forms need the _xsrf token; AdminHandler lets JSON requests through on an Origin
            # check instead, and /v1 handlers opt out (bearer tokens, no cookies).
            "xsrf_cookies": True,
            "login_url": "/admin/login",
            **tornado_settings,
        }
        routes = api.routes + admin.routes + admin_settings.routes + admin_keys.routes
        routes += admin_usage.routes
        super().__init__(routes, **settings)

    def _open_usage(self, ledger: Ledger | None) -> None:
        """The request ledger, its /generation backfill and the /metrics registry."""
        config, scheduler = self.config, self.scheduler
        self.ledger = ledger or Ledger.open(
            config.data_dir,
            record_days=config.request_log_retention_days,
            usage_days=config.usage_retention_days,
        )
        self.ledger.backfill = Backfill(
            lambda kid: getattr(scheduler.get(kid), "key", None), lambda: self.config.upstream_base
        )
        self.metrics_collector = Collector(
            self.ledger.counters, lambda: len(self.streams), lambda: pool_figures(scheduler)
        )
        self.metrics_registry = make_registry(self.metrics_collector)

    def _open_admin(self) -> None:
        """Admin sessions, the password, the login throttle and the page templates."""
        config, store = self.config, self.store
        self.sessions = Sessions(store, lambda: self.config.session_lifetime)
        self.sessions.load()
        self.password = AdminPassword(store, config.admin_password)
        self.generated_password = self.password.setup(self.sessions)  # server.py logs it once
        self.login_throttle = LoginThrottle(lambda: self.config.login_max_failures)
        self.jinja = jinja2.Environment(
            loader=jinja2.FileSystemLoader(os.path.join(ROOT, "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def get_handler_delegate(self, request, target_class, *args: Any, **kwargs: Any):
        delegate = super().get_handler_delegate(request, target_class, *args, **kwargs)
        if self.writer.fast and getattr(target_class, "buffer_small_bodies", False):
            limit = min(fast.SMALL_BODY, self.config.max_body_bytes)
            return fast.SmallBodyFirst(delegate, limit)
        return delegate

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        """A finished request: its access line, and for /v1 its record in the ledger."""
        log_request(handler)
        if handler.request.path.startswith("/v1/"):
            self.ledger.add(record_of(handler))

    def next_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._request_ids)}"

    async def shutdown(self) -> None:
        """Release what the app owns (after the server stopped taking requests)."""
        self.health.stop()
        self.upstream.close()
        self.write_behind.stop()
        await self.write_behind.flush()
        await self.cluster.stop()
        self.store.close()
        if self.ledger.backfill is not None:
            await self.ledger.backfill.close()
        self.ledger.close()

    def apply_settings(self, config: Settings) -> None:
        """Swap in new settings (admin edits); every component reads them from here."""
        self.config = config
        self.scheduler.policy = policy_of(config)
        self.upstream.configure(config)
        self.catalog.ttl = config.models_cache
        self.client_keys = parse_client_keys(config.app_api_key)
        self.health.restart_if_running()


def make_app(config: Settings, **overrides: Any) -> OrpollApp:
    """Build the app; ``overrides`` may supply ready collaborators (scheduler, upstream, store,
    ...) or Tornado settings (the test seam).

    Keys come from the store in DATA_DIR; OPENROUTER_API_KEYS seeds it when it holds none.
    Settings edited in the admin (stored) override the environment.
    """
    store = overrides.pop("store", None) or Store.open(
        config.data_dir, encryption_key=config.encryption_key
    )
    env_config, config = config, overlay_settings(config, store.load_settings())
    scheduler = overrides.pop("scheduler", None) or KeyScheduler(policy_of(config))
    upstream = overrides.pop("upstream", None) or OpenRouterClient(config)
    seed_pool(store, scheduler, config.openrouter_api_keys)
    return OrpollApp(
        config,
        env_config=env_config,
        scheduler=scheduler,
        upstream=upstream,
        store=store,
        **overrides,
    )
