"""/v1: chat completions, models, and pass-through of the other OpenAI endpoints."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
import tornado.web

from .. import errors, paths, sse
from ..auth import bearer
from ..fast import Transfer
from ..relay import Attempts, Relay
from .base import ApiHandler, BaseHandler

if TYPE_CHECKING:
    from ..app import OrpollApp

log = logging.getLogger("orpoll.api")


@tornado.web.stream_request_body
class RelayHandler(ApiHandler):
    """Base of the relaying handlers; it is the relay's ``Sink`` (the client connection)."""

    # Class defaults: on_connection_close also runs when prepare() raised before setting them
    # (a 401 or 413 answered before the body was read closes the connection).
    client_gone = False
    transfer: Transfer | None = None
    counted = False  # holds an in-flight slot
    client = b""  # the client key whose admission slot it holds
    buffer_small_bodies = True  # see fast.SmallBodyFirst: such bodies arrive before prepare()
    head_sent = False  # a stream's head is on its way to the client
    ended = False  # done() answered the request

    def initialize(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def prepare(self) -> None:
        super().prepare()
        app, cfg = self.application, self.config
        if cfg.max_concurrent_requests or cfg.max_concurrent_per_client:
            token = bearer(self.request.headers).encode() if app.client_keys else b""
            if app.admission.admit(
                cfg.max_concurrent_requests, cfg.max_concurrent_per_client, app.inflight, token
            ):
                self.client = token
        app.inflight += 1
        self.counted = True
        self.client_gone, self.transfer, self.backlog = False, None, 0
        self.streaming = False
        self.attempts = Attempts()
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.config.max_body_bytes:
            raise self._too_large()

    def on_finish(self) -> None:
        self.application.streams.discard(self)
        if self.counted:
            self._release()

    def _release(self) -> None:
        """Give back the in-flight and admission slots, once (on finish, or when the client
        leaves first)."""
        self.counted = False
        self.application.inflight -= 1
        if self.client:
            self.application.admission.release(self.client)
            self.client = b""

    def _too_large(self) -> errors.ApiError:
        return errors.PayloadTooLarge(
            f"request body is larger than {self.config.max_body_bytes} bytes",
            code="request_too_large",
        )

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.config.max_body_bytes:
            self._chunks.append(chunk)
        else:
            self._chunks = []

    def request_body(self) -> bytes:
        """The whole body, once; the chunks are let go (a stream holds its body for failover,
        so one copy of it, not two)."""
        if self._size > self.config.max_body_bytes:
            raise self._too_large()
        body, self._chunks = b"".join(self._chunks), []
        return body

    def on_connection_close(self) -> None:
        self.client_gone = self.disconnected = True
        if self.transfer is not None:
            self.transfer.abort()  # ends the upstream transfer now
        # Tornado's own ends a body still arriving: the handler then returns before its method
        # runs, and neither finish() nor on_finish() follows. So the body read so far and the
        # slot are let go here, or a cut upload would hold both for good.
        super().on_connection_close()
        self._chunks = []
        if self.counted:
            self._release()

    # ---- Sink -------------------------------------------------------------------------------

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.set_status(status)
        for name, value in headers:
            self.set_header(name, value)
        if self.streaming:
            self.application.streams.add(self)

    def end_for_shutdown(self) -> None:
        """End an open stream because the process is stopping: an SSE error event and
        ``[DONE]``, never a silent cut; the upstream transfer is aborted, and what it still
        delivers (and the relay's own ending) is dropped."""
        if self.ended or self.client_gone:
            return
        self.send(
            sse.error_event(
                "orpoll is shutting down; retry the request",
                code="server_shutting_down",
                etype="server_error",
                status=503,
            )
            + sse.DONE
        )
        if self.transfer is not None:
            self.transfer.abort()
        self.done()
        self.client_gone = True

    def send(self, data: bytes) -> None:
        """Write ``data`` to the client; a stream's chunks go out at once (the app's writer).

        A client that stops reading shows as bytes still queued after a chunk; past
        MAX_STREAM_BACKLOG_BYTES of them it is dropped.
        """
        if self.client_gone:
            return
        self.bytes_out += len(data)
        if not self.streaming:
            self.write(data)
            return
        writer = self.application.writer
        if not self.head_sent:
            self.head_sent = True
            writer.start_stream(self, data)
            return
        if not writer.send_chunk(self, data):
            self.backlog = 0
            return
        self.backlog += len(data)
        if self.backlog > self.config.max_backlog_bytes:
            log.warning("client too slow (%d bytes unsent); dropping it", self.backlog)
            self.request.connection.close()  # type: ignore[union-attr]
            self.on_connection_close()

    def relay(self, *, stream: bool) -> Relay:
        """The Relay for this request; the caller awaits its ``run`` and then ``done()`` (not
        one coroutine around both: a frame less per open stream)."""
        self.streaming = stream
        cfg = self.config
        attempts = self.attempts
        assert attempts is not None  # made by prepare()
        return Relay(
            self.scheduler,
            self.upstream,
            retries=cfg.retry_count,
            backoff=cfg.retry_backoff,
            attempts=attempts,
        )

    def done(self) -> None:
        """Finish the answer (after the relay ran, or to end a stream at shutdown), once."""
        if self.ended or self.client_gone:
            return
        self.ended = True
        self.application.writer.finish(self, self.streaming)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        attempts = getattr(self, "attempts", None)
        if attempts is not None and attempts.items:
            self.set_header("X-Orpoll-Attempts", str(len(attempts.items)))
        super().write_error(status_code, **kwargs)


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; BadRequest otherwise."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise errors.BadRequest(
            f"request body is not valid JSON: {e}", code="invalid_json"
        ) from None
    if not isinstance(obj, dict):
        raise errors.BadRequest("request body must be a JSON object", code="invalid_json")
    return obj


def with_model(body: bytes, obj: dict[str, Any], model: str) -> bytes:
    """``body`` with ``"model"`` set and the rest byte for byte: re-serialising would turn
    integers beyond 64 bits into floats (orjson) and change the client's formatting."""
    if "model" not in obj:
        at = body.index(b"{") + 1
        return body[:at] + b'"model":' + orjson.dumps(model) + (b"," if obj else b"") + body[at:]
    try:
        return orjson.dumps({**obj, "model": model})  # "model": null or "": rare, re-serialise
    except orjson.JSONEncodeError:  # nesting orjson parses (1024) but will not write (254)
        raise errors.BadRequest("request body is nested too deeply", code="invalid_json") from None


class ChatHandler(RelayHandler):
    """POST /v1/chat/completions: the body goes upstream unchanged (``model`` filled if absent)."""

    async def post(self) -> None:
        body = self.request_body()
        obj = parse_json_body(body)
        model = obj.get("model")
        if model is None or model == "":
            model = self.config.default_model
            body = with_model(body, obj, model)
        elif not isinstance(model, str):
            raise errors.BadRequest("model must be a string", param="model", code="invalid_type")
        if not isinstance(obj.get("messages"), list) and "prompt" not in obj:
            raise errors.BadRequest(
                "messages must be an array of messages", param="messages", code="invalid_type"
            )
        self.model = model
        stream = obj.get("stream") is True
        # The parsed conversation is several times the size of the body, and a stream may last
        # minutes: only the bytes go on.
        del obj
        await self.relay(stream=stream).run(
            self, self.config.openrouter_api_url, body, model=model, stream=stream
        )
        self.done()


class PassThroughHandler(RelayHandler):
    """Any other /v1/<path> OpenRouter serves (completions, embeddings, ...), with key rotation."""

    def prepare(self) -> None:
        super().prepare()
        # Judged on the raw path (Tornado's path argument is decoded once), before the body is
        # read and before any key is picked: a path that cannot be sent is the client's fault.
        self.target = paths.upstream_path(self.request.path[len("/v1/") :])
        if self.request.query:
            paths.check_query(self.request.query)

    async def _pass(self, _path: str) -> None:
        body = self.request_body() if self.request.method != "GET" else None
        model, stream = None, False
        ctype = self.request.headers.get("Content-Type", "")
        # Multipart etc. go as they are; a POST that says JSON must be JSON, even when empty.
        said_json = "json" in ctype.lower()
        if (body and (not ctype or said_json)) or (said_json and self.request.method == "POST"):
            obj = parse_json_body(body or b"")
            model = obj.get("model") if isinstance(obj.get("model"), str) else None
            stream = obj.get("stream") is True
            del obj  # as in ChatHandler: only the bytes are kept while the answer streams
        self.model = model
        url = f"{self.config.upstream_base}/{self.target}"
        if self.request.query:
            url += "?" + self.request.query
        await self.relay(stream=stream).run(
            self,
            url,
            body,
            model=model,
            stream=stream,
            method=self.request.method,
            content_type=ctype or None,
        )
        self.done()

    get = post = delete = _pass


class ModelsHandler(ApiHandler):
    """GET /v1/models in OpenAI's list shape (cached)."""

    async def get(self) -> None:
        body = await self.application.catalog.get()
        self.set_header("Content-Type", "application/json")
        self.finish(body)


class ModelHandler(ApiHandler):
    """GET /v1/models/<id>: one entry of the list."""

    async def get(self, model_id: str) -> None:
        listing = orjson.loads(await self.application.catalog.get())
        for m in listing["data"]:
            if m["id"] == model_id:
                return self.write_json(m)
        raise errors.NotFound(
            f"model {model_id!r} not found", param="model", code="model_not_found"
        )


def health_of(app: OrpollApp) -> tuple[dict[str, Any], bool]:
    """The body /healthz and /readyz answer, and whether the process should get traffic.

    ``status`` is ``draining`` while shutting down, ``degraded`` when no key is usable or the
    upstream is down (the process still serves: errors with Retry-After) or the cluster's
    backend is unreachable (it serves as usual), else ``ok``.
    """
    counts = app.scheduler.counts()
    upstream = app.scheduler.upstream
    if app.draining:
        status = "draining"
    elif not counts["available"] or upstream.down:
        status = "degraded"
    else:
        status = "ok"
    ready = app.ready and status == "ok"
    body = {"status": status, "ready": ready, "keys": counts, "upstream": upstream.state()}
    cluster = app.cluster
    if cluster.enabled:
        # Cut off from the other instances, this one still serves from its own state: it
        # stays ready, and says it is degraded.
        body["cluster"] = cluster.state()
        if cluster.degraded and status == "ok":
            body["status"] = "degraded"
    return body, ready


class HealthzHandler(BaseHandler):
    """GET /healthz: liveness (200 while the process serves), key counts and the upstream's
    state (no secrets), for Docker and load balancers."""

    def get(self) -> None:
        self.write_json(health_of(self.application)[0])

    def check_xsrf_cookie(self) -> None:
        pass


class ReadyzHandler(HealthzHandler):
    """GET /readyz: readiness; 503 while starting, draining, with no usable key or with the
    upstream down, so a load balancer sends the traffic elsewhere meanwhile."""

    def get(self) -> None:
        body, ready = health_of(self.application)
        self.write_json(body, 200 if ready else 503)


routes = [
    (r"/v1/chat/completions", ChatHandler),
    (r"/v1/models", ModelsHandler),
    (r"/v1/models/(.+)", ModelHandler),
    (r"/v1/(.+)", PassThroughHandler),
    (r"/healthz", HealthzHandler),
    (r"/readyz", ReadyzHandler),
]
