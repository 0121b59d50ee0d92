"""/v1 edges: the proxy's own errors (each followed by a good request), client keys, /v1/models,
pass-through endpoints, /healthz."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tests.conftest import KEYS, assert_openai_error
from tests.fake_upstream import MODELS

A, B, C = KEYS
PAID = "openai/gpt-4o"
MSG = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
GOOD = {"model": PAID, "messages": MSG}


async def still_serving(api, **kw) -> None:
    resp = await api(CHAT, GOOD, **kw)
    assert resp.code == 200, resp.body
    assert json.loads(resp.body)["choices"][0]["message"]["content"].startswith("answer from")


# ---- the proxy's own errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,param",
    [
        (b'{"model": "x", "messages": [', None),
        (b"\xff\xfe not json", None),
        (b"", None),
        (b"[1, 2, 3]", None),
        (b'"a string"', None),
        (b'{"model": "x"}', "messages"),
        (b'{"model": "x", "messages": "hi"}', "messages"),
        (b'{"model": 5, "messages": []}', "model"),
    ],
    ids=[
        "truncated",
        "binary",
        "empty",
        "array",
        "string",
        "no-messages",
        "messages-not-array",
        "model-not-string",
    ],
)
async def test_bad_bodies_are_400(fake, api, body, param):
    resp = await api(CHAT, body=body)
    e = assert_openai_error(resp, 400, "invalid_request_error")
    assert e["param"] == param
    assert not fake.requests  # nothing went upstream
    await still_serving(api)


@pytest.fixture
def small_body(env):
    env["MAX_REQUEST_BODY_BYTES"] = "2048"


async def test_body_over_the_limit_is_413(small_body, fake, api):
    big = {"model": PAID, "messages": [{"role": "user", "content": "x" * 4000}]}
    resp = await api(CHAT, big)
    e = assert_openai_error(resp, 413, "invalid_request_error")
    assert e["code"] == "request_too_large"
    assert not fake.requests
    await still_serving(api)


async def post_chunked(base_url: str, parts: list[bytes]):
    """POST ``parts`` to the chat route with Transfer-Encoding: chunked (no Content-Length)."""

    async def producer(write):
        for part in parts:
            await write(part)

    return await AsyncHTTPClient().fetch(
        HTTPRequest(
            base_url + CHAT,
            method="POST",
            body_producer=producer,
            headers={"Content-Type": "application/json"},
        ),
        raise_error=False,
    )


async def test_chunked_body_over_the_limit_is_413(small_body, fake, base_url, api):
    resp = await post_chunked(base_url, [b"x" * 1000] * 10)
    assert_openai_error(resp, 413)
    assert not fake.requests
    await still_serving(api)


async def test_body_just_under_the_limit_passes(small_body, fake, api):
    body = json.dumps({"model": PAID, "messages": [{"role": "user", "content": "x" * 1900}]})
    assert len(body) <= 2048
    assert (await api(CHAT, body=body)).code == 200
    assert fake.bodies[0] == body.encode()


async def test_body_larger_than_the_read_ahead_is_relayed_intact(fake, api):
    """Bodies over 256 KiB take Tornado's streaming path (fast.SmallBodyFirst reads only
    smaller ones ahead); both must reach the upstream byte for byte."""
    text = "".join(chr(0x41 + i % 26) for i in range(600_000))
    body = json.dumps({"model": PAID, "messages": [{"role": "user", "content": text}]})
    assert (await api(CHAT, body=body)).code == 200
    assert fake.bodies[0] == body.encode()


async def test_chunked_body_within_the_limit_is_relayed_intact(fake, base_url, api):
    body = json.dumps({"model": PAID, "messages": [{"role": "user", "content": "y" * 5000}]})
    parts = [body[i : i + 1000].encode() for i in range(0, len(body), 1000)]
    resp = await post_chunked(base_url, parts)
    assert resp.code == 200, resp.body
    assert fake.bodies[0] == body.encode()


async def test_pipelined_requests_are_answered_in_order(fake, base_url):
    """Two requests sent back to back on one connection before reading either answer."""
    host, port = base_url.rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    bodies = [json.dumps({**GOOD, "messages": [{"role": "user", "content": w}]}) for w in "ab"]
    writer.write(
        b"".join(
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n\r\n{b}".encode()
            for b in bodies
        )
    )
    for _ in bodies:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        assert json.loads(await reader.readexactly(length))["choices"]
    writer.close()
    assert fake.bodies == [b.encode() for b in bodies]


@pytest.mark.parametrize("path", ["/nope", "/v2/chat/completions", "/admin-not-here/x", "/v1"])
async def test_unknown_path_is_404(api, path):
    resp = await api(path)
    assert_openai_error(resp, 404, "not_found_error")
    await still_serving(api)


async def test_unknown_v1_path_relays_upstream_404(fake, api):
    resp = await api("/v1/does-not-exist", {"x": 1})
    e = assert_openai_error(resp, 404)
    assert e["message"] == "upstream returned HTTP 404"
    assert sum(fake.requests.values()) == 0  # the fake has no such route: 404 before counting
    await still_serving(api)


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", CHAT),
        ("PUT", CHAT),
        ("DELETE", CHAT),
        ("POST", "/v1/models"),
        ("DELETE", "/v1/models"),
        ("POST", "/healthz"),
    ],
)
async def test_wrong_method_is_405(fake, api, method, path):
    body = json.dumps(GOOD) if method in ("POST", "PUT") else None
    resp = await api(path, body=body, method=method)
    assert_openai_error(resp, 405, "invalid_request_error")
    assert not fake.requests
    await still_serving(api)


async def test_proxy_error_reaches_the_sdk(fake, sdk):
    with pytest.raises(openai.BadRequestError) as exc:
        await sdk.chat.completions.create(model=PAID, messages="not a list")  # type: ignore
    assert exc.value.status_code == 400
    assert exc.value.body["type"] == "invalid_request_error"


# ---- APP_API_KEY -------------------------------------------------------------------------------


@pytest.fixture
def client_keys(env):
    env["APP_API_KEY"] = "client-key-one, client-key-two,client-key-3"


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        "Bearer client-key-one-and-more",
        "Basic client-key-one",
        "client-key-one",
        "Bearer client-key-one,client-key-two",
    ],
)
async def test_client_key_missing_or_wrong_is_401(client_keys, fake, api, auth):
    headers = {"Authorization": auth} if auth is not None else {}
    for path, body in ((CHAT, GOOD), ("/v1/models", None), ("/v1/embeddings", {"input": "x"})):
        resp = await api(path, body, headers=headers)
        e = assert_openai_error(resp, 401, "authentication_error")
        assert e["code"] == "invalid_api_key"
    assert not fake.requests and fake.models_calls == 0
    await still_serving(api, headers={"Authorization": "Bearer client-key-one"})


@pytest.mark.parametrize("key", ["client-key-one", "client-key-two", "client-key-3"])
async def test_every_client_key_is_accepted(client_keys, fake, api, key):
    await still_serving(api, headers={"Authorization": f"Bearer {key}"})
    resp = await api("/v1/models", headers={"Authorization": f"bearer {key}"})
    assert resp.code == 200


async def test_sdk_with_and_without_the_client_key(client_keys, fake, base_url):
    good = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="client-key-two", max_retries=0)
    bad = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="nope", max_retries=0)
    async with good, bad:
        r = await good.chat.completions.create(model=PAID, messages=MSG)
        assert r.choices[0].message.content.startswith("answer from")
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model=PAID, messages=MSG)


async def test_healthz_needs_no_client_key(client_keys, api):
    resp = await api("/healthz")
    assert resp.code == 200
    body = json.loads(resp.body)
    assert body["status"] == "ok" and body["keys"]["total"] == 3
    assert all(k not in resp.body.decode() for k in KEYS)


# ---- /v1/models --------------------------------------------------------------------------------


async def test_models_openai_shape_with_openrouter_extras(fake, api):
    resp = await api("/v1/models")
    assert resp.code == 200
    body = json.loads(resp.body)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [m["id"] for m in MODELS]
    for got, src in zip(body["data"], MODELS, strict=True):
        assert got["object"] == "model"
        assert got["created"] == src["created"]
        assert got["owned_by"] == src["id"].split("/")[0]
        assert got["context_length"] == src["context_length"]
        assert got["pricing"] == src["pricing"]
        assert got["name"] == src["name"]


async def test_models_via_sdk_and_single_model(fake, sdk, api):
    page = await sdk.models.list()
    assert [m.id for m in page.data] == [m["id"] for m in MODELS]
    assert page.data[0].owned_by == "openai"
    m = await sdk.models.retrieve("deepseek/deepseek-chat-v3-0324:free")
    assert m.id == "deepseek/deepseek-chat-v3-0324:free" and m.object == "model"
    assert_openai_error(await api("/v1/models/nobody/nothing"), 404, "not_found_error")
    assert fake.models_calls == 1


async def test_models_are_cached(fake, api):
    for _ in range(5):
        assert (await api("/v1/models")).code == 200
    assert fake.models_calls == 1


async def test_concurrent_misses_make_one_upstream_call(fake, api):
    fake.models_delay = 0.2
    resps = await asyncio.gather(*(api("/v1/models") for _ in range(20)))
    assert [r.code for r in resps] == [200] * 20
    assert len({r.body for r in resps}) == 1
    assert fake.models_calls == 1


@pytest.fixture
def short_models_cache(env):
    env["MODELS_CACHE_SECONDS"] = "0.2"


async def eventually(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_stale_list_served_when_refresh_fails(short_models_cache, app, fake, api):
    first = await api("/v1/models")
    assert first.code == 200
    fake.models_status = 500
    await asyncio.sleep(0.3)
    again = await api("/v1/models")
    assert again.code == 200 and again.body == first.body
    await eventually(lambda: fake.models_calls == 2)
    fake.models_status = 200
    fetched = app.catalog.fetched_at
    await asyncio.sleep(0.3)
    assert (await api("/v1/models")).code == 200
    await eventually(lambda: app.catalog.fetched_at > fetched)  # the next refresh took
    assert fake.models_calls == 3


async def test_stale_list_served_at_once_while_a_slow_refresh_runs(
    short_models_cache, app, fake, api
):
    first = await api("/v1/models")
    fetched = app.catalog.fetched_at
    fake.models_delay = 1.5
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    again = await asyncio.gather(*(api("/v1/models") for _ in range(5)))
    assert time.monotonic() - t0 < 1.0  # nobody waits for the upstream
    assert all(r.code == 200 and r.body == first.body for r in again)
    await eventually(lambda: app.catalog.fetched_at > fetched)
    assert fake.models_calls == 2  # one refresh for all of them


async def test_models_502_when_it_never_worked(fake, api):
    fake.models_status = 503
    resp = await api("/v1/models")
    e = assert_openai_error(resp, 502)
    assert "model list" in e["message"] and "HTTP 503" in e["message"]
    fake.models_status = 200  # a later success is served (failures are not cached)
    assert (await api("/v1/models")).code == 200
    assert fake.models_calls == 2


async def test_models_502_when_upstream_unreachable(app, fake, api):
    app.config = dataclasses.replace(
        app.config, openrouter_models_url="http://127.0.0.1:1/api/v1/models"
    )
    resp = await api("/v1/models")
    e = assert_openai_error(resp, 502)
    # The reason, not only curl's catch-all 599: "Failed to connect to 127.0.0.1 port 1 ..."
    assert "HTTP 599: " in e["message"] and "connect" in e["message"].lower()


# ---- pass-through ------------------------------------------------------------------------------


async def test_embeddings_pass_through_with_key_rotation(fake, api, in_order):
    fake.script(A, {"status": 401, "error": {"code": 401, "message": "User not found."}})
    body = {"model": "openai/text-embedding-3-small", "input": "hello"}
    resp = await api("/v1/embeddings", body)
    assert resp.code == 200
    got = json.loads(resp.body)
    assert got["key"] == B[-4:] and got["data"][0]["embedding"] == [0.1, 0.2]
    assert fake.paths == ["embeddings", "embeddings"]
    assert json.loads(fake.bodies[-1]) == body
    assert fake.headers[-1]["Authorization"] == f"Bearer {B}"
    assert resp.headers["X-Orpoll-Attempts"] == "2"


async def test_completions_pass_through_with_sdk(fake, sdk, in_order):
    fake.script(A, {"status": 503, "error": {"code": 503, "message": "overloaded"}})
    r = await sdk.completions.create(model="openai/gpt-3.5-turbo-instruct", prompt="Say hi")
    assert r.choices[0].text == f"answer from {B[-4:]}"
    assert fake.paths == ["completions", "completions"]


async def test_pass_through_request_fault_not_retried(fake, api):
    for key in KEYS:
        fake.script(key, {"status": 400, "error": {"code": 400, "message": "input required"}})
    resp = await api("/v1/embeddings", {"model": "m"})
    e = assert_openai_error(resp, 400, "invalid_request_error")
    assert e["message"] == "input required"
    assert sum(fake.requests.values()) == 1


async def test_pass_through_get_with_query(fake, api, in_order):
    fake.script(A, {"status": 500, "error": {"code": 500, "message": "Internal Server Error"}})
    resp = await api("/v1/generation?id=gen-123")
    assert resp.code == 200
    data = json.loads(resp.body)["data"]
    assert (data["id"], data["key"]) == ("gen-123", B[-4:])
    assert fake.paths == ["generation?id=gen-123"] * 2


async def test_pass_through_forwards_non_json_bodies_unchanged(fake, api, in_order):
    fake.script(A, {"status": 502, "error": {"code": 502, "message": "bad gateway"}})
    boundary = "b0undary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + bytes(range(256))
        + f"\r\n--{boundary}--\r\n".encode()
    )
    ctype = f"multipart/form-data; boundary={boundary}"
    resp = await api(
        "/v1/audio/transcriptions", body=form, method="POST", headers={"Content-Type": ctype}
    )
    assert resp.code == 200, resp.body
    assert json.loads(resp.body) == {"text": "echo", "content_type": ctype, "key": B[-4:]}
    assert fake.bodies == [form, form]  # byte for byte, to each key tried


async def test_pass_through_delete_keeps_its_method(fake, api, in_order):
    fake.script(A, {"status": 502, "error": {"code": 502, "message": "bad gateway"}})
    resp = await api("/v1/audio/voices/v-1", method="DELETE")
    assert resp.code == 200, resp.body
    assert json.loads(resp.body) == {
        "text": "echo",
        "content_type": "",
        "key": B[-4:],
        "method": "DELETE",
    }
    assert fake.paths == ["audio/voices/v-1"] * 2 and fake.bodies == [b"", b""]


async def test_pass_through_never_forwards_the_client_authorization(client_keys, fake, api):
    resp = await api(
        "/v1/embeddings",
        {"model": "m", "input": "x"},
        headers={"Authorization": "Bearer client-key-two"},
    )
    assert resp.code == 200
    assert fake.headers[0]["Authorization"].startswith("Bearer sk-or-v1-test-")


# ---- /healthz ----------------------------------------------------------------------------------


async def test_healthz_counts_keys(app, api):
    app.scheduler.disable(next(iter(app.scheduler)), "invalid")
    resp = await api("/healthz")
    assert resp.code == 200
    body = json.loads(resp.body)
    assert body["status"] == "ok"
    assert body["keys"]["total"] == 3 and body["keys"]["disabled"] == 1
    assert body["keys"]["available"] == 2


async def test_rejected_requests_log_no_traceback(client_keys, small_body, fake, api, caplog):
    caplog.set_level(logging.WARNING)
    big = {"model": PAID, "messages": [{"role": "user", "content": "x" * 4000}]}
    for _ in range(3):
        assert_openai_error(await api(CHAT, GOOD), 401)
        assert_openai_error(
            await api(CHAT, big, headers={"Authorization": "Bearer client-key-3"}), 413
        )
    await still_serving(api, headers={"Authorization": "Bearer client-key-3"})
    await asyncio.sleep(0.05)  # let the closed connections be noticed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "given",
    ["req 200 GET /v1/forged", "a\tb", "x" * 65, 'q"uote', "back\\slash"],
    ids=["spaces", "tab", "too-long", "quote", "backslash"],
)
async def test_request_id_that_could_forge_a_log_field_is_replaced(api, caplog, given):
    caplog.set_level(logging.INFO, logger="orpoll.access")
    resp = await api(CHAT, GOOD, headers={"X-Request-Id": given})
    assert resp.code == 200
    ours = resp.headers["X-Request-Id"]
    assert ours != given.strip() and " " not in ours and "\t" not in ours
    lines = [r.getMessage() for r in caplog.records if r.name == "orpoll.access"]
    assert lines and all(line.startswith(ours + " ") for line in lines), lines


async def test_plain_request_id_is_kept(api):
    for given in ("req-42", "9f1c2a7e-1b2c-4d5e-8f90-0a1b2c3d4e5f", "a.b_c:d/e=f"):
        resp = await api(CHAT, GOOD, headers={"X-Request-Id": given})
        assert resp.headers["X-Request-Id"] == given
