"""The request ledger's record of one finished /v1 request, built from its handler.

Built once the answer is over (from ``OrpollApp.log_request``, beside the access line), so
nothing here runs while the answer flows: the relay only keeps references to where the
figures are (``attempt.Attempts``), and the usage is read here (``usage.py``), from a
non-stream body or a stream's last events.
"""

from __future__ import annotations

import re
import time
from typing import Any

import tornado.web

from . import errors
from .auth import bearer
from .handlers.base import BaseHandler
from .usage import (
    Attempt,
    RequestRecord,
    client_fingerprint,
    tenths,
    usage_from_body,
    usage_from_stream_tail,
)

# A generation's id in a stream's first data event (when its usage never came, the ledger asks
# /generation for it by this id).
_GENERATION_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,200})"')


def record_of(handler: tornado.web.RequestHandler) -> RequestRecord:
    """The ledger record of a finished /v1 request."""
    if not isinstance(handler, BaseHandler):  # one of Tornado's own (a malformed request)
        return _plain_record(handler)
    req = handler.request
    total = req.request_time()
    started = time.time() - total
    status = handler.get_status()
    error = handler.error
    error_type, error_code = error if error is not None else ("", "")
    if error is None and status >= 400:
        error_type = errors.from_status(status).error_type
    rec = RequestRecord(
        time=started,
        request_id=handler.request_id,
        route=req.path,
        model=handler.model or "",
        stream=handler.streaming,
        status=status,
        error_type=error_type,
        error_code=error_code,
        client_addr=req.remote_ip or "",
        client=client_fingerprint(bearer(req.headers)) if handler.application.client_keys else "",
        duration_ms=int(10000.0 * total + 0.5) / 10.0,  # tenths(), inline
        bytes_out=handler.bytes_out,
        client_disconnected=handler.disconnected,
    )
    attempts = handler.attempts
    if attempts is not None:
        _from_attempts(rec, attempts, started)
    return rec


def _plain_record(handler: tornado.web.RequestHandler) -> RequestRecord:
    req = handler.request
    total = req.request_time()
    status = handler.get_status()
    return RequestRecord(
        time=time.time() - total,
        route=req.path,
        status=status,
        error_type=errors.from_status(status).error_type if status >= 400 else "",
        client_addr=req.remote_ip or "",
        duration_ms=tenths(1000.0 * total),
    )


def _from_attempts(rec: RequestRecord, attempts: Any, started: float) -> None:
    rec.attempts = [
        Attempt(key, verdict, status, tenths(ms))
        for (key, verdict, status), ms in zip(attempts.items, attempts.ms, strict=False)
    ]
    if attempts.first_byte:
        rec.ttfb_ms = tenths(1000.0 * (attempts.first_byte - started))
    if attempts.broken:  # a stream that failed after its 200: counted as an error
        rec.error_type, rec.error_code = "upstream_error", attempts.broken_code
    ks = attempts.served
    if ks is None:
        return
    rec.key_id, rec.key_masked, rec.account = ks.id, ks.masked, ks.group
    rec.generation_id = attempts.generation_id
    if attempts.body:
        rec.apply(usage_from_body(attempts.body))
    elif attempts.tail:
        rec.apply(usage_from_stream_tail(attempts.tail))
    if not rec.generation_id and attempts.head:
        found = _GENERATION_ID.search(attempts.head)
        if found:
            rec.generation_id = found.group(1).decode("ascii", "replace")
