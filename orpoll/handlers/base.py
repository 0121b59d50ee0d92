"""BaseHandler (typed access to app-owned objects) and ApiHandler (OpenAI-shaped errors)."""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

import tornado.web

from .. import errors
from ..attempt import Attempts
from ..auth import client_key_ok

if TYPE_CHECKING:
    from ..app import OrpollApp
    from ..config import Settings
    from ..scheduler import KeyScheduler
    from ..upstream import OpenRouterClient

log = logging.getLogger("orpoll.api")
# A client's request id is taken as it is when it cannot pass for more than one field of the
# access line: visible ASCII without spaces, quotes or backslashes, at most 64 characters.
_REQUEST_ID = re.compile(r"[!#-\[\]-~]{1,64}")


class BaseHandler(tornado.web.RequestHandler):
    application: OrpollApp

    @property
    def config(self) -> Settings:
        return self.application.config

    @property
    def scheduler(self) -> KeyScheduler:
        return self.application.scheduler

    @property
    def upstream(self) -> OpenRouterClient:
        return self.application.upstream

    _request_id: str | None = None

    @property
    def request_id(self) -> str:
        """This request's id: the client's X-Request-Id when sane, else ours."""
        if self._request_id is None:
            given = self.request.headers.get("X-Request-Id", "")
            ok = bool(given) and _REQUEST_ID.fullmatch(given) is not None
            self._request_id = given if ok else self.application.next_request_id()
        return self._request_id

    error_note: str | None = None  # why the request was refused, for its access line
    # What ended it, for the request ledger: (type, code) of the error answered, not the
    # exception itself (its traceback would hold the handler in a reference cycle).
    error: tuple[str, str] | None = None
    # What the relay fills in, for the access line and the request ledger (these defaults
    # stand for a request that never reached the relay).
    model: str | None = None
    streaming = False
    bytes_out = 0  # body bytes written to the client
    disconnected = False  # the client left before the answer was over
    attempts: Attempts | None = None

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        """A refusal (any HTTPError) goes into the request's one access line (``error=``)
        instead of a second line from Tornado; anything else is logged with its traceback."""
        if isinstance(value, errors.ApiError):
            self.error = (value.error_type, str(value.code or ""))
            self.error_note = value.message
        elif isinstance(value, tornado.web.HTTPError):
            msg = value.log_message
            self.error_note = msg % value.args if msg and value.args else msg
        else:  # Tornado's own line adds a repr of the request
            req = self.request
            log.error(
                "uncaught exception in %s %s (%s) (request %s)",
                req.method,
                req.uri,
                req.remote_ip,
                self.request_id,
                exc_info=value,
            )

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The one error serialiser: OpenAI's ``{"error": {...}}`` for every failure.

        Does not rely on prepare(): Tornado rejects some requests (405) before it runs.
        """
        exc = kwargs.get("exc_info", (None, None))[1]
        if not isinstance(exc, errors.ApiError):
            reason = (
                getattr(exc, "log_message", None)
                if isinstance(exc, tornado.web.HTTPError)
                else None
            )
            exc = errors.from_status(status_code, reason if status_code < 500 else None)
            if status_code >= 500:
                exc.message = "internal server error"
        for name, value in exc.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        sent = self.finish(json.dumps(exc.body()))
        if exc.headers.get("Connection") == "close":
            # Tornado keeps a connection open whatever the response's Connection header says;
            # close it once the answer is out.
            conn = self.request.connection
            if conn is not None:
                sent.add_done_callback(lambda _: conn.close())  # type: ignore[attr-defined]


class ApiHandler(BaseHandler):
    """/v1 handlers: bearer check against APP_API_KEY; no cookies, so no XSRF."""

    def check_xsrf_cookie(self) -> None:
        # Bearer-token API: no cookie carries authority here, so there is nothing to forge.
        pass

    def prepare(self) -> None:
        self.set_header("X-Request-Id", self.request_id)
        if self.application.draining:
            raise errors.ShuttingDown(
                "orpoll is shutting down; retry the request",
                code="server_shutting_down",
                headers={"Retry-After": "1", "Connection": "close"},
            )
        if not client_key_ok(self.application.client_keys, self.request.headers):
            raise errors.Unauthorized(
                "invalid or missing API key (Authorization: Bearer <APP_API_KEY>)",
                code="invalid_api_key",
            )


class NotFoundHandler(BaseHandler):
    """Unknown routes: an OpenAI-shaped 404 (Tornado's default_handler_class)."""

    def prepare(self) -> None:
        raise errors.NotFound(
            f"unknown route: {self.request.method} {self.request.path}", code="unknown_url"
        )

    def check_xsrf_cookie(self) -> None:
        pass
