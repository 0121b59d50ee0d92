"""Requests, failures, tokens and cost per UTC minute over the last day and a bit, kept in
memory by the ledger: the dashboard's per-minute charts read them without touching the records
(summing a day of records per refresh grows with the traffic).

Loaded from the minute totals the ledger writes once when it opens; then the ledger's tally
adds what its records add up to, per minute. Used on the loop only, so it needs no lock.
"""

from __future__ import annotations

import datetime
import sqlite3
from typing import Any

MINUTE = 60
SPAN = 25 * 60  # minutes kept: a day and an hour
NANO = 1_000_000_000
FIELDS = (
    "requests errors prompt_tokens completion_tokens cached_tokens reasoning_tokens cost"
).split()
# The minute totals the ledger's writer keeps (an overall row per minute in ``usage``).
LOAD_MINUTES = (
    f"SELECT bucket / {MINUTE}, requests, errors, prompt_tokens, completion_tokens, "
    f"cached_tokens, reasoning_tokens, cost_nanos FROM usage WHERE period = {MINUTE} "
    "AND dim = 'all' AND bucket >= ?"
)
# A ledger written before minute totals were kept: the minutes summed from its records.
LOAD = (
    f"SELECT CAST(ts / {MINUTE} AS INTEGER), COUNT(*), SUM(status >= 400 OR error_type != ''), "
    "SUM(IFNULL(prompt_tokens, 0)), SUM(IFNULL(completion_tokens, 0)), "
    "SUM(IFNULL(cached_tokens, 0)), SUM(IFNULL(reasoning_tokens, 0)), "
    "SUM(CAST(ROUND(IFNULL(cost, 0) * 1e9) AS INTEGER)) "
    "FROM requests WHERE ts >= ? GROUP BY 1"
)


def written_minutes(db: sqlite3.Connection, now: float, span: int = SPAN) -> list[tuple]:
    """(minute, sums...) of the last ``span`` minutes, as written to the database."""
    since = (now // MINUTE - span) * MINUTE
    rows = db.execute(LOAD_MINUTES, (since,)).fetchall()
    return rows or db.execute(LOAD, (since,)).fetchall()


class MinuteTotals:
    def __init__(self, span: int = SPAN) -> None:
        self.span = span
        # minute number -> [requests, errors, prompt, completion, cached, reasoning, nano-dollars]
        self.slots: dict[int, list[int]] = {}
        self.newest = 0

    def load(self, db: sqlite3.Connection, now: float) -> None:
        """Take the minutes already written (the ledger's start, or a refresh when other
        processes write to the same ledger)."""
        self.take(written_minutes(db, now, self.span))

    def take(self, rows: list[tuple]) -> None:
        """Hold ``rows`` of (minute, sums...) instead of what was held."""
        self.slots = {int(minute): list(sums) for minute, *sums in rows}
        self.newest = max(self.slots, default=0)

    def add_sums(self, minute: int, sums: list[int]) -> None:
        """Add a minute's sums (requests, errors, four token counts, nano-dollars)."""
        slot = self.slots.get(minute)
        if slot is None:
            if minute <= self.newest - self.span:
                return  # older than the window (a late backfill)
            self.slots[minute] = list(sums)
            if minute > self.newest:
                self.newest = minute
                if len(self.slots) > self.span + MINUTE:  # dropped an hour at a time
                    self._drop()
            return
        for i, n in enumerate(sums):
            slot[i] += n

    def _drop(self) -> None:
        oldest = self.newest - self.span
        for minute in [m for m in self.slots if m <= oldest]:
            del self.slots[minute]

    def between(self, since: float, until: float) -> list[dict[str, Any]]:
        """The minutes that had requests in [since, until) (the minute holding ``since``
        whole), oldest first; only the last ``span`` minutes are held."""
        low, high = since // MINUTE, -(-until // MINUTE)
        out = []
        for minute in sorted(m for m in self.slots if low <= m < high):
            sums = self.slots[minute]
            start = minute * MINUTE
            row: dict[str, Any] = dict(zip(FIELDS, sums, strict=True))
            row["cost"] = sums[6] / NANO
            when = datetime.datetime.fromtimestamp(start, datetime.UTC).isoformat()
            out.append({"group": when, **row, "time": start})
        return out
