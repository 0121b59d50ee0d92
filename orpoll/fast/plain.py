"""The fallbacks (FAST=0): each fast path's job done through the libraries' public APIs only.

``PlainServer`` is Tornado's HTTPServer as it comes, ``PlainWriter`` answers through
``RequestHandler.write``/``flush``/``finish``, and ``PlainPool`` runs transfers on Tornado's
``CurlAsyncHTTPClient`` with ``streaming_callback`` and ``header_callback``. Aborting a transfer
and its first-byte and stall timers go through curl's progress callback (``XFERINFOFUNCTION``,
set in ``prepare_curl_callback``), which curl calls as data moves and about once a second
while none does.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

import pycurl
import tornado.httpserver
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream
from tornado.web import RequestHandler

from ..limits import MAX_HEADER_BYTES, Limits
from .connections import limits_of
from .transfer import BODY_LIMIT, USER_AGENT, Transfer

# Tornado's curl client builds all its handles up front; past this many transfers at once the
# rest wait for one (the fast pool grows its handles as load needs them).
PLAIN_MAX_CLIENTS = 1024
CURLE_ABORTED_BY_CALLBACK = 42


class PlainServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer: its own connections, header parsing and time limits."""

    def initialize(self, *args: Any, limits: Limits | None = None, **kw: Any) -> None:
        limits = limits or limits_of(args[0] if args else kw.get("request_callback"))
        kw.setdefault("max_header_size", MAX_HEADER_BYTES)
        kw.setdefault("idle_connection_timeout", limits.header)
        kw.setdefault("body_timeout", limits.body)
        super().initialize(*args, **kw)
        self.streams: weakref.WeakSet[IOStream] = weakref.WeakSet()

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        self.streams.add(stream)
        super().handle_stream(stream, address)

    async def flush_writes(self, limit: float) -> None:
        """Wait up to ``limit`` seconds while any client connection still has bytes queued."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and any(
            s.writing() for s in list(self.streams) if not s.closed()
        ):
            await asyncio.sleep(0.02)


class PlainWriter:
    """A relay handler's answer through Tornado's own write path."""

    fast = False

    @staticmethod
    def start_stream(handler: RequestHandler, chunk: bytes) -> None:
        handler.write(chunk)
        handler.flush()

    @staticmethod
    def send_chunk(handler: RequestHandler, data: bytes) -> bool:
        """Write and flush ``data``; True while bytes wait for the client. The flush's future
        is not awaited: the backlog is judged from the stream, as the fast writer does."""
        handler.write(data)
        handler.flush()
        stream = handler.request.connection.stream  # type: ignore[union-attr]
        return stream.writing()

    @staticmethod
    def finish(handler: RequestHandler, streaming: bool) -> None:
        handler.finish()


class PlainPool:
    """Transfers on Tornado's CurlAsyncHTTPClient through its public ``fetch``."""

    SWEEP_SECONDS = 1.0

    def __init__(self, limit: int) -> None:
        self.client = CurlAsyncHTTPClient(
            force_instance=True, max_clients=min(limit, PLAIN_MAX_CLIENTS), max_body_size=BODY_LIMIT
        )
        self.running: set[Transfer] = set()
        self.sweeper: PeriodicCallback | None = None

    def send(self, transfer: Transfer) -> asyncio.Future[Transfer]:
        """As the fast pool's ``send``: the future gives ``transfer`` back done, never raises."""
        return asyncio.ensure_future(self._run(transfer))

    async def _run(self, transfer: Transfer) -> Transfer:
        if transfer.aborted:
            transfer.error = CurlError(CURLE_ABORTED_BY_CALLBACK, "aborted by orpoll")
            return transfer
        watch = _Watch(transfer)
        request = HTTPRequest(
            transfer.url,
            method=transfer.method,
            headers=_headers(transfer.lines),
            body=transfer.payload,
            allow_nonstandard_methods=True,
            connect_timeout=transfer.connect_timeout,
            request_timeout=0,
            user_agent=USER_AGENT,
            decompress_response=True,
            ca_certs=transfer.ca_bundle or None,
            follow_redirects=False,
            header_callback=watch.on_header_line,
            streaming_callback=watch.on_chunk if transfer.on_chunk is not None else None,
            prepare_curl_callback=watch.prepare,
        )
        transfer.begun = time.monotonic()
        self._watch(transfer)
        try:
            response = await self.client.fetch(request, raise_error=False)
        except CurlError as e:
            transfer.error = e.with_traceback(None)  # its frames would hold the transfer
        except HTTPClientError as e:  # Tornado's own 599s (a body over max_body_size)
            transfer.error = CurlError(e.code, e.message or "")
        else:
            _take(transfer, response)
        finally:
            self.running.discard(transfer)
            transfer.curl = transfer.client = None  # the handle goes back to Tornado
        watch.release()
        return transfer

    def _watch(self, transfer: Transfer) -> None:
        """Time ``transfer`` (its first-byte and stall limits) with a sweep, as the fast pool."""
        if not (transfer.stall or transfer.first_byte):
            return
        self.running.add(transfer)
        interval = min(self.SWEEP_SECONDS, max(0.05, transfer.sweep_every))
        if self.sweeper is None or self.sweeper.callback_time > 1000 * interval:
            if self.sweeper is not None:
                self.sweeper.stop()
            self.sweeper = PeriodicCallback(self._sweep, 1000 * interval)
            self.sweeper.start()

    def _sweep(self) -> None:
        now = time.monotonic()
        for transfer in list(self.running):
            if transfer.stalled(now):
                transfer.timed_out = True  # classify_transport words the error from this
                transfer.abort()

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        self.client.close()


def _headers(lines: list[bytes]) -> dict[str, str]:
    """The transfer's header lines as Tornado's header dict (an empty value removes one of
    curl's defaults, as in the fast path)."""
    out = {}
    for line in lines:
        name, _, value = line.decode("latin1").partition(":")
        out[name.strip()] = value.strip()
    return out


def _take(transfer: Transfer, response: HTTPResponse) -> None:
    """Copy a finished fetch's result onto the transfer (a buffered one keeps its body)."""
    transfer.status = response.code
    if transfer.on_chunk is None and response.body:
        transfer.chunks, transfer.size = [response.body], len(response.body)
    response.error = None  # Tornado links the two both ways: a cycle that outlives the request


class _Watch:
    """One transfer's callbacks: curl's progress callback ends it once it is aborted (by the
    relay, or by the pool's sweep past its first-byte or stall limit); and its chunks reach the
    transfer after its headers.

    Tornado queues each header line for the loop, but hands over the chunks of a transfer that
    finishes within one socket event at once: those would come before the status that says what
    they are. They wait here for the header block's end.
    """

    __slots__ = ("transfer", "held")

    def __init__(self, transfer: Transfer) -> None:
        self.transfer = transfer
        self.held: list[bytes] | None = []  # None once the header block is complete

    def prepare(self, curl: pycurl.Curl) -> None:
        self.transfer.curl, self.transfer.client = curl, self  # for abort() and the sweep
        curl.setopt(pycurl.VERBOSE, 0)  # Tornado turns it on at DEBUG: keys in the log
        curl.setopt(pycurl.NOPROGRESS, 0)
        curl.setopt(pycurl.XFERINFOFUNCTION, self.check)
        curl.setopt(pycurl.UPLOAD_BUFFERSIZE, 16384)

    def check(self, *_sizes: int) -> int:
        return 1 if self.transfer.aborted else 0

    def abort(self, curl: pycurl.Curl) -> None:
        """Wake curl for this transfer now (pausing and resuming it makes curl run it at once),
        so that its progress callback sees the abort: idle, curl would not call it."""
        try:
            curl.pause(pycurl.PAUSE_ALL)
            curl.pause(pycurl.PAUSE_CONT)
        except pycurl.error:
            pass

    def on_header_line(self, line: str) -> None:
        if line.startswith("HTTP/"):
            self.held = self.held or []
        self.transfer.on_header_line(line)
        if not line.strip():
            self.release()

    def on_chunk(self, chunk: bytes) -> None:
        if self.held is not None:
            self.held.append(chunk)
        else:
            self.transfer.write(chunk)

    def release(self) -> None:
        held, self.held = self.held, None
        for chunk in held or ():
            self.transfer.write(chunk)


def quiet_curl(curl: pycurl.Curl) -> None:
    """A ``prepare_curl_callback`` that keeps curl quiet: with tornado.curl_httpclient at DEBUG
    (LOG_LEVEL=debug), Tornado turns on VERBOSE and logs every request header,
    ``Authorization: Bearer <key>`` included."""
    curl.setopt(pycurl.VERBOSE, 0)
