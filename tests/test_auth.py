"""auth.py: the /v1 client-key check, admin passwords, the login throttle, server-side
sessions (in a real store, through a restart), and the cookie, origin and redirect rules.
One test goes through HTTP: a real orpoll app with a client key set."""

from __future__ import annotations

import pytest

from orpoll.auth import (
    AdminPassword,
    LoginThrottle,
    Sessions,
    bearer,
    client_key_ok,
    cookie_options,
    hash_password,
    local_path,
    origin_ok,
    parse_client_keys,
    verify_password,
    weak_password,
)
from orpoll.store import Store
from tests.conftest import assert_openai_error
from tests.pool_helpers import CHAT, MSG, PAID, Clock

# ---- /v1 client keys ---------------------------------------------------------------------------


def test_client_keys_are_comma_separated_and_empty_means_open():
    assert parse_client_keys(" one, two ,,") == (b"one", b"two")
    assert parse_client_keys("") == ()
    assert client_key_ok((), {}) is True


@pytest.mark.parametrize(
    "header,ok",
    [
        ("Bearer two", True),
        ("bearer  two ", True),
        ("Bearer twoo", False),
        ("Basic two", False),
        ("two", False),
        ("", False),
    ],
)
def test_a_client_key_must_come_as_a_bearer_token(header, ok):
    keys = parse_client_keys("one,two")
    headers = {"Authorization": header} if header else {}
    assert client_key_ok(keys, headers) is ok


def test_bearer_reads_only_the_bearer_scheme():
    assert bearer({"Authorization": "Bearer abc"}) == "abc"
    assert bearer({"Authorization": "Token abc"}) == ""
    assert bearer({}) == ""


@pytest.fixture
def env(env):
    env["APP_API_KEY"] = "client-key-one,client-key-two"
    return env


async def test_v1_answers_401_without_a_client_key_and_serves_with_one(app, api):
    body = {"model": PAID, "messages": MSG}
    assert_openai_error(await api(CHAT, body), 401)
    wrong = {"Authorization": "Bearer client-key-three"}
    assert_openai_error(await api(CHAT, body, headers=wrong), 401)
    resp = await api(CHAT, body, headers={"Authorization": "Bearer client-key-two"})
    assert resp.code == 200


# ---- admin password ----------------------------------------------------------------------------


def test_a_password_hash_verifies_only_its_password():
    encoded = hash_password("correct horse battery")
    assert encoded.startswith("scrypt$") and "correct" not in encoded
    assert verify_password("correct horse battery", encoded)
    assert not verify_password("wrong horse battery", encoded)
    assert not verify_password("correct horse battery", "not a hash")
    assert hash_password("same") != hash_password("same")  # salted


@pytest.mark.parametrize("password", ["short", "admin", "Password"])
def test_weak_passwords_are_refused_with_a_reason(password):
    assert weak_password(password)


def test_a_long_password_is_accepted():
    assert weak_password("a long enough passphrase") is None


@pytest.fixture
def store():
    s = Store(":memory:")
    yield s
    s.close()


def test_the_first_start_generates_a_password_once(store):
    password = AdminPassword(store, "")
    sessions = Sessions(store, lambda: 3600.0)
    generated = password.setup(sessions)
    assert generated and verify_password(generated, store.get_meta("admin_password"))
    assert AdminPassword(store, "").setup(sessions) is None  # stored: not generated again


async def test_admin_password_from_the_environment_and_a_change(store):
    password = AdminPassword(store, "from the environment")
    assert password.setup(Sessions(store, lambda: 3600.0)) is None
    assert await password.verify("from the environment")
    assert not await password.verify("something else")
    stored = AdminPassword(store, "")
    await stored.change("a brand new password")
    assert await stored.verify("a brand new password")
    assert not await stored.verify("from the environment")


# ---- login throttle ----------------------------------------------------------------------------


def test_logins_past_the_limit_wait_longer_each_time():
    clock = Clock()
    throttle = LoginThrottle(lambda: 2, clock=clock, base=30.0, cap=100.0)
    assert throttle.reserve("1.2.3.4") == (0.0, 1)
    assert throttle.reserve("1.2.3.4") == (0.0, 2)
    wait, count = throttle.reserve("1.2.3.4")
    assert (wait, count) == (30.0, 2)  # refused, and not counted
    assert throttle.retry_after("5.6.7.8") == 0.0  # other addresses are not held back
    clock.advance(30)
    assert throttle.reserve("1.2.3.4") == (0.0, 3)
    assert throttle.retry_after("1.2.3.4") == 60.0
    clock.advance(60)
    throttle.reserve("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == 100.0  # capped
    throttle.succeeded("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == 0.0


# ---- sessions ----------------------------------------------------------------------------------


async def test_sessions_survive_a_restart_and_end_at_logout(tmp_path):
    clock = Clock()
    store = Store.open(str(tmp_path))
    sessions = Sessions(store, lambda: 3600.0, clock=clock)
    token = await sessions.create("10.0.0.1")
    other = await sessions.create("10.0.0.2")
    assert sessions.get(token).addr == "10.0.0.1"
    assert store.db.execute("SELECT count(*) FROM sessions WHERE id=?", (token,)).fetchone()[0] == 0
    store.close()  # the store keeps a hash of the token, never the token

    store = Store.open(str(tmp_path))
    restarted = Sessions(store, lambda: 3600.0, clock=clock)
    restarted.load()
    assert restarted.get(token) is not None and restarted.get("forged") is None
    await restarted.revoke(token)
    assert restarted.get(token) is None and restarted.get(other) is not None
    assert await restarted.revoke_all() == 1
    assert restarted.get(other) is None
    store.close()


async def test_a_session_expires_unless_it_is_used(store):
    clock = Clock()
    sessions = Sessions(store, lambda: 3600.0, clock=clock)
    token = await sessions.create("10.0.0.1")
    s = sessions.get(token)
    clock.advance(3000)
    assert sessions.stale(s)
    await sessions.refresh(s)
    clock.advance(3000)
    assert sessions.get(token) is s  # refreshed: 3600 s from the refresh, not the login
    clock.advance(601)
    assert sessions.get(token) is None


# ---- cookies, origins and redirects ------------------------------------------------------------


def test_every_cookie_is_http_only_and_same_site_strict():
    assert cookie_options(False) == {"httponly": True, "samesite": "Strict", "secure": False}
    assert cookie_options(True, expires_days=None)["secure"] is True


@pytest.mark.parametrize(
    "origin,ok",
    [
        (None, True),
        ("http://orpoll.local:8000", True),
        ("http://ORPOLL.local:8000", True),
        ("https://evil.example", False),
        ("null", False),
        ("http://[", False),
    ],
)
def test_the_origin_must_name_one_of_our_hosts(origin, ok):
    assert origin_ok(origin, ("orpoll.local:8000",)) is ok


@pytest.mark.parametrize(
    "target,result",
    [
        ("/admin/keys?page=2", "/admin/keys?page=2"),
        ("//evil.example", "/admin"),
        ("/\\evil.example", "/admin"),
        ("/\t/evil.example", "/admin"),
        ("https://evil.example", "/admin"),
        ("", "/admin"),
        (None, "/admin"),
    ],
)
def test_next_is_only_a_path_on_this_site(target, result):
    assert local_path(target, "/admin") == result
