"""Every private Tornado name orpoll.fast relies on still exists, with the shape it uses: an
attribute on a real instance, a method taking the parameters it is called with. A Tornado
release that renames or reshapes one fails here, not in a request."""

from __future__ import annotations

import collections
import inspect
import socket

import pycurl
import pytest
import tornado.httpserver
import tornado.web
from tornado import httputil, iostream
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.http1connection import (
    HTTP1Connection,
    HTTP1ConnectionParameters,
    HTTP1ServerConnection,
)
from tornado.ioloop import IOLoop


def params(func) -> list[str]:
    """Parameter names of a method, ``self`` left out."""
    return [p for p in inspect.signature(func).parameters if p != "self"]


@pytest.fixture
def stream(io_loop):
    a, b = socket.socketpair()
    s = iostream.IOStream(a)
    yield s
    s.close()
    b.close()


@pytest.fixture
def conn(stream):
    return HTTP1Connection(stream, False, HTTP1ConnectionParameters())


@pytest.fixture
def handler(conn):
    app = tornado.web.Application()
    start = httputil.RequestStartLine("POST", "/", "HTTP/1.1")
    headers = httputil.HTTPHeaders({"Host": "localhost"})
    request = httputil.HTTPServerRequest(start_line=start, headers=headers, connection=conn)
    return tornado.web.RequestHandler(app, request)


def test_http1_connection_state(conn):
    for name in (
        "_read_finished",
        "_request_start_line",
        "_response_start_line",
        "_chunking_output",
        "_expected_content_remaining",
        "_disconnect_on_finish",
        "_pending_write",
    ):
        assert hasattr(conn, name), name
    assert params(HTTP1Connection._parse_headers) == ["data"]
    assert params(HTTP1ServerConnection._server_request_loop) == ["delegate"]
    server_conn = HTTP1ServerConnection(conn.stream, HTTP1ConnectionParameters())
    assert {"stream", "params", "context"} <= set(vars(server_conn))


def test_iostream_buffers(stream):
    for name in ("_read_buffer", "_read_buffer_size", "_read_max_bytes", "_write_futures"):
        assert hasattr(stream, name), name
    assert isinstance(stream._write_futures, collections.deque)
    assert isinstance(stream._write_buffer._buffers, collections.deque)
    assert params(iostream.IOStream._check_max_bytes) == ["delimiter", "size"]
    # Called on the stream itself, so a replacement set on the instance takes effect.
    assert "self._check_max_bytes(" in inspect.getsource(iostream.BaseIOStream)


def test_http_server(io_loop):
    server = tornado.httpserver.HTTPServer(tornado.web.Application())
    for name in ("_sockets", "_handlers", "_connections", "conn_params", "protocol"):
        assert hasattr(server, name), name
    assert hasattr(server, "trusted_downstream")
    assert hasattr(server.conn_params, "header_timeout")
    assert params(server._handle_connection) == ["connection", "address"]
    context = tornado.httpserver._HTTPRequestContext
    assert params(context.__init__) == ["stream", "address", "protocol", "trusted_downstream"]


def test_headers_internals():
    headers = httputil.HTTPHeaders()
    assert headers._as_list == {} and headers._combined_cache == {}
    assert httputil._normalize_header("content-type") == "Content-Type"
    headers.add("X-A", "1")
    assert headers._as_list == {"X-A": ["1"]}


def test_request_handler_state(handler):
    for name in (
        "_headers",
        "_headers_written",
        "_status_code",
        "_reason",
        "_write_buffer",
        "_finished",
    ):
        assert hasattr(handler, name), name
    assert isinstance(handler._headers, httputil.HTTPHeaders)
    assert params(handler._log) == [] and params(handler._break_cycles) == []
    assert params(tornado.web.RequestHandler._execute) == ["transforms", "args", "kwargs"]
    assert "self._transforms = transforms" in inspect.getsource(tornado.web.RequestHandler._execute)
    # A streamed body's handler waits on this future; the delegate makes and resolves it.
    assert "await self.request._body_future" in inspect.getsource(tornado.web.RequestHandler)
    assert "request._body_future = " in inspect.getsource(tornado.web._HandlerDelegate)


def test_curl_client_internals(io_loop):
    client = CurlAsyncHTTPClient(force_instance=True, max_clients=1)
    try:
        for name in ("_curls", "_free_list", "_requests", "_multi", "_fds", "_timeout"):
            assert hasattr(client, name), name
        assert isinstance(client._curl_create(), pycurl.Curl)
        assert params(client._finish) == ["curl", "curl_error", "curl_message"]
        assert params(client._handle_socket) == ["event", "fd", "multi", "data"]
        assert params(client._set_timeout) == ["msecs"]
        assert params(client._handle_events) == ["fd", "events"]
        for name in ("_process_queue", "_handle_timeout", "_finish_pending_requests"):
            assert params(getattr(client, name)) == [], name
        assert params(client.fetch_impl) == ["request", "callback"]
        # The per-handle slot Tornado fills with its request and we with a transfer.
        assert "curl.info = " in inspect.getsource(CurlAsyncHTTPClient._process_queue)
    finally:
        client.close()
    assert hasattr(IOLoop.current(), "asyncio_loop")
