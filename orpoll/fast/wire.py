"""What a relay handler writes to the client's socket itself, bypassing Tornado's write path.

Tornado writes a response through ``RequestHandler.write``/``flush``/``finish`` and
``HTTP1Connection.write_headers``/``write``/``finish``: per write a Future, an IOStream write
with its own Future and done-callback, and for the head a CR/LF regex per line: a real
share of a stream's and a short answer's CPU (bench/README.md). Each is one ``send`` when the
client is an
HTTP/1.1 keep-alive client on plain TCP with nothing queued, and the connection is left in
the state Tornado's own calls would leave (``_chunking_output``,
``_expected_content_remaining``, ``_pending_write``), so ``HTTP1Connection.finish`` and the
next request on the connection go on as usual. Every other case returns False or None, and
the caller takes Tornado's path. ``FastWriter`` is what relay handlers use; its fallback is
``plain.PlainWriter``.
"""

from __future__ import annotations

from asyncio import Future

from tornado import httputil
from tornado.iostream import IOStream
from tornado.web import RequestHandler

END = b"0\r\n\r\n"  # the last chunk of a chunked body


def idle_stream(handler: RequestHandler) -> IOStream | None:
    """The client's IOStream when its socket may be written directly: plain TCP (not TLS),
    open, and nothing queued in it (what we send then cannot overtake queued bytes)."""
    stream = handler.request.connection.stream  # type: ignore[union-attr]
    if type(stream) is IOStream and not stream.writing() and not stream.closed():
        return stream
    return None


def _send(stream: IOStream, data: bytes) -> Future | None:
    """``data`` to the socket: what the kernel takes now, the rest queued in the IOStream
    behind nothing else (its write future is returned). If the client is gone, the stream is
    closed: the handler hears of it through its close callback, as from Tornado's writes."""
    try:
        sent = stream.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        stream.close()
        return None
    if sent == len(data):
        return None
    return stream.write(data[sent:])


def _head(handler: RequestHandler, last: bytes) -> tuple[IOStream, bytes] | None:
    """The stream and the response head, when it may go out directly (else None): status
    line, the handler's headers (their values passed ``set_header``'s check), then ``last``.
    From here on the head counts as written."""
    conn = handler.request.connection
    stream = idle_stream(handler)
    if (
        stream is None
        or handler._headers_written
        or handler._transforms
        or conn._disconnect_on_finish  # type: ignore[union-attr]  # Tornado adds "Connection: close"
        or conn._request_start_line.version != "HTTP/1.1"  # type: ignore[union-attr]
    ):
        return None
    code, reason = handler._status_code, handler._reason
    lines = [b"HTTP/1.1 %d %s" % (code, reason.encode("latin1"))]
    lines += [f"{n}: {v}".encode("latin1") for n, v in handler._headers.get_all()]
    lines.append(last)
    handler._headers_written = True
    # A stream may last minutes and Tornado never reads these again: let go of them.
    handler._headers = httputil.HTTPHeaders()
    conn._response_start_line = httputil.ResponseStartLine("HTTP/1.1", code, reason)  # type: ignore[union-attr]
    return stream, b"\r\n".join(lines)


def _start_stream(handler: RequestHandler, chunk: bytes) -> bool:
    """A stream's head with its first chunk, chunked (as ``write_headers`` frames it)."""
    head = _head(handler, b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n" % (len(chunk), chunk))
    if head is None:
        return False
    conn = handler.request.connection
    conn._chunking_output = True  # type: ignore[union-attr]
    conn._expected_content_remaining = None  # type: ignore[union-attr]
    _send(*head)
    return True


def _respond(handler: RequestHandler) -> bool:
    """A whole response (a non-stream POST's): head, Content-Length and the written body in
    one send, then ``finish``'s bookkeeping. Not for statuses without a body, nor GET/HEAD
    (Tornado's finish adds an Etag to those)."""
    code = handler._status_code
    if (
        handler.request.method != "POST"
        or code < 200
        or code in (204, 304)
        or "Content-Length" in handler._headers
    ):
        return False
    body = b"".join(handler._write_buffer)
    head = _head(handler, b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
    if head is None:
        return False
    handler._write_buffer = []
    conn = handler.request.connection
    conn._chunking_output = False  # type: ignore[union-attr]
    conn._expected_content_remaining = 0  # type: ignore[union-attr]
    _finish(handler, *head)
    return True


def _end_stream(handler: RequestHandler) -> bool:
    """A stream's last chunk, then ``finish``'s bookkeeping (its flush would cost an empty
    IOStream write, and HTTP1Connection.finish another write for the last chunk)."""
    conn = handler.request.connection
    stream = idle_stream(handler)
    if stream is None or not getattr(conn, "_chunking_output", False) or handler._write_buffer:
        return False
    # The last chunk is written here: finish() must not add one.
    conn._chunking_output = False  # type: ignore[union-attr]
    _finish(handler, stream, END)
    return True


def _finish(handler: RequestHandler, stream: IOStream, data: bytes) -> None:
    """Send ``data``, then what ``RequestHandler.finish`` does after its flush."""
    conn = handler.request.connection
    conn._pending_write = _send(stream, data)  # type: ignore[union-attr]  # finish() waits for it
    conn.set_close_callback(None)  # type: ignore[union-attr]
    conn.finish()  # type: ignore[union-attr]
    handler._log()
    handler._finished = True
    handler.on_finish()
    handler._break_cycles()


def _send_chunk(handler: RequestHandler, data: bytes) -> bool:
    """A stream's chunk after its head: to the socket itself, framed as an HTTP/1.1 chunk,
    when the IOStream has nothing queued; what the kernel does not take, and everything while
    something is queued, through the IOStream in order. True while bytes wait for the client.
    """
    conn = handler.request.connection
    stream = conn.stream  # type: ignore[union-attr]
    # Only where Tornado itself frames chunks (HTTP/1.1 clients), on plain TCP.
    direct = getattr(conn, "_chunking_output", False) and type(stream) is IOStream
    if direct and not stream.writing() and not stream.closed():
        # A chunk the kernel takes whole costs no write future and no callback. ``_send``'s
        # twin, inline: it runs for every chunk of every stream, where a call shows in the CPU.
        framed = b"%x\r\n%b\r\n" % (len(data), data)
        try:
            sent = stream.socket.send(framed)
        except BlockingIOError:
            sent = 0
        except OSError:
            handler.on_connection_close()
            return False
        if sent == len(framed):
            return False
        stream.write(framed[sent:])  # the rest in order, behind nothing else
    else:
        conn.write(data)  # type: ignore[union-attr]
    return stream.writing()


class FastWriter:
    """A relay handler's answer written to the socket itself where it can be (see above), else
    through Tornado's write path; the same interface as ``plain.PlainWriter``."""

    fast = True
    send_chunk = staticmethod(_send_chunk)

    @staticmethod
    def start_stream(handler: RequestHandler, chunk: bytes) -> None:
        """A stream's head and first chunk."""
        if _start_stream(handler, chunk):
            return
        handler.write(chunk)
        handler.flush()
        # The headers are on the wire and Tornado never reads them again; a stream may last
        # minutes, so let go of the filled dict.
        handler._headers = httputil.HTTPHeaders()

    @staticmethod
    def finish(handler: RequestHandler, streaming: bool) -> None:
        """The end of the answer: a stream's last chunk, or a whole buffered answer."""
        if handler._headers_written:
            if streaming and _end_stream(handler):
                return
        elif not streaming and _respond(handler):
            return
        handler.finish()
