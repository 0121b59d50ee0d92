"""The ledger over HTTP, on a real server: /admin/requests (paging, filters, errors), its CSV
export, /admin/usage, today's figures on /admin/key-status, /metrics, and the usage backfill
from the fake OpenRouter's /generation."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import time

import pytest

from orpoll.keys import key_id, mask
from orpoll.usage import RequestRecord
from tests.admin_helpers import AdminClient
from tests.conftest import KEYS, assert_openai_error

A, B, C = KEYS
NOW = time.time()
TOKEN = "metrics-token-for-tests"


def record(i: int, key: str = A, **kw) -> RequestRecord:
    r = RequestRecord(
        time=NOW - 1000 + i,
        request_id=f"req-{i}",
        route="/v1/chat/completions",
        model="openai/gpt-4o" if i % 2 else "deepseek/deepseek-chat-v3-0324:free",
        stream=bool(i % 3),
        status=200 if i % 5 else 502,
        client="c0ffee00",
        prompt_tokens=10,
        completion_tokens=i,
        cached_tokens=1,
        reasoning_tokens=0,
        cost=i * 1e-5,
        usage_known=True,
        ttfb_ms=50.0,
        duration_ms=400.0,
        bytes_out=1234,
    )
    r.attempt(key_id(B), "key_rate_limit", 429, 12.5)
    r.attempt(key_id(key), "ok", 200, 80.0)
    r.serve(key_id(key), mask(key), "user_1")
    for name, value in kw.items():
        setattr(r, name, value)
    return r


@pytest.fixture
def admin(base_url, io_loop):
    client = AdminClient(base_url)
    io_loop.run_sync(client.login)
    return client


async def fill(app, n: int = 120) -> list[RequestRecord]:
    records = [record(i, key=(A, C)[i % 2]) for i in range(n)]
    for r in records:
        app.ledger.add(r)
    await app.ledger.flush()
    return records


async def test_the_ledger_api_needs_an_admin_session(base_url):
    anonymous = AdminClient(base_url)
    for path in ("/admin/requests", "/admin/requests.csv", "/admin/usage"):
        assert_openai_error(await anonymous.get(path), 401, "authentication_error")


async def test_requests_page_newest_first_with_cursor(app, admin):
    await fill(app)
    first = await admin.json("GET", "/admin/requests?limit=50")
    assert first["total"] == 120 and len(first["data"]) == 50
    top = first["data"][0]
    assert top["request_id"] == "req-119"
    assert top["attempts"] == [
        {"key": key_id(B), "verdict": "key_rate_limit", "status": 429, "ms": 12.5},
        {"key": key_id(C), "verdict": "ok", "status": 200, "ms": 80.0},
    ]
    assert top["tokens"] == {"prompt": 10, "completion": 119, "cached": 1, "reasoning": 0}
    assert top["cost"] == pytest.approx(119e-5)
    assert top["key"] == {"id": key_id(C), "masked": mask(C), "account": "user_1"}
    seen = [r["request_id"] for r in first["data"]]
    cursor = first["next_cursor"]
    while cursor:
        page = await admin.json("GET", f"/admin/requests?limit=50&cursor={cursor}")
        seen += [r["request_id"] for r in page["data"]]
        cursor = page["next_cursor"]
    assert seen == [f"req-{i}" for i in range(119, -1, -1)]


async def test_requests_filters_over_http(app, admin):
    records = await fill(app)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 1000 + 100))

    async def total(query: str) -> int:
        return (await admin.json("GET", "/admin/requests?" + query))["total"]

    assert await total("status=error") == sum(r.failed for r in records)
    assert await total("status=502") == sum(r.status == 502 for r in records)
    assert await total(f"key={mask(A)}") == 60
    assert await total(f"key={key_id(C)}") == 60
    assert await total("model=openai/gpt-4o") == 60
    assert await total("stream=false") == 40
    assert await total(f"since={since}") == 20
    assert await total(f"until={NOW - 1000 + 10}") == 10
    assert await total("client=c0ffee00") == 120


@pytest.mark.parametrize(
    "query, param",
    [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("cursor=abc", "cursor"),
        ("status=fine", "status"),
        ("since=yesterday", "since"),
        ("key=sk-or-v1-whole-key", "key"),
        ("stream=perhaps", "stream"),
    ],
)
async def test_bad_request_parameters_are_400(admin, query, param):
    err = assert_openai_error(await admin.get("/admin/requests?" + query), 400)
    assert err["param"] == param


async def test_csv_export_streams_every_match(app, admin):
    await fill(app, 4500)  # more than one chunk
    resp = await admin.get("/admin/requests.csv?status=ok")
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.body.decode())))
    assert len(rows) == 4500 - 900
    assert rows[0]["request_id"] == "req-4499"
    assert json.loads(rows[0]["attempts"])[1] == [key_id(C), "ok", 200, 80.0]
    for key in KEYS:
        assert key.encode() not in resp.body


async def test_usage_sums_are_exact(app, admin):
    records = await fill(app)
    for group_by in ("key", "model", "account", "client", "hour", "day"):
        body = await admin.json("GET", f"/admin/usage?group_by={group_by}")
        rows = body["data"]
        assert sum(r["requests"] for r in rows) == 120, group_by
        assert sum(r["errors"] for r in rows) == sum(r.failed for r in records)
        assert sum(r["completion_tokens"] for r in rows) == sum(range(120))
        assert sum(r["cached_tokens"] for r in rows) == 120
        assert sum(r["cost"] for r in rows) == pytest.approx(sum(r.cost for r in records))
    by_key = (await admin.json("GET", "/admin/usage?group_by=key"))["data"]
    assert {r["group"] for r in by_key} == {key_id(A), key_id(C)}
    err = assert_openai_error(await admin.get("/admin/usage?group_by=colour"), 400)
    assert err["param"] == "group_by"
    assert_openai_error(await admin.get("/admin/usage?since=soon"), 400)


async def test_key_status_rows_carry_todays_figures(app, admin):
    await fill(app, 10)
    keys = {k["id"]: k for k in (await admin.json("GET", "/admin/key-status"))["keys"]}
    a = keys[key_id(A)]
    assert a["today_requests"] == 5 and a["today_errors"] == 1  # req-0 is a 502
    assert a["today_tokens"] == 5 * 10 + sum(range(0, 10, 2))
    assert a["today_cost"] == pytest.approx(sum(range(0, 10, 2)) * 1e-5)
    assert keys[key_id(B)]["today_requests"] == 0


async def test_metrics_404_without_token_401_with_a_wrong_one(app, api):
    assert_openai_error(await api("/metrics"), 404)
    app.config = dataclasses.replace(app.config, metrics_token=TOKEN)
    assert_openai_error(await api("/metrics"), 401)
    wrong = await api("/metrics", headers={"Authorization": "Bearer nope"})
    assert_openai_error(wrong, 401)


async def test_metrics_series(app, api):
    app.config = dataclasses.replace(app.config, metrics_token=TOKEN)
    app.scheduler.get(key_id(A)).info["limit_remaining"] = 4.5
    app.scheduler.set_group(app.scheduler.get(key_id(A)), "user_1")
    await fill(app, 20)
    resp = await api("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = resp.body.decode()
    for line in (
        'orpoll_requests_total{route="/v1/chat/completions",status="200",stream="true"}',
        'orpoll_upstream_attempts_total{verdict="key_rate_limit"} 20.0',
        "orpoll_failovers_total 20.0",
        "orpoll_pool_exhausted_total 0.0",
        "orpoll_streams_open 0.0",
        'orpoll_keys{state="available"} 3.0',
        'orpoll_key_credit_remaining_usd{account="user_1"} 4.5',
        'orpoll_tokens_total{model="openai/gpt-4o",type="completion"} 100.0',
        'orpoll_cost_usd_total{model="openai/gpt-4o"}',
        'orpoll_request_duration_seconds_bucket{le="0.5",route="/v1/chat/completions",stream="false"}',
        "orpoll_time_to_first_chunk_seconds_count",
    ):
        assert line in text, line
    for key in KEYS:
        assert key not in text and key[-4:] not in text and key_id(key) not in text
    assert "c0ffee00" not in text


async def wait_backfill(app) -> None:
    if app.ledger.backfill.tasks:
        await asyncio.wait(list(app.ledger.backfill.tasks), timeout=20)
    await app.ledger.flush()


async def test_backfill_fills_a_stream_without_usage(app, admin, fake):
    app.ledger.backfill.retry_after = 0.05
    fake.generation_misses = 1  # OpenRouter's stats are not there at once
    fake.generations["gen-cut"] = {"native_tokens_completion": 40, "native_tokens_reasoning": 6}
    r = record(1, stream=True, generation_id="gen-cut", usage_known=False)
    r.prompt_tokens = r.completion_tokens = r.cached_tokens = r.reasoning_tokens = r.cost = None
    app.ledger.add(r)
    await wait_backfill(app)
    assert fake.generation_lookups["gen-cut"] == 2
    assert fake.paths[-1] == "generation?id=gen-cut" and fake.order[-1] == A
    row = (await admin.json("GET", "/admin/requests"))["data"][0]
    assert row["usage_known"] is True
    assert row["tokens"] == {"prompt": 3, "completion": 40, "cached": 0, "reasoning": 6}
    assert row["cost"] == pytest.approx(3 * 2.5e-6 + 40 * 1e-5)


async def test_backfill_gives_up_and_leaves_usage_unknown(app, admin, fake):
    app.ledger.backfill.retry_after, app.ledger.backfill.deadline = 0.05, 0.3
    fake.generation_misses = 10**6
    r = record(1, stream=True, generation_id="gen-never", usage_known=False)
    r.prompt_tokens = r.completion_tokens = r.cached_tokens = r.reasoning_tokens = r.cost = None
    app.ledger.add(r)
    await wait_backfill(app)
    assert 2 <= fake.generation_lookups["gen-never"] <= 8
    row = (await admin.json("GET", "/admin/requests"))["data"][0]
    assert row["usage_known"] is False and row["cost"] is None
    assert row["tokens"] == {"prompt": None, "completion": None, "cached": None, "reasoning": None}
    usage = (await admin.json("GET", "/admin/usage?group_by=key"))["data"]
    assert usage[0]["requests"] == 1 and usage[0]["prompt_tokens"] == 0


async def test_shutdown_does_not_wait_for_backfills_and_keeps_their_records(app, admin, fake):
    app.ledger.backfill.retry_after, app.ledger.backfill.deadline = 0.05, 60
    fake.generation_misses = 10**6
    r = record(1, stream=True, generation_id="gen-late", usage_known=False)
    r.prompt_tokens = r.completion_tokens = r.cached_tokens = r.reasoning_tokens = r.cost = None
    app.ledger.add(r)
    while not fake.generation_lookups["gen-late"]:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await app.ledger.backfill.close()
    assert time.monotonic() - started < 2
    await app.ledger.flush()
    row = (await admin.json("GET", "/admin/requests"))["data"][0]
    assert row["request_id"] == "req-1" and row["usage_known"] is False
