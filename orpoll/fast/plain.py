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
from tornado.iostream import IOStream
from tornado.web import RequestHandler

from ..limits import MAX_HEADER_BYTES, Limits
from .transfer import BODY_LIMIT, USER_AGENT, Transfer

# Tornado's curl client builds all its handles up front; past this many transfers at once the
# rest wait for one (the fast pool grows its handles as load needs them).
PLAIN_MAX_CLIENTS = 1024
CURLE_ABORTED_BY_CALLBACK = 42


class PlainServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer: its own connections, header parsing and time limits."""

    def initialize(self, *args: Any, limits: Limits | None = None, **kw: Any) -> None:
        limits = limits or _limits_of(args[0] if args else kw.get("request_callback"))
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


def _limits_of(app: Any) -> Limits:
    config = getattr(app, "config", None)
    if config is None:
        return Limits()
    return Limits(
        header=config.client_header_timeout,
        body=config.client_body_timeout,
        idle=config.client_idle_timeout,
    )


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

    def __init__(self, limit: int) -> None:
        self.client = CurlAsyncHTTPClient(
            force_instance=True, max_clients=min(limit, PLAIN_MAX_CLIENTS), max_body_size=BODY_LIMIT
        )

    def send(self, transfer: Transfer) -> asyncio.Future[Transfer]:
        """As the fast pool's ``send``: the future gives ``transfer`` back done, never raises."""
        future = asyncio.ensure_future(self._run(transfer))
        transfer.future = future
        return future

    async def _run(self, transfer: Transfer) -> Transfer:
        if transfer.aborted:
            transfer.error = CurlError(CURLE_ABORTED_BY_CALLBACK, "aborted by orpoll")
            return transfer
        watch = _Progress(transfer)
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
            header_callback=transfer.on_header_line,
            streaming_callback=transfer.write if transfer.on_chunk is not None else None,
            prepare_curl_callback=watch.prepare,
        )
        transfer.begun = time.monotonic()
        try:
            response = await self.client.fetch(request, raise_error=False)
        except CurlError as e:
            transfer.error = e
        except HTTPClientError as e:  # Tornado's own 599s (a body over max_body_size)
            transfer.error = CurlError(e.code, e.message or "")
        else:
            _take(transfer, response)
        return transfer

    def close(self) -> None:
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


class _Progress:
    """curl's progress callback for one transfer: ends it when it is aborted, or when it is
    silent past its first-byte or stall limit (``Transfer.stalled_at`` judges)."""

    __slots__ = ("transfer",)

    def __init__(self, transfer: Transfer) -> None:
        self.transfer = transfer

    def prepare(self, curl: pycurl.Curl) -> None:
        curl.setopt(pycurl.VERBOSE, 0)  # Tornado turns it on at DEBUG: keys in the log
        curl.setopt(pycurl.NOPROGRESS, 0)
        curl.setopt(pycurl.XFERINFOFUNCTION, self.check)
        curl.setopt(pycurl.UPLOAD_BUFFERSIZE, 16384)

    def check(self, _dltotal: int, dlnow: int, _ultotal: int, ulnow: int) -> int:
        t = self.transfer
        if t.aborted:
            return 1
        if t.stalled_at(time.monotonic(), dlnow, dlnow + ulnow):
            t.timed_out = True
            return 1
        return 0


def quiet_curl(curl: pycurl.Curl) -> None:
    """A ``prepare_curl_callback`` that keeps curl quiet: with tornado.curl_httpclient at DEBUG
    (LOG_LEVEL=debug), Tornado turns on VERBOSE and logs every request header,
    ``Authorization: Bearer <key>`` included."""
    curl.setopt(pycurl.VERBOSE, 0)
