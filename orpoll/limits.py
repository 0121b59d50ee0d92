"""Limits on what a client may send and how slowly: the time limits of each phase of a request
(``Limits``, enforced by the server's sweep in connections.py), the size of its request line
and header block, and the answers (408, 414, 431) written straight to the socket."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import orjson

# Tornado's own limit on a request's header block (HTTP1ConnectionParameters.max_header_size),
# and ours on its first line, as common servers have (nginx: 8 KB per line by default).
MAX_HEADER_BYTES = 65536
MAX_REQUEST_LINE_BYTES = 8192
# struct tcp_info (linux/tcp.h): tcpi_last_data_recv, milliseconds since data last arrived.
_LAST_DATA_RECV = struct.Struct("I")
_LAST_DATA_RECV_AT = 52
_TCP_INFO = getattr(socket, "TCP_INFO", None)
REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
}


@dataclass(frozen=True)
class Limits:
    """Seconds a client may take in each phase: sending a request's headers, staying silent in
    the middle of its body, and idling on a kept-alive connection between requests."""

    header: float = 30.0
    body: float = 60.0
    idle: float = 300.0

    def sweep_every(self) -> float:
        """How often the sweep runs: often enough that a limit is enforced within an eighth
        of itself late, and at least every 5 s."""
        return min(5.0, max(0.05, min(self.header, self.body, self.idle) / 8))


class RequestTooLarge(Exception):
    """A request line or header block over its limit; ``status`` is 414 or 431."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def oversized(buffered: bytes | bytearray | memoryview) -> RequestTooLarge:
    """What to answer a request whose header block outgrew MAX_HEADER_BYTES (``buffered`` is
    its start): 414 when the request line alone is over its limit, else 431."""
    eol = bytes(buffered[: MAX_REQUEST_LINE_BYTES + 1]).find(b"\n")
    if eol < 0 or eol > MAX_REQUEST_LINE_BYTES:
        return line_too_long()
    return RequestTooLarge(431, f"request header fields are larger than {MAX_HEADER_BYTES} bytes")


def line_too_long() -> RequestTooLarge:
    return RequestTooLarge(414, f"request line is longer than {MAX_REQUEST_LINE_BYTES} bytes")


def response(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 answer with an OpenAI-shaped error body; the connection then closes."""
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


CODES = {408: "request_timeout", 414: "request_line_too_long", 431: "headers_too_large"}


def answer_and_close(sock: socket.socket | None, status: int, message: str) -> None:
    """Write the error answer to ``sock`` as far as the kernel takes it now (it is small: all of
    it, in practice), end our side, and drop what the client sent that was never read: closing
    a socket with unread input sends a reset, which can destroy the answer before the client
    reads it. The caller closes the stream."""
    if sock is None:
        return
    try:
        sock.send(response(status, message, CODES.get(status, "invalid_request")))
        sock.shutdown(socket.SHUT_WR)
        for _ in range(64):  # at most 64 reads of what has arrived already
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                break
    except OSError:
        pass


def silent_for(sock: socket.socket | None) -> float | None:
    """Seconds since data last arrived on the TCP socket ``sock`` (the kernel keeps this), or
    None where it cannot say (not Linux, not TCP)."""
    if _TCP_INFO is None or sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < _LAST_DATA_RECV_AT + 4:
        return None
    ms: int = _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_AT)[0]
    return ms / 1000.0
