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
from .usage import (
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
    req = handler.request
    total = req.request_time()
    rec = RequestRecord(
        time=time.time() - total,
        request_id=getattr(handler, "request_id", ""),
        route=req.path,
        model=getattr(handler, "model", None) or "",
        stream=bool(getattr(handler, "streaming", False)),
        status=handler.get_status(),
        client_addr=req.remote_ip or "",
        duration_ms=tenths(1000.0 * total),
        bytes_out=getattr(handler, "bytes_out", 0),
        client_disconnected=bool(getattr(handler, "disconnected", False)),
    )
    if handler.application.client_keys:  # type: ignore[attr-defined]
        rec.client = client_fingerprint(bearer(req.headers))
    error = getattr(handler, "error", None)
    if error is not None:
        rec.error_type, rec.error_code = error
    elif rec.status >= 400:
        rec.error_type = errors.from_status(rec.status).error_type
    attempts = getattr(handler, "attempts", None)
    if attempts is not None:
        _from_attempts(rec, attempts, rec.time)
    return rec


def _from_attempts(rec: RequestRecord, attempts: Any, started: float) -> None:
    for (key, verdict, status), ms in zip(attempts.items, attempts.ms, strict=False):
        rec.attempt(key, verdict, status, ms)
    if attempts.first_byte:
        rec.ttfb_ms = tenths(1000.0 * (attempts.first_byte - started))
    if attempts.broken:  # a stream that failed after its 200: counted as an error
        rec.error_type, rec.error_code = "upstream_error", attempts.broken_code
    ks = attempts.served
    if ks is None:
        return
    rec.serve(ks.id, ks.masked, ks.group)
    rec.generation_id = attempts.generation_id
    if attempts.body:
        rec.apply(usage_from_body(attempts.body))
    elif attempts.tail:
        rec.apply(usage_from_stream_tail(attempts.tail))
    if not rec.generation_id and attempts.head:
        found = _GENERATION_ID.search(attempts.head)
        if found:
            rec.generation_id = found.group(1).decode("ascii", "replace")
