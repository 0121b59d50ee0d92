"""LocalBackend: the cluster's event log and key-value store in one SQLite file in DATA_DIR
(``cluster.db``), for several worker processes on one machine with no Redis.

SQLite has no push: a reader thread polls the log every POLL seconds. Every call runs on one of
the backend's two threads (the poller's and the writer's), never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..seal import private_file
from .backend import Backend, BackendDown, Event

T = TypeVar("T")
DB_NAME = "cluster.db"
POLL = 0.1
KEEP_EVENTS = 100_000  # the log is trimmed to about this many events, as Redis's stream
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    hash TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, expires REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (hash, field));
"""


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


class LocalBackend(Backend):
    name = "local"

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, DB_NAME)
        private_file(self.path)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="orpoll-cluster")
        self._poller = ThreadPoolExecutor(1, thread_name_prefix="orpoll-cluster-poll")
        self.db = connect(self.path)
        self.db.executescript(SCHEMA)
        self.poll_db = connect(self.path)
        self._appended = 0

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except sqlite3.OperationalError as e:  # locked for longer than busy_timeout, disk full
            raise BackendDown(str(e)) from None

    async def connect(self) -> str:
        return "local"  # the file outlives every worker: nothing is lost between them

    async def tail(self) -> str:
        row = await self._run(self._writer, lambda: self.db.execute("SELECT max(seq) FROM events"))
        return str(row.fetchone()[0] or 0)

    async def read(self, cursor: str, timeout: float) -> tuple[str, list[Event]]:
        return await self._run(self._poller, self._poll, int(cursor), timeout)

    def _poll(self, after: int, timeout: float) -> tuple[str, list[Event]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.poll_db.execute(
                "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT 1000", (after,)
            ).fetchall()
            if rows or time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        if not rows:
            return str(after), []
        return str(rows[-1][0]), [json.loads(body) for _, body in rows]

    async def commit(
        self,
        event: Event | None,
        put: Mapping[str, Mapping[str, str]] | None = None,
        drop: Mapping[str, Iterable[str] | None] | None = None,
    ) -> None:
        await self._run(self._writer, self._commit, event, put or {}, drop or {})

    def _commit(
        self,
        event: Event | None,
        put: Mapping[str, Mapping[str, str]],
        drop: Mapping[str, Iterable[str] | None],
    ) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for name, names in drop.items():
                if names is None:
                    db.execute("DELETE FROM kv WHERE hash=?", (name,))
                else:
                    db.executemany(
                        "DELETE FROM kv WHERE hash=? AND field=?", [(name, f) for f in names]
                    )
            for name, fields in put.items():
                db.executemany(
                    "INSERT OR REPLACE INTO kv (hash, field, value) VALUES (?, ?, ?)",
                    [(name, f, v) for f, v in fields.items()],
                )
            if event is not None:
                cur = db.execute("INSERT INTO events (body) VALUES (?)", (json.dumps(event),))
                self._appended += 1
                if self._appended % 1000 == 0:
                    last = cur.lastrowid or 0
                    db.execute("DELETE FROM events WHERE seq <= ?", (last - KEEP_EVENTS,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def hmget(self, name: str, fields: Sequence[str]) -> list[str | None]:
        return await self._run(self._writer, self._hmget, name, list(fields))

    def _hmget(self, name: str, fields: list[str]) -> list[str | None]:
        found: dict[str, str] = {}
        for i in range(0, len(fields), 500):
            part = fields[i : i + 500]
            marks = ",".join("?" * len(part))
            found.update(
                self.db.execute(
                    f"SELECT field, value FROM kv WHERE hash=? AND field IN ({marks})",
                    (name, *part),
                )
            )
        return [found.get(f) for f in fields]

    async def hgetall(self, name: str) -> dict[str, str]:
        sql = "SELECT field, value FROM kv WHERE hash=?"
        return await self._run(self._writer, lambda: dict(self.db.execute(sql, (name,))))

    async def claim(self, names: Sequence[str], value: str, ttl: float) -> list[bool]:
        return await self._run(self._writer, self._claim, list(names), value, ttl)

    def _claim(self, names: list[str], value: str, ttl: float) -> list[bool]:
        now, db, won = time.time(), self.db, []
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM kv WHERE hash='' AND expires > 0 AND expires <= ?", (now,))
            for name in names:
                cur = db.execute(
                    "INSERT OR IGNORE INTO kv VALUES ('', ?, ?, ?)", (name, value, now + ttl)
                )
                won.append(cur.rowcount == 1)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return won

    async def get(self, name: str) -> str | None:
        sql = "SELECT value FROM kv WHERE hash='' AND field=? AND (expires = 0 OR expires > ?)"
        row = await self._run(
            self._writer, lambda: self.db.execute(sql, (name, time.time())).fetchone()
        )
        return row[0] if row else None

    async def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._poller.shutdown(wait=True)
        self.db.close()
        self.poll_db.close()
