"""orpoll.fast.headers.parse against Tornado's HTTPHeaders.parse (the oracle), and in the server."""

from __future__ import annotations

import json
import random

import pytest
from tornado import httputil
from tornado.tcpclient import TCPClient

from orpoll.fast.headers import _BLOCK, parse
from tests.conftest import raw_chat_request


def outcome(parser, block: str):
    """What a parser makes of ``block``: its headers (every line, and combined), or its error."""
    try:
        headers = parser(block)
    except httputil.HTTPInputError as e:
        return ("error", str(e))
    return ("ok", list(headers.get_all()), {name: headers[name] for name in headers})


BLOCKS = [
    "",
    "\r\n",
    "\nHost: a\r\nContent-Length: 5\r\n\r\n",
    "Host: a\nAccept: */*\n\n",  # bare LF, as Tornado still accepts
    "A: 1\r\na: 2\r\nA: 3\r\n\r\n",  # one name, three lines
    "Set-Cookie: x=1\r\nset-cookie: y=2\r\n\r\n",
    "X-Empty:\r\nX-Blank:   \r\n\r\n",
    "X-Pad: \t value with  inner  spaces \t \r\n\r\n",
    "X-Latin: caf\xe9 \x80\xff\r\n\r\n",
    "A: 1\r\n\r\nB: 2\r\n\r\n",  # an empty line inside
    "Authorization: Bearer sk-or-v1-" + "a" * 64 + "\r\n\r\n",
    "x-stainless-os: Linux\r\nX-STAINLESS-ARCH: x64\r\n\r\n",
    # Tornado's errors
    " folded: x\r\n\r\n",
    "A: 1\r\n continued\r\n\r\n",
    "No colon here\r\n\r\n",
    "Bad Name: x\r\n\r\n",
    "Bad(name): x\r\n\r\n",
    ": no name\r\n\r\n",
    "A: x\x00y\r\n\r\n",
    "A: x\x7f\r\n\r\n",
    "A: x\ry\r\n\r\n",
    "A: x\r\r\n\r\n",
    "A: \u0100\r\n\r\n",
    "A: 1\r\nB: 2",  # a last line without its end
    "A: 1\r\n\r",
]


@pytest.mark.parametrize("block", BLOCKS)
def test_parse_is_tornados_on_known_cases(block):
    assert outcome(parse, block) == outcome(httputil.HTTPHeaders.parse, block)


def test_parse_is_tornados_on_random_blocks():
    """Random header blocks from the characters that matter: the two parsers agree on each,
    headers or error; both kinds occur, and many blocks take the fast path (not Tornado's)."""
    rng = random.Random(20261126)
    names = ["Host", "a", "X-Id", "content-TYPE", "b c", "", "x(y)", "ñ"]
    pieces = ["v", "1", " ", "\t", ":", "\r", "\x00", "\x7f", "\x80", "\xff", "\u0101", "a b"]
    ends = ["\r\n", "\n", "\r", "", "\r\r\n"]
    kinds, fast = set(), 0
    for _ in range(3000):
        lines = []
        for _ in range(rng.randrange(0, 5)):
            value = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 5)))
            sep = rng.choice([":", ": ", ":\t", " :", ""])
            lead = rng.choice(["", "", "", " "])
            lines.append(lead + rng.choice(names) + sep + value + rng.choice(ends))
        block = rng.choice(["", "\n"]) + "".join(lines) + rng.choice(["\r\n", "\n", ""])
        expected = outcome(httputil.HTTPHeaders.parse, block)
        assert outcome(parse, block) == expected, repr(block)
        kinds.add(expected[0])
        fast += _BLOCK.fullmatch(block) is not None
    assert kinds == {"ok", "error"}
    assert fast > 300, fast


async def exchange(base_url: str, extra: bytes) -> bytes:
    """A non-stream chat request with ``extra`` header lines, as raw bytes; the raw answer."""
    body = json.dumps({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    request = raw_chat_request(body).replace(b"Host: x\r\n", b"Host: x\r\n" + extra, 1)
    stream = await TCPClient().connect("127.0.0.1", int(base_url.rsplit(":", 1)[1]))
    await stream.write(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
    return await stream.read_until_close()


async def test_request_headers_reach_the_handler_as_tornado_reads_them(app, fake, base_url):
    """Through the server: blanks around a value are stripped (the request id comes back
    without them), a repeated header is read, and a malformed header line is a 400, as with
    Tornado's parse; the server goes on serving."""
    answer = await exchange(base_url, b"X-Request-Id: \t req-42  \r\nAccept: a\r\nAccept: b\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nX-Request-Id: req-42\r\n" in answer

    answer = await exchange(base_url, b"Bad Header: x\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    answer = await exchange(base_url, b"")
    assert answer.startswith(b"HTTP/1.1 200 ")
