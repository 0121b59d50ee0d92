"""/admin JSON API over the request ledger: the request log (paged, filtered), its CSV export
(streamed a chunk at a time), usage totals and the dashboard's live figures; the Requests page;
and /metrics for Prometheus (bearer token).

Queries run on the ledger's reader threads; the loop only parses and writes.
"""

from __future__ import annotations

import hmac
from typing import Any

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado.iostream import StreamClosedError

from .. import errors
from ..auth import bearer
from ..ledger import HOUR, Ledger
from ..ledgerquery import (
    GROUPS,
    MAX_MINUTE_RANGE,
    BadFilter,
    Filters,
    csv_chunk,
    parse_time,
    requests_page,
    usage_totals,
)
from .admin import AdminApiHandler, AdminHandler
from .base import BaseHandler

MAX_LIMIT = 1000
CSV_CHUNK = 2000


class LedgerHandler(AdminApiHandler):
    @property
    def ledger(self) -> Ledger:
        return self.application.ledger

    def filters(self) -> Filters:
        try:
            return Filters.parse(lambda name: self.get_argument(name, ""))
        except BadFilter as e:
            raise errors.BadRequest(str(e), param=e.param, code="invalid_parameter") from None

    def cursor(self) -> int | None:
        raw = self.get_argument("cursor", "")
        if not raw:
            return None
        if not raw.isdigit():
            raise errors.BadRequest(
                "cursor must be a next_cursor value", param="cursor", code="invalid_parameter"
            )
        return int(raw)


class RequestsHandler(LedgerHandler):
    """GET ?limit=&cursor=&since=&until=&status=&model=&key=&client=&stream=: newest first."""

    async def get(self) -> None:
        raw = self.get_argument("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise errors.BadRequest(
                f"limit must be an integer from 1 to {MAX_LIMIT}",
                param="limit",
                code="invalid_parameter",
            )
        filters, cursor = self.filters(), self.cursor()
        self.write_json(await self.ledger.read(requests_page, filters, int(raw), cursor))


class RequestsCsvHandler(LedgerHandler):
    """GET with the same filters: every matching record as CSV, newest first, written and
    flushed a chunk at a time so an export never sits whole in memory."""

    async def get(self) -> None:
        filters, cursor = self.filters(), self.cursor()
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", 'attachment; filename="requests.csv"')
        first = True
        while first or cursor is not None:
            text, cursor = await self.ledger.read(
                csv_chunk, filters, None if first else cursor, CSV_CHUNK
            )
            first = False
            self.write(text)
            try:
                await self.flush()
            except StreamClosedError:
                return
        self.finish()


class UsageHandler(LedgerHandler):
    """GET ?group_by=key|model|account|client|minute|hour|day&since=&until=&top=: usage
    totals. ``minute`` comes from the ledger's per-minute figures in memory, so its range is at
    most a day and an hour (default: the last hour). ``top=N`` (not for time groups): the N
    groups that cost most; a key's row then names it by its shown suffix too."""

    async def get(self) -> None:
        group_by = self.get_argument("group_by", "model")
        if group_by not in GROUPS:
            raise errors.BadRequest(
                f"group_by must be one of {', '.join(GROUPS)}",
                param="group_by",
                code="invalid_parameter",
            )
        try:
            since = parse_time("since", self.get_argument("since", ""))
            until = parse_time("until", self.get_argument("until", ""))
        except BadFilter as e:
            raise errors.BadRequest(str(e), param=e.param, code="invalid_parameter") from None
        if group_by == "minute":
            rows = self.minutes(since, until)
        else:
            rows = await self.ledger.read(usage_totals, group_by, since, until, self.top(group_by))
        if group_by == "key":
            for row in rows:
                ks = self.scheduler.get(row["group"])
                row["key_suffix"] = ks.masked if ks is not None else ""
        self.write_json({"data": rows, "group_by": group_by})

    def top(self, group_by: str) -> int | None:
        raw = self.get_argument("top", "")
        if not raw:
            return None
        if group_by in ("hour", "day") or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise errors.BadRequest(
                f"top must be an integer from 1 to {MAX_LIMIT}, and group_by not a time",
                param="top",
                code="invalid_parameter",
            )
        return int(raw)

    def minutes(self, since: float | None, until: float | None) -> list[dict[str, Any]]:
        until = self.ledger.clock() if until is None else until
        since = until - HOUR if since is None else since
        if not 0 <= until - since <= MAX_MINUTE_RANGE:
            raise errors.BadRequest(
                f"group_by=minute takes a range of at most {MAX_MINUTE_RANGE} s",
                param="since",
                code="invalid_parameter",
            )
        return self.ledger.minutes_between(since, until)


class OverviewHandler(LedgerHandler):
    """GET: what the dashboard's cards show live: keys by state, streams open now, and the
    records the ledger has taken since start."""

    def get(self) -> None:
        self.write_json(
            {
                "keys": self.scheduler.counts(),
                "streams_open": len(self.application.streams),
                "recorded": self.ledger.added,
                "now": self.ledger.clock(),
            }
        )


class RequestsPageHandler(AdminHandler):
    """The Requests page: the request log with its filters, traces and CSV export."""

    @tornado.web.authenticated
    def get(self) -> None:
        self.render_template("requests.html", page="requests")


class MetricsHandler(BaseHandler):
    """GET /metrics: only when METRICS_TOKEN is set (404 otherwise), only to
    ``Authorization: Bearer <METRICS_TOKEN>`` (401 otherwise)."""

    def check_xsrf_cookie(self) -> None:
        pass  # bearer token, no cookie

    def get(self) -> None:
        token = self.config.metrics_token
        if not token:
            raise errors.NotFound(f"unknown route: GET {self.request.path}", code="unknown_url")
        if not hmac.compare_digest(bearer(self.request.headers).encode(), token.encode()):
            raise errors.Unauthorized(
                "invalid or missing metrics token", code="invalid_metrics_token"
            )
        self.application.ledger.fold()  # the per-model figures, up to the last request
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.application.metrics_registry))


routes = [
    (r"/admin/requests", RequestsHandler),
    (r"/admin/requests\.csv", RequestsCsvHandler),
    (r"/admin/usage", UsageHandler),
    (r"/admin/overview", OverviewHandler),
    (r"/admin/requests-log", RequestsPageHandler),
    (r"/metrics", MetricsHandler),
]
