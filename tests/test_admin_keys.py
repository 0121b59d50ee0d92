"""Admin key API: listing (paging, filter, search, sort), add, delete (409 on an ambiguous
suffix), reload, per-key actions, durability before the answer, restarts and 10k-key speed."""

from __future__ import annotations

import json
import logging
import statistics
import time

import pytest
from tornado.testing import ExpectLog

from orpoll.app import make_app
from orpoll.config import load_settings
from orpoll.keys import Outcome, Verdict, key_id
from orpoll.scheduler import KeyScheduler
from tests.admin_helpers import AdminClient
from tests.conftest import KEYS, assert_openai_error

A, B, C = KEYS
XSS = '<img src=x onerror="alert(1)">'


def stored(app) -> dict[str, dict]:
    """What a restart would see: the store's rows by key."""
    return {row["key"]: row for row in app.store.load_keys()}


def no_full_keys(body: bytes, keys=KEYS) -> None:
    for key in keys:
        assert key.encode() not in body and key[:-4].encode() not in body


# ---- key-status -------------------------------------------------------------------------------


async def test_key_status_lists_ids_and_suffixes_only(admin):
    resp = await admin.get("/admin/key-status")
    data = json.loads(resp.body)
    no_full_keys(resp.body)
    assert (data["total_keys"], data["page"], data["limit"], data["total_pages"]) == (3, 1, 50, 1)
    assert data["counts"]["available"] == 3
    row = data["keys"][0]
    assert row["id"] == key_id(A) and row["key_suffix"] == "...1111"
    assert row["status"] == "available" and row["is_active"] is True and row["weight"] == 1
    for field in ("failures", "last_error", "last_used", "requests", "success_rate", "credit"):
        assert field in row


async def test_key_status_pages_filters_searches_and_sorts(admin, app):
    text = "\n".join(f"sk-or-v1-page-{i:04d}zz{i:02d}:{i % 7 + 1}" for i in range(100))
    await admin.json("POST", "/admin/add-keys", {"key_data": text})
    page = await admin.json("GET", "/admin/key-status?page=3&limit=40")
    assert page["total_keys"] == 103 and page["total_pages"] == 3 and len(page["keys"]) == 23
    heavy = await admin.json("GET", "/admin/key-status?sort=-weight&limit=5")
    assert [k["weight"] for k in heavy["keys"]] == [7] * 5
    ks = app.scheduler.get(key_id(B))
    app.scheduler.set_enabled(ks, False)
    app.scheduler.cool(app.scheduler.get(key_id(C)), time.time() + 300, "rate limited", "k")
    paused = await admin.json("GET", "/admin/key-status?status=paused")
    assert [k["id"] for k in paused["keys"]] == [ks.id] and paused["total_keys"] == 1
    cooling = await admin.json("GET", "/admin/key-status?status=cooling")
    row = cooling["keys"][0]
    assert row["reason"] == "rate limited" and row["cooldown_until"] > time.time() + 200
    first = await admin.json("GET", "/admin/key-status?sort=status&limit=2")
    assert [k["status"] for k in first["keys"]] == ["cooling", "paused"]
    found = await admin.json("GET", "/admin/key-status?q=...2222")
    assert [k["id"] for k in found["keys"]] == [ks.id]
    assert (await admin.json("GET", "/admin/key-status?q=test-bbbb"))["total_keys"] == 0


async def test_key_status_rejects_unknown_sort_and_status(admin):
    for query in ("sort=key", "status=broken", "page=x"):
        err = assert_openai_error(await admin.get("/admin/key-status?" + query), 400)
        assert err["param"] in ("sort", "status", "page")


# ---- add --------------------------------------------------------------------------------------


async def test_add_key_is_durable_before_the_answer(admin, app):
    body = {"openrouter_api_key": "sk-or-v1-new-key-9999:4", "label": "team a"}
    data = await admin.json("POST", "/admin/add-key", body)
    assert data["key"]["key_suffix"] == "...9999" and data["key"]["weight"] == 4
    no_full_keys(json.dumps(data).encode(), ["sk-or-v1-new-key-9999"])
    row = stored(app)["sk-or-v1-new-key-9999"]  # committed, no flush needed
    assert (row["weight"], row["label"]) == (4, "team a")


@pytest.mark.parametrize(
    "value,status,code",
    [
        (A, 409, "key_already_exists"),
        ("sk-or-v1-x:0", 400, "invalid_key_format"),
        ("has space", 400, "invalid_key_format"),
        ("a,b", 400, "invalid_key_format"),
        ("", 400, "invalid_key_format"),
    ],
)
async def test_add_key_refuses_duplicates_and_bad_entries(admin, app, value, status, code):
    resp = await admin.post("/admin/add-key", {"openrouter_api_key": value})
    assert assert_openai_error(resp, status)["code"] == code
    assert len(app.scheduler) == 3 and len(stored(app)) == 3


async def test_add_keys_reports_added_duplicate_and_invalid(admin, app):
    text = f"sk-or-v1-batch-0001:2\n{A}, sk-or-v1-batch-0002\nsk-or-v1-batch-0001\nbad key\nk:-1"
    data = await admin.json("POST", "/admin/add-keys", {"key_data": text})
    assert (data["added_count"], data["duplicate_count"], data["invalid_count"]) == (2, 2, 2)
    assert len(data["error_messages"]) == 2 and len(data["added"]) == 2
    assert "sk-or-v1-batch" not in json.dumps(data)
    assert stored(app)["sk-or-v1-batch-0001"]["weight"] == 2
    assert app.scheduler.get(key_id("sk-or-v1-batch-0002")) is not None


@pytest.mark.parametrize(
    "value,why",
    [
        ("x", '"...x" is not accepted: keys start with sk-or-'),
        ("hello-not-a-key", '"...-key" is not accepted: keys start with sk-or-'),
        ('"sk-or-v1-half-quoted', "contains a quote"),
        ("sk-or-v1-two words", "contains a space"),
    ],
)
async def test_add_key_rejects_what_is_not_a_key_and_says_why(admin, app, value, why):
    resp = await admin.post("/admin/add-key", {"openrouter_api_key": value})
    err = assert_openai_error(resp, 400)
    assert err["code"] == "invalid_key_format" and why in err["message"]
    assert len(app.scheduler) == 3


async def test_add_key_strips_quotes_and_a_name_prefix_with_a_note(admin, app):
    for pasted, key in [
        ('"sk-or-v1-quoted-0001"', "sk-or-v1-quoted-0001"),
        ("OPENROUTER_API_KEYS=sk-or-v1-named-0002", "sk-or-v1-named-0002"),
    ]:
        data = await admin.json("POST", "/admin/add-key", {"openrouter_api_key": pasted})
        assert data["key"]["id"] == key_id(key) and data["notes"], data
        assert key in stored(app)
    assert any("OPENROUTER_API_KEYS=" in n for n in data["notes"])


async def test_add_keys_returns_the_rejected_lines_and_notes(admin, app):
    text = "sk-or-v1-bulk-0001\nhello-not-a-key\n'sk-or-v1-bulk-0002'\nx, sk-or-v1-bulk-0003"
    text += "\nOPENROUTER_API_KEYS=\nsk-or-v1-bulk-0001"
    data = await admin.json("POST", "/admin/add-keys", {"key_data": text})
    assert (data["added_count"], data["duplicate_count"], data["invalid_count"]) == (3, 1, 2)
    assert data["rejected_lines"] == [2, 4]
    assert [m.split(":")[0] for m in data["error_messages"]] == ["line 2", "line 4"]
    assert data["notes"] == [
        "removed surrounding quotes",
        "removed the prefix OPENROUTER_API_KEYS=",
    ]
    assert {"sk-or-v1-bulk-0001", "sk-or-v1-bulk-0002", "sk-or-v1-bulk-0003"} <= set(stored(app))


async def test_env_keys_are_validated_at_start_up(env, tmp_path):
    text = 'OPENROUTER_API_KEYS="sk-or-v1-env-0001,hello-not-a-key,x"'
    config = load_settings({**env, "DATA_DIR": str(tmp_path / "e"), "OPENROUTER_API_KEYS": text})
    with (
        ExpectLog("orpoll", r'.*"...-key" is not accepted: keys start with sk-or-'),
        ExpectLog("orpoll", r".*removed the prefix OPENROUTER_API_KEYS=", level=logging.INFO),
        ExpectLog("orpoll", r".*removed surrounding quotes", level=logging.INFO),
    ):
        app = make_app(config)
    assert [ks.key for ks in app.scheduler] == ["sk-or-v1-env-0001"]
    app.upstream.close()


# ---- delete -----------------------------------------------------------------------------------


async def test_delete_by_id_and_by_suffix(admin, app):
    data = await admin.json("DELETE", f"/admin/delete-key/{key_id(A)}")
    assert data["id"] == key_id(A)
    await admin.json("DELETE", "/admin/delete-key/...2222")
    await admin.json("DELETE", "/admin/delete-key/3333")
    assert len(app.scheduler) == 0 and stored(app) == {}
    err = assert_openai_error(await admin.delete("/admin/delete-key/3333"), 404)
    assert err["code"] == "key_not_found"


async def test_ambiguous_suffix_is_409_and_deletes_nothing(admin, app):
    await admin.json("POST", "/admin/add-keys", {"key_data": "sk-or-v1-other-aaaa1111"})
    resp = await admin.delete("/admin/delete-key/...1111")
    err = assert_openai_error(resp, 409)
    assert err["code"] == "ambiguous_key"
    assert {m["id"] for m in err["metadata"]["matches"]} == {
        key_id(A),
        key_id("sk-or-v1-other-aaaa1111"),
    }
    no_full_keys(resp.body, [A, "sk-or-v1-other-aaaa1111"])
    assert len(app.scheduler) == 4 and len(stored(app)) == 4


async def test_suffixes_longer_than_the_shown_part_are_not_matched(admin):
    # Probing longer suffixes would reveal hidden characters of a key.
    assert_openai_error(await admin.delete("/admin/delete-key/a1111"), 404)


async def test_delete_keys_batch_deletes_the_unambiguous_and_reports_the_rest(admin, app):
    await admin.json("POST", "/admin/add-keys", {"key_data": "sk-or-v1-other-zzzz2222"})
    body = {"ids": [key_id(A), "...2222", "3333", "nope"]}
    data = await admin.json("POST", "/admin/delete-keys-batch", body)
    assert data["deleted_count"] == 2 and data["requested_count"] == 4
    assert set(data["deleted"]) == {key_id(A), key_id(C)}
    assert data["not_found"] == ["nope"] and list(data["ambiguous"]) == ["...2222"]
    assert set(stored(app)) == {B, "sk-or-v1-other-zzzz2222"}
    original = await admin.json("POST", "/admin/delete-keys-batch", {"suffixes": ["zzzz2222"]})
    assert original["deleted_count"] == 0 and original["not_found"] == ["zzzz2222"]
    assert_openai_error(await admin.post("/admin/delete-keys-batch", {"ids": []}), 400)


# ---- reload -----------------------------------------------------------------------------------


async def test_reload_replaces_the_pool_keeping_state_of_kept_keys(admin, app):
    a = app.scheduler.get(key_id(A))
    a.requests = 12
    body = {"openrouter_api_keys_str": f"{A}:5,sk-or-v1-reload-0001"}
    data = await admin.json("POST", "/admin/reload-keys", body)
    assert (data["added_count"], data["removed_count"], data["kept_count"]) == (1, 2, 1)
    assert {ks.key for ks in app.scheduler} == {A, "sk-or-v1-reload-0001"}
    assert a.weight == 5 and a.requests == 12
    assert {k: r["weight"] for k, r in stored(app).items()} == {A: 5, "sk-or-v1-reload-0001": 1}


async def test_reload_with_an_invalid_entry_changes_nothing(admin, app):
    body = {"openrouter_api_keys_str": "sk-or-v1-fine-0001, bad key"}
    err = assert_openai_error(await admin.post("/admin/reload-keys", body), 400)
    assert err["code"] == "invalid_key_format" and len(err["metadata"]["error_messages"]) == 1
    assert len(app.scheduler) == 3 and len(stored(app)) == 3


async def test_reload_without_the_field_is_400_and_keeps_the_pool(admin, app):
    resp = await admin.post("/admin/reload-keys", {"openrouter_api_keys": "x"})
    err = assert_openai_error(resp, 400)
    assert err["param"] == "openrouter_api_keys_str" and "openrouter_api_keys_str" in err["message"]
    assert len(app.scheduler) == 3 and len(stored(app)) == 3


async def test_reload_to_an_empty_pool_needs_allow_empty(admin, app):
    for text in ("", " , \n"):
        resp = await admin.post("/admin/reload-keys", {"openrouter_api_keys_str": text})
        err = assert_openai_error(resp, 400)
        assert err["code"] == "would_empty_pool" and "allow_empty" in err["message"]
        assert len(app.scheduler) == 3 and len(stored(app)) == 3
    body = {"openrouter_api_keys_str": "", "allow_empty": True}
    data = await admin.json("POST", "/admin/reload-keys", body)
    assert data["removed_count"] == 3 and len(app.scheduler) == 0 and stored(app) == {}


# ---- per key ------------------------------------------------------------------------------------


async def test_weight_label_enable_disable_are_durable(admin, app):
    kid = key_id(B)
    data = await admin.json("POST", f"/admin/keys/{kid}/weight", {"weight": 9})
    assert data["key"]["weight"] == 9 == app.scheduler.get(kid).weight
    await admin.json("POST", f"/admin/keys/{kid}/label", {"label": XSS})
    paused = await admin.json("POST", f"/admin/keys/{kid}/disable")
    assert paused["key"]["status"] == "paused"
    row = stored(app)[B]
    assert (row["weight"], row["label"], row["enabled"]) == (9, XSS, False)
    listed = await admin.json("GET", "/admin/key-status?q=" + "onerror")
    assert listed["keys"][0]["label"] == XSS  # JSON carries it as data; the page shows text
    for bad in ({"weight": 0}, {"weight": "x"}, {"weight": True}, {}):
        resp = await admin.post(f"/admin/keys/{kid}/weight", bad)
        assert assert_openai_error(resp, 400)["param"] == "weight"
    assert_openai_error(await admin.post("/admin/keys/ffffffffffff/enable"), 404)


async def test_enable_readmits_a_key_disabled_by_a_401(admin, app):
    ks = app.scheduler.get(key_id(A))
    app.scheduler.disable(ks, "invalid key")
    data = await admin.json("POST", f"/admin/keys/{ks.id}/enable")
    assert data["key"]["status"] == "available" and ks.state == "available"


async def test_check_now_probes_one_key_and_check_keys_sweeps(admin, app, fake):
    fake.key_info[A] = (401, {})
    data = await admin.json("POST", f"/admin/keys/{key_id(A)}/check")
    assert data["result"] == "invalid" and data["key"]["status"] == "disabled"
    assert fake.key_probes[A] == 1
    await app.health.check_once()  # every key now has a probe on record ...
    sweep = await admin.json("POST", "/admin/check-keys")
    assert sweep["probed"] == 3  # ... yet "check all" probes every enabled key again
    assert fake.key_probes[B] == 2 and sweep["results"]["invalid"] == 1


async def test_readmit_ends_a_cooldown_now(admin, app):
    ks = app.scheduler.get(key_id(C))
    app.scheduler.cool(ks, time.time() + 3600, "rate limited", "key_rate_limit")
    ks.failures = 4
    data = await admin.json("POST", f"/admin/keys/{ks.id}/readmit")
    assert data["key"]["status"] == "available" and ks.state == "available"
    assert app.scheduler.pick() is not None and app.scheduler.counts()["cooling"] == 0


async def test_key_status_shows_in_flight_requests_and_the_upstream(admin, app):
    ks = app.scheduler.get(key_id(A))
    ks.inflight, ks.oldest_inflight = 2, time.time() - 30
    data = await admin.json("GET", "/admin/key-status")
    row = next(k for k in data["keys"] if k["id"] == ks.id)
    assert row["inflight"] == 2 and 29 <= row["oldest_inflight_age"] < 60
    idle = next(k for k in data["keys"] if k["id"] == key_id(B))
    assert idle["inflight"] == 0 and idle["oldest_inflight_age"] is None
    assert data["upstream"] == app.scheduler.upstream.state()
    assert "health" in data


# ---- restarts ---------------------------------------------------------------------------------


async def test_everything_acknowledged_survives_a_restart(admin, app, env, serve):
    await admin.json("POST", "/admin/add-key", {"openrouter_api_key": "sk-or-v1-kept-7777:3"})
    await admin.json("POST", f"/admin/keys/{key_id(A)}/weight", {"weight": 8})
    await admin.json("POST", f"/admin/keys/{key_id(B)}/disable")
    await admin.json("POST", "/admin/settings", {"RETRY_WITH_NEW_KEY_COUNT": 6})
    await admin.json("DELETE", f"/admin/delete-key/{key_id(C)}")
    cooled = app.scheduler.get(key_id(A))
    app.scheduler.cool(cooled, time.time() + 900, "rate limited", "key_rate_limit")
    cooled.requests = 5
    assert await app.write_behind.flush() >= 1
    again = make_app(load_settings(env))  # no shutdown of the first: as after a crash
    pool = {ks.key: ks for ks in again.scheduler}
    assert set(pool) == {A, B, "sk-or-v1-kept-7777"}
    assert pool[A].weight == 8 and pool[A].state == "cooling" and pool[A].requests == 5
    assert pool[A].until == cooled.until and pool[B].enabled is False
    assert pool["sk-or-v1-kept-7777"].weight == 3 and again.config.retry_count == 6
    c = AdminClient(serve(again))
    await c.login()
    assert (await c.json("GET", "/admin/key-status"))["counts"]["cooling"] == 1


async def test_env_keys_seed_only_an_empty_store(app, env, serve):
    changed = {**env, "OPENROUTER_API_KEYS": f"{A},sk-or-v1-later-0001"}
    with ExpectLog("orpoll", "OPENROUTER_API_KEYS lists 1 key not in the store"):
        again = make_app(load_settings(changed))
    assert {ks.key for ks in again.scheduler} == set(KEYS)
    again.upstream.close()


async def test_shutdown_flushes_runtime_state(env, tmp_path):
    config = load_settings({**env, "DATA_DIR": str(tmp_path / "shutdown")})
    app = make_app(config)
    ks = app.scheduler.get(key_id(A))
    app.scheduler.report(ks, Outcome(Verdict.TRANSIENT, 502, "bad gateway"))
    await app.shutdown()
    again = make_app(config)
    restored = again.scheduler.get(ks.id)
    assert (restored.failures, restored.errors, restored.last_error) == (1, 1, "bad gateway")
    again.upstream.close()


# ---- speed at 10,000 keys ---------------------------------------------------------------------


@pytest.fixture
def many(env, tmp_path):
    """An app with 10,000 keys, a tenth of them cooling (``serve`` closes it)."""
    sched = KeyScheduler()
    for i in range(10_000):
        ks = sched.add(f"sk-or-v1-many-{i:06d}-{i % 9973:04d}", i % 5 + 1, f"team {i % 50}")
        ks.requests, ks.successes, ks.last_used = i % 97, i % 89, 1e9 + i
        if i % 10 == 0:
            sched.cool(ks, time.time() + 600, "rate limited", "key_rate_limit")
    return make_app(load_settings({**env, "DATA_DIR": str(tmp_path / "many")}), scheduler=sched)


async def test_key_status_at_10k_keys_is_fast(many, serve):
    c = AdminClient(serve(many))
    await c.login()
    queries = ["", "sort=-requests", "status=cooling", "q=team%207", "sort=last_used&page=100"]
    for query in queries:
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            resp = await c.get("/admin/key-status?limit=50&" + query)
            times.append(1000 * (time.perf_counter() - t0))
            assert resp.code == 200
        median = statistics.median(times)
        print(f"key-status 10k keys {query or 'default'}: median {median:.1f} ms")
        assert median < 50, (query, times)
