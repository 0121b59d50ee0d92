"""Fast paths: the code that reaches past a library's public API for speed, fenced here.

PRIVATE-NAMES-PLACEHOLDER
"""

from __future__ import annotations

from typing import Any

from tornado.curl_httpclient import CurlAsyncHTTPClient

from .transfer import BODY_LIMIT, CURLE_SETUP_FAILED, ERROR_BODY_LIMIT, Transfer  # isort: skip
from .connections import Server
from .curlpool import LazyCurlClient
from .eager import SMALL_BODY, SmallBodyFirst, start_eagerly
from .plain import PlainPool, PlainServer, PlainWriter, quiet_curl
from .shards import CurlPool
from .wire import FastWriter

__all__ = [
    "BODY_LIMIT",
    "CURLE_SETUP_FAILED",
    "ERROR_BODY_LIMIT",
    "SMALL_BODY",
    "SmallBodyFirst",
    "Transfer",
    "Writer",
    "control_client",
    "make_server",
    "quiet_curl",
    "start_eagerly",
    "upstream_pool",
    "writer",
]

Writer = type[FastWriter] | type[PlainWriter]
Pool = CurlPool | PlainPool


def make_server(app: Any, *, fast: bool = True, **kwargs: Any) -> Server | PlainServer:
    """The HTTP server for ``app``: orpoll's (``connections.Server``) or Tornado's own."""
    return (Server if fast else PlainServer)(app, **kwargs)


def writer(fast: bool = True) -> Writer:
    """How relay handlers write their answers: ``start_stream(handler, chunk)``,
    ``send_chunk(handler, data) -> bytes still queued?`` and ``finish(handler, streaming)``."""
    return FastWriter if fast else PlainWriter


def upstream_pool(limit: int, *, h2c: bool = False, fast: bool = True) -> Pool:
    """Where relayed transfers run: ``send(transfer)`` gives a future of the finished transfer
    (never raising), ``close()`` ends them all."""
    return CurlPool(limit, h2c) if fast else PlainPool(limit)


def control_client(max_clients: int, *, fast: bool = True) -> CurlAsyncHTTPClient:
    """A curl client for orpoll's own fetches (health probes, the model list)."""
    cls = LazyCurlClient if fast else CurlAsyncHTTPClient
    return cls(force_instance=True, max_clients=max_clients, max_body_size=BODY_LIMIT)
