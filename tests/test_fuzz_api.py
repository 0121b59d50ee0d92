"""Fuzzing the /v1 JSON endpoints and their headers (seeded, bounded): whatever arrives, the
answer is never a 5xx of ours, the server keeps serving, and no key is blamed."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from tests.api_helpers import connect, untouched
from tests.conftest import KEYS

SEED = 1503
ROUNDS = 150
ENDPOINTS = [b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"]
GOOD = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
ODD_VALUES = [
    None,
    True,
    0,
    -1,
    1.5,
    "",
    "x",
    [],
    {},
    [None],
    {"role": 5},
    "\u0000",
    "\ud7ff\ue000",
    10**30,
    -(10**400),
]
ODD_LITERALS = [
    b"1e400",
    b"-1e400",
    b"NaN",
    b"Infinity",
    b"1" * 5000,
    b"0.%s" % (b"1" * 5000),
    b"1e-400",
    b"-0",
    b'"\\ud800"',
    b'"\\udc00\\ud800"',
    b'"\\u0000"',
    b'"\x00"',
    b'"\xff\xfe"',
    b'"\xc3"',
    b'"\xed\xa0\x80"',
    b"[" * 2000 + b"]" * 2000,
    b'{"a":' * 600 + b"1" + b"}" * 600,
    b"[" * 300 + b"]" * 300,
    b"[" * 100,
    b"tru",
    b"nul",
    b"",
]


def random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 4 else 4)
    if kind == 0:
        return rng.choice(ODD_VALUES)
    if kind == 1:
        return rng.randint(-(2**70), 2**70)
    if kind == 2:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(8)))
    if kind == 3:
        return rng.random() * 10 ** rng.randrange(-300, 300)
    if kind < 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["model", "messages", "stream", "prompt", "input", "x"]): random_json(
            rng, depth + 1
        )
        for _ in range(rng.randrange(4))
    }


def fuzz_body(rng: random.Random) -> bytes:
    """One body: a near-valid request with one field made odd, a raw odd literal spliced in,
    random JSON, or random bytes."""
    kind = rng.randrange(5)
    if kind == 0:
        obj = dict(GOOD)
        obj[rng.choice(["model", "messages", "stream", "prompt", "input"])] = random_json(rng)
        return json.dumps(obj).encode()
    if kind == 1:
        field = rng.choice([b"model", b"messages", b"stream", b"max_tokens", b"x"])
        return b'{"messages": [], "%s": %s}' % (field, rng.choice(ODD_LITERALS))
    if kind == 2:
        return rng.choice(ODD_LITERALS)
    if kind == 3:
        return json.dumps(random_json(rng)).encode()
    return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


def fuzz_header(rng: random.Random) -> bytes:
    """A header value of printable ASCII, Latin-1, controls (no CR/LF) or NULs."""
    alphabet = rng.choice(
        [range(0x20, 0x7F), range(0x80, 0x100), [0, 1, 9, 0x7F, 0x1B], range(0x00, 0x100)]
    )
    alphabet = [c for c in alphabet if c not in (10, 13)]
    return bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 80)))


def request(path: bytes, body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"POST %s HTTP/1.1" % path, b"Host: x", b"Content-Length: %d" % len(body)]
    lines += [b"%s: %s" % h for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def exchange(base_url: str, data: bytes) -> int:
    """Send raw bytes; the status of the answer (0 if the server closed without one)."""
    reader, writer = await connect(base_url)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    except asyncio.IncompleteReadError:
        return 0
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1])


async def assert_unharmed(app, fake, api) -> None:
    """Nothing counted against a key, and a good request still gets its answer."""
    assert all(ks.failures == 0 and ks.state == "available" for ks in app.scheduler)
    assert app.scheduler.counts()["available"] == len(KEYS)
    resp = await api("/v1/chat/completions", GOOD)
    assert resp.code == 200, resp.body
    assert app.inflight == 0


async def test_fuzzed_bodies(app, fake, base_url, api):
    rng = random.Random(SEED)
    seen = set()
    for n in range(ROUNDS):
        path = rng.choice(ENDPOINTS)
        body = fuzz_body(rng)
        status = await exchange(
            base_url, request(path, body, [(b"Content-Type", b"application/json")])
        )
        assert status and status < 500, (n, path, body[:200], status)
        seen.add(status)
    assert 400 in seen and 200 in seen  # both kinds were reached
    await assert_unharmed(app, fake, api)


@pytest.mark.parametrize("name", [b"Content-Type", b"X-Request-Id", b"Authorization", b"Accept"])
async def test_fuzzed_headers(app, fake, base_url, api, name):
    rng = random.Random(SEED + sum(name))
    for n in range(60):
        path = rng.choice(ENDPOINTS + [b"/v1/models", b"/v1/generation?id=1"])
        headers = [(name, fuzz_header(rng))]
        if name != b"Content-Type":
            headers.append((b"Content-Type", b"application/json"))
        data = request(path, json.dumps(GOOD).encode(), headers)
        if path.startswith((b"/v1/models", b"/v1/generation")):
            data = data.replace(b"POST ", b"GET ", 1)
        status = await exchange(base_url, data)
        assert status and status < 500, (n, path, headers, status)
    await assert_unharmed(app, fake, api)


async def test_fuzzed_paths_and_queries(app, fake, base_url, api):
    rng = random.Random(SEED + 1)
    pieces = [b"..", b".", b"%2e", b"%2f", b"%5c", b"\\", b"%00", b"%25", b"%zz", b"%ff", b"x"]
    pieces += [b"embeddings", b"/", b"?", b"=", b"&", b"%20", b"\xc3\xa9", b"\x7f", b";"]
    for n in range(ROUNDS):
        target = b"/v1/" + b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 8)))
        status = await exchange(base_url, request(target, b"{}", []))
        assert status == 0 or status < 500, (n, target, status)
    assert untouched(app) or all(ks.failures == 0 for ks in app.scheduler)
    await assert_unharmed(app, fake, api)
