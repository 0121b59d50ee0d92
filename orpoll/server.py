"""main(): settings, logging, app, listen, health checks, graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from . import __version__
from .app import make_app
from .config import ConfigError, Settings, help_text, load_dotenv_file, load_settings
from .connections import Server
from .logs import plural, setup_logging
from .store import StoreError

log = logging.getLogger("orpoll")
SHUTDOWN_GRACE_SECONDS = 10.0
LISTEN_BACKLOG = 8192
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
    argv = sys.argv[1:] if argv is None else argv
    hold_stdio()
    if "-h" in argv or "--help" in argv:
        print(f"orpoll {__version__}: python run.py\n\n{help_text()}")
        return
    if "--version" in argv:
        print(__version__)
        return
    load_dotenv_file()
    try:
        config = load_settings(os.environ)
    except ConfigError as e:
        print(f"orpoll: configuration error: {e}", file=sys.stderr)
        sys.exit(2)
    setup_logging(config)
    try:
        event_loop(config)(serve(config))
    except StoreError as e:
        print(f"orpoll: storage error: {e}", file=sys.stderr)
        sys.exit(2)


def event_loop(config: Settings) -> Callable[[Coroutine[Any, Any, None]], None]:
    """``asyncio.run`` or ``uvloop.run``, as EVENT_LOOP says and uvloop is installed.

    uvloop runs the loop itself (waiting for events, timers, the ready queue) in C; asyncio's
    is Python. A/B, 8 rounds each: -4.5% CPU per stream at 200 streams, -5% per non-stream
    request, -5 to -9% per stream at 9,950 streams, at ~1.5-4 KB more RSS per open stream."""
    if config.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("EVENT_LOOP=uvloop, but uvloop is not installed: asyncio's loop runs")
        else:
            return uvloop.run
    return asyncio.run


async def serve(config: Settings) -> None:
    started = time.monotonic()
    fds = raise_fd_limit()
    app = make_app(config)
    server = Server(
        app,
        xheaders=config.trust_proxy_headers,
        max_body_size=config.max_body_bytes,
        idle_connection_timeout=300,
    )
    # Tornado's default backlog of 128 drops SYNs when thousands of clients connect at once;
    # the kernel caps this at net.core.somaxconn.
    server.listen(config.port, config.host, backlog=LISTEN_BACKLOG)
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
    if fds < 2 * config.upstream_max_connections:
        log.warning(
            "open-file limit %d is below 2 x UPSTREAM_MAX_CONNECTIONS; "
            "very many concurrent streams will fail with 'too many open files'",
            fds,
        )
    app.health.start(first_after=STARTUP_SWEEP_SECONDS)
    app.write_behind.start()
    # What start-up built (modules, the app, the key pool: 100k+ objects with many keys) lives
    # as long as the process. Freezing it keeps the collector's full passes from scanning it
    # again and again: those passes were 10-50 ms stalls of every stream under load.
    gc.collect()
    gc.freeze()
    # Requests leave no reference cycles (tests/test_memory.py), so the young-generation
    # passes Tornado's allocations would trigger every ~700 objects find nothing to free:
    # 2-3% of the CPU under load. Collect a 30th as often.
    gc.set_threshold(20_000, 10, 10)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "shutting down: no new connections, waiting up to %.0fs for requests in flight",
        SHUTDOWN_GRACE_SECONDS,
    )
    server.stop()
    app.health.stop()
    deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
    while app.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if app.inflight:
        log.warning("%s still in flight; closing them", plural(app.inflight, "request"))
    await server.close_all_connections()
    await app.shutdown()
