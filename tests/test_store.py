"""Store: SQLite in DATA_DIR (mode 0600, WAL), keys with state, encryption at rest, settings,
sessions, and transactions that leave nothing behind when they fail."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from orpoll.keys import KeyState
from orpoll.store import DB_NAME, Store, StoreError

KEYS = ["sk-or-v1-store-aaaa1111", "sk-or-v1-store-bbbb2222", "sk-or-v1-store-cccc3333"]
NEW = "sk-or-v1-store-dddd4444"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def files_bytes(data_dir) -> bytes:
    """Everything SQLite wrote: the database, its WAL and shared memory."""
    out = b""
    for name in os.listdir(data_dir):
        with open(os.path.join(data_dir, name), "rb") as f:
            out += f.read()
    return out


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


@pytest.fixture
def store(data_dir):
    s = Store.open(data_dir)
    yield s
    s.close()


def test_database_and_wal_files_are_private(store, data_dir):
    store.insert_keys([KeyState(KEYS[0])])
    assert mode(data_dir) == 0o700
    names = sorted(os.listdir(data_dir))
    assert names == [DB_NAME, DB_NAME + "-shm", DB_NAME + "-wal"]
    for name in names:
        assert mode(os.path.join(data_dir, name)) == 0o600, name
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_keys_round_trip_with_state_in_insertion_order(store):
    a = KeyState(KEYS[0], 3, "primary", added_at=100.0, requests=7, last_error="boom")
    a.info = {"limit_remaining": 1.5}
    b = KeyState(KEYS[1], 1, "", added_at=200.0, enabled=False, group="user_1")
    store.insert_keys([a, b])
    rows = store.load_keys()
    assert [r["key"] for r in rows] == [KEYS[0], KEYS[1]]
    assert rows[0]["weight"] == 3 and rows[0]["label"] == "primary" and rows[0]["requests"] == 7
    assert rows[0]["info"] == {"limit_remaining": 1.5} and rows[0]["last_error"] == "boom"
    assert rows[1]["enabled"] is False and rows[1]["group"] == "user_1"
    store.insert_keys([KeyState(KEYS[0], 99)])  # already stored: left alone
    assert store.load_keys()[0]["weight"] == 3


def test_update_delete_and_replace(store):
    store.insert_keys([KeyState(k) for k in KEYS])
    ids = [KeyState(k).id for k in KEYS]
    store.update_key(ids[0], weight=5, label="x", enabled=0)
    store.delete_keys([ids[1]])
    row = store.load_keys()[0]
    assert (row["weight"], row["label"], row["enabled"]) == (5, "x", False)
    store.replace_keys([ids[0]], [KeyState("sk-or-v1-store-dddd4444", 2)], [(9, ids[2])])
    assert {(r["key"], r["weight"]) for r in store.load_keys()} == {
        (KEYS[2], 9),
        ("sk-or-v1-store-dddd4444", 2),
    }


def stored_on_disk(data_dir) -> dict[str, int]:
    """Key -> weight as a fresh connection reads them from the file."""
    s = Store.open(data_dir)
    try:
        return {r["key"]: r["weight"] for r in s.load_keys()}
    finally:
        s.close()


def test_a_replace_failing_midway_leaves_nothing_of_it_on_disk(store, data_dir):
    store.insert_keys([KeyState(k) for k in KEYS])
    # The delete and the insert succeed; the third statement (the weights) fails.
    store.db.execute(
        "CREATE TRIGGER no_weights BEFORE UPDATE OF weight ON keys "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(sqlite3.DatabaseError, match="refused"):
        store.replace_keys([KeyState(KEYS[0]).id], [KeyState(NEW, 7)], [(9, KeyState(KEYS[1]).id)])
    assert not store.db.in_transaction
    store.close()
    assert stored_on_disk(data_dir) == dict.fromkeys(KEYS, 1)


def test_settings_failing_midway_leave_nothing_of_them_on_disk(store, data_dir):
    store.save_settings({"KEY_COOLDOWN": "60"})
    with pytest.raises(sqlite3.Error):  # the second value cannot be bound
        store.save_settings({"MAX_RETRIES": "5", "KEY_COOLDOWN": ["not", "a", "value"]})
    store.close()
    reopened = Store.open(data_dir)
    try:
        assert reopened.load_settings() == {"KEY_COOLDOWN": "60"}
    finally:
        reopened.close()


def test_encrypted_at_rest_nothing_readable_in_the_files(data_dir):
    s = Store.open(data_dir, encryption_key="correct horse battery staple")
    s.insert_keys([KeyState(k, label="lbl") for k in KEYS])
    assert [r["key"] for r in s.load_keys()] == KEYS
    s.close()
    raw = files_bytes(data_dir)
    for key in KEYS:
        assert key.encode() not in raw
        assert key[:-4].encode() not in raw
    again = Store.open(data_dir, encryption_key="correct horse battery staple")
    assert [r["key"] for r in again.load_keys()] == KEYS
    again.close()


def test_deleted_keys_are_overwritten(store, data_dir):
    store.insert_keys([KeyState(k) for k in KEYS])
    store.delete_keys([KeyState(KEYS[0]).id])
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert KEYS[0].encode() not in files_bytes(data_dir)
    assert KEYS[1].encode() in files_bytes(data_dir)


def test_encrypted_store_refuses_a_missing_or_wrong_key(data_dir):
    Store.open(data_dir, encryption_key="right").insert_keys([KeyState(KEYS[0])])
    with pytest.raises(StoreError, match="set ENCRYPTION_KEY"):
        Store.open(data_dir)
    with pytest.raises(StoreError, match="does not match"):
        Store.open(data_dir, encryption_key="wrong")


def test_clear_keys_are_encrypted_when_a_key_is_configured(data_dir):
    s = Store.open(data_dir)
    s.insert_keys([KeyState(k) for k in KEYS])
    s.close()
    assert KEYS[0].encode() in files_bytes(data_dir)
    s = Store.open(data_dir, encryption_key="now secret")
    assert [r["key"] for r in s.load_keys()] == KEYS
    s.close()
    assert KEYS[0].encode() not in files_bytes(data_dir)


def test_settings_are_stored_by_env_name_and_none_removes(store):
    store.save_settings({"RETRY_WITH_NEW_KEY_COUNT": "5", "DEFAULT_MODEL": "a/b"})
    store.save_settings({"DEFAULT_MODEL": None})
    assert store.load_settings() == {"RETRY_WITH_NEW_KEY_COUNT": "5"}


def test_sessions_expire_and_delete(store):
    store.add_session("live", 1.0, 100.0, "127.0.0.1")
    store.add_session("old", 1.0, 10.0, "127.0.0.1")
    assert [s[0] for s in store.load_sessions(now=50.0)] == ["live"]
    store.touch_session("live", 500.0)
    assert store.load_sessions(now=200.0)[0][2] == 500.0
    store.delete_sessions("live")
    assert store.load_sessions(now=0.0) == []
