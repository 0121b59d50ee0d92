"""orpoll.classify: one verdict per kind of failed upstream attempt, from HTTP status and body
or from a failure below HTTP."""

from __future__ import annotations

import json
import math

import pycurl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.curl_httpclient import CurlError

from orpoll import sse
from orpoll.classify import classify, classify_transport, next_utc_midnight
from orpoll.fast.transfer import CURLE_SETUP_FAILED, Transfer
from orpoll.keys import Outcome, Verdict

NOW = 1_768_300_000.0  # 2026-01-13T10:26:40Z
MIDNIGHT_MS = 1_768_348_800_000  # 2026-01-14T00:00Z, as OpenRouter sends X-RateLimit-Reset


def body(code, message, **metadata) -> bytes:
    err = {"code": code, "message": message}
    if metadata:
        err["metadata"] = metadata
    return json.dumps({"error": err, "user_id": "user_x"}).encode()


def hdrs(**values):
    values = {k.replace("_", "-").lower(): v for k, v in values.items()}
    return lambda name: values.get(name.lower())


def verdict(status, raw, headers=hdrs(), **kw):
    return classify(status, raw, headers, now=NOW, **kw)


@pytest.mark.parametrize(
    "status,raw",
    [
        (400, body(400, "openai/gpt-5x is not a valid model ID")),
        (400, body(400, "context too long", error_type="context_length_exceeded")),
        (413, body(413, "Payload too large")),
        (422, body(422, "Invalid argument")),
        (404, body(404, "No endpoints found for foo/bar.")),
        (
            403,
            body(
                403,
                "Input flagged by moderation",
                reasons=["violence"],
                flagged_input="...",
                provider_name="OpenAI",
                model_slug="openai/gpt-4o",
            ),
        ),
        (403, body(403, "Request blocked: guardrail", patterns=["ssn"])),
    ],
    ids=["400", "400-context", "413", "422", "404", "403-moderation", "403-guardrail"],
)
def test_request_fault(status, raw):
    out = verdict(status, raw)
    assert out.verdict is Verdict.REQUEST
    assert not out.try_another_key
    assert out.status == status
    assert out.message == json.loads(raw)["error"]["message"]


def test_moderation_echo_of_key_limit_text_is_still_the_requests_fault():
    # flagged_input echoes the client's own text: it must not be read as OpenRouter's verdict,
    # or any client could cool the whole pool by writing "Key limit exceeded".
    raw = body(
        403,
        "Your input was flagged",
        reasons=["harassment"],
        flagged_input="Key limit exceeded (total limit). region_restricted is banned",
    )
    assert verdict(403, raw).verdict is Verdict.REQUEST


def test_404_data_policy_tries_another_account():
    raw = body(
        404,
        "No endpoints found matching your data policy (Free model publication). "
        "Configure: https://openrouter.ai/settings/privacy",
    )
    out = verdict(404, raw)
    assert out.verdict is Verdict.PROVIDER and out.try_another_key


def test_403_key_limit_is_credit():
    raw = body(403, "Key limit exceeded (daily limit). Manage it using https://openrouter.ai/keys")
    out = verdict(403, raw)
    assert out.verdict is Verdict.KEY_CREDIT


def test_403_key_limit_source_cools_until_resets_at():
    raw = body(
        403,
        "Budget exceeded",
        limit_source="openrouter_key_limit",
        resets_at="2026-01-14T00:00:00Z",
    )
    out = verdict(403, raw)
    assert out.verdict is Verdict.KEY_CREDIT
    assert out.retry_at == MIDNIGHT_MS / 1000


def test_403_region_restricted_tries_another_key():
    out = verdict(403, body(403, "Author Foo is banned in your region"))
    assert out.verdict is Verdict.PROVIDER


@pytest.mark.parametrize(
    "message", ["User not found.", "No auth credentials found", "Missing Authentication header"]
)
def test_401_key_invalid(message):
    out = verdict(401, body(401, message))
    assert out.verdict is Verdict.KEY_INVALID and out.message == message


def test_402_plain_is_credit():
    out = verdict(402, body(402, "Insufficient credits. Add more using https://openrouter.ai"))
    assert out.verdict is Verdict.KEY_CREDIT
    assert out.retry_at is None  # the scheduler applies the long credit cooldown


def test_402_can_only_afford_is_low_credit():
    raw = body(
        402,
        "This request requires more credits, or fewer max_tokens. You requested up to 64000 "
        "tokens, but can only afford 2666. To increase, visit https://openrouter.ai/settings",
    )
    out = verdict(402, raw)
    assert out.verdict is Verdict.KEY_LOW_CREDIT and out.try_another_key


def test_402_in_flight_budget_cools_for_retry_after():
    raw = body(402, "In-flight budget exceeded", limit_source="openrouter_in_flight_budget")
    out = verdict(402, raw, hdrs(Retry_After="7"))
    assert out.verdict is Verdict.KEY_RATE_LIMIT
    assert out.retry_at == NOW + 7


def test_429_x_ratelimit_reset_header_ms_epoch():
    out = verdict(429, body(429, "Rate limit exceeded"), hdrs(X_RateLimit_Reset=str(MIDNIGHT_MS)))
    assert out.verdict is Verdict.KEY_RATE_LIMIT
    assert out.retry_at == MIDNIGHT_MS / 1000
    assert out.scope == "all"


def test_429_reset_from_metadata_headers():
    raw = body(
        429,
        "Rate limit exceeded",
        headers={
            "X-RateLimit-Limit": "50",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(MIDNIGHT_MS),
        },
    )
    out = verdict(429, raw)
    assert out.verdict is Verdict.KEY_RATE_LIMIT and out.retry_at == MIDNIGHT_MS / 1000


def test_429_retry_after():
    out = verdict(429, body(429, "Rate limit exceeded"), hdrs(Retry_After="30"))
    assert out.verdict is Verdict.KEY_RATE_LIMIT and out.retry_at == NOW + 30


def test_429_without_any_hint_leaves_the_time_to_the_scheduler():
    out = verdict(429, body(429, "Rate limit exceeded"))
    assert out.verdict is Verdict.KEY_RATE_LIMIT and out.retry_at is None


def test_429_free_models_per_min_scope_free():
    out = verdict(429, body(429, "Rate limit exceeded: free-models-per-min. "))
    assert out.verdict is Verdict.KEY_RATE_LIMIT
    assert out.scope == "free"
    assert out.retry_at == NOW + 60


@pytest.mark.parametrize("which", ["free-models-per-day", "free-models-per-day-high-balance"])
def test_429_free_models_per_day_scope_free_until_reset(which):
    raw = body(
        429,
        f"Rate limit exceeded: {which}. Add 10 credits to unlock 1000 free model requests per day",
        headers={"X-RateLimit-Limit": "50", "X-RateLimit-Reset": str(MIDNIGHT_MS)},
    )
    out = verdict(429, raw)
    assert out.verdict is Verdict.KEY_RATE_LIMIT
    assert out.scope == "free"
    assert out.retry_at == MIDNIGHT_MS / 1000


def test_429_free_models_per_day_without_reset_waits_for_utc_midnight():
    out = verdict(429, body(429, "Rate limit exceeded: free-models-per-day"))
    assert out.scope == "free" and out.retry_at == next_utc_midnight(NOW) == MIDNIGHT_MS / 1000


def test_429_free_quota_wrapped_as_provider_error_is_still_the_keys():
    raw = body(
        429,
        "Provider returned error",
        raw="Rate limit exceeded: free-models-per-day",
        provider_name="Chutes",
    )
    out = verdict(429, raw)
    assert out.verdict is Verdict.KEY_RATE_LIMIT and out.scope == "free"


def test_429_rate_limited_upstream_is_provider():
    raw = body(
        429,
        "Provider returned error",
        raw="deepseek/deepseek-chat-v3-0324:free is temporarily rate-limited upstream. "
        "Please retry shortly.",
        provider_name="Chutes",
    )
    out = verdict(429, raw, hdrs(Retry_After="3"))
    assert out.verdict is Verdict.PROVIDER and out.try_another_key
    assert "rate-limited upstream" in out.message  # the real reason reaches the client
    assert out.retry_at == NOW + 3


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504, 524, 529])
def test_transient(status):
    out = verdict(status, body(status, "Provider returned error"))
    assert out.verdict is Verdict.TRANSIENT and out.try_another_key
    assert out.status == status


def test_transient_with_non_json_body():
    out = verdict(502, b"<html>Bad gateway</html>")
    assert out.verdict is Verdict.TRANSIENT
    assert out.message == "upstream returned HTTP 502"


@pytest.mark.parametrize(
    "code,expected",
    [
        (429, Verdict.KEY_RATE_LIMIT),
        ("429", Verdict.KEY_RATE_LIMIT),
        (401, Verdict.KEY_INVALID),
        ("402", Verdict.KEY_CREDIT),
        (502, Verdict.TRANSIENT),
        ("server_error", Verdict.TRANSIENT),
        (None, Verdict.TRANSIENT),
        (400, Verdict.REQUEST),
    ],
)
def test_in_band_200_error_by_inner_code(code, expected):
    err = {"code": code, "message": "generation failed"}
    raw = json.dumps({"error": err, "choices": [{"finish_reason": "error"}]}).encode()
    out = verdict(200, raw, error=err)
    assert out.verdict is expected


def test_in_band_error_type_authentication_is_key_invalid():
    err = {"code": "server_error", "message": "x", "metadata": {"error_type": "authentication"}}
    assert verdict(200, b"", error=err).verdict is Verdict.KEY_INVALID


def test_classify_never_raises_on_garbage():
    for raw in (b"", b"null", b"[]", b'{"error": "text"}', b'{"error": {"metadata": 5}}', b"\xff"):
        for status in (400, 401, 402, 403, 404, 429, 500):
            out = verdict(status, raw)
            assert out.status == status and out.message


# ---- failures below HTTP (classify_transport) ---------------------------------------------------


def transfer(status: int = 0, headers: tuple[bytes, ...] = (), **state) -> Transfer:
    """A finished transfer as curl leaves it: ``status`` 0 and no header when nothing came back."""
    t = Transfer()
    t.status, t.headers = status, list(headers)
    for name, value in state.items():
        setattr(t, name, value)
    return t


@pytest.mark.parametrize(
    "errno_,message",
    [
        (pycurl.E_URL_MALFORMAT, "URL rejected: Bad path"),
        (CURLE_SETUP_FAILED, "request setup failed: embedded null byte"),
    ],
    ids=["url-malformat", "setup-failed"],
)
def test_a_request_curl_refuses_to_send_is_the_requests_fault(errno_, message):
    out = classify_transport(CurlError(errno_, message), transfer())
    assert out.verdict is Verdict.LOCAL and not out.try_another_key
    assert out.status == 400 and out.code in ("invalid_request_path", "invalid_request")
    assert "cannot be sent" in out.message


@pytest.mark.parametrize(
    "errno_",
    [
        pycurl.E_COULDNT_CONNECT,
        pycurl.E_COULDNT_RESOLVE_HOST,
        pycurl.E_SSL_CONNECT_ERROR,
        pycurl.E_PEER_FAILED_VERIFICATION,
        pycurl.E_GOT_NOTHING,
        pycurl.E_RECV_ERROR,
        pycurl.E_SEND_ERROR,
    ],
    ids=["refused", "dns", "tls-handshake", "tls-verify", "empty-reply", "reset", "send"],
)
def test_no_answer_at_all_is_the_upstreams_state_not_the_keys(errno_):
    out = classify_transport(CurlError(errno_, "boom"), transfer())
    assert out.verdict is Verdict.UPSTREAM and out.try_another_key
    assert out.status in (502, 503) and out.code == "upstream_unreachable"


def test_a_drop_after_the_answer_began_stays_transient():
    began = transfer(200, (b"Content-Type: text/event-stream\r\n",))
    out = classify_transport(CurlError(pycurl.E_RECV_ERROR, "Connection reset by peer"), began)
    assert out.verdict is Verdict.TRANSIENT and out.status == 502
    assert out.code == "upstream_disconnected"


def test_a_timeout_stays_transient():
    out = classify_transport(CurlError(pycurl.E_OPERATION_TIMEDOUT, "timed out"), transfer())
    assert out.verdict is Verdict.TRANSIENT and out.code == "upstream_unreachable"
    stalled = transfer(200, stall=5.0, timed_out=True)
    out = classify_transport(CurlError(42, "aborted by orpoll"), stalled)
    assert out.verdict is Verdict.TRANSIENT and out.status == 504


# ---- bodies no parser or walker may choke on -----------------------------------------------------


def deep(depth: int) -> bytes:
    return b'{"error": {"code": 429, "metadata": {"raw": ' + b"[" * depth + b"]" * depth + b"}}}"


@pytest.mark.parametrize("depth", [100_000, 900, 40])
def test_deeply_nested_bodies_never_raise(depth):
    for status in (200, 400, 429, 502):
        out = verdict(status, deep(depth))
        assert isinstance(out.verdict, Verdict) and out.status >= 400
        json.dumps([out.message, out.code, out.metadata])  # what the relay and logs handle
    err = sse.error_of(deep(depth))
    assert err is not None
    out = verdict(200, deep(depth), error=err)
    assert out.try_another_key  # a 200 nobody can read is a failed attempt


def test_an_error_nested_past_the_limit_keeps_no_metadata():
    err = {"code": 429, "metadata": {"raw": json.loads(b"[" * 200 + b"]" * 200)}}
    out = verdict(200, b"", error=err)
    assert out.metadata is None and "nested too deeply" in out.message
    assert out.verdict is Verdict.KEY_RATE_LIMIT  # the code is still read


# ---- any upstream answer: classification never raises ------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_error = st.fixed_dictionaries(
    {},
    optional={
        "code": st.one_of(st.integers(), st.text(max_size=8), st.none()),
        "message": st.one_of(st.text(max_size=60), st.integers(), st.none()),
        "metadata": st.one_of(
            _json,
            st.fixed_dictionaries(
                {},
                optional={
                    "error_type": st.sampled_from(["authentication", "payment_required", "x"]),
                    "limit_source": st.sampled_from(["openrouter_key_limit", "openrouter_credits"]),
                    "provider_name": st.text(max_size=8),
                    "headers": st.dictionaries(st.sampled_from(["X-RateLimit-Reset"]), _json),
                    "resets_at": st.one_of(st.text(max_size=30), st.integers()),
                    "raw": _json,
                },
            ),
        ),
    },
)
_body = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda v: json.dumps(v).encode()),
    _error.map(lambda e: json.dumps({"error": e}).encode()),
)
_headers = st.dictionaries(
    st.sampled_from(["retry-after", "x-ratelimit-reset"]),
    st.one_of(
        st.text(max_size=20),
        st.integers().map(str),
        st.floats().map(str),
        st.sampled_from(["inf", "-inf", "nan", "1e999", "Infinity", "1e12"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(status=st.integers(100, 999), raw=_body, headers=_headers, inband=st.booleans())
def test_classify_any_answer_gives_a_valid_outcome(status, raw, headers, inband):
    error = sse.error_of(raw) if inband else None
    out = classify(status, raw, lambda name: headers.get(name.lower()), now=NOW, error=error)
    assert isinstance(out, Outcome) and isinstance(out.verdict, Verdict)
    assert out.verdict not in (Verdict.OK, Verdict.LOCAL, Verdict.UPSTREAM)
    assert isinstance(out.message, str) and out.message
    assert 400 <= out.status <= 599 or out.status == status
    assert out.retry_at is None or math.isfinite(out.retry_at)
    assert out.scope in ("all", "free")
    json.dumps([out.message, out.code, out.metadata])


# ---- nothing but OpenRouter's own words blames a key ---------------------------------------------


def test_429_with_a_provider_code_is_the_providers():
    raw = body(429, "Rate limit exceeded", error_type="rate_limit_exceeded", provider_code="429")
    out = verdict(429, raw)
    assert out.verdict is Verdict.PROVIDER and out.try_another_key


@pytest.mark.parametrize(
    "raw", [b"<html><title>429 Too Many Requests</title></html>", b"", b"rate limited"]
)
def test_429_without_an_openrouter_error_is_not_the_keys(raw):
    """A 429 with no error body of OpenRouter's comes from in front of it (a CDN limiting this
    proxy's address): every key would get the same."""
    out = verdict(429, raw, hdrs(Retry_After="7"))
    assert out.verdict is Verdict.PROVIDER and out.retry_at == NOW + 7


def test_402_weight_exceeds_budget_is_the_requests_size_not_a_cooldown():
    raw = body(
        402,
        "Request exceeds the in-flight budget",
        limit_source="openrouter_in_flight_budget",
        reason="weight_exceeds_budget",
    )
    assert verdict(402, raw, hdrs(Retry_After="5")).verdict is Verdict.KEY_LOW_CREDIT


def echoing(status: int, message: str, models: list[str], **metadata) -> bytes:
    err = {"code": status, "message": message, "metadata": metadata}
    err["availability"] = {"code": "capacity", "requested_models": models}
    return json.dumps({"error": err}).encode()


@pytest.mark.parametrize(
    "status,raw,expected",
    [
        (
            429,
            echoing(429, "Provider returned error", ["x/free-models-per-day"], provider_name="P"),
            Verdict.PROVIDER,
        ),
        (403, echoing(403, "Forbidden", ["x/key-limit exceeded", "Key limit exceeded"]), None),
        (403, echoing(403, "Forbidden", ["a/b"], note="Key limit exceeded"), None),
    ],
    ids=["429-model-name", "403-model-name", "403-other-field"],
)
def test_text_the_client_chose_never_blames_a_key(status, raw, expected):
    """Model names the client sent (echoed in ``requested_models``) and fields other than
    OpenRouter's message, raw provider error and typed codes are not read for key verdicts."""
    out = verdict(status, raw)
    assert out.verdict is (expected or Verdict.REQUEST)
