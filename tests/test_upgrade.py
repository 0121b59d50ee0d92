"""Upgrading: a database written by the first release (tests/fixtures/store-v1.sql, dumped from
it) is migrated in place and keeps its keys, settings, sessions and admin password; migrations
are versioned, backed up first and atomic; a database from a newer release is refused."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import urllib.request

import pytest
import tornado.web

from orpoll.auth import SESSION_COOKIE
from orpoll.seal import SECRET_FILE
from orpoll.store import DB_NAME, MIGRATIONS, SCHEMA_VERSION, Store, StoreError
from tests.admin_helpers import SyncAdmin, child_env, post_chat

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "store-v1.sql")
PASSWORD = "upgrade-test-password"
SESSION_TOKEN = "upgrade-test-session-token"
SECRET = "upgrade-test-cookie-secret"


def release_data_dir(path: str) -> str:
    """A DATA_DIR as the first release left it: the database and the cookie secret."""
    os.makedirs(path, mode=0o700)
    db = sqlite3.connect(os.path.join(path, DB_NAME))
    with open(FIXTURE) as f:
        db.executescript(f.read())
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    with open(os.path.join(path, SECRET_FILE), "w") as f:
        f.write(SECRET + "\n")
    return path


def user_version(path: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_release_database_upgrades_and_keeps_everything(upstream, spawn, tmp_path):
    data_dir = release_data_dir(str(tmp_path / "data"))
    proc = spawn(child_env(upstream, data_dir))
    assert user_version(os.path.join(data_dir, DB_NAME)) == SCHEMA_VERSION

    # The session stored by the release is still signed in (its cookie, signed by its secret).
    cookie = tornado.web.create_signed_value(SECRET, SESSION_COOKIE, SESSION_TOKEN).decode()
    req = urllib.request.Request(
        proc.url + "/admin/key-status?sort=added", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        keys = json.loads(resp.read())["keys"]
    shown = {k["key_suffix"]: k for k in keys}
    assert set(shown) == {"...1111", "...2222"}
    assert shown["...1111"]["weight"] == 3 and shown["...1111"]["label"] == "primary"
    assert shown["...1111"]["requests"] == 7 and shown["...1111"]["enabled"] is True
    assert shown["...2222"]["enabled"] is False and shown["...2222"]["group"] == "user_1"

    # The stored password still signs in, and the stored settings still apply.
    admin = SyncAdmin(proc.url)
    admin.login(PASSWORD)
    settings = admin.ok("GET", "/admin/settings")["settings"]
    assert settings["DEFAULT_MODEL"] == "openai/gpt-4o-mini"
    assert settings["X_TITLE"] == "upgrade test"

    # And the stored key serves.
    assert post_chat(proc.url) == 200
    assert proc.stop() == 0
    assert "admin password generated" not in proc.log()


def test_an_upgraded_database_opens_again_unchanged(tmp_path):
    data_dir = release_data_dir(str(tmp_path / "data"))
    path = os.path.join(data_dir, DB_NAME)
    for _ in range(2):
        store = Store(path)
        assert store.migrate() == SCHEMA_VERSION  # nothing left to do
        assert len(store.load_keys()) == 2 and store.get_meta("admin_password")
        store.close()
    assert not [name for name in os.listdir(data_dir) if name.endswith(".bak")]


def test_a_migration_backs_up_first_and_records_its_version(tmp_path):
    path = str(tmp_path / DB_NAME)
    store = Store(path)
    store.save_settings({"X_TITLE": "before"})
    added = "ALTER TABLE keys ADD COLUMN note TEXT NOT NULL DEFAULT '';"
    assert store.migrate((*MIGRATIONS, added)) == SCHEMA_VERSION
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    columns = [row[1] for row in store.db.execute("PRAGMA table_info(keys)")]
    assert columns[-1] == "note"
    store.close()
    backup = f"{path}.v{SCHEMA_VERSION}.bak"
    assert os.stat(backup).st_mode & 0o777 == 0o600
    assert user_version(backup) == SCHEMA_VERSION
    old = sqlite3.connect(backup)
    assert old.execute("SELECT value FROM settings").fetchall() == [("before",)]
    assert "note" not in [row[1] for row in old.execute("PRAGMA table_info(keys)")]
    old.close()


def test_a_failed_migration_changes_nothing(tmp_path):
    path = str(tmp_path / DB_NAME)
    store = Store(path)
    broken = "ALTER TABLE keys ADD COLUMN note TEXT; INSERT INTO no_such_table VALUES (1);"
    with pytest.raises(sqlite3.OperationalError):
        store.migrate((*MIGRATIONS, broken))
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "note" not in [row[1] for row in store.db.execute("PRAGMA table_info(keys)")]
    store.save_settings({"X_TITLE": "still writable"})  # no transaction left open
    store.close()


def test_a_database_from_a_newer_release_is_refused(tmp_path):
    path = str(tmp_path / DB_NAME)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        Store(path)
    assert user_version(path) == SCHEMA_VERSION + 1


@pytest.mark.parametrize("attempt", range(3))
def test_workers_opening_an_old_database_at_once_all_come_up(tmp_path, attempt):
    """Worker processes sharing DATA_DIR start together: one migrates, the others find the
    schema already upgraded (their own attempt fails on the done step and is not an error)."""
    path = os.path.join(release_data_dir(str(tmp_path / "data")), DB_NAME)
    start, stores, errors = threading.Barrier(6), [], []

    def open_store() -> None:
        start.wait()
        try:
            stores.append(Store(path))
        except Exception as e:  # noqa: BLE001 (the finding)
            errors.append(repr(e))

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(stores) == 6
    assert user_version(path) == SCHEMA_VERSION
    for store in stores:
        assert len(store.load_keys()) == 2
        store.close()
