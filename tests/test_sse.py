"""sse.py: the splitter, reading events (data, errors, the end) and building error events; and
what the relay does with large events: a 10 MB event relays whole in linear time without
stalling the server, and one past MAX_SSE_EVENT_BYTES ends the stream with an error event (or
fails over while nothing was sent)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orpoll import sse
from tests.conftest import KEYS
from tests.fake_upstream import chunk
from tests.test_streaming import DONE, PAID, assert_clean_sse, ks_of, stream_raw

A, B, C = KEYS

# ---- the splitter ------------------------------------------------------------------------------

_line = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30).map(
    lambda s: s.encode()
)
_event = st.one_of(
    _line.map(lambda b: b"data: " + b),
    _line.map(lambda b: b": " + b),  # a keep-alive comment
    st.lists(_line, min_size=1, max_size=3).map(lambda ls: b"\n".join(b"data: " + x for x in ls)),
)


@st.composite
def streams(draw) -> bytes:
    """A valid event stream: events with one line ending style each, sometimes an unfinished
    last event."""
    style = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    events = draw(st.lists(_event, max_size=12))
    body = b"".join(e.replace(b"\n", style) + style + style for e in events)
    if draw(st.booleans()):
        body += draw(_event)
    return body


def fed(stream: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    """Feed ``stream`` cut at ``cuts``: the complete blocks returned, and what is left."""
    buf, blocks, last = bytearray(), [], 0
    for at in [*sorted(cuts), len(stream)]:
        block = sse.feed(buf, stream[last:at])
        last = at
        if block:
            blocks.append(block)
    return blocks, bytes(buf)


@settings(max_examples=300, deadline=None)
@given(stream=streams(), data=st.data())
def test_any_split_of_a_stream_gives_the_same_events(stream, data):
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    whole, whole_rest = fed(stream, [])
    blocks, rest = fed(stream, cuts)
    assert b"".join(blocks) + rest == stream  # nothing lost, reordered or added
    assert rest == whole_rest
    assert [e for b in blocks for e in sse.events(b)] == sse.events(b"".join(whole))
    for block in blocks:  # every block ends on an event boundary
        assert block.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))


def test_a_boundary_split_across_chunks_is_found():
    buf = bytearray()
    assert sse.feed(buf, b"data: 1\r\n\r") == b""
    assert sse.feed(buf, b"\ndata: 2") == b"data: 1\r\n\r\n"
    assert sse.feed(buf, b"\n") == b""
    assert sse.feed(buf, b"\n") == b"data: 2\n\n"
    assert buf == b""


def test_feeding_one_large_event_is_linear():
    """A 20 MB event in 16 KB chunks (curl's write size): the old splitter copied and searched
    everything buffered so far on every chunk, seconds of CPU for one such event."""
    piece = b"x" * 16384
    buf = bytearray(b"data: ")
    start = time.process_time()
    for _ in range(20 * 64):
        assert sse.feed(buf, piece) == b""
    assert len(sse.feed(buf, b"\n\n")) == 20 * 1024 * 1024 + 8
    assert time.process_time() - start < 1.0  # far above linear time, far below quadratic


def test_events_are_split_on_any_line_ending_and_blank_ones_dropped():
    assert sse.events(b"data: 1\r\n\r\ndata: 2\r\rdata: 3\n\n\n\n") == [
        b"data: 1",
        b"data: 2",
        b"data: 3",
    ]


def test_data_joins_data_lines_and_a_comment_has_none():
    assert sse.data_of(b'event: x\ndata: {"a":\ndata:1}') == b'{"a":\n1}'
    assert sse.data_of(b": keep-alive") is None


@pytest.mark.parametrize(
    "payload,error",
    [
        (b'{"choices":[{"delta":{"content":"hi"}}]}', None),
        (b'{"error":{"code":502,"message":"x"}}', {"code": 502, "message": "x"}),
        (b'{"error":"plain text"}', {"message": "plain text"}),
        (
            b'{"choices":[{"finish_reason":"error","error":{"code":429}}]}',
            {"code": 429},
        ),
        (b'{"choices":[{"finish_reason":"error"}],"x":"error"}', {"message": "generation failed"}),
        (b'"error"', None),
        (b'{"error" oops', None),
    ],
)
def test_an_error_is_found_at_the_top_or_in_a_failed_choice(payload, error):
    assert sse.error_of(payload) == error


def test_json_nested_past_the_parser_is_an_error_of_its_own():
    deep = b'{"error":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert sse.error_of(deep)["code"] == 502


def test_the_stream_end_is_recognised_through_trailing_blank_lines():
    assert sse.ends_with_done(b"data: {}\n\n" + sse.DONE)
    assert sse.ends_with_done(b"data: [DONE]\r\n\r\n")
    assert not sse.ends_with_done(b"data: {}\n\n")


def test_an_error_event_is_one_openai_shaped_chunk():
    event = sse.error_event("upstream went away", status=502)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert sse.events(event) == [event[:-2]]
    body = json.loads(sse.data_of(event[:-2]))
    assert body["object"] == "chat.completion.chunk" and body["choices"] == []
    assert body["error"] == {
        "message": "upstream went away",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_error",
        "status": 502,
    }


# ---- through the relay -------------------------------------------------------------------------


def big_event(size: int) -> bytes:
    return chunk(1, PAID, "y" * size)


def pieces(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_a_10_mb_event_relays_whole_and_the_server_stays_responsive(app, fake, base_url, api):
    event = big_event(10 * 1024 * 1024)
    sent = chunk(0, PAID) + event + DONE
    fake.default = {"raw": pieces(sent), "interval": 0}
    job = asyncio.ensure_future(stream_raw(base_url))
    slowest = 0.0
    while not job.done():
        start = time.monotonic()
        assert (await api("/healthz")).code == 200
        slowest = max(slowest, time.monotonic() - start)
        await asyncio.sleep(0.01)
    raw = await job
    assert raw.code == 200 and raw.body == sent
    assert_clean_sse(raw)
    assert slowest < 1.0, slowest  # a quadratic splitter kept /healthz waiting ~2 s


@pytest.fixture
def small_events(env):
    env["MAX_SSE_EVENT_BYTES"] = "65536"


async def test_an_event_over_the_limit_ends_the_stream_with_an_error(
    small_events, app, fake, base_url, in_order
):
    fake.default = {"raw": [chunk(0, PAID), *pieces(big_event(200_000), 16384), DONE]}
    raw = await stream_raw(base_url)
    assert raw.code == 200
    data = raw.data()
    assert json.loads(data[0])["choices"][0]["delta"]["content"] == "tok0 "
    err = json.loads(data[1])["error"]
    assert err["code"] == "upstream_event_too_large" and "65536" in err["message"]
    assert data[2:] == [b"[DONE]"]
    assert fake.disconnects == 1  # the upstream transfer was ended, not read to its end
    assert ks_of(app, A).failures == 0  # the answer's size is not the key's fault


async def test_a_first_event_over_the_limit_fails_over(small_events, app, fake, base_url, in_order):
    fake.script(A, {"raw": pieces(big_event(200_000), 16384)})
    raw = await stream_raw(base_url)
    assert raw.code == 200
    assert raw.body.startswith(chunk(0, PAID)) and b"yyyy" not in raw.body
    assert_clean_sse(raw)
    assert fake.requests[A] == 1 and fake.requests[B] == 1
