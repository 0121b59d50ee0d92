"""What orpoll writes to the client's socket itself (orpoll/fast/wire.py): the same bytes Tornado's
own write path would send, and a connection that goes on serving."""

from __future__ import annotations

import json

from tornado.tcpclient import TCPClient

from tests.conftest import raw_chat_request
from tests.test_streaming import MSG, PAID, expected_stream


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (ending with its 0-size chunk)."""
    out = bytearray()
    while True:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            assert body == b"\r\n"
            return bytes(out)
        out += body[:n]
        assert body[n : n + 2] == b"\r\n"
        body = body[n + 2 :]


def head_fields(head: bytes) -> dict[str, str]:
    lines = head.decode("latin1").split("\r\n")
    return dict(line.split(": ", 1) for line in lines[1:] if line)


async def test_stream_heads_on_one_keep_alive_connection(fake, base_url):
    """Three streams, one after another on one connection. For an HTTP/1.1 keep-alive client
    orpoll writes a stream's response head itself, with its first chunk (RelayHandler.
    _head_direct); a request with Connection: close takes Tornado's own path. The heads match
    but for that Connection line, every stream arrives whole, and the connection serves the
    next request, then closes after the last."""
    fake.default = {"chunks": 3, "interval": 0.01}
    host, port = base_url.removeprefix("http://").split(":")
    stream = await TCPClient().connect(host, int(port))
    request = raw_chat_request(json.dumps({"model": PAID, "messages": MSG, "stream": True}))
    heads = []
    for extra in (b"", b"", b"Connection: close\r\n"):
        await stream.write(request.replace(b"Host: x\r\n", b"Host: x\r\n" + extra, 1))
        head = await stream.read_until(b"\r\n\r\n")
        assert dechunk(await stream.read_until(b"\r\n0\r\n\r\n")) == expected_stream(3)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        heads.append(head_fields(head))
    assert await stream.read_until_close() == b""
    direct, tornado_path = heads[0], heads[2]
    assert tornado_path.pop("Connection") == "close"
    assert list(direct) == list(tornado_path) == list(heads[1])  # same fields, same order
    for name in ("Content-Type", "Transfer-Encoding", "Cache-Control", "X-Orpoll-Attempts"):
        assert direct[name] == tornado_path[name], name
    assert direct["Content-Type"].startswith("text/event-stream")
    assert direct["Transfer-Encoding"] == "chunked"


async def test_non_stream_heads_on_one_keep_alive_connection(fake, base_url):
    """Three non-stream answers on one connection: the first two written by wire.respond
    (head, Content-Length and body in one send), the third, asked with Connection: close, by
    Tornado's finish. Same fields and values but for Connection; bodies whole; the connection
    serves the next request, then closes after the last."""
    host, port = base_url.removeprefix("http://").split(":")
    stream = await TCPClient().connect(host, int(port))
    request = raw_chat_request(json.dumps({"model": PAID, "messages": MSG}))
    heads, bodies = [], []
    for extra in (b"", b"", b"Connection: close\r\n"):
        await stream.write(request.replace(b"Host: x\r\n", b"Host: x\r\n" + extra, 1))
        head = await stream.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        fields = head_fields(head)
        bodies.append(json.loads(await stream.read_bytes(int(fields["Content-Length"]))))
        heads.append(fields)
    assert await stream.read_until_close() == b""
    direct, tornado_path = heads[0], heads[2]
    assert tornado_path.pop("Connection") == "close"
    assert list(direct) == list(tornado_path) == list(heads[1])  # same fields, same order
    for name in ("Content-Type", "X-Orpoll-Attempts"):
        assert direct[name] == tornado_path[name], name
    assert direct["Content-Type"].startswith("application/json")
    for body in bodies:  # the fake answers with its key's name: the keys take turns
        assert body["choices"][0]["message"]["content"].startswith("answer from ")
