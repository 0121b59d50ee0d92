"""The access log: one line per request (Tornado's ``log_function``), and the per-minute
request and error counts (``Traffic``) the dashboard shows."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import tornado.web

from .logs import direct_sink

access_log = logging.getLogger("orpoll.access")


class Traffic:
    """Requests to /v1 and how many failed (status >= 400, or a stream that broke after its
    200), per minute over the last hour. Requests refused for a wrong client key are counted
    apart (``rejected``): they say nothing about the upstream."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.ring = [[-1, 0, 0, 0] for _ in range(60)]  # [minute, requests, errors, rejected]
        self.requests = self.errors = self.rejected = 0  # since start

    def record(self, status: int, *, broken: bool = False, rejected: bool = False) -> None:
        minute = int(self.clock() // 60)
        slot = self.ring[minute % 60]
        if slot[0] != minute:
            slot[:] = [minute, 0, 0, 0]
        if rejected:
            slot[3] += 1
            self.rejected += 1
            return
        failed = status >= 400 or broken
        slot[1] += 1
        slot[2] += failed
        self.requests += 1
        self.errors += failed

    def summary(self) -> dict[str, int]:
        minute = int(self.clock() // 60)
        live = [slot for slot in self.ring if 0 <= minute - slot[0] < 60]
        return {
            "requests_last_hour": sum(slot[1] for slot in live),
            "errors_last_hour": sum(slot[2] for slot in live),
            "requests_total": self.requests,
            "errors_total": self.errors,
            "rejected_last_hour": sum(slot[3] for slot in live),
            "rejected_total": self.rejected,
        }


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One access line per request; relayed requests add model, keys tried and timings.

    Every handler passes here, Tornado's own (static files) too: those have no request id.
    """
    status = handler.get_status()
    req = handler.request
    attempts = getattr(handler, "attempts", None)
    broken = attempts.broken if attempts is not None else ""  # a stream failed after its 200
    if req.path.startswith("/v1/"):
        # A 401 before any attempt is our own client-key check: not the upstream's failure.
        rejected = status == 401 and not (attempts is not None and attempts.items)
        traffic = handler.application.traffic  # type: ignore[attr-defined]  # OrpollApp's
        traffic.record(status, broken=bool(broken), rejected=rejected)
    level = logging.WARNING if status >= 500 or status == 429 or broken else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    rid = getattr(handler, "request_id", "-")
    total = 1000.0 * req.request_time()
    if attempts is None:
        line = f"{rid} {status} {req.method} {req.path} {total:.1f}ms"
    else:
        first = attempts.first_byte
        ttfb = f"{1000.0 * (first - started_at(req)):.1f}ms" if first else "-"
        model = getattr(handler, "model", None) or "-"
        stream = "true" if getattr(handler, "streaming", False) else "false"
        line = (
            f"{rid} {status} {req.method} {req.path} model={model} "
            f"stream={stream} keys={attempts} ttfb={ttfb} total={total:.1f}ms"
        )
    if broken:
        line += " failed=stream-broke"
    note = getattr(handler, "error_note", None) or broken
    if note:  # JSON-quoted: an upstream message cannot start a log line of its own
        line += " error=" + json.dumps(note[:300], ensure_ascii=False)
    sink = direct_sink(access_log)
    if sink is None:
        access_log.log(level, "%s", line, extra={"access": access_fields(handler, total)})
    elif sink.structured:
        sink.record(level, access_log.name, line, access_fields(handler, total))
    else:
        sink.line(level, access_log.name, line)


def started_at(req: Any) -> float:
    """When Tornado began the request (the wall clock its ``request_time()`` counts from)."""
    return time.time() - req.request_time()


def access_fields(handler: tornado.web.RequestHandler, total: float) -> dict[str, Any]:
    """The access line's fields, for LOG_FORMAT=json (built only there)."""
    req = handler.request
    attempts = getattr(handler, "attempts", None)
    fields: dict[str, Any] = {
        "request_id": getattr(handler, "request_id", None),
        "status": handler.get_status(),
        "method": req.method,
        "path": req.path,
        "model": None,
        "stream": None,
        "keys": None,
        "ttfb_ms": None,
        "total_ms": round(total, 1),
        "error": None,
        "client": req.remote_ip,
    }
    if attempts is not None:
        first = attempts.first_byte
        fields["model"] = getattr(handler, "model", None)
        fields["stream"] = bool(getattr(handler, "streaming", False))
        fields["keys"] = [{"id": k, "verdict": v, "status": s} for k, v, s in attempts.items]
        fields["ttfb_ms"] = round(1000.0 * (first - started_at(req)), 1) if first else None
    note = getattr(handler, "error_note", None)
    if note:
        fields["error"] = note[:300]
    return fields
