"""OpenRouterClient: the one curl client, the requests we send upstream, and failure classification.

The only module importing pycurl. ``classify`` turns a failed attempt (status, headers, body) into
an Outcome following shared/openrouter-facts.md.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.ioloop import IOLoop, PeriodicCallback

from .config import Settings

log = logging.getLogger("orpoll.upstream")
_curl_log = logging.getLogger("tornado.curl_httpclient")  # Tornado's: DEBUG turns on VERBOSE
_HTTP_S = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS

# The error a transfer ends with when we end it ourselves (LazyCurlClient.abort).
CURLE_ABORTED_BY_CALLBACK = 42
ERROR_BODY_LIMIT = 64 * 1024


class Transfer:
    """One attempt as curl runs it: status seen, chunks, an abort switch and a stall timer.

    ``stall`` (seconds, 0 = off) ends a transfer that moves no body byte for that long, before
    the first byte or between chunks; ``timed_out`` tells that this is why it ended. Both the
    abort and the stall check work without a per-transfer curl progress callback (that was
    two Python calls per chunk, ~6% of a stream's CPU): see LazyCurlClient.
    """

    __slots__ = (
        "status",
        "headers",
        "_abort",
        "curl",
        "client",
        "on_chunk",
        "stall",
        "timed_out",
        "_in_write",
        "_moved",
        "_quiet_since",
    )

    def __init__(self, on_chunk: Callable[[bytes], None] | None = None) -> None:
        self.status = 0
        self.headers: list[bytes] = []
        self._abort = False
        self.curl: pycurl.Curl | None = None  # the handle, while the transfer runs
        self.client: LazyCurlClient | None = None
        self.on_chunk = on_chunk
        self.stall = 0.0
        self.timed_out = False
        self._in_write = False
        self._moved = -1
        self._quiet_since = 0.0

    @property
    def abort(self) -> bool:
        return self._abort

    @abort.setter
    def abort(self, value: bool) -> None:
        """Setting it ends the transfer now, so a client that leaves stops the upstream (and
        its billing) at once. Inside curl's write callback the callback's short return does
        it instead: curl must not be re-entered from its own callbacks."""
        self._abort = value
        if value and self.curl is not None and not self._in_write and self.client is not None:
            self.client.abort(self.curl)

    def write(self, chunk: bytes) -> int | None:
        """curl WRITEFUNCTION for streams: hands each chunk to ``on_chunk`` at once.

        Tornado's own streaming callback queues chunks and delivers them on a later loop
        iteration (a deque, a callback and a flush per chunk). ``on_chunk`` never re-enters the
        curl client (it writes to the client's IOStream), so it can run right here, inside
        curl. Returning 0 (a short write) ends the transfer when it was aborted meanwhile.
        """
        self._in_write = True
        try:
            self.on_chunk(chunk)
        except Exception:
            log.exception("stream chunk handler failed; aborting the transfer")
            self._abort = True
        finally:
            self._in_write = False
        return 0 if self._abort else None

    def on_header(self, raw: bytes) -> None:
        """curl HEADERFUNCTION for streams: records the status line and header lines.

        Runs inside curl, synchronously, so the status is known before the first body chunk
        reaches ``on_chunk`` (Tornado's header_callback is queued and may arrive after it).
        Lines stay bytes until ``header()`` asks (rarely: errors and the commit).
        """
        if raw.startswith(b"HTTP/"):
            parts = raw.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.headers = []
        elif raw.strip():
            self.headers.append(raw)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for raw in self.headers:
            k, _, v = raw.decode("latin1").partition(":")
            if k.strip().lower() == name:
                return v.strip()
        return None

    def stalled(self, now: float) -> bool:
        """True once no body byte moved, either way, for ``stall`` seconds (sweep-time check)."""
        curl = self.curl
        if not self.stall or curl is None:
            return False
        # A long request upload is not silence either.
        moved = curl.getinfo(pycurl.SIZE_DOWNLOAD_T) + curl.getinfo(pycurl.SIZE_UPLOAD_T)
        if moved != self._moved:
            self._moved, self._quiet_since = moved, now
            return False
        return now - self._quiet_since >= self.stall


class LazyCurlClient(CurlAsyncHTTPClient):
    """CurlAsyncHTTPClient that creates its curl handles as load needs them, and can end a
    transfer on demand.

    Tornado (6.6) builds all ``max_clients`` handles up front: about 4 KB each, 40 MB for the
    10,000 we allow. Growing ``_curls``/``_free_list`` on demand keeps an idle proxy small.
    Tornado has no cancel for a fetch: ``abort`` finishes one the way curl would have, with an
    error, and a sweep every ``SWEEP_SECONDS`` (at most) ends transfers that stalled. Both rely
    on ``_curls``, ``_free_list``, ``_finish`` and ``curl.info``, stable across Tornado 6.x
    (pinned < 7).
    """

    SWEEP_SECONDS = 1.0

    def initialize(self, max_clients: int = 10, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(max_clients=min(max_clients, 16), **kwargs)
        self._limit = max_clients
        self._running: dict[pycurl.Curl, Transfer] = {}
        self._sweeper: PeriodicCallback | None = None

    def fetch_impl(self, request: HTTPRequest, callback: Callable) -> None:
        if not self._free_list and len(self._curls) < self._limit:
            curl = self._curl_create()
            self._curls.append(curl)
            self._free_list.append(curl)
        super().fetch_impl(request, callback)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
        super().close()

    def started(self, curl: pycurl.Curl, transfer: Transfer) -> None:
        """``transfer`` runs on ``curl`` from now until curl or ``abort`` finishes it."""
        transfer.curl, transfer.client = curl, self
        self._running[curl] = transfer
        if transfer.stall:
            transfer._quiet_since = time.monotonic()
            interval = min(self.SWEEP_SECONDS, max(0.05, transfer.stall / 4))
            sweeper = self._sweeper
            if sweeper is None or sweeper.callback_time > 1000 * interval:
                if sweeper is not None:
                    sweeper.stop()
                self._sweeper = PeriodicCallback(self._sweep, 1000 * interval)
                self._sweeper.start()

    def abort(self, curl: pycurl.Curl) -> None:
        """End the transfer running on ``curl`` now; its fetch fails with errno 42."""
        if curl not in self._running or getattr(curl, "info", None) is None:
            return  # already finished: the handle may serve another request by now
        self._finish(curl, CURLE_ABORTED_BY_CALLBACK, "aborted by orpoll")
        self._process_queue()  # a request may be waiting for this handle

    def _handle_events(self, fd: int, events: int) -> None:
        """Tornado's, minus the look for finished transfers after events that finished none.

        Tornado reads curl's message queue and restarts its request queue after every socket
        event, ~20 times per stream (each chunk is one). curl reports how many transfers are
        still running; only when that is below the handles in use has one finished.
        """
        action = 0
        if events & IOLoop.READ:
            action |= pycurl.CSELECT_IN
        if events & IOLoop.WRITE:
            action |= pycurl.CSELECT_OUT
        while True:
            try:
                ret, running = self._multi.socket_action(fd, action)
            except pycurl.error as e:
                ret, running = e.args[0], -1
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        if running < len(self._curls) - len(self._free_list) or self._requests:
            self._finish_pending_requests()

    def _curl_setup_request(self, curl, request, buffer, headers) -> None:  # type: ignore[override]
        """Tornado's request setup, trimmed to what orpoll's GET and POST requests need.

        Tornado's generic setup was ~35 us per request (about 10% of a non-stream request's
        CPU): some 40 options, most of them put back to the values ``curl.reset()`` (run after
        every request) already left, and a regex per header line. Anything unusual (other
        methods, proxies, auth, client certs, callbacks, curl debug logging) takes Tornado's
        path unchanged.
        """
        if (
            request.method not in ("GET", "POST")
            or request.streaming_callback is not None
            or request.header_callback is not None
            or request.proxy_host
            or request.auth_username is not None
            or request.client_cert is not None
            or request.network_interface
            or request.ca_certs is not None
            or not request.validate_cert
            or request.allow_ipv6 is False
            or request.user_agent
            or request.follow_redirects
            or not request.decompress_response
            or (request.method == "GET" and request.body is not None)
            or _curl_log.isEnabledFor(logging.DEBUG)
        ):
            return super()._curl_setup_request(curl, request, buffer, headers)
        curl.setopt(pycurl.PROTOCOLS, _HTTP_S)
        curl.setopt(pycurl.REDIR_PROTOCOLS, _HTTP_S)
        curl.setopt(pycurl.URL, request.url)
        lines = [b"Expect: ", b"Pragma: "]  # no 100-continue wait, no added no-cache
        lines += [
            b"%s: %s" % (k.encode("ascii"), v.encode("iso8859-1"))
            for k, v in request.headers.get_all()
            if k not in ("Expect", "Pragma")
        ]
        if any(b"\r" in line or b"\n" in line for line in lines):
            raise ValueError("Illegal characters in header (CR or LF)")
        curl.setopt(pycurl.HTTPHEADER, lines)
        curl.setopt(
            pycurl.HEADERFUNCTION, functools.partial(self._curl_header_callback, headers, None)
        )
        limit = self.max_body_size

        def write(chunk: bytes) -> int:  # Tornado's, with its max_body_size check
            if buffer.tell() + len(chunk) > limit:
                curl.info["body_too_large"] = True
                return 0
            return buffer.write(chunk)

        curl.setopt(pycurl.WRITEFUNCTION, write)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(1000 * request.connect_timeout))
        if request.request_timeout:
            curl.setopt(pycurl.TIMEOUT_MS, int(1000 * request.request_timeout))
        curl.setopt(pycurl.USERAGENT, "Mozilla/5.0 (compatible; pycurl)")
        curl.setopt(pycurl.ENCODING, "gzip,deflate")
        if request.method == "POST":
            body = request.body or b""
            curl.setopt(pycurl.POST, 1)
            curl.setopt(pycurl.POSTFIELDSIZE, len(body))
            curl.setopt(pycurl.POSTFIELDS, body)  # pycurl keeps the bytes alive
        if threading.active_count() > 1:
            curl.setopt(pycurl.NOSIGNAL, 1)
        if request.prepare_curl_callback is not None:
            request.prepare_curl_callback(curl)

    def _finish(self, curl: pycurl.Curl, *args: Any, **kwargs: Any) -> None:
        transfer = self._running.pop(curl, None)
        if transfer is not None:
            transfer.curl = None  # from here on the handle belongs to the pool
        super()._finish(curl, *args, **kwargs)

    def _sweep(self) -> None:
        if not self._running:
            return
        now = time.monotonic()
        for transfer in list(self._running.values()):
            if transfer.stalled(now):
                transfer.timed_out = True  # classify_transport words the error from this
                transfer.abort = True


def no_header_log(curl: pycurl.Curl) -> None:
    """Keep curl quiet: with tornado.curl_httpclient at DEBUG (LOG_LEVEL=debug), Tornado turns
    on VERBOSE and logs every request header, ``Authorization: Bearer <key>`` included."""
    curl.setopt(pycurl.VERBOSE, 0)


class OpenRouterClient:
    """Sends requests to OpenRouter with a given key over one shared CurlAsyncHTTPClient."""

    def __init__(self, config: Settings) -> None:
        self.http = LazyCurlClient(
            force_instance=True,
            max_clients=config.upstream_max_connections,
            max_body_size=256 * 1024 * 1024,
        )
        self.configure(config)

    def configure(self, config: Settings) -> None:
        """Apply (new) settings: attribution headers and timeouts."""
        self.config = config
        base = {"Content-Type": "application/json"}
        if config.http_referer:
            base["HTTP-Referer"] = config.http_referer
        if config.x_title:
            base["X-Title"] = config.x_title
        self._base_headers = base

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        key: str,
        url: str,
        *,
        method: str = "POST",
        body: bytes | None = None,
        transfer: Transfer | None = None,
        content_type: str | None = None,
    ) -> HTTPRequest:
        headers = dict(self._base_headers)
        headers["Authorization"] = "Bearer " + key
        if content_type:
            headers["Content-Type"] = content_type
        if transfer is None:
            transfer = Transfer()
        transfer.stall = self.config.request_timeout
        started = self.http.started

        def prepare_curl(curl: pycurl.Curl) -> None:
            no_header_log(curl)
            started(curl, transfer)
            curl.setopt(pycurl.TCP_NODELAY, 1)
            # libcurl's 64 KB default upload buffer is most of a stream's memory; bodies are
            # sent from memory, so the 16 KB minimum costs nothing (measured: 72 -> 42 KB).
            curl.setopt(pycurl.UPLOAD_BUFFERSIZE, 16384)
            if transfer.on_chunk is not None:
                curl.setopt(pycurl.HEADERFUNCTION, transfer.on_header)
                curl.setopt(pycurl.WRITEFUNCTION, transfer.write)

        return HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=body if method in ("POST", "PUT", "PATCH") else None,
            allow_nonstandard_methods=True,
            connect_timeout=self.config.connect_timeout,
            request_timeout=0,  # no cap on total time; the stall sweep bounds silence
            # Streams get transfer.write as WRITEFUNCTION in prepare_curl instead.
            prepare_curl_callback=prepare_curl,
            follow_redirects=False,
        )

    async def fetch(self, request: HTTPRequest) -> HTTPResponse | CurlError:
        """The response (any status), or the transport error (code 599) as a value."""
        try:
            return _unlinked(await self.http.fetch(request, raise_error=False))
        except CurlError as e:
            return e
        except HTTPClientError as e:  # queue timeouts and the like
            return CurlError(599, str(e))

    async def get_json(self, url: str, key: str | None = None) -> tuple[int, Any, float]:
        """GET ``url`` (bearer ``key`` if given): (status, parsed body or None, seconds)."""
        headers = {"Authorization": "Bearer " + key} if key else {}
        start = time.monotonic()
        req = HTTPRequest(
            url,
            headers=headers,
            connect_timeout=self.config.connect_timeout,
            request_timeout=min(self.config.request_timeout or 30.0, 30.0),
            prepare_curl_callback=no_header_log,
        )
        try:
            resp = _unlinked(await self.http.fetch(req, raise_error=False))
        except HTTPClientError as e:
            return e.code, None, time.monotonic() - start
        try:
            data = json.loads(resp.body) if resp.body else None
        except ValueError:
            data = None
        return resp.code, data, time.monotonic() - start


def _unlinked(resp: HTTPResponse) -> HTTPResponse:
    """Tornado links a non-2xx response and its ``error`` both ways, a reference cycle that
    keeps the whole request (and our transfer) alive until a full GC pass: break it."""
    if resp.error is not None:
        resp.error = None
    return resp
