"""OpenRouterClient: the requests orpoll sends upstream with a key (relayed attempts, health
probes, the model list), on the transfer pool and curl client ``orpoll.fast`` provides."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse

from . import fast
from .config import Settings
from .fast import Transfer

CONTROL_FETCHES = 256  # health probes and model-list fetches at once


def _header_line(name: str, value: str) -> bytes:
    """``Name: value`` for curl; CR and LF (a header injection) become spaces."""
    value = value.replace("\r", " ").replace("\n", " ")
    return f"{name}: {value}".encode("latin1", "replace")


class OpenRouterClient:
    """Sends requests to OpenRouter with a given key over one shared CurlPool."""

    def __init__(self, config: Settings) -> None:
        self.pool = fast.upstream_pool(
            config.upstream_max_connections, h2c=config.upstream_h2c, fast=config.fast
        )
        # Health probes and the model list (Tornado fetches) run on a client of their own:
        # in the pool they would wait, behind UPSTREAM_MAX_CONNECTIONS or a full first shard,
        # for streams to end, which can take minutes.
        self.http = fast.control_client(CONTROL_FETCHES, fast=config.fast)
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
            prepare_curl_callback=fast.quiet_curl,
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
