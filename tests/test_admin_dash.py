"""The dashboard's data calls on a real server: requests per minute from the records, the top
keys, models and clients by cost, the live overview, sorting keys by today's figures, and the
Requests page."""

from __future__ import annotations

import pytest

from orpoll.keys import key_id, mask
from orpoll.usage import RequestRecord
from tests.admin_helpers import AdminClient
from tests.conftest import KEYS, assert_openai_error
from tests.test_admin_usage import NOW

A, B, C = KEYS


@pytest.fixture
def admin(base_url, io_loop):
    client = AdminClient(base_url)
    io_loop.run_sync(client.login)
    return client


def record(at: float, key: str, cost: float, model: str, status: int = 200) -> RequestRecord:
    r = RequestRecord(time=at, model=model, status=status, client="cafe0001", cost=cost)
    r.prompt_tokens, r.completion_tokens, r.usage_known = 3, 4, True
    r.attempt(key_id(key), "ok" if status < 400 else "server_error", status, 10.0)
    r.serve(key_id(key), mask(key))
    return r


async def add(app, records: list[RequestRecord]) -> None:
    for r in records:
        app.ledger.add(r)
    await app.ledger.flush()


async def test_requests_per_minute(app, admin):
    minute = NOW // 60 * 60
    await add(
        app,
        [
            record(minute - 120 + 1, A, 0.01, "m1"),
            record(minute - 120 + 2, A, 0.02, "m1", status=502),
            record(minute - 60 + 5, C, 0.03, "m2"),
            record(minute - 2 * 86400, C, 5.0, "m2"),  # outside the day
        ],
    )
    since, until = minute - 86400, minute
    body = await admin.json("GET", f"/admin/usage?group_by=minute&since={since}&until={until}")
    rows = body["data"]
    assert [r["time"] for r in rows] == [minute - 120, minute - 60]
    assert [(r["requests"], r["errors"]) for r in rows] == [(2, 1), (1, 0)]
    assert rows[0]["cost"] == pytest.approx(0.03) and rows[0]["prompt_tokens"] == 6
    assert rows[0]["group"].startswith("20")
    # The default is the hour up to now.
    default = (await admin.json("GET", "/admin/usage?group_by=minute"))["data"]
    assert sum(r["requests"] for r in default) == sum(
        r["requests"] for r in rows if r["time"] >= NOW - 3600
    )
    too_long = f"/admin/usage?group_by=minute&since={until - 3 * 86400}&until={until}"
    err = assert_openai_error(await admin.get(too_long), 400)
    assert err["param"] == "since"


async def test_top_groups_by_cost_name_keys_by_suffix_only(app, admin):
    await add(
        app,
        [record(NOW - 100 - i, A, 0.01, f"m{i}") for i in range(12)]
        + [record(NOW - 50, C, 1.0, "big")],
    )
    keys = (await admin.json("GET", "/admin/usage?group_by=key&top=10"))["data"]
    assert [k["group"] for k in keys] == [key_id(C), key_id(A)]
    assert [k["key_suffix"] for k in keys] == [mask(C), mask(A)]
    assert keys[0]["cost"] == pytest.approx(1.0)
    models = (await admin.json("GET", "/admin/usage?group_by=model&top=10"))["data"]
    assert len(models) == 10 and models[0]["group"] == "big"
    clients = (await admin.json("GET", "/admin/usage?group_by=client&top=3"))["data"]
    assert [c["group"] for c in clients] == ["cafe0001"] and clients[0]["requests"] == 13
    for bad in ("top=0", "top=x", "group_by=day&top=5"):
        sep = "&" if "group_by" in bad else "&group_by=model&"
        err = assert_openai_error(await admin.get(f"/admin/usage?{sep.lstrip('&')}{bad}"), 400)
        assert err["param"] == "top"
    days = (await admin.json("GET", "/admin/usage?group_by=day"))["data"]
    assert days[-1]["time"] % 86400 == 0
    for body in (keys, models, clients, days):
        for key in KEYS:
            assert key not in str(body)


async def test_overview_counts_keys_and_open_streams(app, admin):
    app.streams.add(object())
    body = await admin.json("GET", "/admin/overview")
    assert body["streams_open"] == 1
    assert body["keys"]["total"] == 3 and body["keys"]["available"] == 3
    assert body["recorded"] == 0 and body["now"] > 0
    assert_openai_error(await AdminClient(admin.base).get("/admin/overview"), 401)


async def test_keys_sort_by_todays_cost(app, admin):
    await add(app, [record(NOW, C, 0.5, "m"), record(NOW, A, 0.1, "m"), record(NOW, A, 0.1, "m")])
    body = await admin.json("GET", "/admin/key-status?sort=-today_cost&limit=2")
    assert [k["id"] for k in body["keys"]] == [key_id(C), key_id(A)]
    assert body["total_keys"] == 3
    second = await admin.json("GET", "/admin/key-status?sort=-today_cost&limit=2&page=2")
    assert [k["id"] for k in second["keys"]] == [key_id(B)]
    by_requests = await admin.json("GET", "/admin/key-status?sort=-today_requests")
    assert by_requests["keys"][0]["id"] == key_id(A)
    cheapest = await admin.json("GET", "/admin/key-status?sort=today_cost&status=available")
    assert [k["id"] for k in cheapest["keys"]] == [key_id(B), key_id(A), key_id(C)]


async def test_requests_page_needs_a_session_and_renders(admin):
    anonymous = AdminClient(admin.base)
    resp = await anonymous.get("/admin/requests-log")
    assert resp.code == 302 and "/admin/login" in resp.headers["Location"]
    page = await admin.get("/admin/requests-log")
    assert page.code == 200
    text = page.body.decode()
    assert 'id="log"' in text and "requests.js" in text
    assert 'href="/admin/requests-log" aria-current="page"' in text


async def test_the_vendored_chart_library_is_served_with_the_admin_headers(admin):
    for path, ctype in (
        ("/static/vendor/uplot/uPlot.iife.min.js", "javascript"),
        ("/static/vendor/uplot/uPlot.min.css", "text/css"),
    ):
        resp = await admin.get(path)
        assert resp.code == 200 and ctype in resp.headers["Content-Type"]
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    page = (await admin.get("/admin/dashboard")).body.decode()
    assert "/static/vendor/uplot/uPlot.iife.min.js?v=" in page and "/static/usage.js?v=" in page
