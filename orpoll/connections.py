"""The HTTP server: Tornado's, with keep-alive connections that read the next request at once
(``_Connection``), hold no empty deques (``_LazyDeque``), and an accept loop that pauses when
the process is out of file descriptors (``Server``). ``server.main`` serves the app with it."""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import tornado.httpserver
from tornado import httputil, iostream
from tornado.http1connection import HTTP1ServerConnection
from tornado.ioloop import IOLoop, PeriodicCallback

from .classify import LOCAL_ERRNOS
from .headers import HTTP1Connection
from .heap import BURST_MMAP_THRESHOLD
from .logs import plural

log = logging.getLogger("orpoll")
# Bytes read from a client socket at a time. Tornado's default, 64 KB, is a zeroed bytearray
# per read; it stays under the heap's mmap threshold in a burst (heap.py), or each read then
# would mmap it.
READ_CHUNK_BYTES = BURST_MMAP_THRESHOLD - 1024


class _Connection(HTTP1ServerConnection):
    """Tornado's keep-alive loop without the ``asyncio.sleep(0)`` between requests, unless the
    client has already sent (pipelined) the next one.

    That sleep is for fairness to other connections when requests are queued in the buffer.
    With nothing queued the next read waits for the socket anyway, and the extra loop pass
    was a wait behind every other ready event before a keep-alive client's next request was
    read (traced under 200 streams: previous response end -> next request parsed, p50 2.4 ->
    1.0 ms). Mirrors ``HTTP1ServerConnection._server_request_loop`` (Tornado 6.x, pinned < 7).
    """

    current: HTTP1Connection | None = None
    served = 0
    waiting_since = 0.0  # monotonic time it began waiting for a request's headers

    def idle_for(self, now: float) -> float:
        """Seconds it has waited for a request's headers (0 while a request runs)."""
        conn = self.current
        if conn is None or conn._request_start_line is not None:
            return 0.0
        return now - self.waiting_since

    def reusable(self) -> bool:
        """True while a keep-alive client that was served already sends nothing: the
        connection can be closed to free its descriptor (see Server._accept_from), as nginx
        closes its idle keep-alive connections when it runs out of them."""
        conn, stream = self.current, self.stream
        if not self.served or conn is None or conn._request_start_line is not None:
            return False
        if stream.closed() or stream._read_buffer_size or stream.writing():
            return False
        try:  # bytes of a next request may be in the kernel already
            return not stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False

    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        try:
            while True:
                conn = self.current = HTTP1Connection(self.stream, False, self.params, self.context)
                self.waiting_since = time.monotonic()
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (
                    iostream.StreamClosedError,
                    iostream.UnsatisfiableReadError,
                    asyncio.CancelledError,
                ):
                    return
                except Exception:
                    log.error("Uncaught exception", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                self.served += 1
                if self.stream._read_buffer_size:  # pipelined: let others run first
                    await asyncio.sleep(0)
        finally:
            delegate.on_close(self)


class _LazyDeque:
    """The part of a deque IOStream uses, made on first append and let go of when emptied.

    An IOStream keeps two deques (its write buffer's pieces and its write futures), 760 bytes
    each even while empty, which is most of the time: a response's bytes usually leave in
    one ``send``. Across thousands of open streams that was 1.5 KB each (bench slow_streams).
    Covers what ``iostream`` does with them (Tornado 6.x, pinned < 7).
    """

    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d: collections.deque | None = None

    def append(self, item: object) -> None:
        if self._d is None:
            self._d = collections.deque()
        self._d.append(item)

    def popleft(self) -> object:
        d = self._d
        if d is None:
            raise IndexError("pop from an empty deque")
        item = d.popleft()
        if not d:
            self._d = None
        return item

    def __getitem__(self, i: int) -> object:
        if self._d is None:
            raise IndexError("deque index out of range")
        return self._d[i]

    def __bool__(self) -> bool:
        return self._d is not None

    def __len__(self) -> int:
        return 0 if self._d is None else len(self._d)

    def __iter__(self):
        return iter(self._d or ())

    def clear(self) -> None:
        self._d = None


def _nodelay_stays(value: bool) -> None:
    """IOStream.set_nodelay for client connections: TCP_NODELAY stays on."""


class Server(tornado.httpserver.HTTPServer):
    """HTTPServer whose connections use ``_Connection`` (the tests serve the app with it too)
    and hold no empty deques (``_LazyDeque``), and whose accept loop pauses when the process
    is out of file descriptors."""

    ACCEPT_BATCH = 128  # connections accepted per readiness event, as Tornado's
    ACCEPT_PAUSE = 0.1  # seconds without accepting after EMFILE/ENFILE

    def initialize(self, *args: Any, idle_connection_timeout: float | None = None, **kw: Any):
        """Tornado's, but ``idle_connection_timeout`` is enforced by a sweep of the open
        connections (``_close_idle``) instead of a timer per request. Tornado arms
        ``gen.with_timeout`` around every request's header read; that was 7% of a non-stream
        request's CPU (A/B: 0.281 -> 0.262 ms) for a limit of minutes."""
        kw.setdefault("chunk_size", READ_CHUNK_BYTES)
        super().initialize(*args, idle_connection_timeout=idle_connection_timeout, **kw)
        self.idle_seconds = idle_connection_timeout or 3600.0
        self.conn_params.header_timeout = None
        self._idle_sweep: PeriodicCallback | None = None

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_from(sock)
        if self._idle_sweep is None:
            every = min(10.0, max(0.05, self.idle_seconds / 4))
            self._idle_sweep = PeriodicCallback(self._close_idle, 1000 * every)
            self._idle_sweep.start()

    def stop(self) -> None:
        if self._idle_sweep is not None:
            self._idle_sweep.stop()
        super().stop()

    def _close_idle(self) -> None:
        """Close connections that waited longer than ``idle_seconds`` for a request's headers
        (an idle keep-alive client, or one that sends its headers too slowly)."""
        now, limit = time.monotonic(), self.idle_seconds
        for conn in list(self._connections):
            if isinstance(conn, _Connection) and conn.idle_for(now) > limit:
                conn.stream.close()

    def close_reusable(self) -> int:
        """Close the idle keep-alive client connections; how many."""
        idle = [c for c in self._connections if isinstance(c, _Connection) and c.reusable()]
        for conn in idle:
            conn.stream.close()
        return len(idle)

    def _accept_from(self, sock: socket.socket) -> Callable[[], None]:
        """Tornado's ``add_accept_handler``, except when accept() fails for want of file
        descriptors (EMFILE, ENFILE) or kernel memory. Tornado lets that error out of the
        handler while the listening socket stays readable: the loop spun at 100% CPU and
        logged a traceback per pass (a million in a minute, measured) until a descriptor
        freed. Here accepting pauses for ACCEPT_PAUSE seconds instead: the running streams go
        on, new clients wait in the listen queue, and one warning (at most every 10 s) says why.
        """
        io_loop = IOLoop.current()
        state = {"removed": False, "paused": False, "warned": 0.0, "refused": 0, "closed": 0}

        def accept(fd: socket.socket, events: int) -> None:
            for _ in range(self.ACCEPT_BATCH):
                if state["removed"] or state["paused"]:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as e:
                    if e.errno not in LOCAL_ERRNOS:
                        raise
                    pause(e)
                    return
                self._handle_connection(connection, address)

        def pause(e: OSError) -> None:
            state["paused"] = True
            state["refused"] += 1
            io_loop.remove_handler(sock)
            io_loop.call_later(self.ACCEPT_PAUSE, resume)
            # Idle keep-alive clients would otherwise hold every descriptor while the clients
            # in the listen queue wait for one: close them (they reconnect when they need to).
            closed = self.close_reusable()
            state["closed"] += closed
            now = time.monotonic()
            if now - state["warned"] >= 10.0:
                log.warning(
                    "cannot accept connections (%s; fd limit %d): pausing accept() for %g s; "
                    "new clients wait in the listen queue (%s, %s closed so far)",
                    e.strerror,
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    self.ACCEPT_PAUSE,
                    plural(state["refused"], "pause"),
                    plural(state["closed"], "idle keep-alive connection"),
                )
                state["warned"] = now

        def resume() -> None:
            state["paused"] = False
            if not state["removed"]:
                io_loop.add_handler(sock, accept, IOLoop.READ)

        def remove() -> None:
            if not state["removed"] and not state["paused"]:
                io_loop.remove_handler(sock)
            state["removed"] = True

        io_loop.add_handler(sock, accept, IOLoop.READ)
        return remove

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        # No Nagle delay, for the whole connection: set once here. Tornado's HTTP1Connection
        # turns it on at each response's end and off again after it (two setsockopt calls
        # and two enum conversions per request, 5% of a non-stream request's CPU), which also
        # left every stream after the first on a keep-alive connection with Nagle on.
        stream.set_nodelay(True)
        stream.set_nodelay = _nodelay_stays  # type: ignore[method-assign]
        stream._write_futures = _LazyDeque()  # type: ignore[assignment]
        stream._write_buffer._buffers = _LazyDeque()  # type: ignore[assignment]
        context = tornado.httpserver._HTTPRequestContext(
            stream, address, self.protocol, self.trusted_downstream
        )
        conn = _Connection(stream, self.conn_params, context)
        self._connections.add(conn)
        conn.start_serving(self)
