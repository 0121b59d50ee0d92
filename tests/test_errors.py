"""errors.py: the OpenAI error shape, the types of relayed upstream statuses, and the errors of
bare statuses."""

from __future__ import annotations

import pytest

from orpoll import errors


def test_the_body_is_openai_shaped_with_metadata_only_when_given():
    err = errors.RateLimited("slow down", code="too_many_requests", headers={"Retry-After": "3"})
    assert err.status == 429 and err.headers == {"Retry-After": "3"}
    assert err.body() == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "too_many_requests",
        }
    }
    assert errors.ApiError("x", metadata={"k": 1}).body()["error"]["metadata"] == {"k": 1}


@pytest.mark.parametrize(
    "status,etype",
    [(401, "authentication_error"), (402, "insufficient_quota"), (429, "rate_limit_error")],
)
def test_a_relayed_upstream_error_keeps_its_status_and_gets_openai_type(status, etype):
    err = errors.upstream_error(status, "from upstream", metadata={"raw": "x"})
    assert (err.status, err.error_type, err.code) == (status, etype, status)
    assert err.body()["error"]["metadata"] == {"raw": "x"}


def test_an_upstream_error_of_another_status_is_an_upstream_error():
    err = errors.upstream_error(502, "bad gateway", code="gateway", metadata="not a dict")
    assert err.error_type == "upstream_error" and err.code == "gateway" and err.metadata is None


@pytest.mark.parametrize(
    "status,cls",
    [(404, errors.NotFound), (405, errors.MethodNotAllowed), (413, errors.PayloadTooLarge)],
)
def test_a_bare_status_gets_its_error_class(status, cls):
    err = errors.from_status(status)
    assert type(err) is cls and err.status == status and err.message


def test_a_bare_status_without_a_class_keeps_the_status():
    err = errors.from_status(418, "teapot")
    assert err.status == 418 and err.message == "teapot" and err.error_type == "api_error"
