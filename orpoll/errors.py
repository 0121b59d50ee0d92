"""The ApiError family: the only code that knows the OpenAI error JSON shape."""

from __future__ import annotations

from typing import Any

import tornado.web


class ApiError(tornado.web.HTTPError):
    """An error answered to the client as ``{"error": {message, type, param, code}}``."""

    status = 500
    error_type = "api_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | int | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if status is not None:
            self.status = status
        super().__init__(self.status, "%s", message)
        self.message, self.code, self.param = message, code, param
        self.headers = headers or {}
        self.metadata = metadata

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }
        if self.metadata:
            err["metadata"] = self.metadata
        return {"error": err}


class BadRequest(ApiError):
    status, error_type = 400, "invalid_request_error"


class Unauthorized(ApiError):
    status, error_type = 401, "authentication_error"


class Forbidden(ApiError):
    status, error_type = 403, "permission_error"


class NotFound(ApiError):
    status, error_type = 404, "not_found_error"


class MethodNotAllowed(ApiError):
    status, error_type = 405, "invalid_request_error"


class Conflict(ApiError):
    status, error_type = 409, "conflict_error"


class PayloadTooLarge(ApiError):
    status, error_type = 413, "invalid_request_error"


class RateLimited(ApiError):
    status, error_type = 429, "rate_limit_error"


class NoKeyAvailable(ApiError):
    status, error_type = 503, "service_unavailable"


class ShuttingDown(ApiError):
    status, error_type = 503, "server_error"


class UpstreamError(ApiError):
    """An upstream failure relayed with the upstream's status and message."""

    error_type = "upstream_error"


# OpenAI's error ``type`` for the statuses we relay from upstream.
TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def upstream_error(status: int, message: str, code: Any = None, metadata: Any = None) -> ApiError:
    """An ApiError that relays an upstream failure (status and message kept)."""
    err = UpstreamError(message, code=code if code is not None else status, status=status)
    err.error_type = TYPE_BY_STATUS.get(status, "upstream_error")
    if isinstance(metadata, dict):
        err.metadata = metadata
    return err


def from_status(status: int, reason: str | None = None) -> ApiError:
    """A generic ApiError for a bare status (Tornado's own 404/405/...)."""
    cls = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound}.get(status)
    cls = cls or {405: MethodNotAllowed, 413: PayloadTooLarge, 429: RateLimited}.get(status)
    message = reason or tornado.httputil.responses.get(status, "Unknown error")
    if cls is None:
        return ApiError(message, status=status)
    return cls(message)
