"""main(): settings, logging, app, listen, health checks, graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import resource
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from tornado.netutil import bind_sockets

from . import __version__, cli
from .app import OrpollApp, make_app
from .cluster import check_url, open_cluster
from .config import ConfigError, Settings, load_dotenv_file
from .fast import HttpServer, make_server
from .logs import plural, setup_logging
from .store import StoreError

log = logging.getLogger("orpoll")
LISTEN_BACKLOG = 8192
FLUSH_SECONDS = 1.0  # at the end of a shutdown, for what the last writes left queued
STARTUP_SWEEP_SECONDS = 5.0  # first health sweep, soon after start-up


def raise_fd_limit() -> int:
    """Raise the open-file limit to the hard limit (each stream holds two sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def hold_stdio() -> None:
    """Put /dev/null on any of descriptors 0-2 that a parent closed. Otherwise the next socket
    or the loop's own epoll descriptor takes that number: a C library's stray write to stderr
    would land in a client's socket, and libuv (uvloop) aborts rather than close it at exit."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one


def main(argv: list[str] | None = None) -> None:
    """``python run.py [flags]``: exits 2 (configuration, storage) or 3 (cannot listen) with
    one line on stderr when it cannot start, 0 after a graceful shutdown."""
    argv = sys.argv[1:] if argv is None else argv
    hold_stdio()
    load_dotenv_file()
    try:
        config = cli.load(argv, os.environ)
        cli.check_data_dir(config.data_dir)
        check_url(config.redis_url)
        setup_logging(config)
        sockets = listen(config)
        event_loop(config)(serve(config, sockets))
    except ConfigError as e:
        fail(f"configuration error: {e}", cli.EXIT_CONFIG)
    except StoreError as e:
        fail(f"storage error: {e}", cli.EXIT_CONFIG)
    except cli.StartupError as e:
        fail(str(e), e.code)


def fail(message: str, code: int) -> None:
    print(f"orpoll: {message}", file=sys.stderr)
    sys.exit(code)


def listen(config: Settings) -> list[socket.socket]:
    """The listening sockets, bound before anything else starts (a taken port is reported at
    once). Tornado's default backlog of 128 drops SYNs when thousands of clients connect at
    once; the kernel caps this at net.core.somaxconn."""
    try:
        return bind_sockets(config.port, config.host or None, backlog=LISTEN_BACKLOG)
    except OSError as e:
        raise cli.StartupError(
            f"cannot listen on {config.host or '*'}:{config.port}: {e.strerror or e} "
            "(set PORT or --port, HOST or --host)",
            cli.EXIT_LISTEN,
        ) from None


def event_loop(config: Settings) -> Callable[[Coroutine[Any, Any, None]], None]:
    """``asyncio.run`` or ``uvloop.run``, as EVENT_LOOP says and uvloop is installed.

    uvloop runs the loop itself (waiting for events, timers, the ready queue) in C; asyncio's
    is Python: less CPU per request and per stream, for a little more memory per open stream
    (bench/README.md)."""
    if config.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("EVENT_LOOP=uvloop, but uvloop is not installed: asyncio's loop runs")
        else:
            return uvloop.run
    return asyncio.run


async def serve(config: Settings, sockets: list[socket.socket]) -> None:
    started = time.monotonic()
    fds = raise_fd_limit()
    try:
        app = make_app(config)
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"cannot open the database in {config.data_dir}: {e}") from None
    app.ready = False
    # Joined before taking requests: a new instance serves the shared pool from its first
    # request (connections wait in the listen queue meanwhile).
    app.cluster = open_cluster(app, os.environ)
    await app.cluster.start()
    server = make_server(
        app,
        fast=config.fast,
        xheaders=config.trust_proxy_headers,
        max_body_size=config.max_body_bytes,
    )
    server.add_sockets(sockets)
    n = len(app.scheduler)
    log.info(
        "orpoll %s listening on http://%s:%d (%s, fd limit %d, %s loop, ready in %.2fs)",
        __version__,
        config.host,
        config.port,
        plural(n, "key"),
        fds,
        type(asyncio.get_running_loop()).__module__.partition(".")[0],
        time.monotonic() - started,
    )
    warn_at_start(app, config, fds)
    app.health.start(first_after=STARTUP_SWEEP_SECONDS)
    app.write_behind.start()
    app.ready = True
    # What start-up built (modules, the app, the key pool: many objects with many keys) lives
    # as long as the process. Freezing it keeps the collector's full passes from scanning it
    # again and again: those passes stalled every stream under load.
    gc.collect()
    gc.freeze()
    # Requests leave no reference cycles (tests/test_memory.py), so the young-generation
    # passes Tornado's allocations would trigger every few hundred objects find nothing to
    # free, at a cost in CPU under load: collect far less often.
    gc.set_threshold(20_000, 10, 10)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(app, server, config.shutdown_grace)


def warn_at_start(app: OrpollApp, config: Settings, fds: int) -> None:
    """The warnings an operator must see once: the generated admin password, an empty pool,
    an open relay, a low descriptor limit."""
    n = len(app.scheduler)
    if app.generated_password:
        host = config.host if config.host not in ("", "0.0.0.0", "::") else "localhost"
        log.warning(
            "admin password generated (shown this once; only its scrypt hash is stored in %s): "
            "%s  -- sign in at http://%s:%d/admin/login",
            config.data_dir,
            app.generated_password,
            host,
            config.port,
        )
        app.generated_password = None
    if not n:
        log.warning(
            "no OpenRouter keys yet: set OPENROUTER_API_KEYS or add keys in the admin; "
            "/v1 answers 503 until then"
        )
    elif not config.app_api_key and not is_loopback(config.host):
        log.warning(
            "OPEN RELAY: listening on %s with %d OpenRouter keys and no APP_API_KEY: anyone "
            "who can reach port %d spends your credits. Set APP_API_KEY, or HOST=127.0.0.1 "
            "behind a proxy that authenticates",
            config.host or "every address",
            n,
            config.port,
        )
    if fds < 2 * config.upstream_max_connections:
        log.warning(
            "open-file limit %d is below 2 x UPSTREAM_MAX_CONNECTIONS; "
            "very many concurrent streams will fail with 'too many open files'",
            fds,
        )


def is_loopback(host: str) -> bool:
    """True when ``host`` (HOST) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", a name: possibly every interface


async def drain(app: OrpollApp, server: HttpServer, grace: float) -> None:
    """Graceful shutdown: stop listening at once (requests on kept-alive connections are
    answered 503 while ``app.draining``), let requests and streams in flight finish within
    ``grace`` seconds, end the streams still open with an error event and ``[DONE]``, close
    the connections, and flush the state."""
    app.draining = True
    server.stop()
    app.health.stop()
    log.info(
        "shutting down: no new connections; waiting up to %gs for %d requests in flight "
        "(%d streams)",
        grace,
        app.inflight,
        len(app.streams),
    )
    deadline = time.monotonic() + grace
    while (app.inflight or app.streams) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if app.streams:
        log.warning("ending %d streams still open at the end of the grace period", len(app.streams))
        for handler in list(app.streams):
            handler.end_for_shutdown()
    if app.inflight:
        log.warning("%s still in flight; closing them", plural(app.inflight, "request"))
    await server.flush_writes(FLUSH_SECONDS)
    await server.close_all_connections()
    await app.shutdown()
