"""Two worker processes on one machine, no Redis: ORPOLL_WORKERS makes them share one pool
through DATA_DIR/cluster.db (LocalBackend), with the same propagation as through Redis."""

from __future__ import annotations

from orpoll.keys import key_id
from tests.admin_helpers import PASSWORD, SyncAdmin, child_env
from tests.cluster_helpers import key_rows, until
from tests.conftest import KEYS

PROPAGATION = 1.0


def test_workers_sharing_a_data_dir_share_the_pool(upstream, spawn, data_dir):
    def worker(index: int, **extra: str):
        env = child_env(upstream, data_dir, ADMIN_PASSWORD=PASSWORD, ORPOLL_WORKERS="2")
        proc = spawn({**env, "ORPOLL_WORKER_INDEX": str(index), **extra})
        admin = SyncAdmin(proc.url)
        admin.login()
        return proc, admin

    _, a = worker(0, OPENROUTER_API_KEYS=",".join(KEYS))
    _, b = worker(1)
    new = "sk-or-v1-worker-new-4321"
    kid = key_id(new)
    a.ok("POST", "/admin/add-key", {"openrouter_api_key": f"{new}:3"})
    row, took = until(lambda: key_rows(b).get(kid))
    assert took < PROPAGATION and row["weight"] == 3
    b.ok("POST", f"/admin/keys/{kid}/weight", {"weight": 8})
    _, took = until(lambda: key_rows(a)[kid]["weight"] == 8)
    assert took < PROPAGATION
    a.ok("POST", f"/admin/keys/{key_id(KEYS[0])}/disable")
    _, took = until(lambda: key_rows(b)[key_id(KEYS[0])]["status"] == "paused")
    assert took < PROPAGATION
    b.ok("DELETE", f"/admin/delete-key/{kid}")
    _, took = until(lambda: kid not in key_rows(a))
    assert took < PROPAGATION
    a.ok("POST", "/admin/settings", {"RETRY_WITH_NEW_KEY_COUNT": 6})
    _, took = until(
        lambda: b.ok("GET", "/admin/settings")["settings"]["RETRY_WITH_NEW_KEY_COUNT"] == 6
    )
    assert took < PROPAGATION
    # A session started on one worker is good on the other as soon as its login answered; a
    # logout ends it on both.
    a.login()
    other = SyncAdmin(b.base)
    for cookie in a.jar:
        other.jar.set_cookie(cookie)
    assert other.call("GET", "/admin/app-status")[0] == 200
    a.ok("POST", "/admin/logout")
    _, took = until(lambda: other.call("GET", "/admin/app-status")[0] == 401)
    assert took < PROPAGATION
