"""OpenRouterClient: the one curl client and the requests we send upstream with a key.

With curlpool.py, the only modules importing pycurl. ``classify`` turns a failed attempt
(status, headers, body) into an Outcome following shared/openrouter-facts.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pycurl
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse

from .config import Settings
from .curlpool import CurlPool, Transfer


def no_header_log(curl: pycurl.Curl) -> None:
    """Keep curl quiet: with tornado.curl_httpclient at DEBUG (LOG_LEVEL=debug), Tornado turns
    on VERBOSE and logs every request header, ``Authorization: Bearer <key>`` included."""
    curl.setopt(pycurl.VERBOSE, 0)


def _header_line(name: str, value: str) -> bytes:
    """``Name: value`` for curl; CR and LF (a header injection) become spaces."""
    value = value.replace("\r", " ").replace("\n", " ")
    return f"{name}: {value}".encode("latin1", "replace")


class OpenRouterClient:
    """Sends requests to OpenRouter with a given key over one shared CurlPool."""

    def __init__(self, config: Settings) -> None:
        self.pool = CurlPool(config.upstream_max_connections)
        self.http = self.pool.first
        self.configure(config)

    def configure(self, config: Settings) -> None:
        """Apply (new) settings: attribution headers and timeouts."""
        self.config = config
        self.pool.set_connect_timeout(config.connect_timeout)
        # No 100-continue wait, no added no-cache; then our attribution headers.
        lines = [b"Expect: ", b"Pragma: "]
        if config.http_referer:
            lines.append(_header_line("HTTP-Referer", config.http_referer))
        if config.x_title:
            lines.append(_header_line("X-Title", config.x_title))
        self._lines = lines

    def close(self) -> None:
        self.pool.close()

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
        return self.pool.send(transfer)

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
    keeps the whole request alive until a full GC pass: break it."""
    if resp.error is not None:
        resp.error = None
    return resp
