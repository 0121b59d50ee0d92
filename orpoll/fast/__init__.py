"""Fast paths: the code that reaches past a library's public API for speed, fenced here.

Each has a fallback on the public API (``plain.py``), and FAST=0 runs all of the fallbacks;
the rest of orpoll sees only what this module exports. ``tests/fast/test_contract.py`` checks
that every private name below still exists, with the shape used here. Tornado 6.x, pinned in
requirements.txt to the minor versions tested.

``connections.py`` (the HTTP server: keep-alive loop, time-limit sweep, accept pause, lean
streams)
  - ``HTTP1ServerConnection._server_request_loop``: overridden, to skip the loop pass between
    requests on a keep-alive connection and to answer an over-long request line.
  - ``HTTP1Connection._read_finished``, ``_request_start_line``, ``_response_start_line``:
    read by the sweep to tell which phase of a request a connection is in.
  - ``IOStream._read_buffer``, ``_read_buffer_size``, ``_read_max_bytes``: bytes of a next
    request waiting, and the header block over its limit (answered 431/414, not just closed).
  - ``IOStream._check_max_bytes``: replaced per stream for that 431/414 answer.
  - ``IOStream._write_futures``, ``_write_buffer._buffers``: deques swapped for lazy ones,
    most of an idle stream's memory.
  - ``TCPServer._sockets``, ``_handlers``, ``_handle_connection``: the accept loop
    (``accept.py``) that pauses when out of file descriptors instead of spinning.
  - ``HTTPServer._connections``, ``httpserver._HTTPRequestContext``: ``handle_stream`` as
    Tornado's, with our connection class.

``headers.py`` (request headers in two regular-expression passes)
  - ``HTTP1Connection._parse_headers``: overridden.
  - ``httputil._normalize_header``, ``HTTPHeaders._as_list``, ``_combined_cache``: filling
    the headers as ``HTTPHeaders.add`` would, without its per-line checks.

``wire.py`` (a relay handler's head, chunks and end written to the socket itself)
  - ``RequestHandler._headers``, ``_headers_written``, ``_transforms``, ``_status_code``,
    ``_reason``, ``_write_buffer``, ``_finished``, ``_log``, ``_break_cycles``: what
    ``RequestHandler.flush``/``finish`` read and do, done in one ``send``.
  - ``HTTP1Connection._chunking_output``, ``_expected_content_remaining``,
    ``_disconnect_on_finish``, ``_request_start_line``, ``_response_start_line``,
    ``_pending_write``: left as Tornado's own writes leave them, so ``finish`` and the next
    request go on as usual.

``eager.py`` (a handler started in the pass that read its request)
  - ``RequestHandler._execute``: started by hand, as ``_HandlerDelegate.execute`` does.
  - ``HTTPServerRequest._body_future``: the body already read, handed over done.

``curlpool.py``, ``transfer.py``, ``shards.py`` (upstream transfers on curl)
  - ``CurlAsyncHTTPClient._curls``, ``_free_list``, ``_requests``, ``_multi``, ``_fds``,
    ``_timeout``, ``_curl_create``, ``_finish_pending_requests``: handles made as load needs
    them, and orpoll's own transfers run beside Tornado's fetches.
  - ``_process_queue``, ``_finish``, ``_handle_socket``, ``_set_timeout``,
    ``_handle_timeout``, ``_handle_events``: overridden (transfers without HTTPRequest and
    HTTPResponse, an abort, curl's callbacks on the asyncio loop without IOLoop wrappers).
  - ``curl.info``: Tornado's per-handle slot, holding our transfer while it runs.
  - ``IOLoop.asyncio_loop``: curl's sockets and timers on the asyncio loop directly.
  pycurl: its public API only (options, ``getinfo``, ``CurlMulti.socket_action``).

``heap.py``: glibc's ``mallopt`` and ``malloc_trim`` through ctypes (no-ops elsewhere).
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
    "HttpServer",
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
HttpServer = Server | PlainServer
Pool = CurlPool | PlainPool


def make_server(app: Any, *, fast: bool = True, **kwargs: Any) -> HttpServer:
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
