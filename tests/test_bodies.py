"""/v1 request bodies: an upload the client abandons frees its memory and its in-flight slot;
nesting too deep for the JSON parser or serialiser is a 400."""

from __future__ import annotations

import gc
import json
import os

import pytest

from tests.api_helpers import abandon_upload, until
from tests.conftest import assert_openai_error

CHAT = "/v1/chat/completions"
GOOD = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MB = 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", [CHAT, "/v1/embeddings"])
async def test_abandoned_upload_frees_memory_and_its_slot(app, fake, base_url, api, chunked, path):
    await abandon_upload(base_url, path, 2 * MB, chunked=chunked)  # warm up the allocator
    assert await until(lambda: app.inflight == 0), app.inflight
    gc.collect()
    before = rss()
    for _ in range(10):
        await abandon_upload(base_url, path, 20 * MB, chunked=chunked)
    assert await until(lambda: app.inflight == 0), f"inflight stuck at {app.inflight}"
    gc.collect()
    grown = rss() - before
    assert grown < 60 * MB, f"RSS grew by {grown // MB} MB after 10 abandoned 20 MB uploads"
    assert not fake.requests
    resp = await api(CHAT, GOOD)
    assert resp.code == 200, resp.body
    assert app.inflight == 0


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "body",
    [
        '{"model": "m", "messages": ' + nested(5000) + "}",
        '{"model": "m", "messages": [' + '{"a":' * 3000 + "1" + "}" * 3000 + "]}",
        '{"model": null, "messages": [' + nested(400) + "]}",
        '{"model": "", "messages": [{"role": "user", "content": ' + nested(300) + "}]}",
        nested(100_000),
    ],
    ids=["array-5000", "object-3000", "null-model-400", "empty-model-300", "bare-100000"],
)
async def test_deep_nesting_is_400(app, fake, api, body):
    resp = await api(CHAT, body=body)
    assert_openai_error(resp, 400, "invalid_request_error")
    assert not fake.requests
    assert (await api(CHAT, GOOD)).code == 200


async def test_deep_nesting_in_a_pass_through_body_is_400(fake, api):
    body = '{"model": "m", "input": ' + nested(5000) + "}"
    resp = await api("/v1/embeddings", body=body)
    assert_openai_error(resp, 400, "invalid_request_error")
    assert not fake.requests


async def test_nesting_the_parser_takes_is_relayed_byte_for_byte(fake, api):
    """Depth that orjson parses but would not serialise again: the body is sent as it came."""
    body = json.dumps({**GOOD, "metadata": {"x": json.loads(nested(300))}})
    resp = await api(CHAT, body=body)
    assert resp.code == 200, resp.body
    assert fake.bodies == [body.encode()]


async def test_empty_body_said_to_be_json_is_400(app, fake, api):
    """A POST that says JSON and carries nothing is the client's error, not the upstream's."""
    resp = await api("/v1/completions", body=b"", headers={"Content-Type": "application/json"})
    assert_openai_error(resp, 400, "invalid_request_error")
    assert not fake.requests
    assert all(ks.failures == 0 for ks in app.scheduler)


async def test_empty_body_without_a_type_still_passes(fake, api):
    resp = await api("/v1/audio/voices/v-1", method="DELETE")
    assert resp.code == 200, resp.body
