"""The relay end to end (non-stream): one test per verdict row, retries, headers, body handling.

Real orpoll app on loopback, the fake OpenRouter behind it, keys picked ``in_order`` so each test
says which key fails and which serves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import time

import openai
import pytest

from tests.conftest import KEYS, assert_openai_error

A, B, C = KEYS
PAID = "openai/gpt-4o"
MSG = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def set_config(app, **changes) -> None:
    app.apply_settings(dataclasses.replace(app.config, **changes))


def ks_of(app, key):
    return next(k for k in app.scheduler if k.key == key)


def err(status: int, message: str, **metadata) -> dict:
    e = {"code": status, "message": message}
    if metadata:
        e["metadata"] = metadata
    return {"status": status, "error": e}


def chat_body(**extra):
    return {"model": PAID, "messages": MSG, **extra}


# ---- request's fault: passed to the client, no retry, no penalty -------------------------------


@pytest.mark.parametrize(
    "status,message,metadata,etype",
    [
        (400, "openai/gpt-5x is not a valid model ID", {}, "invalid_request_error"),
        (413, "Payload too large", {}, "invalid_request_error"),
        (422, "Invalid argument", {}, "invalid_request_error"),
        (404, "No endpoints found for openai/gpt-4o.", {}, "not_found_error"),
        (
            403,
            "Your input was flagged for violence",
            {"reasons": ["violence"], "flagged_input": "..."},
            "permission_error",
        ),
    ],
)
async def test_request_fault_is_relayed_without_retry(
    app, fake, api, in_order, status, message, metadata, etype
):
    for key in KEYS:
        fake.script(key, err(status, message, **metadata))
    resp = await api(CHAT, chat_body())
    e = assert_openai_error(resp, status, etype)
    assert e["message"] == message
    assert e["code"] == status
    assert sum(fake.requests.values()) == 1
    assert resp.headers["X-Orpoll-Attempts"] == "1"
    a = ks_of(app, A)
    assert a.state == "available" and a.failures == 0 and a.errors == 0


async def test_request_fault_reaches_the_sdk_as_its_exception(fake, sdk, in_order):
    fake.script(A, err(400, "openai/gpt-5x is not a valid model ID"))
    with pytest.raises(openai.BadRequestError) as exc:
        await sdk.chat.completions.create(model="openai/gpt-5x", messages=MSG)
    assert "not a valid model ID" in str(exc.value)
    assert sum(fake.requests.values()) == 1


# ---- key verdicts: penalty + another key --------------------------------------------------------


async def test_401_disables_the_key_and_another_serves(app, fake, sdk, in_order):
    fake.script(A, err(401, "User not found."))
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    assert fake.order == [A, B]
    assert ks_of(app, A).state == "disabled"
    assert ks_of(app, B).state == "available"
    for _ in range(3):  # A is never tried again
        await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert fake.requests[A] == 1


async def test_402_long_cooldown_and_another_serves(app, fake, sdk, in_order):
    fake.script(A, err(402, "Insufficient credits. Add more using https://openrouter.ai/credits"))
    t0 = time.time()
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    a = ks_of(app, A)
    assert a.state == "cooling" and a.kind == "key_credit"
    assert a.until >= t0 + app.config.key_credit_cooldown


async def test_402_can_only_afford_tries_another_without_penalty(app, fake, sdk, in_order):
    fake.script(
        A,
        err(
            402,
            "This request requires more credits, or fewer max_tokens. You requested up to "
            "64000 tokens, but can only afford 2666.",
        ),
    )
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    assert ks_of(app, A).state == "available" and ks_of(app, A).failures == 0


async def test_403_key_limit_cools_the_key(app, fake, sdk, in_order):
    fake.script(A, err(403, "Key limit exceeded (total limit). Manage it using openrouter.ai"))
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    assert ks_of(app, A).state == "cooling" and ks_of(app, A).kind == "key_credit"


async def test_429_cools_until_reset_and_another_serves(app, fake, sdk, in_order):
    reset = time.time() + 120
    fake.script(
        A,
        {
            "status": 429,
            "headers": {"X-RateLimit-Reset": str(int(reset * 1000))},
            "error": {"code": 429, "message": "Rate limit exceeded"},
        },
    )
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    a = ks_of(app, A)
    assert a.state == "cooling" and a.kind == "key_rate_limit"
    assert abs(a.until - int(reset * 1000) / 1000) < 0.01


async def test_free_quota_429_keeps_the_key_for_paid_models(app, fake, sdk, in_order):
    fake.script(
        A,
        err(429, "Rate limit exceeded: free-models-per-day"),
        {"chunks": 1},
    )
    free = "deepseek/deepseek-chat-v3-0324:free"
    r = await sdk.chat.completions.create(model=free, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {A[-4:]}"
    r = await sdk.chat.completions.create(model=free, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    assert fake.order == [A, B, A, B]


async def test_provider_429_retries_without_penalty(app, fake, sdk, in_order):
    fake.script(
        A,
        err(
            429,
            "Provider returned error",
            raw="x/y:free is temporarily rate-limited upstream. Please retry shortly.",
            provider_name="Chutes",
        ),
    )
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    assert ks_of(app, A).state == "available" and ks_of(app, A).failures == 0


async def test_404_data_policy_tries_another_key(app, fake, sdk, in_order):
    fake.script(A, err(404, "No endpoints found matching your data policy"))
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"


@pytest.mark.parametrize("status", [408, 500, 502, 503, 524, 529])
async def test_transient_tries_another_key_and_counts_a_failure(app, fake, api, in_order, status):
    fake.script(A, err(status, "Provider returned error"))
    resp = await api(CHAT, chat_body())
    assert resp.code == 200
    assert json.loads(resp.body)["choices"][0]["message"]["content"] == f"answer from {B[-4:]}"
    assert resp.headers["X-Orpoll-Attempts"] == "2"
    a = ks_of(app, A)
    assert a.failures == 1 and a.state == "available"  # cools only at KEY_MAX_CONSECUTIVE


async def test_transient_failures_cool_the_key_at_the_limit(app, fake, api, in_order):
    fake.script(A, err(502, "Provider returned error"))
    for _ in range(app.config.key_max_failures):
        assert (await api(CHAT, chat_body())).code == 200
    a = ks_of(app, A)
    assert a.state == "cooling" and a.kind == "transient"
    n = fake.requests[A]
    assert (await api(CHAT, chat_body())).code == 200
    assert fake.requests[A] == n


async def test_connection_refused_is_the_upstreams_state(app, fake, api, in_order, upstream_url):
    # Point the pool at a port nothing listens on: connect error on every key.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    set_config(app, openrouter_api_url=f"http://127.0.0.1:{port}/api/v1/chat/completions")
    resp = await api(CHAT, chat_body())
    e = assert_openai_error(resp, 503, "service_unavailable")
    assert e["code"] == "upstream_unavailable" and "127.0.0.1" in e["message"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 10
    assert resp.headers["X-Orpoll-Attempts"] == "2"  # two refusals make an outage
    assert all(k.failures == 0 and k.state == "available" for k in app.scheduler)
    assert app.scheduler.upstream.state()["down"] is True


async def test_a_connect_that_hangs_ends_at_the_connect_timeout(app, fake, api, in_order):
    """An upstream whose accept queue is full drops our SYNs: curl's own timer (its
    TIMERFUNCTION on our loop) ends each connect at CONNECT_TIMEOUT_SECONDS; two of them make
    an outage, and the client gets a 503 in about two timeouts, not a hang."""
    with socket.socket() as listener, contextlib.ExitStack() as held:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: one queued connection fills it
        for _ in range(3):
            filler = held.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
        port = listener.getsockname()[1]
        set_config(
            app,
            connect_timeout=0.3,
            openrouter_api_url=f"http://127.0.0.1:{port}/api/v1/chat/completions",
        )
        start = time.monotonic()
        resp = await api(CHAT, chat_body())
        took = time.monotonic() - start
    e = assert_openai_error(resp, 503)
    assert e["code"] == "upstream_unavailable" and "timed out" in e["message"].lower()
    assert resp.headers["X-Orpoll-Attempts"] == "2"  # no connection at all: an outage
    assert 0.55 <= took < 3.0, took
    assert all(k.failures == 0 for k in app.scheduler)


@pytest.mark.parametrize(
    "script",
    [
        {"inband_error": {"code": 502, "message": "Provider disconnected"}},
        {"inband_error": {"code": "server_error", "message": "Provider disconnected"}},
        {"choice_error": {"code": 502, "message": "Provider disconnected"}},
    ],
    ids=["int-code", "string-code", "choice-finish-reason-error"],
)
async def test_in_band_200_error_tries_another_key(app, fake, sdk, in_order, script):
    fake.script(A, script)
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    assert ks_of(app, A).failures == 1


async def test_in_band_429_with_string_code_cools_the_key(app, fake, sdk, in_order):
    fake.script(A, {"inband_error": {"code": "429", "message": "Rate limit exceeded"}})
    r = await sdk.chat.completions.create(model=PAID, messages=MSG)
    assert r.choices[0].message.content == f"answer from {B[-4:]}"
    assert ks_of(app, A).kind == "key_rate_limit"


# ---- retry budget and exhaustion ---------------------------------------------------------------


FIVE = [*KEYS, "sk-or-v1-test-dddd4444", "sk-or-v1-test-eeee5555"]


@pytest.mark.parametrize("keys", [FIVE])
@pytest.mark.parametrize("retries", [0, 1, 3])
async def test_retry_budget_is_respected(app, fake, api, env, in_order, keys, retries):
    set_config(app, retry_count=retries)
    for key in keys:
        fake.script(key, err(502, f"bad gateway at {key[-4:]}"))
    resp = await api(CHAT, chat_body())
    e = assert_openai_error(resp, 502)
    assert sum(fake.requests.values()) == retries + 1
    assert len(set(fake.order)) == retries + 1  # never the same key twice
    last = fake.order[-1]
    assert e["message"] == f"bad gateway at {last[-4:]}"  # the LAST upstream error
    assert resp.headers["X-Orpoll-Attempts"] == str(retries + 1)


@pytest.mark.parametrize("keys", [FIVE])
async def test_all_fail_client_gets_the_last_upstream_error(app, fake, api, in_order):
    fake.script(A, err(502, "Provider returned error"))
    fake.script(B, err(401, "User not found."))
    fake.script(C, err(429, "Rate limit exceeded", provider_name=None))
    fake.script("sk-or-v1-test-dddd4444", err(402, "Insufficient credits"))
    resp = await api(CHAT, chat_body())
    e = assert_openai_error(resp, 402, "insufficient_quota")
    assert e["message"] == "Insufficient credits"
    assert fake.order == [A, B, C, "sk-or-v1-test-dddd4444"]


@pytest.mark.parametrize("keys", [FIVE])
async def test_all_rate_limited_answers_429_with_retry_after(app, fake, api, keys):
    now = time.time()
    for i, key in enumerate(keys):
        reset_ms = int((now + 60 + 30 * i) * 1000)
        fake.script(
            key,
            {
                "status": 429,
                "headers": {"X-RateLimit-Reset": str(reset_ms)},
                "error": {"code": 429, "message": f"Rate limit exceeded {i}"},
            },
        )
    set_config(app, retry_count=10)
    first = await api(CHAT, chat_body())
    assert_openai_error(first, 429, "rate_limit_error")
    assert sum(fake.requests.values()) == len(keys)
    resp = await api(CHAT, chat_body())
    e = assert_openai_error(resp, 429, "rate_limit_error")
    assert sum(fake.requests.values()) == len(keys)  # nothing sent upstream
    assert 58 <= int(resp.headers["Retry-After"]) <= 61  # the earliest key returns in ~60 s
    assert e["code"] == "no_key_available"


async def test_pool_cooling_answers_503_with_retry_after(app, fake, api):
    for key in KEYS:
        fake.script(key, err(402, "Insufficient credits"))
    assert_openai_error(await api(CHAT, chat_body()), 402)
    resp = await api(CHAT, chat_body())
    assert_openai_error(resp, 503, "service_unavailable")
    retry = int(resp.headers["Retry-After"])
    assert app.config.key_credit_cooldown - 5 <= retry <= app.config.key_credit_cooldown + 1


@pytest.mark.parametrize("keys", [[]])
async def test_no_keys_at_all_answers_503(fake, api, keys):
    resp = await api(CHAT, chat_body())
    e = assert_openai_error(resp, 503, "service_unavailable")
    assert e["code"] == "no_keys"
    assert "Retry-After" not in resp.headers  # nothing will come back by itself
    assert not fake.requests


async def test_all_disabled_answers_503_without_retry_after(app, fake, api):
    for ks in app.scheduler:
        app.scheduler.disable(ks, "invalid key")
    resp = await api(CHAT, chat_body())
    assert_openai_error(resp, 503, "service_unavailable")
    assert "Retry-After" not in resp.headers
    assert not fake.requests


async def test_every_key_401_reads_as_an_incident(app, fake, api, in_order):
    for key in KEYS:
        fake.script(key, err(401, "User not found."))
    resp = await api(CHAT, chat_body())
    e = assert_openai_error(resp, 401, "authentication_error")
    assert e["message"] == "User not found."
    assert fake.order == KEYS
    assert ks_of(app, C).state == "cooling"  # the third 401 in a row: an incident
    resp = await api(CHAT, chat_body())
    assert_openai_error(resp, 503)
    assert 55 <= int(resp.headers["Retry-After"]) <= 61  # the short incident cooldown


# ---- what goes upstream -------------------------------------------------------------------------


async def test_model_defaults_when_missing(app, fake, api):
    resp = await api(CHAT, {"messages": MSG})
    assert resp.code == 200
    sent = json.loads(fake.bodies[0])
    assert sent["model"] == app.config.default_model == "deepseek/deepseek-chat-v3-0324:free"
    assert sent["messages"] == MSG


async def test_null_model_defaults_too(app, fake, api):
    assert (await api(CHAT, {"model": None, "messages": MSG})).code == 200
    assert json.loads(fake.bodies[0])["model"] == app.config.default_model


async def test_unknown_fields_survive_unchanged(fake, api):
    body = {
        "model": PAID,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this? \u00e9\u4e2d\U0001f600"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR="}},
                ],
            }
        ],
        "provider": {"order": ["OpenAI"], "allow_fallbacks": False, "sort": {"by": "price"}},
        "reasoning": {"effort": "high", "exclude": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"x": {"anyOf": [{"type": "integer"}, {"const": 1.5e300}]}},
                        "additionalProperties": False,
                    },
                },
            }
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}},
        "plugins": [{"id": "web"}],
        "x_unknown": [None, True, 1e-7, 12345678901234567890],
    }
    raw = json.dumps(body, ensure_ascii=False, indent=1).encode()
    resp = await api(CHAT, body=raw)
    assert resp.code == 200
    assert fake.bodies[0] == raw  # byte for byte when nothing had to change
    assert json.loads(fake.bodies[0]) == body


async def test_defaulting_the_model_keeps_the_rest_exact(app, fake, api):
    raw = (
        b'{ "messages": [{"role": "user", "content": "hi"}],\n'
        b'  "seed": 123456789012345678901234567890, "temperature": 0.10000000000000001,\n'
        b'  "x": {"deep": [1, 2.50, "\\u00e9"]} }'
    )
    resp = await api(CHAT, body=raw)
    assert resp.code == 200
    sent = fake.bodies[0]
    assert json.loads(sent) == {**json.loads(raw), "model": app.config.default_model}
    assert raw[1:] in sent  # everything but the model, byte for byte


async def test_upstream_headers(app, fake, api, env):
    resp = await api(CHAT, chat_body(), headers={"Authorization": "Bearer client-secret"})
    assert resp.code == 200
    sent = fake.headers[0]
    assert sent["Authorization"] == f"Bearer {fake.order[0]}"
    assert sent["Content-Type"] == "application/json"
    assert "HTTP-Referer" not in sent and "X-Title" not in sent
    assert all("client-secret" not in v for v in sent.values())


@pytest.fixture
def attribution(env):
    env.update(
        HTTP_REFERER="https://orpoll.example",
        X_TITLE="orpoll tests",
        APP_API_KEY="client-one, client-two",
    )


async def test_attribution_headers_and_client_key_never_forwarded(attribution, fake, api):
    resp = await api(CHAT, chat_body(), headers={"Authorization": "Bearer client-two"})
    assert resp.code == 200
    sent = fake.headers[0]
    assert sent["Http-Referer"] == "https://orpoll.example"
    assert sent["X-Title"] == "orpoll tests"
    assert sent["Authorization"] == f"Bearer {fake.order[0]}"
    assert all("client-two" not in v for v in sent.values())


@pytest.fixture
def crlf_title(env):
    env["X_TITLE"] = "title\r\nX-Injected: 1"


async def test_attribution_header_cannot_inject_headers(crlf_title, fake, api):
    resp = await api(CHAT, chat_body())
    assert resp.code == 200
    sent = fake.headers[0]
    assert "X-Injected" not in sent
    assert sent["X-Title"] == "title  X-Injected: 1"


async def test_attempts_header_and_passed_headers(fake, api, in_order):
    fake.script(A, err(503, "overloaded"))
    fake.script(B, err(500, "internal"))
    resp = await api(CHAT, chat_body())
    assert resp.code == 200
    assert resp.headers["X-Orpoll-Attempts"] == "3"
    assert resp.headers["X-Generation-Id"] == "gen-fake"
    assert resp.headers["X-Request-Id"]
    assert json.loads(resp.body)["choices"][0]["message"]["content"] == f"answer from {C[-4:]}"


async def test_non_stream_body_returned_as_is(fake, api):
    resp = await api(CHAT, chat_body())
    body = json.loads(resp.body)
    assert body["provider"] == "Fake"  # OpenRouter extras kept
    assert body["choices"][0]["native_finish_reason"] == "stop"
    assert resp.headers["Content-Type"].startswith("application/json")


async def test_tool_calls_non_stream(fake, sdk):
    fake.default = {"tool_calls": True}
    r = await sdk.chat.completions.create(
        model=PAID,
        messages=MSG,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_out_of_credit_pool_is_503_even_when_free_quota_is_also_spent(app, fake, api):
    daily = err(429, "Rate limit exceeded: free-models-per-day")
    for key in KEYS:
        fake.script(key, daily, err(402, "Insufficient credits"))
    free = {"model": "deepseek/deepseek-chat-v3-0324:free", "messages": MSG}
    assert_openai_error(await api(CHAT, free), 429)  # every key's :free quota is spent
    assert_openai_error(await api(CHAT, chat_body()), 402)  # and every key is out of credit
    assert app.scheduler.counts()["no_credit"] == 3
    resp = await api(CHAT, chat_body())  # a paid model: credit, not a rate limit, is why
    assert_openai_error(resp, 503, "service_unavailable")
