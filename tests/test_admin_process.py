"""Real ``python run.py`` processes: kill -9 under load loses no acknowledged key, weight or
setting; the generated password is logged once; secrets stay out of the log; ENCRYPTION_KEY."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import urllib.request

from orpoll.keys import key_id
from tests.admin_helpers import (
    PASSWORD,
    ROOT,
    SyncAdmin,
    child_env,
    free_port,
    post_chat,
)
from tests.conftest import KEYS


def all_keys(admin: SyncAdmin) -> dict[str, dict]:
    rows, page = {}, 1
    while True:
        data = admin.ok("GET", f"/admin/key-status?limit=500&page={page}")
        rows.update({row["id"]: row for row in data["keys"]})
        if page >= data["total_pages"]:
            return rows
        page += 1


def chat_forever(url: str, stop: threading.Event) -> None:
    body = json.dumps({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    while not stop.is_set():
        req = urllib.request.Request(
            url + "/v1/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except OSError:
            time.sleep(0.01)


def add_forever(url: str, stop: threading.Event, acknowledged: dict[str, int]) -> None:
    """Add keys one by one; a key counts once the server answered 200."""
    admin = SyncAdmin(url)
    admin.login()
    i = 0
    while not stop.is_set():
        key, weight = f"sk-or-v1-load-{threading.get_ident()}-{i:05d}", i % 9 + 1
        try:
            status, _ = admin.call(
                "POST", "/admin/add-key", {"openrouter_api_key": f"{key}:{weight}"}
            )
        except OSError:
            return  # the server is gone
        if status == 200:
            acknowledged[key] = weight
        i += 1


def test_kill_9_under_load_loses_no_acknowledged_change(upstream, spawn, data_dir):
    env = child_env(upstream, data_dir, ADMIN_PASSWORD=PASSWORD, OPENROUTER_API_KEYS=",".join(KEYS))
    proc = spawn(env)
    admin = SyncAdmin(proc.url)
    admin.login()
    settings = {"RETRY_WITH_NEW_KEY_COUNT": 7, "HEALTH_CHECK_INTERVAL_SECONDS": 123}
    admin.ok("POST", "/admin/settings", settings)
    admin.ok("POST", f"/admin/keys/{key_id(KEYS[0])}/weight", {"weight": 9})
    admin.ok("POST", f"/admin/keys/{key_id(KEYS[1])}/disable")
    upstream.state.key_info[KEYS[2]] = (401, {})
    probe = admin.ok("POST", f"/admin/keys/{key_id(KEYS[2])}/check")
    assert probe["key"]["status"] == "disabled"  # runtime state, written behind
    time.sleep(1.5)

    stop, acknowledged = threading.Event(), {}
    threads = [threading.Thread(target=chat_forever, args=(proc.url, stop)) for _ in range(4)]
    threads += [
        threading.Thread(target=add_forever, args=(proc.url, stop, acknowledged)) for _ in range(2)
    ]
    for t in threads:
        t.start()
    time.sleep(1.5)
    proc.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acknowledged) >= 10
    print(f"acknowledged {len(acknowledged)} keys; {upstream.state.requests.total()} chats")
    assert upstream.state.requests[KEYS[0]] > 0  # the proxy was under load when killed

    again = SyncAdmin(spawn(env).url)
    again.login()
    rows = all_keys(again)
    lost = [
        key
        for key, weight in acknowledged.items()
        if rows.get(key_id(key), {}).get("weight") != weight
    ]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged keys lost"
    assert rows[key_id(KEYS[0])]["weight"] == 9
    assert rows[key_id(KEYS[1])]["status"] == "paused"
    assert rows[key_id(KEYS[2])]["status"] == "disabled"
    effective = again.ok("GET", "/admin/settings")["settings"]
    assert effective["RETRY_WITH_NEW_KEY_COUNT"] == 7
    assert effective["HEALTH_CHECK_INTERVAL_SECONDS"] == 123.0


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generated_password_is_logged_once_and_secrets_never(upstream, spawn, data_dir):
    env = child_env(upstream, data_dir, OPENROUTER_API_KEYS=KEYS[0])
    proc = spawn(env)
    log = proc.log()
    found = re.findall(r"admin password generated .*?: (\S+)  -- sign in at (\S+)", log)
    assert len(found) == 1, log
    password, url = found[0]
    assert url == f"http://127.0.0.1:{proc.port}/admin/login"
    admin = SyncAdmin(proc.url)
    admin.login(password)
    secret = open(os.path.join(data_dir, "session_secret")).read().strip()
    assert secret not in log and KEYS[0] not in log
    assert mode(data_dir) == 0o700
    for name in ("orpoll.db", "orpoll.db-wal", "orpoll.db-shm", "session_secret"):
        assert mode(os.path.join(data_dir, name)) == 0o600, name
    assert proc.stop() == 0

    second = spawn(env)
    assert password not in second.log() and "password generated" not in second.log()
    SyncAdmin(second.url).login(password)  # the same password after a restart
    assert secret not in second.log()


def test_encrypted_store_needs_its_key_to_start(upstream, spawn, data_dir):
    env = child_env(
        upstream,
        data_dir,
        ADMIN_PASSWORD=PASSWORD,
        OPENROUTER_API_KEYS=",".join(KEYS),
        ENCRYPTION_KEY="a long passphrase for the keys",
    )
    assert spawn(env).stop() == 0
    raw = b"".join(open(os.path.join(data_dir, n), "rb").read() for n in os.listdir(data_dir))
    assert not any(key.encode() in raw for key in KEYS)
    for value in ("", "the wrong passphrase"):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "run.py")],
            env={**env, "ENCRYPTION_KEY": value, "PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("orpoll: storage error:") and "ENCRYPTION_KEY" in last
        assert "Traceback" not in proc.stderr


def test_a_stored_setting_out_of_bounds_is_logged_and_start_up_goes_on(upstream, spawn, data_dir):
    """A value stored by an older release (or by hand) that is no longer acceptable: each
    start logs it as an error and uses the environment's value; the process serves."""
    from orpoll.store import Store

    store = Store.open(data_dir)
    store.save_settings(
        {"HEALTH_CHECK_INTERVAL_SECONDS": "1e+300", "SESSION_LIFETIME_SECONDS": "inf"}
    )
    store.close()
    env = child_env(upstream, data_dir, ADMIN_PASSWORD=PASSWORD, OPENROUTER_API_KEYS=KEYS[0])
    proc = spawn(env)
    admin = SyncAdmin(proc.url)
    admin.login()
    effective = admin.ok("GET", "/admin/settings")["settings"]
    assert effective["HEALTH_CHECK_INTERVAL_SECONDS"] == 3600.0  # child_env's value
    assert effective["SESSION_LIFETIME_SECONDS"] == 7 * 86400.0
    assert post_chat(proc.url) == 200
    log = proc.log()
    assert "ignoring a stored setting" in log and "HEALTH_CHECK_INTERVAL_SECONDS" in log
    assert "Traceback" not in log
