"""What finished requests add up to: counted on the loop into one table per distinct (minute,
key, model, account, client key), then folded, a combination at a time, into the figures read
from it (per-minute totals, today's per key, tokens and cost per model for /metrics) and into
the hour totals the ledger's writer adds to the database with the records.

Counting a record is one dictionary update; everything else happens per combination, of which
a second of traffic holds few, not per record. Loop only: no lock.
"""

from __future__ import annotations

from operator import add
from typing import TYPE_CHECKING

from .usage import RequestRecord

if TYPE_CHECKING:
    from .metrics import Counters
    from .minutes import MinuteTotals

MINUTE, HOUR, DAY = 60, 3600, 86400
NANO = 1_000_000_000  # cost in integer nano-dollars, so sums are exact
DIMS = ("all", "key", "model", "account", "client")
Sums = list[int]  # requests, errors, prompt, completion, cached, reasoning, nano-dollars


class Tally:
    def __init__(self, minutes: MinuteTotals, counters: Counters) -> None:
        self.minutes, self.counters = minutes, counters
        self.combos: dict[tuple, Sums] = {}  # (minute, key, model, account, client) -> sums
        self.unwritten: dict[tuple, Sums] = {}  # the same, folded, not yet handed to the writer
        self.today_day = -1
        self.today_keys: dict[str, list[int]] = {}  # key id -> [requests, errors, nanos, tokens]

    def count(self, r: RequestRecord) -> None:
        """Add one finished request."""
        combo = (int(r.time // MINUTE), r.key_id, r.answered_model or r.model, r.account, r.client)
        sums = self.combos.get(combo)
        if sums is None:
            sums = self.combos[combo] = [0, 0, 0, 0, 0, 0, 0]
        sums[0] += 1
        if r.status >= 400 or r.error_type:
            sums[1] += 1
        sums[2] += r.prompt_tokens or 0
        sums[3] += r.completion_tokens or 0
        sums[4] += r.cached_tokens or 0
        sums[5] += r.reasoning_tokens or 0
        cost = r.cost
        if cost is not None and cost > 0:
            sums[6] += int(cost * NANO + 0.5)  # rounded half up, as SQLite's ROUND does

    def fold(self) -> None:
        """Move what was counted since the last fold into the figures read from it."""
        combos, self.combos = self.combos, {}
        unwritten = self.unwritten
        for combo, sums in combos.items():
            minute, key, model = combo[0], combo[1], combo[2]
            self.minutes.add_sums(minute, sums)
            self.counters.add_model(model or "unknown", sums)
            if key:
                self._today(minute * MINUTE // DAY, key, sums)
            into = unwritten.get(combo)
            unwritten[combo] = sums if into is None else list(map(add, into, sums))

    def replay_unwritten(self) -> None:
        """Add what is folded but not yet handed to the writer to figures just read back from
        the database (which holds everything handed over before)."""
        for (minute, key, *_), sums in self.unwritten.items():
            self.minutes.add_sums(minute, sums)
            if key:
                self._today(minute * MINUTE // DAY, key, sums)

    def take_unwritten(self) -> dict[tuple, Sums]:
        """The totals counted since the last take, for the writer (folds first)."""
        self.fold()
        unwritten, self.unwritten = self.unwritten, {}
        return unwritten

    def _today(self, day: int, key: str, sums: Sums) -> None:
        if day > self.today_day:  # a new UTC day (what came before it is not today's)
            self.today_day, self.today_keys = day, {}
        if day == self.today_day:
            mine = self.today_keys.get(key)
            if mine is None:
                mine = self.today_keys[key] = [0, 0, 0, 0]
            mine[0] += sums[0]
            mine[1] += sums[1]
            mine[2] += sums[6]
            mine[3] += sums[2] + sums[3]


def totals_rows(minutes: dict[tuple, Sums]) -> list[tuple]:
    """The ``usage`` rows that totals per (minute, key, model, account, client) add to, with
    what they add: each into its hour and its day, overall and per dimension (records without
    a key, model, account or client key are counted overall only), and into its minute,
    overall only (the per-minute charts)."""
    out: dict[tuple, Sums] = {}
    for (minute, *values), sums in minutes.items():
        at = minute * MINUTE
        where = (MINUTE, "all", at, "")
        into = out.get(where)
        out[where] = sums if into is None else list(map(add, into, sums))
        for period in (HOUR, DAY):
            bucket = at // period * period
            for dim, value in zip(DIMS, ("", *values), strict=True):
                if value or dim == "all":
                    where = (period, dim, bucket, value)
                    into = out.get(where)
                    out[where] = sums if into is None else list(map(add, into, sums))
    return [(*where, *sums) for where, sums in out.items()]
