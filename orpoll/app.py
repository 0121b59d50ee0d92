"""OrpollApp: the Tornado Application that owns every shared object; make_app builds one."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import jinja2
import tornado.web
from tornado import httputil, iostream

from .admission import Admission
from .auth import AdminPassword, LoginThrottle, Sessions, parse_client_keys
from .backfill import Backfill
from .catalog import ModelCatalog
from .config import Settings
from .handlers import admin, admin_keys, admin_settings, admin_usage, api
from .handlers.base import NotFoundHandler
from .handlers.static import StaticHandler
from .health import HealthChecker
from .keylist import parse_key_text, parse_keys
from .keys import CooldownPolicy, key_id, mask
from .ledger import Ledger
from .logs import log_request, plural
from .metrics import Collector, make_registry, pool_figures
from .overlay import overlay_settings
from .scheduler import KeyScheduler
from .seal import ensure_secret
from .store import Store
from .upstream import OpenRouterClient
from .writebehind import WriteBehind, load_pool

log = logging.getLogger("orpoll")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policy_of(config: Settings) -> CooldownPolicy:
    return CooldownPolicy(
        base=config.key_cooldown,
        cap=max(config.key_max_cooldown, config.key_cooldown),
        credit=config.key_credit_cooldown,
        max_failures=config.key_max_failures,
    )


class Traffic:
    """Requests to /v1 and how many failed (status >= 400, or a stream that broke after its
    200), per minute over the last hour. Requests refused for a wrong client key are counted
    apart (``rejected``): they say nothing about the upstream."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.ring = [[-1, 0, 0, 0] for _ in range(60)]  # [minute, requests, errors, rejected]
        self.requests = self.errors = self.rejected = 0  # since start

    def record(self, status: int, *, broken: bool = False, rejected: bool = False) -> None:
        minute = int(self.clock() // 60)
        slot = self.ring[minute % 60]
        if slot[0] != minute:
            slot[:] = [minute, 0, 0, 0]
        if rejected:
            slot[3] += 1
            self.rejected += 1
            return
        failed = status >= 400 or broken
        slot[1] += 1
        slot[2] += failed
        self.requests += 1
        self.errors += failed

    def summary(self) -> dict[str, int]:
        minute = int(self.clock() // 60)
        live = [slot for slot in self.ring if 0 <= minute - slot[0] < 60]
        return {
            "requests_last_hour": sum(slot[1] for slot in live),
            "errors_last_hour": sum(slot[2] for slot in live),
            "requests_total": self.requests,
            "errors_total": self.errors,
            "rejected_last_hour": sum(slot[3] for slot in live),
            "rejected_total": self.rejected,
        }


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
        self.ledger = ledger or Ledger.open(
            config.data_dir,
            record_days=config.request_log_retention_days,
            usage_days=config.usage_retention_days,
        )
        self.ledger.backfill = Backfill(
            lambda kid: getattr(scheduler.get(kid), "key", None), lambda: self.config.upstream_base
        )
        self.metrics_registry = make_registry(
            Collector(
                self.ledger.counters, lambda: len(self.streams), lambda: pool_figures(scheduler)
            )
        )
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
        settings = {
            "default_handler_class": NotFoundHandler,
            "log_function": log_request,
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

    def get_handler_delegate(self, request, target_class, *args: Any, **kwargs: Any):
        delegate = super().get_handler_delegate(request, target_class, *args, **kwargs)
        if getattr(target_class, "buffer_small_bodies", False):
            return SmallBodyFirst(delegate, min(SMALL_BODY, self.config.max_body_bytes))
        return delegate

    def next_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._request_ids)}"

    async def shutdown(self) -> None:
        """Release what the app owns (after the server stopped taking requests)."""
        self.health.stop()
        self.upstream.close()
        self.write_behind.stop()
        await self.write_behind.flush()
        self.store.close()
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


SMALL_BODY = 256 * 1024


class SmallBodyFirst(httputil.HTTPMessageDelegate):
    """Reads a small request body before the handler starts, for ``stream_request_body`` handlers.

    Such a handler starts on the headers, so it can refuse a huge body with an OpenAI-shaped 413
    before reading it. The price is two extra event-loop passes per request (Tornado wakes the
    connection after ``prepare`` and the handler after the body), each a wait behind every other
    ready event: about 1-2 ms of the time to first chunk under 200 streams. A body whose
    Content-Length is at most SMALL_BODY and MAX_REQUEST_BODY_BYTES (nearly every chat request)
    is read first and handed over at once, and the handler then runs at once, in this pass
    (``start_eagerly``), up to its first real wait (the upstream's answer): Tornado would start
    it in a Task, one more pass. Anything else (chunked bodies, large ones) takes Tornado's
    streaming path unchanged.
    """

    def __init__(self, inner: httputil.HTTPMessageDelegate, limit: int) -> None:
        self.inner, self.limit = inner, limit
        self.held: tuple | None = None  # (start_line, headers) while we read the body
        self.chunks: list[bytes] = []

    def headers_received(self, start_line, headers):
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= self.limit and "Transfer-Encoding" not in headers:
            self.held = (start_line, headers)
            return None
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        if self.held is None:
            return self.inner.data_received(chunk)
        self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.held is None:
            return self.inner.finish()
        # What tornado.web._HandlerDelegate.execute does for a streamed body, in an order that
        # lets the handler run straight through: its body (data_received may run before
        # prepare) and the body's future are done before it starts.
        self.held, d = None, self.inner
        d.request._body_future = done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        handler = d.handler = d.handler_class(d.application, d.request, **d.handler_kwargs)
        for chunk in self.chunks:
            handler.data_received(chunk)
        self.chunks = []
        transforms = [t(d.request) for t in d.application.transforms]
        start_eagerly(handler._execute(transforms, *d.path_args, **d.path_kwargs))

    def on_connection_close(self) -> None:
        if self.held is None:
            self.inner.on_connection_close()
            # The connection closed before the whole body came (the client left, or a time
            # limit cut it): the handler, started on the headers, must stop waiting for it,
            # as Tornado's own RequestHandler.on_connection_close makes it (an override may
            # not). Its _execute then ends.
            body = getattr(getattr(self.inner, "request", None), "_body_future", None)
            if body is not None and not body.done():
                body.set_exception(iostream.StreamClosedError())
                body.exception()  # retrieved: no "exception never retrieved" warning


def start_eagerly(coro: Coroutine[Any, Any, Any]) -> asyncio.Task | None:
    """Run ``coro`` now up to its first wait, then on in a Task (None if it ended already).

    Python 3.12's eager tasks, for 3.11: ``asyncio.ensure_future`` would run the first step
    in the next loop pass, behind every event that is ready by then. Under 200 streams that
    wait was 0.7-3 ms of the time to first chunk (p50; p99 9-14 ms). The step runs in the
    caller's context and task, so the coroutine must not rely on ``asyncio.current_task()``
    before its first wait (RequestHandler._execute does not).
    """
    try:
        waited = coro.send(None)
    except StopIteration:
        return None
    task = asyncio.ensure_future(_resume(coro, waited))
    task.add_done_callback(lambda f: f.result())  # as Tornado: an escaped error is logged
    return task


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waited: Any) -> Generator[Any, Any, Any]:
    """The rest of a coroutine whose first step ran already: hands the Task what it waits on,
    and passes the Task's wake-ups and cancellation through."""
    while True:
        try:
            yield waited
        except GeneratorExit:  # the Task was dropped unfinished: end the coroutine too
            coro.close()
            raise
        except BaseException as exc:
            try:
                waited = coro.throw(exc)
            except StopIteration as e:
                return e.value
        else:
            try:
                waited = coro.send(None)
            except StopIteration as e:
                return e.value


def load_env_keys(scheduler: KeyScheduler, text: str) -> int:
    """Add OPENROUTER_API_KEYS to the pool; logs rejected entries; returns how many were added."""
    entries, problems, notes, *_ = parse_key_text(text)
    for problem in problems:
        log.warning("OPENROUTER_API_KEYS: %s", problem)
    for note in notes:
        log.info("OPENROUTER_API_KEYS: %s", note)
    added = sum(1 for key, weight in entries if scheduler.add(key, weight) is not None)
    if entries:
        log.info(
            "loaded %s (%s)",
            plural(added, "key"),
            ", ".join(mask(k) for k, _ in entries[:3]) + (", ..." if len(entries) > 3 else ""),
        )
    return added


def note_env_keys(scheduler: KeyScheduler, text: str) -> None:
    """Once the store holds keys it is the pool; say so if OPENROUTER_API_KEYS differs."""
    entries, _ = parse_keys(text)
    missing = sum(1 for key, _ in entries if key_id(key) not in scheduler.keys)
    if missing:
        log.warning(
            "OPENROUTER_API_KEYS lists %s not in the store, ignored "
            "(the store seeded from it once; add keys in the admin or POST /admin/add-keys)",
            plural(missing, "key"),
        )


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
    if load_pool(store, scheduler):
        note_env_keys(scheduler, config.openrouter_api_keys)
    else:
        load_env_keys(scheduler, config.openrouter_api_keys)
        store.insert_keys(list(scheduler))
    return OrpollApp(
        config,
        env_config=env_config,
        scheduler=scheduler,
        upstream=upstream,
        store=store,
        **overrides,
    )
