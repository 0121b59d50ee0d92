"""Several real ``python run.py`` instances sharing one pool through a real redis-server: key
changes and verdicts made on one reach the others within a second, through the public
interfaces (the OpenAI SDK on /v1, HTTP on /admin)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request

import openai
import pytest
import redis as redis_client

from orpoll.keys import key_id
from tests.admin_helpers import PASSWORD, SyncAdmin, child_env, run_py
from tests.cluster_helpers import RedisServer, key_rows, until
from tests.conftest import KEYS

PROPAGATION = 1.0  # seconds a change may take to show on another instance


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(str(tmp_path / "redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def instance(upstream, redis, spawn, tmp_path):
    """instance(name, **env) -> (OrpollProcess, logged-in SyncAdmin), DATA_DIR of its own."""

    def start(name: str, password: str = PASSWORD, **extra: str):
        env = child_env(upstream, str(tmp_path / name), ADMIN_PASSWORD=password)
        env.update(REDIS_URL=redis.url, **extra)
        proc = spawn(env)
        admin = SyncAdmin(proc.url)
        if password:
            admin.login(password)
        return proc, admin

    return start


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)


def chat(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content or ""


def test_key_changes_on_one_instance_reach_another_within_a_second(instance):
    _, a = instance("a", OPENROUTER_API_KEYS=",".join(KEYS))
    _, b = instance("b")  # empty DATA_DIR: the pool comes from Redis
    assert set(key_rows(b)) == {key_id(k) for k in KEYS}
    new = "sk-or-v1-cluster-new-9999"
    kid = key_id(new)
    a.ok("POST", "/admin/add-key", {"openrouter_api_key": f"{new}:3", "label": "fresh"})
    row, took = until(lambda: key_rows(b).get(kid))
    assert took < PROPAGATION and row["weight"] == 3 and row["label"] == "fresh"
    a.ok("POST", f"/admin/keys/{kid}/weight", {"weight": 7})
    _, took = until(lambda: key_rows(b)[kid]["weight"] == 7)
    assert took < PROPAGATION
    a.ok("POST", f"/admin/keys/{kid}/disable")
    _, took = until(lambda: key_rows(b)[kid]["status"] == "paused")
    assert took < PROPAGATION
    a.ok("POST", f"/admin/keys/{kid}/label", {"label": "renamed"})
    _, took = until(lambda: key_rows(b)[kid]["label"] == "renamed")
    assert took < PROPAGATION
    a.ok("DELETE", f"/admin/delete-key/{kid}")
    _, took = until(lambda: kid not in key_rows(b))
    assert took < PROPAGATION
    # Changes made on b travel the other way just the same.
    b.ok(
        "POST",
        "/admin/add-keys",
        {"key_data": "sk-or-v1-cluster-bulk-0001\nsk-or-v1-cluster-bulk-0002:2"},
    )
    rows, took = until(lambda: len(key_rows(a)) == len(KEYS) + 2 and key_rows(a))
    assert took < PROPAGATION and rows[key_id("sk-or-v1-cluster-bulk-0002")]["weight"] == 2
    b.ok("POST", "/admin/reload-keys", {"openrouter_api_keys_str": f"{KEYS[0]}:5"})
    rows, took = until(lambda: len(key_rows(a)) == 1 and key_rows(a))
    assert took < PROPAGATION and rows[key_id(KEYS[0])]["weight"] == 5


def test_a_key_rate_limited_on_one_instance_is_spared_by_the_others(instance, upstream):
    pa, a = instance("a", OPENROUTER_API_KEYS=",".join(KEYS))
    pb, b = instance("b")
    limited = KEYS[0]
    reset = time.time() + 5
    upstream.state.script(
        limited,
        {
            "status": 429,
            "headers": {"X-RateLimit-Reset": str(int(reset * 1000))},
            "error": {"code": 429, "message": "Rate limit exceeded"},
        },
        {"chunks": 3},
    )
    client_a, client_b = sdk(pa.url), sdk(pb.url)
    while upstream.state.requests[limited] == 0:
        chat(client_a)  # the 429 fails over invisibly
    seen = upstream.state.requests[limited]
    row = key_rows(a)[key_id(limited)]
    assert row["status"] == "cooling" and row["cooldown_until"] == pytest.approx(reset, abs=0.01)
    time.sleep(PROPAGATION)
    row = key_rows(b)[key_id(limited)]
    assert row["status"] == "cooling" and row["cooldown_until"] == pytest.approx(reset, abs=0.01)
    while time.time() < reset - 0.3:
        chat(client_b)
    assert upstream.state.requests[limited] == seen  # b sent it nothing before the reset
    time.sleep(max(reset - time.time(), 0) + 0.1)
    until(lambda: (chat(client_b), upstream.state.requests[limited] > seen)[1], timeout=10)


def same_cookies(admin: SyncAdmin, url: str) -> SyncAdmin:
    """A client of ``url`` holding ``admin``'s cookies (a browser behind a load balancer)."""
    other = SyncAdmin(url)
    for cookie in admin.jar:
        other.jar.set_cookie(cookie)
    return other


def test_sessions_and_password_are_shared(instance):
    # No ADMIN_PASSWORD: a generates one (and logs it); b, joining, takes a's.
    pa, a = instance("a", "", OPENROUTER_API_KEYS=",".join(KEYS))
    pb, b = instance("b", "")
    password = re.search(r"admin password generated .*?: (\S+)  --", pa.log()).group(1)
    assert "admin password generated" not in pb.log()
    a.login(password)
    b.login(password)
    # A session started on a is good on b as soon as its login answered (one cookie secret,
    # the session published before the answer), and a logout on a ends it on b.
    for _ in range(5):
        fresh = SyncAdmin(pa.url)
        fresh.login(password)
        assert same_cookies(fresh, pb.url).call("GET", "/admin/app-status")[0] == 200
    on_b = same_cookies(a, pb.url)
    assert on_b.call("GET", "/admin/app-status")[0] == 200
    a.ok("POST", "/admin/logout")
    _, took = until(lambda: on_b.call("GET", "/admin/app-status")[0] == 401)
    assert took < PROPAGATION
    # A password change on b ends every session, a's included, and the new password works on a.
    a.login(password)
    new = "a-new-admin-password-123"
    b.ok("POST", "/admin/password", {"current_password": password, "new_password": new})
    _, took = until(lambda: a.call("GET", "/admin/app-status")[0] == 401)
    assert took < PROPAGATION
    _, took = until(lambda: a.call("POST", "/admin/login", {"password": new})[0] == 200)
    assert took < PROPAGATION
    assert a.call("GET", "/admin/app-status")[0] == 200


def test_settings_changed_on_one_instance_apply_on_all(instance):
    _, a = instance("a", OPENROUTER_API_KEYS=",".join(KEYS))
    _, b = instance("b")
    a.ok("POST", "/admin/settings", {"RETRY_WITH_NEW_KEY_COUNT": 6})
    _, took = until(
        lambda: b.ok("GET", "/admin/settings")["settings"]["RETRY_WITH_NEW_KEY_COUNT"] == 6
    )
    assert took < PROPAGATION
    b.ok("POST", "/admin/settings", {"RETRY_WITH_NEW_KEY_COUNT": None})
    _, took = until(
        lambda: a.ok("GET", "/admin/settings")["settings"]["RETRY_WITH_NEW_KEY_COUNT"] != 6
    )
    assert took < PROPAGATION


def test_the_login_throttle_counts_tries_on_every_instance(instance):
    pa, _ = instance("a", OPENROUTER_API_KEYS=",".join(KEYS), LOGIN_MAX_FAILURES="3")
    pb, _ = instance("b", LOGIN_MAX_FAILURES="3")
    a, b = SyncAdmin(pa.url), SyncAdmin(pb.url)
    for client in (a, b, a):
        assert client.call("POST", "/admin/login", {"password": "wrong"})[0] == 401
        time.sleep(0.3)
    # Three failures in all, none on b past the limit alone: b throttles the next try.
    _, took = until(lambda: b.call("POST", "/admin/login", {"password": "wrong"})[0] == 429)
    assert took < PROPAGATION


def test_three_instances_probe_each_key_once_per_health_interval(instance, upstream):
    keys = [f"sk-or-v1-probe-{i:04d}" for i in range(30)]
    interval = {"HEALTH_CHECK_INTERVAL_SECONDS": "2", "HEALTH_CHECK_ROTATION_SECONDS": "2"}
    procs = [instance("a", OPENROUTER_API_KEYS=",".join(keys), **interval)[0]]
    procs += [instance(name, **interval)[0] for name in ("b", "c")]
    probes = upstream.state.key_probes
    time.sleep(7)  # past every instance's first sweep
    probes.clear()
    time.sleep(6)  # three intervals
    counts = [probes[k] for k in keys]
    # Alone, each of the three would probe every key three times here.
    assert min(counts) >= 2 and max(counts) <= 4, counts
    # The prober dies: the others take its share from the next interval on.
    for proc in procs[:2]:
        proc.kill9()
    probes.clear()
    time.sleep(6)
    counts = [probes[k] for k in keys]
    assert min(counts) >= 2 and max(counts) <= 4, counts


def healthz(url: str) -> dict:
    with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
        return json.loads(resp.read())


def load(url: str, stop: threading.Event, failures: list, served: list) -> None:
    """Non-stream and stream chat completions until ``stop``; errors go to ``failures``."""
    client = sdk(url)
    while not stop.is_set():
        try:
            if len(served) % 2:
                chat(client)
            else:
                stream = client.chat.completions.create(
                    model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            served.append(1)
        except Exception as e:  # noqa: BLE001 (every failure is the test's finding)
            failures.append(repr(e))


def test_redis_down_under_load_fails_no_request_and_converges_after(instance, redis):
    pa, a = instance("a", OPENROUTER_API_KEYS=",".join(KEYS))
    pb, b = instance("b")
    stop, failures, served = threading.Event(), [], []
    threads = [
        threading.Thread(target=load, args=(url, stop, failures, served))
        for url in (pa.url, pb.url, pa.url, pb.url)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        redis.kill()
        until(lambda: healthz(pa.url)["status"] == "degraded" == healthz(pb.url)["status"])
        body = healthz(pa.url)
        assert body["ready"] is True and body["cluster"]["connected"] is False
        assert a.ok("GET", "/admin/key-status")["cluster"]["connected"] is False
        new = "sk-or-v1-during-outage-1234"
        a.ok("POST", "/admin/add-key", {"openrouter_api_key": f"{new}:4"})
        b.ok("POST", f"/admin/keys/{key_id(KEYS[1])}/disable")
        time.sleep(10)
        assert key_id(new) not in key_rows(b)
        before = len(served)
        redis.start()  # empty: nothing was saved
        _, took = until(lambda: key_rows(b).get(key_id(new)), timeout=10)
        until(lambda: key_rows(a)[key_id(KEYS[1])]["status"] == "paused")
        until(lambda: healthz(pa.url)["status"] == "ok" == healthz(pb.url)["status"])
        time.sleep(4)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert len(served) > before > 50
    # Repopulated: the restarted Redis holds the whole pool again.
    with redis_client.Redis.from_url(redis.url) as db:
        assert db.hlen("orpoll:keys") == len(KEYS) + 1
    for proc in (pa, pb):
        assert proc.log().count("cluster backend (redis) lost") == 1


def test_an_acknowledged_change_survives_kill_9_of_instance_and_redis(instance, upstream, redis):
    pa, a = instance("a", OPENROUTER_API_KEYS=",".join(KEYS))
    reset = time.time() + 3600
    upstream.state.script(
        KEYS[0],
        {
            "status": 429,
            "headers": {"X-RateLimit-Reset": str(int(reset * 1000))},
            "error": {"code": 429, "message": "Rate limit exceeded"},
        },
        {"chunks": 3},
    )
    client = sdk(pa.url)
    while upstream.state.requests[KEYS[0]] == 0:
        chat(client)
    a.ok("POST", f"/admin/keys/{key_id(KEYS[1])}/disable")
    new = "sk-or-v1-acknowledged-5678"
    a.ok("POST", "/admin/add-key", {"openrouter_api_key": f"{new}:2"})
    time.sleep(0.5)  # the write-behind saves the cooldown locally
    pa.kill9()
    redis.kill()
    redis.start()
    pa2, _ = instance("a")  # the same DATA_DIR: it fills the emptied Redis again
    pc, c = instance("c")  # a new instance with an empty DATA_DIR
    rows, _ = until(lambda: len(key_rows(c)) == len(KEYS) + 1 and key_rows(c))
    assert rows[key_id(new)]["weight"] == 2
    assert rows[key_id(KEYS[1])]["status"] == "paused"
    limited = rows[key_id(KEYS[0])]
    assert limited["status"] == "cooling"
    assert limited["cooldown_until"] == pytest.approx(reset, abs=0.01)
    assert chat(sdk(pc.url))


def test_unix_socket_auth_and_keys_sealed_in_redis(upstream, spawn, tmp_path):
    server = RedisServer(str(tmp_path / "redis"), password="redis-secret-pw")
    server.start()
    try:
        sealed = {"ADMIN_PASSWORD": PASSWORD, "ENCRYPTION_KEY": "one passphrase for all"}
        env_a = child_env(upstream, str(tmp_path / "a"), OPENROUTER_API_KEYS=",".join(KEYS))
        pa = spawn({**env_a, **sealed, "REDIS_URL": server.unix_url})
        env_b = child_env(upstream, str(tmp_path / "b"), **sealed, REDIS_URL=server.url)
        pb = spawn(env_b)
        b = SyncAdmin(pb.url)
        b.login()
        assert set(key_rows(b)) == {key_id(k) for k in KEYS}
        with redis_client.Redis.from_url(server.url) as db:
            stored = b"".join(db.hgetall("orpoll:keys").values())
            events = b"".join(b"".join(fields.values()) for _, fields in db.xrange("orpoll:events"))
        assert stored and not any(k.encode() in stored for k in KEYS)
        assert events and not any(k.encode() in events for k in KEYS)
        client = sdk(pb.url)
        for _ in range(6):
            chat(client)
        assert sum(upstream.state.requests[k] for k in KEYS) == 6  # b holds the real keys
        # Another ENCRYPTION_KEY cannot join: it would mix two pools.
        env_c = child_env(upstream, str(tmp_path / "c"), **sealed, REDIS_URL=server.url)
        env_c["ENCRYPTION_KEY"] = "another passphrase"
        proc, _ = run_py(env_c, str(tmp_path), stderr=subprocess.PIPE)
        err = proc.communicate(timeout=30)[1].decode()
        assert proc.returncode == 2 and "ENCRYPTION_KEY does not match" in err
        assert pa.proc.poll() is None
    finally:
        server.kill()


def test_a_malformed_redis_url_is_a_configuration_error(upstream, tmp_path):
    env = child_env(upstream, str(tmp_path / "a"), REDIS_URL="http://127.0.0.1:6379")
    proc, _ = run_py(env, str(tmp_path), stderr=subprocess.PIPE)
    err = proc.communicate(timeout=30)[1].decode()
    assert proc.returncode == 2
    assert err.startswith("orpoll: configuration error: REDIS_URL:") and "Traceback" not in err


def test_redis_down_at_start_serves_and_joins_when_it_comes(
    instance, redis, upstream, tmp_path, spawn
):
    redis.kill()
    env = child_env(upstream, str(tmp_path / "a"), ADMIN_PASSWORD=PASSWORD)
    pa = spawn({**env, "REDIS_URL": redis.url, "OPENROUTER_API_KEYS": ",".join(KEYS)})
    assert "unreachable" in pa.log() and healthz(pa.url)["status"] == "degraded"
    assert chat(sdk(pa.url))
    redis.start()
    until(lambda: healthz(pa.url)["status"] == "ok", timeout=10)
    _, b = instance("b")
    assert set(key_rows(b)) == {key_id(k) for k in KEYS}


def test_instances_share_the_pool_over_tls(upstream, spawn, tmp_path):
    server = RedisServer(str(tmp_path / "redis"), password="tls-and-auth", tls=True)
    server.start()
    try:
        assert server.url.startswith("rediss://")
        env = child_env(upstream, str(tmp_path / "a"), ADMIN_PASSWORD=PASSWORD)
        pa = spawn({**env, "REDIS_URL": server.url, "OPENROUTER_API_KEYS": ",".join(KEYS)})
        pb = spawn(
            {
                **child_env(upstream, str(tmp_path / "b"), ADMIN_PASSWORD=PASSWORD),
                "REDIS_URL": server.url,
            }
        )
        a, b = SyncAdmin(pa.url), SyncAdmin(pb.url)
        a.login()
        b.login()
        assert set(key_rows(b)) == {key_id(k) for k in KEYS}
        a.ok("POST", f"/admin/keys/{key_id(KEYS[2])}/weight", {"weight": 11})
        _, took = until(lambda: key_rows(b)[key_id(KEYS[2])]["weight"] == 11)
        assert took < PROPAGATION and healthz(pb.url)["cluster"]["connected"] is True
    finally:
        server.kill()


def test_account_groups_and_an_account_wide_verdict_are_shared(instance, upstream):
    pa, a = instance("a", OPENROUTER_API_KEYS=",".join(KEYS))
    pb, b = instance("b")
    info = {"label": "x", "limit": None, "limit_remaining": None, "creator_user_id": "user_1"}
    for key in KEYS[:2]:
        upstream.state.key_info[key] = (200, info)
    a.ok("POST", "/admin/check-keys")  # a's probes learn the account
    rows, took = until(lambda: (r := key_rows(b))[key_id(KEYS[1])]["group"] == "user_1" and r)
    assert took < PROPAGATION and rows[key_id(KEYS[0])]["group"] == "user_1"
    upstream.state.script(
        KEYS[0], {"status": 402, "error": {"code": 402, "message": "Insufficient credits"}}
    )
    client = sdk(pb.url)
    while upstream.state.requests[KEYS[0]] == 0:
        chat(client)

    # b's verdict on the account's balance cools both of its keys, on a too.
    def kinds() -> list[str]:
        rows = key_rows(a)
        return [rows[key_id(k)]["kind"] for k in KEYS]

    found, took = until(lambda: (k := kinds())[:2] == ["key_credit"] * 2 and k)
    assert took < PROPAGATION and found[2] == ""


def test_a_redis_restored_from_an_older_snapshot_undoes_no_later_change(instance, redis, upstream):
    pa, a = instance("a", OPENROUTER_API_KEYS=",".join(KEYS))
    pb, b = instance("b")
    leaving = SyncAdmin(pa.url)
    leaving.login()
    on_b = same_cookies(leaving, pb.url)
    until(lambda: on_b.call("GET", "/admin/app-status")[0] == 200)
    with redis_client.Redis.from_url(redis.url) as db:
        db.save()  # the snapshot a restart will load: the session, every key available
    leaving.ok("POST", "/admin/logout")
    until(lambda: on_b.call("GET", "/admin/app-status")[0] == 401)
    reset = time.time() + 3600
    upstream.state.script(
        KEYS[0],
        {
            "status": 429,
            "headers": {"X-RateLimit-Reset": str(int(reset * 1000))},
            "error": {"code": 429, "message": "Rate limit exceeded"},
        },
        {"chunks": 3},
    )
    client = sdk(pa.url)
    while upstream.state.requests[KEYS[0]] == 0:
        chat(client)
    until(lambda: key_rows(b)[key_id(KEYS[0])]["status"] == "cooling")
    redis.kill()
    redis.start()
    until(lambda: healthz(pa.url)["status"] == "ok" == healthz(pb.url)["status"], timeout=10)
    time.sleep(1)
    for admin in (a, b):  # the cooldown made after the snapshot stands, everywhere
        row = key_rows(admin)[key_id(KEYS[0])]
        assert row["status"] == "cooling" and row["cooldown_until"] == pytest.approx(
            reset, abs=0.01
        )
    assert on_b.call("GET", "/admin/app-status")[0] == 401
    assert same_cookies(leaving, pa.url).call("GET", "/admin/app-status")[0] == 401
    assert same_cookies(a, pb.url).call("GET", "/admin/app-status")[0] == 200
    with redis_client.Redis.from_url(redis.url) as db:
        _, took = until(lambda: db.hlen("orpoll:sessions") == 2)  # a's and b's own logins


def test_propagation_p99_is_under_a_second(instance):
    _, a = instance("a", OPENROUTER_API_KEYS=",".join(KEYS))
    _, b = instance("b")
    kid, took = key_id(KEYS[0]), []
    for weight in range(2, 42):
        a.ok("POST", f"/admin/keys/{kid}/weight", {"weight": weight})
        took.append(until(lambda w=weight: key_rows(b)[kid]["weight"] == w, step=0.005)[1])
    took.sort()
    assert took[int(len(took) * 0.99) - 1] < PROPAGATION, took
