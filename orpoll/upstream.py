"""OpenRouterClient: the one curl client, the requests we send upstream, and failure classification.

The only module importing pycurl. ``classify`` turns a failed attempt (status, headers, body) into
an Outcome following shared/openrouter-facts.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse

from .config import Settings

log = logging.getLogger("orpoll.upstream")

# curl errors that mean "we aborted it" (XFERINFO callback returned non-zero).
CURLE_ABORTED_BY_CALLBACK = 42
ERROR_BODY_LIMIT = 64 * 1024


class Transfer:
    """Per-attempt hooks handed to curl: status seen, chunks, an abort switch and a stall timer.

    ``stall`` (seconds, 0 = off) ends a transfer that receives nothing for that long: before
    the first byte or between chunks. ``timed_out`` tells that this is why it ended.
    """

    __slots__ = (
        "status",
        "headers",
        "_abort",
        "curl",
        "on_chunk",
        "first_byte_at",
        "stall",
        "timed_out",
        "_seen",
        "_quiet_since",
        "_in_write",
    )

    def __init__(self, on_chunk: Callable[[bytes], None] | None = None) -> None:
        self.status = 0
        self.headers: list[bytes] = []
        self._abort = False
        self.curl: pycurl.Curl | None = None  # the handle, while the transfer runs
        self.on_chunk = on_chunk
        self.first_byte_at = 0.0
        self.stall = 0.0
        self.timed_out = False
        self._seen = -1
        self._quiet_since = 0.0
        self._in_write = False

    @property
    def abort(self) -> bool:
        return self._abort

    @abort.setter
    def abort(self, value: bool) -> None:
        """Setting it ends the transfer at curl's next progress call; we make that call come now.

        An idle transfer calls progress only about once a second. Pausing and resuming it
        (curl_easy_pause) makes curl run it at once, so a client that leaves stops the upstream
        within milliseconds (measured: 0.6 s -> 1 ms). PAUSE_CONT alone is a no-op in libcurl 8.
        """
        self._abort = value
        if value and self.curl is not None and not self._in_write:
            try:
                self.curl.pause(pycurl.PAUSE_ALL)
                self.curl.pause(pycurl.PAUSE_CONT)
            except pycurl.error:
                pass

    def write(self, chunk: bytes) -> None:
        """curl WRITEFUNCTION for streams: hands each chunk to ``on_chunk`` at once.

        Tornado's own streaming callback queues chunks and delivers them on a later loop
        iteration (a deque, a callback and a flush per chunk). ``on_chunk`` never re-enters the
        curl client (it writes to the client's IOStream; an abort set here is left to the
        progress callback that follows), so it can run right here, inside curl.
        """
        self._in_write = True
        try:
            self.on_chunk(chunk)
        except Exception:
            log.exception("stream chunk handler failed; aborting the transfer")
            self._abort = True
        finally:
            self._in_write = False

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

    def progress(self, _dltotal: int, dlnow: int, _ultotal: int = 0, ulnow: int = 0) -> int:
        """curl XFERINFOFUNCTION: non-zero aborts the transfer (client gone, or we gave up).

        Also the stall timer. curl's LOW_SPEED_* averages over a window of about 5 s that
        includes the request upload, so it fires up to ~5 s late and misses short silences
        after a burst; counting received bytes here is exact to curl's call rate (at least
        once a second while LOW_SPEED_TIME is set).
        """
        if self._abort:
            return 1
        if self.stall:
            now = time.monotonic()
            moved = dlnow + ulnow  # a long request upload is not silence either
            if moved != self._seen:
                self._seen, self._quiet_since = moved, now
            elif now - self._quiet_since >= self.stall:
                self.timed_out = self._abort = True
                return 1
        return 0


class LazyCurlClient(CurlAsyncHTTPClient):
    """CurlAsyncHTTPClient that creates its curl handles as load needs them.

    Tornado (6.6) builds all ``max_clients`` handles up front: about 4 KB each, 40 MB for the
    10,000 we allow. Growing ``_curls``/``_free_list`` on demand keeps an idle proxy small; it
    relies on those two attributes, stable across Tornado 6.x (pinned < 7).
    """

    def initialize(self, max_clients: int = 10, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(max_clients=min(max_clients, 16), **kwargs)
        self._limit = max_clients

    def fetch_impl(self, request: HTTPRequest, callback: Callable) -> None:
        if not self._free_list and len(self._curls) < self._limit:
            curl = self._curl_create()
            self._curls.append(curl)
            self._free_list.append(curl)
        super().fetch_impl(request, callback)


def no_header_log(curl: pycurl.Curl) -> None:
    """Keep curl quiet: with tornado.curl_httpclient at DEBUG (LOG_LEVEL=debug), Tornado turns
    on VERBOSE and logs every request header, ``Authorization: Bearer <key>`` included."""
    curl.setopt(pycurl.VERBOSE, 0)


class OpenRouterClient:
    """Sends requests to OpenRouter with a given key over one shared CurlAsyncHTTPClient."""

    def __init__(self, config: Settings, http: CurlAsyncHTTPClient | None = None) -> None:
        self.http = http or LazyCurlClient(
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
        # REQUEST_TIMEOUT_SECONDS=0 means no limit, as in the original.
        self._stall = max(1, math.ceil(config.request_timeout)) if config.request_timeout else 0

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
        stall = self._stall

        def prepare_curl(curl: pycurl.Curl) -> None:
            transfer.curl = curl
            no_header_log(curl)
            # Abort from curl's progress callback: Tornado has no cancel for a fetch.
            curl.setopt(pycurl.NOPROGRESS, 0)
            curl.setopt(pycurl.XFERINFOFUNCTION, transfer.progress)
            # Silence, not total time, ends a transfer: a stream that keeps producing is never
            # cut off, one that goes quiet for REQUEST_TIMEOUT_SECONDS is (Transfer.progress;
            # LOW_SPEED_* is the backstop and keeps curl calling progress once a second).
            if stall:
                curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
                curl.setopt(pycurl.LOW_SPEED_TIME, stall)
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
            request_timeout=0,  # no cap on total time; LOW_SPEED_* bounds silence
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
