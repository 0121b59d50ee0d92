"""main(): settings, logging, app, listen, health checks, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
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
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from tornado.netutil import bind_sockets

from . import __version__, cli, workers
from .app import OrpollApp, make_app
from .cluster import check_url, open_cluster
from .config import ConfigError, Settings, load_dotenv_file
from .fast import HttpServer, make_server
from .logs import plural, setup_logging
from .metricfiles import MetricFiles, shared_registry
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
    with startup_errors():
        config = cli.load(argv, os.environ)
        count = workers.worker_count(config.workers)
        cli.check_data_dir(config.data_dir)
        check_url(config.redis_url)
        setup_logging(config)
        if count > 1:
            sys.exit(supervise(config, count))
        sockets = listen(config)
        event_loop(config)(serve(config, sockets))


@contextlib.contextmanager
def startup_errors() -> Iterator[None]:
    """What cannot start the process ends it with one line and the exit code for it."""
    try:
        yield
    except ConfigError as e:
        fail(f"configuration error: {e}", cli.EXIT_CONFIG)
    except StoreError as e:
        fail(f"storage error: {e}", cli.EXIT_CONFIG)
    except cli.StartupError as e:
        fail(str(e), e.code)


def fail(message: str, code: int) -> None:
    print(f"orpoll: {message}", file=sys.stderr)
    sys.exit(code)


def supervise(config: Settings, count: int) -> int:
    """WORKERS > 1: this process supervises ``count`` workers serving one listening socket.

    One socket shared by all, rather than one per worker with SO_REUSEPORT: both spread the
    load as evenly (bench/README.md), and with one socket a worker's death strands no
    connection in its own accept queue while it starts again: the others accept them."""
    sockets = listen(config)

    def run(worker: workers.Worker, socks: list[socket.socket]) -> None:
        with startup_errors():
            setup_logging(config, worker.index)
            event_loop(config)(serve(config, socks, worker))

    return workers.Supervisor(count, [sockets] * count, run, config.shutdown_grace).serve()


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


async def serve(
    config: Settings, sockets: list[socket.socket], worker: workers.Worker | None = None
) -> None:
    """Serve on ``sockets`` until SIGTERM or SIGINT, then drain. ``worker``: this process is
    one of WORKERS (None: the only one)."""
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
    log.info(
        "orpoll %s listening on http://%s:%d (%s, fd limit %d, %s loop, ready in %.2fs)",
        __version__,
        config.host,
        config.port,
        plural(len(app.scheduler), "key"),
        fds,
        type(asyncio.get_running_loop()).__module__.partition(".")[0],
        time.monotonic() - started,
    )
    warn_at_start(app, config, fds, everything=worker is None or worker.index == 0)
    files = start_background(app, worker)
    app.ready = True
    if worker is not None:
        worker.announce_ready()
    settle_memory()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(app, server, config.shutdown_grace)
    if files is not None:
        files.stop()


def start_background(app: OrpollApp, worker: workers.Worker | None) -> MetricFiles | None:
    """The periodic work: health sweeps (in one worker only), the write-behind of key state,
    and with several workers this one's share of /metrics (returned, to stop after draining)."""
    if worker is None or worker.runs_sweeps():
        app.health.start(first_after=STARTUP_SWEEP_SECONDS)
    app.write_behind.start()
    if worker is None or worker.count == 1:
        return None
    app.ledger.share()  # the other workers write to the same ledger
    files = MetricFiles(app.metrics_collector, worker.metrics_dir)
    app.metrics_registry = shared_registry(files)
    files.start()
    return files


def settle_memory() -> None:
    # What start-up built (modules, the app, the key pool: many objects with many keys) lives
    # as long as the process. Freezing it keeps the collector's full passes from scanning it
    # again and again: those passes stalled every stream under load.
    gc.collect()
    gc.freeze()
    # Requests leave no reference cycles (tests/test_memory.py), so the young-generation
    # passes Tornado's allocations would trigger every few hundred objects find nothing to
    # free, at a cost in CPU under load: collect far less often.
    gc.set_threshold(20_000, 10, 10)


def warn_at_start(app: OrpollApp, config: Settings, fds: int, everything: bool = True) -> None:
    """The warnings an operator must see once: the generated admin password, an empty pool,
    an open relay, a low descriptor limit (not ``everything``: the password alone, for the
    workers past the first, whose other warnings would repeat worker 0's)."""
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
    if not everything:
        return
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
