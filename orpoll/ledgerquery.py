"""Reading the ledger: request filters, the paged request log, its CSV export and usage totals.

Every function taking ``db`` runs on a ledger reader thread (``Ledger.read``), never on the loop.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

import orjson

from .ledger import COLUMNS, DAY, HOUR, NANO

GROUPS = ("key", "model", "account", "client", "minute", "hour", "day")
# Minute figures are the ledger's in memory, kept for a day and an hour.
MAX_MINUTE_RANGE = DAY + HOUR
KEY_ID = re.compile(r"[0-9a-f]{12}")
SUFFIX = re.compile(r"\.\.\.[!-~]{1,8}")
# Spelled as the partial index requests_failed is, so that SQLite uses it.
FAILED = "(status >= 400 OR error_type != '')"
CSV_FIELDS = [c for c in COLUMNS if c != "attempts"] + ["attempts"]


class BadFilter(ValueError):
    """A query parameter the ledger cannot take; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_time(param: str, raw: str) -> float | None:
    """Epoch seconds, or an ISO 8601 time (UTC when it names no zone); None when empty."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise BadFilter(param, f"{param} must be ISO 8601 or epoch seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


@dataclass(frozen=True)
class Filters:
    since: float | None = None
    until: float | None = None
    status: str = ""  # "", "ok", "error" or a status code
    model: str = ""
    key: str = ""  # key id or "...abcd"
    client: str = ""
    stream: bool | None = None

    @classmethod
    def parse(cls, arg: Any) -> Filters:
        """From ``arg(name) -> str`` (the handler's get_argument); raises BadFilter."""
        status = arg("status").strip().lower()
        if status not in ("", "ok", "error") and not (status.isdigit() and len(status) == 3):
            raise BadFilter("status", "status must be ok, error or an HTTP status code")
        key = arg("key").strip()
        if key and not (KEY_ID.fullmatch(key) or SUFFIX.fullmatch(key)):
            raise BadFilter("key", "key must be a key id or its shown suffix (...abcd)")
        stream = arg("stream").strip().lower()
        if stream not in ("", "true", "false", "1", "0"):
            raise BadFilter("stream", "stream must be true or false")
        return cls(
            since=parse_time("since", arg("since")),
            until=parse_time("until", arg("until")),
            status=status,
            model=arg("model").strip(),
            key=key,
            client=arg("client").strip(),
            stream=None if not stream else stream in ("true", "1"),
        )

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition on ``requests`` and its parameters."""
        parts: list[str] = ["1"]
        params: list[Any] = []
        for sql, value in (
            ("ts >= ?", self.since),
            ("ts < ?", self.until),
            ("client = ?", self.client or None),
            ("stream = ?", None if self.stream is None else int(self.stream)),
        ):
            if value is not None:
                parts.append(sql)
                params.append(value)
        if self.model:
            parts.append("(answered_model = ? OR (answered_model = '' AND model = ?))")
            params += [self.model, self.model]
        if self.key:
            parts.append("key_id = ?" if KEY_ID.fullmatch(self.key) else "key_masked = ?")
            params.append(self.key)
        if self.status == "ok":
            parts.append("status < 400 AND error_type = ''")
        elif self.status == "error":
            parts.append(FAILED)
        elif self.status:
            parts.append("status = ?")
            params.append(int(self.status))
        return " AND ".join(parts), params


def record_json(row: sqlite3.Row | tuple) -> dict[str, Any]:
    """A ``requests`` row (id first, then COLUMNS) as the API shows it."""
    r = dict(zip(("id", *COLUMNS), row, strict=True))
    known = bool(r["usage_known"])
    return {
        "id": r["id"],
        "time": r["ts"],
        "request_id": r["request_id"],
        "route": r["route"],
        "model": r["model"],
        "answered_model": r["answered_model"],
        "stream": bool(r["stream"]),
        "status": r["status"],
        "error": {"type": r["error_type"], "code": r["error_code"]} if r["error_type"] else None,
        "client_addr": r["client_addr"],
        "client": r["client"],
        "attempts": [
            {"key": k, "verdict": v, "status": s, "ms": ms}
            for k, v, s, ms in orjson.loads(r["attempts"])
        ],
        "key": {"id": r["key_id"], "masked": r["key_masked"], "account": r["account"]}
        if r["key_id"]
        else None,
        "ttfb_ms": r["ttfb_ms"],
        "duration_ms": r["duration_ms"],
        "bytes_out": r["bytes_out"],
        "tokens": {
            "prompt": r["prompt_tokens"],
            "completion": r["completion_tokens"],
            "cached": r["cached_tokens"],
            "reasoning": r["reasoning_tokens"],
        },
        "cost": r["cost"],
        "generation_id": r["generation_id"],
        "client_disconnected": bool(r["client_disconnected"]),
        "usage_known": known,
    }


SELECT = f"SELECT id, {', '.join(COLUMNS)} FROM requests"


def requests_page(
    db: sqlite3.Connection, filters: Filters, limit: int, cursor: int | None
) -> dict[str, Any]:
    """Newest first; ``cursor`` is the ``next_cursor`` of the page before (an id)."""
    where, params = filters.where()
    total = db.execute(f"SELECT COUNT(*) FROM requests WHERE {where}", params).fetchone()[0]
    if cursor is not None:
        where += " AND id < ?"
        params = [*params, cursor]
    rows = db.execute(
        f"{SELECT} WHERE {where} ORDER BY id DESC LIMIT ?", [*params, limit + 1]
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [record_json(row) for row in rows],
        "total": total,
        "next_cursor": str(rows[-1][0]) if more else None,
    }


def csv_chunk(
    db: sqlite3.Connection, filters: Filters, cursor: int | None, size: int
) -> tuple[str, int | None]:
    """The next ``size`` records as CSV text (the header first when ``cursor`` is None), and
    the cursor after them (None at the end)."""
    where, params = filters.where()
    if cursor is not None:
        where += " AND id < ?"
        params = [*params, cursor]
    rows = db.execute(
        f"{SELECT} WHERE {where} ORDER BY id DESC LIMIT ?", [*params, size]
    ).fetchall()
    out = io.StringIO()
    writer = csv.writer(out)
    if cursor is None:
        writer.writerow(["id", *CSV_FIELDS])
    attempts_at = 1 + COLUMNS.index("attempts")
    for row in rows:
        values = [v for i, v in enumerate(row) if i != attempts_at]
        writer.writerow([*values, row[attempts_at]])
    return out.getvalue(), (rows[-1][0] if len(rows) == size else None)


def period_of(group_by: str, since: float | None, until: float | None) -> int:
    """Day totals when the range allows it (fewer rows), hour totals otherwise."""
    if group_by == "hour":
        return HOUR
    if group_by == "day":
        return DAY
    aligned = all(t is None or t % DAY == 0 for t in (since, until))
    return DAY if aligned else HOUR


def totals_json(group: Any, sums: tuple) -> dict[str, Any]:
    requests, errs, prompt, completion, cached, reasoning, cost = sums
    return {
        "group": group,
        "requests": requests,
        "errors": errs,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
        "cost": cost / NANO,
    }


def iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def usage_totals(
    db: sqlite3.Connection,
    group_by: str,
    since: float | None,
    until: float | None,
    top: int | None = None,
) -> list[dict[str, Any]]:
    """Totals per ``group_by`` value over [since, until). Totals are kept per hour and per day:
    a bound inside one takes it whole (since rounds down, until up), so a range of whole
    hours (or days, for group_by=day) is exact."""
    period = period_of(group_by, since, until)
    dim = "all" if group_by in ("hour", "day") else group_by
    group = "bucket" if dim == "all" else "value"
    low = -(2**62) if since is None else int(since // period * period)
    high = 2**62 if until is None else int(-(-until // period) * period)
    # top: the groups that cost most (then by requests), for "top 10" views.
    order = group if top is None else "SUM(cost_nanos) DESC, SUM(requests) DESC, value"
    rows = db.execute(
        f"SELECT {group}, SUM(requests), SUM(errors), SUM(prompt_tokens), "
        "SUM(completion_tokens), SUM(cached_tokens), SUM(reasoning_tokens), SUM(cost_nanos) "
        "FROM usage WHERE period = ? AND dim = ? AND bucket >= ? AND bucket < ? "
        f"GROUP BY {group} ORDER BY {order} LIMIT ?",
        (period, dim, low, high, -1 if top is None else top),
    ).fetchall()
    if dim != "all":
        return [totals_json(value, tuple(sums)) for value, *sums in rows]
    return [{**totals_json(iso(value), tuple(sums)), "time": value} for value, *sums in rows]
