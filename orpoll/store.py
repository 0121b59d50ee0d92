"""Store: one SQLite database in DATA_DIR for the keys (with their runtime state), admin-edited
settings, admin sessions and the admin password hash. Never used on the proxy path.

Methods are synchronous; the app awaits them through ``run()`` on one worker thread, so SQLite
work (and its fsync) never blocks the event loop and writes stay in order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag

from .keys import KeyState
from .logs import plural
from .seal import Sealer, private_file

log = logging.getLogger("orpoll.store")
T = TypeVar("T")
Row = tuple[Any, ...]  # one statement's parameters
DB_NAME = "orpoll.db"
# Runtime columns, in KeyState attribute order (``grp`` holds KeyState.group: GROUP is SQL).
STATE = (
    "state",
    "until",
    "free_until",
    "reason",
    "kind",
    "failures",
    "last_status",
    "last_error",
    "last_used",
    "requests",
    "successes",
    "errors",
    "group",
)
COLUMNS = STATE[:-1] + ("grp",)
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, secret BLOB NOT NULL, sealed INTEGER NOT NULL DEFAULT 0,
    weight INTEGER NOT NULL DEFAULT 1, label TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL DEFAULT 1, added_at REAL NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'available', until REAL NOT NULL DEFAULT 0,
    free_until REAL NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '', failures INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
    last_used REAL NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 0,
    successes INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    grp TEXT NOT NULL DEFAULT '', info TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, created REAL NOT NULL, expires REAL NOT NULL, addr TEXT NOT NULL);
"""
# The schema's history: MIGRATIONS[n] takes a database from version n to n + 1 (SQLite's
# ``user_version``), each in one transaction with the version it reaches. Version 1 is the
# schema of the first release; its statements are idempotent, so a database made before
# versions were recorded (user_version 0, tables present) is simply stamped 1. A change to the
# schema is a new entry at the end (ALTER TABLE, a new table, a data fix), never an edit.
MIGRATIONS: tuple[str, ...] = (
    SCHEMA,
    # rev: when the operator last changed a key; gone: when a key was deleted. Instances that
    # share one pool merge their copies by these times (orpoll/cluster).
    """ALTER TABLE keys ADD COLUMN rev REAL NOT NULL DEFAULT 0;
    CREATE TABLE IF NOT EXISTS gone (id TEXT PRIMARY KEY, at REAL NOT NULL);""",
)
SCHEMA_VERSION = len(MIGRATIONS)
INSERT = (
    f"INSERT OR IGNORE INTO keys (id, secret, sealed, weight, label, enabled, added_at, rev, "
    f"{', '.join(COLUMNS)}, info) VALUES ({', '.join('?' * (len(COLUMNS) + 9))})"
)
SAVE_STATE = f"UPDATE keys SET {', '.join(c + '=?' for c in COLUMNS)}, info=? WHERE id=?"
SAVE_COUNTERS = "UPDATE keys SET requests=?, successes=?, last_used=? WHERE id=?"


def statements(script: str) -> list[str]:
    """The SQL statements of ``script``, one by one (executescript cannot run in a transaction
    that also checks the schema's version)."""
    found, buf = [], ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                found.append(buf)
            buf = ""
    return found


class StoreError(RuntimeError):
    """The database cannot be used as configured (e.g. encrypted keys, no ENCRYPTION_KEY)."""


def state_row(ks: KeyState) -> Row:
    """The runtime columns of ``ks`` then its id (SAVE_STATE's parameters)."""
    values = tuple(getattr(ks, name) for name in STATE)
    return values + (json.dumps(ks.info) if ks.info else "", ks.id)


def counter_row(ks: KeyState) -> Row:
    """SAVE_COUNTERS's parameters: the counters a served request moves, then the id."""
    return ks.requests, ks.successes, ks.last_used, ks.id


class Store:
    def __init__(self, path: str, *, encryption_key: str = "") -> None:
        self.path = path
        if path != ":memory:":
            private_file(path)
        # Autocommit mode; writes use explicit BEGIN IMMEDIATE ... COMMIT (see _tx).
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is fsynced, so an answered admin change survives power loss too.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("PRAGMA secure_delete=ON")  # deleted keys are overwritten, not left over
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="orpoll-store")
        try:
            self.migrate()
            self.sealer = self._sealer(encryption_key) if encryption_key else None
            self._check_sealed()
        except BaseException:
            self.close()
            raise

    def migrate(self, migrations: tuple[str, ...] = MIGRATIONS) -> int:
        """Bring the schema to the newest version; returns the version the file had.

        Before migrating a database that has a version already, the file is copied to
        ``<name>.v<version>.bak`` (mode 0600), so a failed or unwanted upgrade can be undone.
        A database newer than this release is refused (StoreError): an older release must not
        write into a schema it does not know.
        """
        version: int = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this release's "
                f"{len(migrations)}: run the newer orpoll, or restore the backup made before "
                "it upgraded the database"
            )
        if 0 < version < len(migrations) and self.path != ":memory:":
            self.backup(f"{self.path}.v{version}.bak")
        for n in range(version, len(migrations)):
            if n:
                log.info("upgrading %s: schema version %d to %d", self.path, n, n + 1)
            self._migrate_step(n, migrations[n])
        return version

    def _migrate_step(self, n: int, script: str) -> None:
        """Version ``n`` to ``n + 1`` in one transaction, unless another process (a worker
        sharing DATA_DIR, started at the same moment) has made the step meanwhile."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] <= n:
                for statement in statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {n + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def backup(self, path: str) -> None:
        """A consistent copy of the database at ``path`` (mode 0600), made while it is in use."""
        private_file(path)
        copy = sqlite3.connect(path)
        try:
            self.db.backup(copy)
        finally:
            copy.close()

    @classmethod
    def open(cls, data_dir: str, *, encryption_key: str = "") -> Store:
        """The store of ``data_dir`` (created with mode 0700 if missing); StoreError when the
        directory cannot be written, as a bind mount owned by another user."""
        try:
            os.makedirs(data_dir, mode=0o700, exist_ok=True)
            return cls(os.path.join(data_dir, DB_NAME), encryption_key=encryption_key)
        except OSError as e:
            raise StoreError(
                f"cannot use DATA_DIR {data_dir}: {e.strerror}; it must be a directory "
                f"writable by uid {os.getuid()}, the user orpoll runs as (in Docker: chown the "
                "host directory to that uid, or run the container with --user)"
            ) from None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store method on the store's worker thread; the loop stays free."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- meta and encryption ----------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def _sealer(self, passphrase: str) -> Sealer:
        salt = self.get_meta("enc_salt")
        if salt is None:
            salt = base64.b64encode(os.urandom(16)).decode()
            self.set_meta("enc_salt", salt)
        sealer = Sealer(passphrase, base64.b64decode(salt))
        check = self.get_meta("enc_check")
        if check is None:
            self.set_meta("enc_check", base64.b64encode(sealer.seal("orpoll", "check")).decode())
        else:
            try:
                sealer.open(base64.b64decode(check), "check")
            except InvalidTag:
                raise StoreError(
                    f"ENCRYPTION_KEY does not match the key that encrypted {self.path}"
                ) from None
        return sealer

    def _check_sealed(self) -> None:
        """Refuse sealed keys without a Sealer; seal clear keys when one is configured."""
        sealed = self.db.execute("SELECT count(*) FROM keys WHERE sealed=1").fetchone()[0]
        if sealed and self.sealer is None:
            raise StoreError(f"{self.path} holds encrypted keys: set ENCRYPTION_KEY to use it")
        if self.sealer is None:
            return
        clear = self.db.execute("SELECT id, secret FROM keys WHERE sealed=0").fetchall()
        if clear:
            log.info(
                "encrypting %s at rest (ENCRYPTION_KEY is set)", plural(len(clear), "stored key")
            )
            rows = [(self.sealer.seal(secret, kid), kid) for kid, secret in clear]
            with self._tx() as db:
                db.executemany("UPDATE keys SET secret=?, sealed=1 WHERE id=?", rows)
            # Rewrite the file and empty the WAL, so no page keeps an old clear copy.
            self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _open(self, blob: bytes, kid: str) -> str:
        if self.sealer is None:  # refused at open already; kept for a store opened otherwise
            raise StoreError(f"{self.path} holds encrypted keys: set ENCRYPTION_KEY to use it")
        return self.sealer.open(blob, kid)

    def _row(self, ks: KeyState) -> Row:
        """INSERT parameters for ``ks``: the key (sealed when configured) and all columns."""
        sealer = self.sealer
        secret, sealed = (ks.key, 0) if sealer is None else (sealer.seal(ks.key, ks.id), 1)
        head = (ks.id, secret, sealed, ks.weight, ks.label, int(ks.enabled), ks.added_at, ks.rev)
        return head + state_row(ks)[:-1]

    # ---- keys -------------------------------------------------------------------------------

    def load_keys(self) -> list[dict[str, Any]]:
        """Every stored key as KeyScheduler.add() arguments, in the order they were added."""
        return list(self.iter_keys())

    def iter_keys(self) -> Iterator[dict[str, Any]]:
        """load_keys() one row at a time (a large pool need not be in memory twice)."""
        head = "SELECT id, secret, sealed, weight, label, enabled, added_at, rev"
        for row in self.db.execute(f"{head}, {', '.join(COLUMNS)}, info FROM keys ORDER BY rowid"):
            kid, secret, sealed = row[:3]
            key = self._open(secret, kid) if sealed else secret
            entry = dict(zip(STATE, row[8:-1], strict=True))
            entry.update(key=key, weight=row[3], label=row[4], enabled=bool(row[5]))
            entry.update(added_at=row[6], rev=row[7], info=json.loads(row[-1]) if row[-1] else {})
            yield entry

    def key_ids(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT id FROM keys")]

    def insert_keys(self, keys: Iterable[KeyState]) -> None:
        """Store new keys with their current state (existing ids are left alone)."""
        rows = [self._row(ks) for ks in keys]
        with self._tx() as db:
            db.executemany(INSERT, rows)
            db.executemany("DELETE FROM gone WHERE id=?", [(row[0],) for row in rows])

    def delete_keys(self, ids: Iterable[str], at: float | None = None) -> None:
        """Delete keys, remembering when (``at``, default now) for instances sharing the pool."""
        when = time.time() if at is None else at
        with self._tx() as db:
            self._forget(db, ids, when)

    @staticmethod
    def _forget(db: sqlite3.Connection, ids: Iterable[str], at: float) -> None:
        rows = [(kid,) for kid in ids]
        db.executemany("DELETE FROM keys WHERE id=?", rows)
        db.executemany("INSERT OR REPLACE INTO gone VALUES (?, ?)", [(r[0], at) for r in rows])

    def gone(self) -> dict[str, float]:
        """Deleted key ids and when they were deleted."""
        return dict(self.db.execute("SELECT id, at FROM gone"))

    def update_key(self, kid: str, **columns: Any) -> None:
        """Set operator columns (weight, label, enabled, rev) of one key."""
        assert set(columns) <= {"weight", "label", "enabled", "rev"}, columns
        sql = f"UPDATE keys SET {', '.join(c + '=?' for c in columns)} WHERE id=?"
        with self._tx() as db:
            db.execute(sql, (*columns.values(), kid))

    def replace_keys(
        self,
        remove: Iterable[str],
        add: Iterable[KeyState],
        weights: Iterable[tuple[int, str]],
        at: float = 0.0,
    ) -> None:
        """One transaction: delete ``remove``, insert ``add``, set (weight, id) pairs; ``at``
        is the change's time (deletions and kept keys' rev)."""
        rows = [self._row(ks) for ks in add]
        with self._tx() as db:
            self._forget(db, remove, at)
            db.executemany(INSERT, rows)
            db.executemany("DELETE FROM gone WHERE id=?", [(row[0],) for row in rows])
            db.executemany(
                "UPDATE keys SET weight=?, rev=? WHERE id=?", [(w, at, k) for w, k in weights]
            )

    def save_state(self, rows: list[Row], counters: Sequence[Row] = ()) -> None:
        """Write-behind of runtime state: rows from ``state_row`` and ``counter_row``."""
        with self._tx() as db:
            db.executemany(SAVE_STATE, rows)
            if counters:
                db.executemany(SAVE_COUNTERS, counters)

    # ---- settings ---------------------------------------------------------------------------

    def load_settings(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT name, value FROM settings"))

    def save_settings(self, changes: dict[str, str | None]) -> None:
        """Store admin-edited values by env name; None removes the override."""
        with self._tx() as db:
            for name, value in changes.items():
                if value is None:
                    db.execute("DELETE FROM settings WHERE name=?", (name,))
                else:
                    db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (name, value))

    # ---- sessions ---------------------------------------------------------------------------

    def load_sessions(self, now: float) -> list[tuple[str, float, float, str]]:
        """Live sessions (expired ones are deleted)."""
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
        return self.db.execute("SELECT id, created, expires, addr FROM sessions").fetchall()

    def add_session(self, sid: str, created: float, expires: float, addr: str) -> None:
        """Store a session (or replace one with the same id: another instance's copy)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)", (sid, created, expires, addr)
            )

    def touch_session(self, sid: str, expires: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE sessions SET expires=? WHERE id=?", (expires, sid))

    def delete_sessions(self, sid: str | None = None) -> None:
        """Delete one session, or every session when ``sid`` is None."""
        with self._tx() as db:
            if sid is None:
                db.execute("DELETE FROM sessions")
            else:
                db.execute("DELETE FROM sessions WHERE id=?", (sid,))
