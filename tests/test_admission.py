"""Admission limits: MAX_CONCURRENT_REQUESTS and MAX_CONCURRENT_REQUESTS_PER_CLIENT answer 429
``too_many_requests`` with Retry-After, before any key is picked; slots always come back."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.api_helpers import abandon_upload, connect, until
from tests.conftest import assert_openai_error

CHAT = "/v1/chat/completions"
GOOD = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
SLOW = {"first_delay": 1.0}
ONE, TWO = {"Authorization": "Bearer client-one"}, {"Authorization": "Bearer client-two"}


@pytest.fixture
def total_two(env):
    env["MAX_CONCURRENT_REQUESTS"] = "2"


@pytest.fixture
def per_client_one(env):
    env["APP_API_KEY"] = "client-one,client-two"
    env["MAX_CONCURRENT_REQUESTS_PER_CLIENT"] = "1"


@pytest.fixture
def client_keys_only(env):
    env["APP_API_KEY"] = "client-one,client-two"


def assert_busy(resp) -> None:
    e = assert_openai_error(resp, 429, "rate_limit_error")
    assert e["code"] == "too_many_requests"
    assert resp.headers["Retry-After"] == "1"


async def test_over_the_process_limit_is_429(total_two, app, fake, api):
    fake.default = SLOW
    slow = [asyncio.ensure_future(api(CHAT, GOOD)) for _ in range(2)]
    assert await until(lambda: app.inflight == 2)
    for path, body in ((CHAT, GOOD), ("/v1/embeddings", {"model": "m", "input": "x"})):
        assert_busy(await api(path, body))
    assert sum(fake.requests.values()) == 2  # the refused requests reached no key
    assert [r.code for r in await asyncio.gather(*slow)] == [200, 200]
    fake.default = {}
    assert (await api(CHAT, GOOD)).code == 200
    assert app.inflight == 0


async def test_limits_are_read_on_each_request(app, fake, api):
    fake.default = SLOW
    slow = asyncio.ensure_future(api(CHAT, GOOD))
    assert await until(lambda: app.inflight == 1)
    app.config = dataclasses.replace(app.config, max_concurrent_requests=1)
    assert_busy(await api(CHAT, GOOD))
    app.config = dataclasses.replace(app.config, max_concurrent_requests=0)  # 0: no limit
    fake.default = {}
    assert (await api(CHAT, GOOD)).code == 200
    assert (await slow).code == 200


async def test_per_client_limit_holds_one_client_only(per_client_one, app, fake, api):
    fake.default = SLOW
    slow = asyncio.ensure_future(api(CHAT, GOOD, headers=ONE))
    assert await until(lambda: app.inflight == 1)
    assert_busy(await api(CHAT, GOOD, headers=ONE))
    fake.default = {}
    assert (await api(CHAT, GOOD, headers=TWO)).code == 200  # another client is not held up
    assert (await slow).code == 200
    assert (await api(CHAT, GOOD, headers=ONE)).code == 200
    assert app.admission.clients == {}


async def test_per_client_limit_applies_at_run_time(client_keys_only, app, fake, api):
    app.config = dataclasses.replace(app.config, max_concurrent_per_client=1)
    fake.default = SLOW
    slow = asyncio.ensure_future(api(CHAT, GOOD, headers=ONE))
    assert await until(lambda: app.inflight == 1)
    assert_busy(await api("/v1/embeddings", {"model": "m", "input": "x"}, headers=ONE))
    assert (await slow).code == 200


async def test_slots_come_back_after_errors(per_client_one, app, fake, api):
    for _ in range(3):
        assert_openai_error(await api("/v1/..%2f_stats", headers=ONE), 400)
        assert_openai_error(await api(CHAT, body=b"{", headers=ONE), 400)
    fake.default = {"status": 400, "error": {"code": 400, "message": "bad"}}
    assert_openai_error(await api(CHAT, GOOD, headers=ONE), 400)
    fake.default = {}
    assert (await api(CHAT, GOOD, headers=ONE)).code == 200
    assert app.inflight == 0 and app.admission.clients == {}


async def test_slot_comes_back_when_the_client_leaves(per_client_one, app, fake, base_url, api):
    await abandon_upload(
        base_url, CHAT, 1024 * 1024, chunked=False, headers=b"Authorization: Bearer client-one\r\n"
    )
    assert await until(lambda: app.inflight == 0 and app.admission.clients == {})
    fake.default = {"hang": True}
    reader, writer = await connect(base_url)
    body = b'{"model": "m", "messages": []}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client-one\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert await until(lambda: app.admission.clients == {b"client-one": 1})
    writer.close()
    assert await until(lambda: app.inflight == 0 and app.admission.clients == {})
    fake.default = {}
    assert (await api(CHAT, GOOD, headers=ONE)).code == 200


async def test_no_limit_by_default(app, fake, api):
    fake.default = {"first_delay": 0.3}
    resps = await asyncio.gather(*(api(CHAT, GOOD) for _ in range(20)))
    assert [r.code for r in resps] == [200] * 20


async def test_abandoned_upload_under_a_limit(total_two, app, fake, base_url, api):
    for _ in range(4):
        await abandon_upload(base_url, CHAT, 1024 * 1024, chunked=True)
    assert await until(lambda: app.inflight == 0)
    assert (await api(CHAT, GOOD)).code == 200
