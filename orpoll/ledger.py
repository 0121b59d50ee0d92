"""The request ledger: one row per client request and usage totals per hour and per day, in
``DATA_DIR/ledger.sqlite3``, written behind in batches by a thread of its own.

``Ledger.add`` is the only call on the proxy's path: it counts the record in memory and queues
it; the disk sees it within ``interval`` seconds, in one transaction with its batch. A crash
(even kill -9) loses at most the batch being written and never corrupts the file (WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from tornado.ioloop import PeriodicCallback

from .metrics import Counters
from .minutes import MINUTE, SPAN, MinuteTotals, written_minutes
from .tally import Tally, totals_rows
from .usage import RequestRecord

if TYPE_CHECKING:
    from .backfill import Backfill

log = logging.getLogger("orpoll.ledger")
T = TypeVar("T")
DB_NAME = "ledger.sqlite3"
Batch = tuple[list, int, list[tuple]]  # row values, rows, the usage rows they add to
HOUR, DAY = 3600, 86400
NANO = 1_000_000_000  # totals keep cost in integer nano-dollars, so sums are exact
DIMS = ("all", "key", "model", "account", "client")
COLUMNS = (
    "ts request_id route model answered_model stream status error_type error_code client_addr "
    "client attempts key_id key_masked account ttfb_ms duration_ms bytes_out prompt_tokens "
    "completion_tokens cached_tokens reasoning_tokens cost generation_id client_disconnected "
    "usage_known"
).split()
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, {", ".join(COLUMNS)});
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE INDEX IF NOT EXISTS requests_key ON requests(key_id);
CREATE INDEX IF NOT EXISTS requests_failed ON requests(id) WHERE status >= 400 OR error_type != '';
CREATE TABLE IF NOT EXISTS usage (
    period INTEGER NOT NULL, dim TEXT NOT NULL, bucket INTEGER NOT NULL, value TEXT NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, cost_nanos INTEGER NOT NULL,
    PRIMARY KEY (period, dim, bucket, value)
) WITHOUT ROWID;
"""
TOTALS = "requests errors prompt_tokens completion_tokens cached_tokens reasoning_tokens cost_nanos"
ADD_TOTALS = (
    f"INSERT INTO usage (period, dim, bucket, value, {', '.join(TOTALS.split())}) "
    f"VALUES ({', '.join('?' * (4 + len(TOTALS.split())))}) "
    "ON CONFLICT (period, dim, bucket, value) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in TOTALS.split())
)
INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# Rows per INSERT statement: sqlite3 lets go of the GIL around each step, so executemany over
# single rows would hand the GIL to the event loop and back once a row, and under load each
# hand-back waits on the loop. Many rows a statement make one step (and one hand-off) of them.
ROWS_PER_INSERT = 128
INSERT_MANY = INSERT + (", (" + ", ".join("?" * len(COLUMNS)) + ")") * (ROWS_PER_INSERT - 1)


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL: a commit survives a killed process (the WAL is written before the commit returns);
    # only a power cut may lose the newest batches, which the ledger accepts.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


def nanos(cost: float | None) -> int:
    """Cost in nano-dollars, rounded half up as SQLite's ROUND does for the totals."""
    return int(cost * NANO + 0.5) if cost is not None and cost > 0 else 0


def insert_rows(db: sqlite3.Connection, values: list, rows: int) -> None:
    """Insert ``rows`` rows into ``requests`` from ``values``, their columns one after the
    other, ROWS_PER_INSERT rows to a statement."""
    width, whole = len(COLUMNS), rows - rows % ROWS_PER_INSERT
    step = width * ROWS_PER_INSERT
    for at in range(0, whole * width, step):
        db.execute(INSERT_MANY, values[at : at + step])
    if whole < rows:
        rest = values[whole * width :]
        db.executemany(INSERT, [rest[i : i + width] for i in range(0, len(rest), width)])


def row_of(r: RequestRecord) -> tuple:
    """The ``requests`` row of a record (attempts as a compact JSON list of lists)."""
    attempts = orjson.dumps([[a.key, a.verdict, a.status, a.ms] for a in r.attempts]).decode()
    return (
        r.time, r.request_id, r.route, r.model, r.answered_model, int(r.stream), r.status,
        r.error_type, r.error_code, r.client_addr, r.client, attempts, r.key_id, r.key_masked,
        r.account, r.ttfb_ms, r.duration_ms, r.bytes_out, r.prompt_tokens, r.completion_tokens,
        r.cached_tokens, r.reasoning_tokens, r.cost, r.generation_id, int(r.client_disconnected),
        int(r.usage_known),
    )  # fmt: skip


class Ledger:
    """Owns ledger.sqlite3: the write-behind thread, readers, pruning and today's per-key sums.

    ``path`` is a file, not ":memory:" (each reader thread opens its own connection to it);
    ``clock`` is wall time, injectable for tests.
    """

    def __init__(
        self,
        path: str,
        *,
        record_days: float = 7,
        usage_days: float = 400,
        interval: float = 1.0,
        batch: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path, self.clock = path, clock
        self.record_days, self.usage_days = record_days, usage_days
        self.interval, self.batch = interval, batch
        # The rows not yet handed to the writer, their columns one after the other: built on
        # the loop, so that the writer thread runs hardly any Python and holds the GIL little
        # (each Python step it took was a step the loop waited for).
        self.pending: list = []
        self.pending_rows = 0
        self.added = self.written = 0
        self.counters = Counters()
        self.backfill: Backfill | None = None  # set by the app; None = no backfill
        self.minutes = MinuteTotals()  # the dashboard's per-minute figures
        self.tally = Tally(self.minutes, self.counters)
        # No connection or thread is kept until one is needed: the writer's opens with the
        # first record, a reader's with its first query (an idle ledger holds no descriptor).
        with contextlib.closing(connect(path)) as db:
            db.executescript(SCHEMA)
            self._load_today(db)
            self.minutes.load(db, clock())
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="orpoll-ledger-read")
        self._local = threading.local()
        self._reader_dbs: list[sqlite3.Connection] = []
        # Batches for the writer: (row values, rows, usage rows), or None to stop. The loop hands
        # a batch over at most ``interval`` seconds after its first record.
        self._batches: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._handoff: asyncio.TimerHandle | None = None
        self._refresher: PeriodicCallback | None = None
        self._stopping = False
        self.pruned_at = 0.0
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, data_dir: str, **kw: Any) -> Ledger:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        path = os.path.join(data_dir, DB_NAME)
        # Created 0600: client addresses and key ids are not for other users (SQLite gives
        # its WAL files the same mode).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        return cls(path, **kw)

    # ---- the loop side ----------------------------------------------------------------------

    def add(self, record: RequestRecord) -> None:
        """Take a finished request's record. O(1) on the loop, sync, never touches the disk.

        A record that ended without usage but names a generation is held by the backfill
        (which asks OpenRouter for the figures) and committed when that ends.
        """
        backfill = self.backfill
        if backfill is not None and backfill.wants(record):
            backfill.start(record, self.commit)
        else:
            self.commit(record)

    def commit(self, record: RequestRecord) -> None:
        """Count ``record`` (metrics, the tally) and queue it for the writer."""
        self.counters.observe(record)
        self.tally.count(record)
        self.pending += row_of(record)
        self.pending_rows += 1
        self.added += 1
        if self.pending_rows >= self.batch:
            self.hand_over()
        elif self._handoff is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a script, a test): hand over at once
                self.hand_over()
            else:
                self._handoff = loop.call_later(self.interval, self.hand_over)

    def hand_over(self) -> None:
        """Queue what is pending for the writer, with its totals (loop side)."""
        if self._handoff is not None:
            self._handoff.cancel()
            self._handoff = None
        if not self.pending_rows:
            return
        values, rows = self.pending, self.pending_rows
        self.pending, self.pending_rows = [], 0
        self._batches.put((values, rows, totals_rows(self.tally.take_unwritten())))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="orpoll-ledger", daemon=True)
            self._thread.start()

    def fold(self) -> None:
        """Bring the in-memory figures (minutes, today's, per model) up to the last record."""
        self.tally.fold()

    def share(self, every: float = 2.0) -> None:
        """Other processes write to this ledger too (several workers): re-read the minute
        totals and today's per-key figures from the file every ``every`` seconds, so that this
        process shows what all of them recorded, not its own share."""
        if self._refresher is None:
            self._refresher = PeriodicCallback(self._refresh, every * 1000)
            self._refresher.start()

    async def _refresh(self) -> None:
        minutes, today = await self.read(_written_figures, self.clock())
        tally = self.tally
        tally.fold()
        self.minutes.take(minutes)
        tally.today_day, tally.today_keys = today
        tally.replay_unwritten()  # folded here, not yet handed to the writer

    def minutes_between(self, since: float, until: float) -> list[dict[str, Any]]:
        self.tally.fold()
        return self.minutes.between(since, until)

    def today(self, key_id: str) -> dict[str, Any]:
        """Today's (UTC) figures of a key, for the key listing."""
        tally = self.tally
        tally.fold()
        sums = tally.today_keys.get(key_id) if tally.today_day == int(self.clock() // DAY) else None
        requests, errors, cost, tokens = sums or (0, 0, 0, 0)
        return {
            "today_requests": requests,
            "today_errors": errors,
            "today_cost": cost / NANO,
            "today_tokens": tokens,
        }

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record added so far is on disk (records held by the backfill are
        not added yet)."""
        target, deadline = self.added, time.monotonic() + timeout
        self.hand_over()
        while self.written < target and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(db, *args)`` on a reader thread with that thread's own connection."""
        return await asyncio.get_running_loop().run_in_executor(
            self._readers, self._with_reader, fn, args
        )

    def _with_reader(self, fn: Callable[..., T], args: tuple) -> T:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path)
            self._reader_dbs.append(db)
        return fn(db, *args)

    def close(self) -> None:
        """Write what is queued, stop the writer and the readers."""
        if self._refresher is not None:
            self._refresher.stop()
        self.hand_over()
        self._stopping = True
        if self._thread is not None:
            self._batches.put(None)
            self._thread.join(timeout=30)
        self._readers.shutdown(wait=True)
        for db in self._reader_dbs:
            db.close()

    # ---- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        # Asleep until the loop hands a batch over (no polling while idle).
        db = self._connect()
        if db is None:
            return
        try:
            self._loop(db)
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection | None:
        # Opening can fail for a while (no descriptor left, the directory gone): the batches
        # wait in the queue and the writer tries again, rather than the thread dying for good.
        failing = False
        while True:
            try:
                return connect(self.path)
            except sqlite3.Error as e:
                if not failing:
                    log.error("ledger: cannot open %s (%s); trying again", self.path, e)
                    failing = True
            if self._stopping and self._batches.empty():
                return None
            time.sleep(max(self.interval, 0.1))

    def _loop(self, db: sqlite3.Connection) -> None:
        while True:
            batch = self._batches.get()
            if batch is None:
                return
            while True:
                try:
                    self._write_batch(db, *batch)
                    break
                except sqlite3.Error:
                    log.exception("ledger: writing failed; retrying in %.2f s", self.interval)
                    time.sleep(self.interval)
            if self.clock() - self.pruned_at >= HOUR:
                try:
                    self.prune(db)
                except sqlite3.Error:
                    log.exception("ledger: pruning failed")

    def _write_batch(
        self, db: sqlite3.Connection, values: list, rows: int, totals: list[tuple]
    ) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
            insert_rows(db, values, rows)
            db.executemany(ADD_TOTALS, totals)
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.written += rows

    def prune(self, db: sqlite3.Connection, chunk: int = 20000) -> int:
        """Delete records and totals past their retention, a chunk per transaction so that a
        large first prune never holds the write lock long. Writer thread only."""
        now = self.clock()
        self.pruned_at = now
        sql = "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE ts < ? LIMIT ?)"
        deleted = 0
        while True:
            n = db.execute(sql, (now - self.record_days * DAY, chunk)).rowcount
            deleted += n
            if n < chunk:
                break
        deleted += db.execute(  # the minute totals: only the last day and an hour are read
            "DELETE FROM usage WHERE period = ? AND dim = 'all' AND bucket < ?",
            (MINUTE, now - (SPAN + MINUTE) * MINUTE),
        ).rowcount
        cutoff = now - self.usage_days * DAY
        for period in (HOUR, DAY):
            for dim in DIMS:  # (period, dim, bucket) leads the key: each delete is a range
                deleted += db.execute(
                    "DELETE FROM usage WHERE period = ? AND dim = ? AND bucket < ?",
                    (period, dim, cutoff),
                ).rowcount
        return deleted

    def _load_today(self, db: sqlite3.Connection) -> None:
        self.tally.today_day, self.tally.today_keys = _today_figures(db, self.clock())


def _today_figures(db: sqlite3.Connection, now: float) -> tuple[int, dict[str, list[int]]]:
    """Today's (UTC) day number and [requests, errors, nano-dollars, tokens] per key."""
    day = int(now // DAY)
    rows = db.execute(
        "SELECT value, requests, errors, cost_nanos, prompt_tokens + completion_tokens "
        "FROM usage WHERE period = ? AND dim = 'key' AND bucket = ?",
        (DAY, day * DAY),
    )
    return day, {value: list(rest) for value, *rest in rows}


def _written_figures(db: sqlite3.Connection, now: float) -> tuple[list[tuple], tuple]:
    """What a refresh reads, in one read transaction: the minutes and today's per key."""
    db.execute("BEGIN")
    try:
        return written_minutes(db, now), _today_figures(db, now)
    finally:
        db.execute("COMMIT")
