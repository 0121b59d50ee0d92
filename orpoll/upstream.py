"""OpenRouterClient and its CurlPool: the requests we send upstream with a key, and the curl
multis they run on.

With curlpool.py and transfer.py, the only modules importing pycurl. ``classify`` turns a
failed attempt (status, headers, body) into an Outcome (classify.py).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Any

import pycurl
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.ioloop import PeriodicCallback

from . import heap
from .config import Settings
from .curlpool import H2c, LazyCurlClient
from .logs import plural
from .transfer import BODY_LIMIT, Transfer

SHARD_TRANSFERS = 256  # transfers per curl multi (CurlPool)
SHARD_IDLE_SECONDS = 30.0  # a shard past the first with nothing running this long is closed
log = logging.getLogger("orpoll.upstream")
CONTROL_FETCHES = 256  # health probes and model-list fetches at once (handles made as needed)


def no_header_log(curl: pycurl.Curl) -> None:
    """Keep curl quiet: with tornado.curl_httpclient at DEBUG (LOG_LEVEL=debug), Tornado turns
    on VERBOSE and logs every request header, ``Authorization: Bearer <key>`` included."""
    curl.setopt(pycurl.VERBOSE, 0)


def _header_line(name: str, value: str) -> bytes:
    """``Name: value`` for curl; CR and LF (a header injection) become spaces."""
    value = value.replace("\r", " ").replace("\n", " ")
    return f"{name}: {value}".encode("latin1", "replace")


class CurlPool:
    """The curl multis upstream transfers run on: one more per SHARD_TRANSFERS at once.

    Each time a transfer starts, libcurl walks every connection its multi holds to that host,
    busy ones included, looking for one to reuse. With thousands of streams open on
    HTTP/1.1 (one connection each) that walk was ~15% of the proxy's CPU (bench
    slow_streams, 9,950 streams). Each multi has its own connection cache, so the walk stays
    within a shard. A transfer goes to the first shard with a free slot, so a light load runs
    on the first one alone and reuses its connections. The shards share one waiting queue:
    when all ``limit`` slots are busy, whichever shard frees a handle first starts the oldest
    waiting transfer.

    After a burst, the shards past the first keep their handles and one idle upstream
    connection per transfer they ran (descriptors, and curl's memory for each). ``trim`` closes
    a shard that ran nothing for ``idle_seconds`` and hands the freed heap back to the system.
    """

    def __init__(self, limit: int, h2c: bool = False) -> None:
        self.room = limit  # slots not yet given to a shard
        self.h2c = H2c() if h2c else None
        self.waiting: collections.deque[Transfer] = collections.deque()
        self.shards: list[LazyCurlClient] = []
        self.idle_seconds = SHARD_IDLE_SECONDS
        self._trimmer: PeriodicCallback | None = None
        self.first = self._add()

    def _add(self) -> LazyCurlClient:
        size = min(SHARD_TRANSFERS, self.room)
        self.room -= size
        shard = LazyCurlClient(
            force_instance=True, max_clients=size, max_body_size=BODY_LIMIT, waiting=self.waiting
        )
        # UPSTREAM_H2C: a burst's transfers multiplex (no TCP connection per stream, and one
        # socket event brings many streams' chunks: 9,950 streams went from ~1,750 late by
        # over 1 s to 0, and 8% less CPU). The first shard's HTTP/1.1 connections, kept alive
        # and reused, cost libcurl less per chunk: 200 streams over HTTP/2 took 4-8% more CPU
        # and 0.3 ms more to the first chunk (p50).
        shard.h2c = self.h2c if self.shards else None
        self.shards.append(shard)
        if len(self.shards) == 2 and self._trimmer is None:
            # A burst, from now until the trimmer stops: the new shards' upload buffers are
            # mmap'd (heap.py).
            heap.burst(True)
            every = 1000 * min(10.0, max(0.05, self.idle_seconds / 4))
            self._trimmer = PeriodicCallback(self.trim, every)
            self._trimmer.start()
        return shard

    def trim(self) -> int:
        """Close the shards past the first that ran nothing for ``idle_seconds``; how many."""
        now = time.monotonic()
        idle = [
            shard
            for shard in self.shards[1:]
            if not shard._running and now - shard.idle_since >= self.idle_seconds
        ]
        for shard in idle:
            self.shards.remove(shard)
            self.room += shard._limit
            shard.close()
        if len(self.shards) == 1 and self._trimmer is not None:
            self._trimmer.stop()
            self._trimmer = None
            heap.burst(False)
        if idle:
            heap.release_heap()
            log.info("closed %s after a burst", plural(len(idle), "idle upstream pool"))
        return len(idle)

    def send(self, transfer: Transfer) -> asyncio.Future[Transfer]:
        """As ``LazyCurlClient.send``, on the first shard with a free slot."""
        for shard in self.shards:
            if len(shard._running) < shard._limit:
                return shard.send(transfer)
        if self.room > 0:
            return self._add().send(transfer)
        return self.first.send(transfer)  # waits for a handle to free in any shard

    def close(self) -> None:
        if self._trimmer is not None:
            self._trimmer.stop()
            heap.burst(False)
        for shard in self.shards:
            shard.close()


class OpenRouterClient:
    """Sends requests to OpenRouter with a given key over one shared CurlPool."""

    def __init__(self, config: Settings) -> None:
        self.pool = CurlPool(config.upstream_max_connections, config.upstream_h2c)
        # Health probes and the model list (Tornado fetches) run on a client of their own:
        # in the pool they would wait, behind UPSTREAM_MAX_CONNECTIONS or a full first shard,
        # for streams to end, which can take minutes.
        self.http = LazyCurlClient(
            force_instance=True, max_clients=CONTROL_FETCHES, max_body_size=BODY_LIMIT
        )
        self.configure(config)

    def configure(self, config: Settings) -> None:
        """Apply (new) settings: attribution headers; timeouts are read per request."""
        self.config = config
        # No 100-continue wait, no added no-cache; then our attribution headers.
        lines = [b"Expect: ", b"Pragma: "]
        if config.http_referer:
            lines.append(_header_line("HTTP-Referer", config.http_referer))
        if config.x_title:
            lines.append(_header_line("X-Title", config.x_title))
        self._lines = lines

    def close(self) -> None:
        self.pool.close()
        self.http.close()

    def send(
        self,
        key: str,
        url: str,
        transfer: Transfer,
        *,
        method: str = "POST",
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> asyncio.Future[Transfer]:
        """Run ``transfer``: ``method url`` with bearer ``key``; the future gives it back done."""
        transfer.url, transfer.method = url, method
        lines = [*self._lines, b"Authorization: Bearer " + key.encode("ascii", "replace")]
        if method in ("POST", "PUT", "PATCH") and body is not None:
            transfer.payload = body
            lines.append(_header_line("Content-Type", content_type or "application/json"))
        transfer.lines = lines
        transfer.stall = self.config.request_timeout
        transfer.connect_timeout = self.config.connect_timeout
        transfer.ca_bundle = self.config.upstream_ca_bundle
        return self.pool.send(transfer)

    async def get_json(self, url: str, key: str | None = None) -> tuple[int, Any, float]:
        """GET ``url`` (bearer ``key`` if given): (status, parsed body or None, seconds).

        When no HTTP answer came (status 599), the body is ``{"error": {"message": ...}}`` with
        curl's reason (a name that does not resolve, a refused connection, a bad certificate).
        """
        headers = {"Authorization": "Bearer " + key} if key else {}
        start = time.monotonic()
        req = HTTPRequest(
            url,
            headers=headers,
            connect_timeout=self.config.connect_timeout,
            request_timeout=min(self.config.request_timeout or 30.0, 30.0),
            prepare_curl_callback=no_header_log,
            ca_certs=self.config.upstream_ca_bundle or None,
        )
        try:
            resp = _unlinked(await self.http.fetch(req, raise_error=False))
        except HTTPClientError as e:  # no HTTP answer: Tornado raises these even so
            return (
                e.code,
                {"error": {"message": e.message or "no answer"}},
                time.monotonic() - start,
            )
        try:
            data = json.loads(resp.body) if resp.body else None
        except (ValueError, RecursionError):
            data = None
        return resp.code, data, time.monotonic() - start


def _unlinked(resp: HTTPResponse) -> HTTPResponse:
    """Tornado links a non-2xx response and its ``error`` both ways, a reference cycle that
    keeps the whole request alive until a full GC pass: break it."""
    if resp.error is not None:
        resp.error = None
    return resp
