"""Pure parts of the ledger: usage readers (body, stream tail, /generation), the record, the
client fingerprint, the stream tail buffer, metric counters and request filters."""

from __future__ import annotations

import json

import orjson
import pytest

from orpoll.ledgerquery import BadFilter, Filters, parse_time
from orpoll.metrics import MODELS_TRACKED, Counters, Histogram
from orpoll.usage import (
    RequestRecord,
    StreamTail,
    client_fingerprint,
    usage_from_body,
    usage_from_generation,
    usage_from_stream_tail,
)
from tests.fake_upstream import chunk, completion, generation_stats, usage_chunk

MODEL = "openai/gpt-4o"


def stream_bytes(n: int, **usage_extra) -> bytes:
    body = b"".join(chunk(i, MODEL) for i in range(n))
    return (
        b": OPENROUTER PROCESSING\n\n"
        + body
        + usage_chunk(n, MODEL, **usage_extra)
        + b"data: [DONE]\n\n"
    )


def test_client_fingerprint_is_short_stable_and_hides_the_token():
    fp = client_fingerprint("sk-client-secret-1")
    assert len(fp) == 8 and int(fp, 16) >= 0
    assert fp == client_fingerprint("sk-client-secret-1")
    assert fp != client_fingerprint("sk-client-secret-2")
    assert "secret" not in fp
    assert client_fingerprint("") == ""


def test_usage_from_body_reads_tokens_details_and_cost():
    body = json.dumps(completion(MODEL, "hi", cached_tokens=1, reasoning_tokens=4)).encode()
    u = usage_from_body(body)
    assert (u.prompt, u.completion, u.cached, u.reasoning) == (3, 2, 1, 4)
    assert u.cost == pytest.approx(3 * 2.5e-6 + 2 * 1e-5)
    assert (u.model, u.generation_id) == (MODEL, "gen-fake")


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"usage": null}', b'{"id": "x"}'])
def test_usage_from_body_without_usage_is_none(body):
    assert usage_from_body(body) is None


def test_usage_from_stream_tail_finds_the_last_chunk_before_done():
    data = stream_bytes(50, reasoning_tokens=7)
    tail = StreamTail(1024)
    for i in range(0, len(data), 37):  # chunks that do not line up with events
        tail.feed(data[i : i + 37])
    u = usage_from_stream_tail(tail.bytes())
    assert (u.prompt, u.completion, u.reasoning) == (3, 50, 7)
    assert u.generation_id == "gen-fake"


def test_usage_from_stream_tail_with_crlf_and_a_cut_first_event():
    data = stream_bytes(3).replace(b"\n", b"\r\n")
    assert usage_from_stream_tail(data[-700:]).completion == 3


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"data: [DONE]\n\n",
        b"".join(chunk(i, MODEL) for i in range(10)) + b"data: [DONE]\n\n",  # cut before usage
        b'data: {"usage": {"prompt_tokens": 1, "comp',  # the usage chunk itself cut
    ],
)
def test_usage_from_stream_tail_without_usage_is_none(tail):
    assert usage_from_stream_tail(tail) is None


def test_usage_from_stream_tail_reads_only_the_last_events():
    early_usage = usage_chunk(1, MODEL)  # a usage far from the end is not the stream's
    data = early_usage + b"".join(chunk(i, MODEL) for i in range(10)) + b"data: [DONE]\n\n"
    assert usage_from_stream_tail(data) is None


def test_usage_from_generation_prefers_native_counts():
    stats = generation_stats("gen-1", "sk-x", {"native_tokens_reasoning": 5, "tokens_prompt": 9})
    u = usage_from_generation(json.dumps({"data": stats}).encode())
    assert (u.prompt, u.completion, u.reasoning, u.cached) == (3, 2, 5, 0)
    assert u.cost == stats["total_cost"] and u.generation_id == "gen-1"
    assert usage_from_generation(b'{"error": {"code": 404}}') is None
    assert usage_from_generation(b"<html>") is None


def test_record_apply_keeps_unknown_figures_null():
    r = RequestRecord(time=0.0, status=200)
    assert not r.apply(None) and not r.usage_known
    assert r.prompt_tokens is None and r.cost is None and r.tokens == 0
    assert r.apply(usage_from_body(json.dumps(completion(MODEL, "x")).encode()))
    assert r.usage_known and r.answered_model == MODEL and r.tokens == 5


def test_record_failed_counts_broken_streams():
    assert RequestRecord(time=0, status=502).failed
    assert RequestRecord(time=0, status=200, error_type="upstream_error").failed
    assert not RequestRecord(time=0, status=200).failed


def test_stream_tail_stays_bounded_and_keeps_the_end():
    tail = StreamTail(100)
    for i in range(1000):
        tail.feed(b"%05d" % i)
    out = tail.bytes()
    assert 100 <= len(out) < 110 and out.endswith(b"00999")
    big = StreamTail(100)
    big.feed(b"a" * 50)
    big.feed(b"b" * 500)
    assert big.bytes() == b"b" * 500


def test_histogram_buckets_are_cumulative():
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3):
        h.observe(value)
    assert h.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.total == pytest.approx(3.65)


def test_model_labels_are_capped():
    c = Counters()
    for i in range(MODELS_TRACKED + 50):
        c.add_model(f"m{i}", [1, 0, 2, 3, 0, 0, 500])
    assert len(c.models) == MODELS_TRACKED + 1  # the rest went to "other" at once
    totals = c.model_totals(top=100)
    assert len(totals) == 101 and totals["other"][0] == MODELS_TRACKED + 50 - 100


def test_counters_count_failovers_and_verdicts():
    c = Counters()
    r = RequestRecord(time=0, status=200, route="/v1/chat/completions", stream=True, ttfb_ms=80)
    r.attempt("k1", "key_rate_limit", 429, 12.0)
    r.attempt("k2", "ok", 200, 30.0)
    c.observe(r)
    c.observe(RequestRecord(time=0, status=503, error_code="no_key_available"))
    assert c.failovers == 1 and c.exhausted == 1
    assert c.verdicts == {"key_rate_limit": 1, "ok": 1}
    assert c.requests[("/v1/chat/completions", "200", "true")] == 1


def test_parse_time_accepts_iso_and_epoch():
    assert parse_time("since", "1700000000") == 1700000000
    assert parse_time("since", "2023-11-14T22:13:20Z") == 1700000000
    assert parse_time("since", "2023-11-14T22:13:20") == 1700000000  # UTC when no zone
    assert parse_time("since", "2023-11-14T23:13:20+01:00") == 1700000000
    assert parse_time("since", "") is None
    with pytest.raises(BadFilter):
        parse_time("since", "yesterday")


@pytest.mark.parametrize(
    "name, value",
    [("status", "bad"), ("status", "20"), ("key", "sk-or-v1-full"), ("stream", "maybe")],
)
def test_bad_filters_are_refused(name, value):
    args = {name: value}
    with pytest.raises(BadFilter) as e:
        Filters.parse(lambda n: args.get(n, ""))
    assert e.value.param == name


def test_route_labels_are_capped():
    c = Counters()
    for i in range(80):
        c.observe(RequestRecord(time=0, status=404, route=f"/v1/scan-{i}"))
    routes = {route for route, _, _ in c.requests}
    assert len(routes) == 51 and "other" in routes
    assert c.requests[("other", "404", "false")] == 30


def test_a_large_answer_has_its_usage_read_from_its_end():
    content = "x" * 200_000 + '"usage": {"prompt_tokens": 999}'  # a decoy inside the text
    body = orjson.dumps(
        {
            "id": "gen-big",
            "model": "m",
            "choices": [{"message": {"content": content}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 50_000, "cost": 0.5},
        }
    )
    u = usage_from_body(body)
    assert u is not None and (u.prompt, u.completion, u.cost) == (7, 50_000, 0.5)
    assert usage_from_body(orjson.dumps({"choices": [{"text": "y" * 100_000}]})) is None


def test_a_body_read_from_its_two_ends_names_its_model_and_generation():
    body = orjson.dumps(
        {
            "id": "gen-ends",
            "model": "vendor/model-x",
            "choices": [{"message": {"content": "z" * 100_000}}],
            "usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}},
        }
    )
    u = usage_from_body(body)
    assert u is not None and (u.prompt, u.cached) == (5, 2)
    assert (u.model, u.generation_id) == ("vendor/model-x", "gen-ends")


def test_usage_that_is_not_the_last_member_is_still_read():
    body = (
        b'{"usage": {"prompt_tokens": 4, "cost": 0.25}, "id": "gen-1", "model": "m", "choices": []}'
    )
    u = usage_from_body(body)
    assert u is not None and (u.prompt, u.cost, u.model, u.generation_id) == (4, 0.25, "m", "gen-1")
