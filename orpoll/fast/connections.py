"""The HTTP server: Tornado's, with keep-alive connections that read the next request at once
(``_Connection``), hold no empty deques (``_LazyDeque``), and an accept loop that pauses when
the process is out of file descriptors (``Server``). ``server.main`` serves the app with it."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import socket
import time
import weakref
from collections.abc import Iterable
from typing import Any

import tornado.httpserver
from tornado import httputil, iostream
from tornado.http1connection import HTTP1ServerConnection
from tornado.ioloop import PeriodicCallback

from ..limits import (
    MAX_HEADER_BYTES,
    Limits,
    RequestTooLarge,
    answer_and_close,
    oversized,
    silent_for,
)
from .accept import Acceptor
from .headers import HTTP1Connection
from .heap import BURST_MMAP_THRESHOLD

log = logging.getLogger("orpoll")
# Bytes read from a client socket at a time. Tornado's default is a zeroed bytearray per read
# above the heap's mmap threshold in a burst (heap.py): each read would mmap it.
READ_CHUNK_BYTES = BURST_MMAP_THRESHOLD - 1024
# Out of descriptors, connections that have not completed a request and have sent nothing for
# this long are closed first: a client still sending is spared.
SHED_SILENT_SECONDS = 5.0
CLOSE = 0  # what ``_Connection.overdue`` says of a connection to close without an answer


class _Connection(HTTP1ServerConnection):
    """Tornado's keep-alive loop without the ``asyncio.sleep(0)`` between requests, unless the
    client has already sent (pipelined) the next one.

    That sleep is for fairness to other connections when requests are queued in the buffer.
    With nothing queued the next read waits for the socket anyway, and the extra loop pass
    was a wait behind every other ready event before a keep-alive client's next request was
    read. Mirrors ``HTTP1ServerConnection._server_request_loop``; differs in that sleep, in
    timing the wait for headers (``waiting_since``) and in answering an over-long request line.
    """

    current: HTTP1Connection | None = None
    served = 0
    waiting_since = 0.0  # monotonic time it began waiting for a request's headers

    def overdue(self, now: float, limits: Limits) -> int | None:
        """Whether a time limit of the request being read has passed: None if not (or the
        request is read and its handler runs), CLOSE to close the connection without an
        answer (an idle keep-alive client, or one that sent nothing), or 408 to answer first.

        Headers are timed from when the connection began to wait for them; on a kept-alive
        connection, from when a sweep first saw bytes of the next request. A body is timed by
        its silence: how long ago data last arrived (the kernel's count, or where there is
        none, how long ago a sweep first saw the body being read)."""
        conn = self.current
        if conn is None or conn._read_finished:
            return None
        if conn._request_start_line is None:
            buffered = self.stream._read_buffer_size
            if self.served and not buffered:
                return CLOSE if now - self.waiting_since > limits.idle else None
            since = self.waiting_since
            if self.served:
                since = conn.seen_at = conn.seen_at or now
            if now - since <= limits.header:
                return None
            return 408 if buffered else CLOSE
        silent = silent_for(self.stream.socket)
        if silent is None:
            silent = now - (conn.seen_at or now)
            conn.seen_at = conn.seen_at or now
        if silent <= limits.body:
            return None
        return CLOSE if conn._response_start_line is not None else 408  # answered already

    def stalled(self, now: float) -> bool:
        """Never completed a request, and sent nothing for SHED_SILENT_SECONDS."""
        conn = self.current
        if self.served or conn is None or conn._read_finished:
            return False
        if conn._request_start_line is None:
            return now - self.waiting_since >= SHED_SILENT_SECONDS
        silent = silent_for(self.stream.socket)
        return silent is not None and silent >= SHED_SILENT_SECONDS

    def reusable(self) -> bool:
        """True while a keep-alive client that was served already sends nothing: the
        connection can be closed to free its descriptor (see accept.Acceptor), as nginx
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
                except RequestTooLarge as e:  # a request line over its limit (headers.py)
                    answer_and_close(self.stream.socket, e.status, e.message)
                    self.stream.close()
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

    An IOStream keeps two deques (its write buffer's pieces and its write futures), sizeable
    even while empty, which is most of the time: a response's bytes usually leave in one
    ``send``. Across thousands of open streams that adds up. Covers what ``iostream`` does
    with them.
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

    def initialize(self, *args: Any, limits: Limits | None = None, **kw: Any) -> None:
        """Tornado's, but the client time limits (``limits``; by default the app's
        CLIENT_*_TIMEOUT_SECONDS) are enforced by a sweep of the open connections
        (``_sweep``) instead of a timer per request. Tornado arms ``gen.with_timeout`` around
        every request's header read: a real share of a short request's CPU, for a limit of
        seconds."""
        kw.setdefault("chunk_size", READ_CHUNK_BYTES)
        kw.setdefault("max_header_size", MAX_HEADER_BYTES)
        super().initialize(*args, **kw)
        self.limits = limits or limits_of(self.request_callback)
        self.conn_params.header_timeout = None
        self._sweeper: PeriodicCallback | None = None

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            acceptor = Acceptor(
                sock,
                self._handle_connection,
                self.shed,
                batch=self.ACCEPT_BATCH,
                pause_seconds=self.ACCEPT_PAUSE,
            )
            self._handlers[sock.fileno()] = acceptor.remove
        if self._sweeper is None:
            self._sweeper = PeriodicCallback(self._sweep, 1000 * self.limits.sweep_every())
            self._sweeper.start()

    async def close_all_connections(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
        await super().close_all_connections()

    async def flush_writes(self, limit: float) -> None:
        """Wait up to ``limit`` seconds while any connection still has bytes queued for its
        client (the end of a stream, before the connections are closed)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and any(
            c.stream.writing() for c in self._connections if not c.stream.closed()
        ):
            await asyncio.sleep(0.02)

    def _sweep(self) -> None:
        """Close the connections past a time limit (``_Connection.overdue``); a client that
        sent part of a request is answered 408 first."""
        now, limits = time.monotonic(), self.limits
        cut = 0
        for conn in list(self._connections):
            if isinstance(conn, _Connection):
                verdict = conn.overdue(now, limits)
                if verdict is not None:
                    if verdict:
                        answer_and_close(
                            conn.stream.socket, verdict, "the client sent its request too slowly"
                        )
                    conn.stream.close()
                    cut += verdict == 408
        if cut:
            log.info("closed %d client connections that sent a request too slowly", cut)

    def shed(self) -> int:
        """Close connections to free their descriptors; how many. First those that never
        completed a request and went silent (``_Connection.stalled``); if there are none, the
        idle keep-alive ones (``_Connection.reusable``)."""
        now = time.monotonic()
        conns = [c for c in self._connections if isinstance(c, _Connection)]
        victims = [c for c in conns if c.stalled(now)] or [c for c in conns if c.reusable()]
        for conn in victims:
            conn.stream.close()
        return len(victims)

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        # No Nagle delay, for the whole connection: set once here. Tornado's HTTP1Connection
        # turns it on at each response's end and off again after it (two setsockopt calls
        # and two enum conversions per request), which also left every stream after the
        # first on a keep-alive connection with Nagle on.
        stream.set_nodelay(True)
        stream.set_nodelay = _nodelay_stays  # type: ignore[method-assign]
        stream._write_futures = _LazyDeque()  # type: ignore[assignment]
        # Weakly: the stream holding a strong reference to itself would be a reference cycle,
        # freed only by the collector's full passes.
        stream._check_max_bytes = functools.partial(  # type: ignore[method-assign]
            _check_header_bytes, weakref.proxy(stream)
        )
        stream._write_buffer._buffers = _LazyDeque()  # type: ignore[assignment]
        context = tornado.httpserver._HTTPRequestContext(
            stream, address, self.protocol, self.trusted_downstream
        )
        conn = _Connection(stream, self.conn_params, context)
        self._connections.add(conn)
        conn.start_serving(self)


def limits_of(app: Any) -> Limits:
    """The app's client time limits (Tornado's defaults' order of magnitude without one)."""
    config = getattr(app, "config", None)
    if config is None:
        return Limits()
    return Limits(
        header=config.client_header_timeout,
        body=config.client_body_timeout,
        idle=config.client_idle_timeout,
    )


def _check_header_bytes(stream: iostream.IOStream, delimiter: Any, size: int) -> None:
    """``IOStream._check_max_bytes`` for client connections: a header block over its limit is
    answered 431 (or 414, for its first line) before Tornado closes the connection. Tornado
    reads a request's header block with the only regular-expression delimiter it uses here
    (chunk sizes of a body are read up to a bytes delimiter). Runs at every header read: the
    common case is Tornado's one comparison."""
    limit = stream._read_max_bytes
    if limit is None or size <= limit:
        return
    if not isinstance(delimiter, bytes):
        err = oversized(stream._read_buffer)
        answer_and_close(stream.socket, err.status, err.message)
    iostream.IOStream._check_max_bytes(stream, delimiter, size)  # raises, as Tornado's
