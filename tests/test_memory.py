"""A finished request leaves no reference cycles among the proxy's objects.

Objects in a cycle wait for the collector. A stream lives long enough to reach its oldest
generation, so under load the full passes freed thousands of requests at once: 40-50 ms stalls
of every stream (bench streams200, p99 time to first chunk). Plain reference counting frees
them the moment the request ends, and this test keeps it that way.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections import Counter

import pytest
from tornado.httputil import HTTPServerRequest

from orpoll.attempt import Attempt, Attempts
from orpoll.fast.transfer import Transfer
from orpoll.handlers.api import RelayHandler
from tests.conftest import FAST, KEYS

A, B, C = KEYS
PAID = "openai/gpt-4o"
MSG = [{"role": "user", "content": "hi"}]
OURS = (RelayHandler, Attempt, Transfer, Attempts, HTTPServerRequest)


@pytest.fixture
def garbage():
    """``await garbage()`` -> Counter of our objects that only the collector could free."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)

    async def found() -> Counter:
        await asyncio.sleep(0.05)  # the handler's last callbacks
        gc.collect()
        ours = Counter(type(o).__name__ for o in gc.garbage if isinstance(o, OURS))
        gc.garbage.clear()
        return ours

    yield found
    gc.set_debug(0)
    gc.garbage.clear()


ERR_502 = {"status": 502, "error": {"code": 502, "message": "Provider returned error"}}
CASES = {
    "stream": ({}, True, 200),
    "non-stream": ({}, False, 200),
    "stream-failover": ({A: ERR_502}, True, 200),
    "non-stream-failover": ({A: ERR_502}, False, 200),
    "mid-stream-error": ({A: {"mid_error": (1, {"code": 502, "message": "gone"})}}, True, 200),
    "mid-stream-drop": ({A: {"drop_after": 1}}, True, 200),
    "every-key-fails": ({k: ERR_502 for k in KEYS}, False, 502),
    "request-fault": ({A: {"status": 400, "error": {"code": 400, "message": "bad"}}}, False, 400),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_requests_leave_no_reference_cycles(case, fake, api, in_order, garbage):
    script, stream, status = CASES[case]
    for key, behaviour in script.items():
        fake.script(key, behaviour)
    body = {"model": PAID, "messages": MSG, "stream": stream}
    resp = await api("/v1/chat/completions", body)
    assert resp.code == status, resp.body
    if stream and status == 200:
        assert resp.body.endswith(b"data: [DONE]\n\n")
    else:
        json.loads(resp.body)
    assert await garbage() == Counter()


async def test_a_stream_holds_its_body_once_and_not_the_parsed_conversation(fake, base_url):
    """While a stream runs, the handler keeps the body bytes (for failover) but neither the
    parsed JSON (several times the body's size) nor a second copy in its chunk list."""
    from orpoll.handlers.api import ChatHandler
    from tests.test_streaming import open_raw_stream, wait_for

    fake.default = {"chunks": 40, "interval": 0.05}
    stream = await open_raw_stream(base_url)
    await stream.read_until(b"data: {")
    await wait_for(lambda: fake.active == 1, 2)
    frames = [
        o.cr_frame
        for o in gc.get_objects()
        if asyncio.iscoroutine(o) and getattr(o, "cr_code", None) is ChatHandler.post.__code__
    ]
    assert len(frames) == 1 and frames[0] is not None
    local = frames[0].f_locals
    assert "obj" not in local and isinstance(local["body"], bytes)
    handler = local["self"]
    assert handler._chunks == []
    if FAST:  # the fast writer's and server's savings; Tornado's path keeps both
        assert not handler._headers  # sent already: the filled dict is let go of
        # The connection's IOStream holds no deque while nothing waits to be written.
        ios = handler.request.connection.stream
        assert ios._write_futures._d is None and ios._write_buffer._buffers._d is None
    stream.close()


def test_lazy_deque_does_what_iostream_asks_of_a_deque():
    import collections
    import random

    from orpoll.fast.connections import _LazyDeque

    rng = random.Random(3)
    lazy, real = _LazyDeque(), collections.deque()
    for n in range(2000):
        op = rng.choice("aaapgc" if n % 500 else "c")
        if op == "a":
            lazy.append(n), real.append(n)
        elif op == "p" and real:
            assert lazy.popleft() == real.popleft()
        elif op == "g" and real:
            assert lazy[0] == real[0] and lazy[-1] == real[-1]
        elif op == "c":
            lazy.clear(), real.clear()
        assert bool(lazy) == bool(real) and len(lazy) == len(real) and list(lazy) == list(real)
        assert (lazy._d is None) == (not real)  # nothing held while empty
    with pytest.raises(IndexError):
        _LazyDeque().popleft()
    with pytest.raises(IndexError):
        _LazyDeque()[0]
