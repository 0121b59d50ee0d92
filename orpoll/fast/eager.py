"""Handlers started in the loop pass that read their request (Tornado starts each one pass
later, in a Task): ``SmallBodyFirst`` reads a small body before a ``stream_request_body``
handler starts, and ``start_eagerly`` runs a coroutine up to its first wait at once."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any

from tornado import httputil, iostream

SMALL_BODY = 256 * 1024


class SmallBodyFirst(httputil.HTTPMessageDelegate):
    """Reads a small request body before the handler starts, for ``stream_request_body`` handlers.

    Such a handler starts on the headers, so it can refuse a huge body with an OpenAI-shaped 413
    before reading it. The price is two extra event-loop passes per request (Tornado wakes the
    connection after ``prepare`` and the handler after the body), each a wait behind every other
    ready event, which under load delays the first chunk. A body whose
    Content-Length is at most SMALL_BODY and MAX_REQUEST_BODY_BYTES (nearly every chat request)
    is read first and handed over at once, and the handler then runs at once, in this pass
    (``start_eagerly``), up to its first real wait (the upstream's answer): Tornado would start
    it in a Task, one more pass. Anything else (chunked bodies, large ones) takes Tornado's
    streaming path unchanged.
    """

    def __init__(self, inner: httputil.HTTPMessageDelegate, limit: int) -> None:
        self.inner, self.limit = inner, limit
        self.held: tuple | None = None  # (start_line, headers) while we read the body
        self.chunks: list[bytes] = []

    def headers_received(self, start_line, headers):
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= self.limit and "Transfer-Encoding" not in headers:
            self.held = (start_line, headers)
            return None
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        if self.held is None:
            return self.inner.data_received(chunk)
        self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.held is None:
            return self.inner.finish()
        # What tornado.web._HandlerDelegate.finish and execute do for a streamed body, in an
        # order that lets the handler run straight through: its body (data_received may run
        # before prepare) and the body's future are done before it starts. Differs: no
        # _prepared_future (nothing waits for it: the body is read), and no template and static
        # cache resets (Tornado's debug mode only, which orpoll does not run).
        self.held = None
        d: Any = self.inner  # tornado.web._HandlerDelegate
        d.request._body_future = done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        handler = d.handler = d.handler_class(d.application, d.request, **d.handler_kwargs)
        for chunk in self.chunks:
            handler.data_received(chunk)
        self.chunks = []
        transforms = [t(d.request) for t in d.application.transforms]
        start_eagerly(handler._execute(transforms, *d.path_args, **d.path_kwargs))

    def on_connection_close(self) -> None:
        if self.held is None:
            self.inner.on_connection_close()
            # The connection closed before the whole body came (the client left, or a time
            # limit cut it): the handler, started on the headers, must stop waiting for it,
            # as Tornado's own RequestHandler.on_connection_close makes it (an override may
            # not). Its _execute then ends.
            body = getattr(getattr(self.inner, "request", None), "_body_future", None)
            if body is not None and not body.done():
                body.set_exception(iostream.StreamClosedError())
                body.exception()  # retrieved: no "exception never retrieved" warning


def start_eagerly(coro: Coroutine[Any, Any, Any]) -> asyncio.Task | None:
    """Run ``coro`` now up to its first wait, then on in a Task (None if it ended already).

    Python 3.12's eager tasks, for 3.11: ``asyncio.ensure_future`` would run the first step
    in the next loop pass, behind every event that is ready by then, which under load delays
    the first chunk. The step runs in the
    caller's context and task, so the coroutine must not rely on ``asyncio.current_task()``
    before its first wait (RequestHandler._execute does not).
    """
    try:
        waited = coro.send(None)
    except StopIteration:
        return None
    task = asyncio.ensure_future(_resume(coro, waited))
    # As tornado.web._HandlerDelegate.execute: an escaped error is logged, a cancellation not.
    task.add_done_callback(lambda f: f.cancelled() or f.result())
    return task


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waited: Any) -> Generator[Any, Any, Any]:
    """The rest of a coroutine whose first step ran already: hands the Task what it waits on,
    and passes the Task's wake-ups and cancellation through."""
    while True:
        try:
            yield waited
        except GeneratorExit:  # the Task was dropped unfinished: end the coroutine too
            coro.close()
            raise
        except BaseException as exc:
            try:
                waited = coro.throw(exc)
            except StopIteration as e:
                return e.value
        else:
            try:
                waited = coro.send(None)
            except StopIteration as e:
                return e.value
