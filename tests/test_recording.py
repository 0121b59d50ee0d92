"""The request ledger fed by real traffic: the OpenAI SDK through a real server to the fake
OpenRouter, then /admin/requests, /admin/usage, the CSV export and /metrics checked against what
the fake sent, to the token and to the cost."""

from __future__ import annotations

import asyncio
import csv
import io
import math
import time

import openai
import pytest
from tornado.tcpclient import TCPClient

from orpoll.keys import key_id
from tests.conftest import KEYS, raw_chat_request
from tests.fake_upstream import PRICE_COMPLETION, PRICE_PROMPT, PROMPT_TOKENS

A, B, C = KEYS
PAID = "openai/gpt-4o"
MSG = [{"role": "user", "content": "hi"}]
TOKEN = "metrics-token-for-tests"


@pytest.fixture
def env(env):
    env["METRICS_TOKEN"] = TOKEN
    return env


def cost(prompt: int, completion: int) -> float:
    return round(prompt * PRICE_PROMPT + completion * PRICE_COMPLETION, 12)


async def until(cond, timeout: float = 15.0) -> None:
    start = time.monotonic()
    while not await cond():
        assert time.monotonic() - start < timeout, "condition never held"
        await asyncio.sleep(0.05)


async def stream_text(sdk, **kw) -> str:
    stream = await sdk.chat.completions.create(model=PAID, messages=MSG, stream=True, **kw)
    text = ""
    async with stream:
        async for ev in stream:
            if ev.choices:
                text += ev.choices[0].delta.content or ""
    return text


async def cut_stream(base_url: str) -> None:
    """A client that reads the first data event of a stream and hangs up."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = await TCPClient().connect(host, int(port))
    await conn.write(
        raw_chat_request(b'{"model": "%s", "stream": true, "messages": []}' % PAID.encode())
    )
    await conn.read_until(b"data: {")
    conn.close()


async def scripted_mix(app, fake, sdk, base_url) -> dict[str, dict]:
    """Six requests, one of each kind; returns what each record must say, by request kind."""
    fake.generation_misses = 1  # /generation answers 404 once per id, as OpenRouter may
    expect: dict[str, dict] = {}
    # 1. non-stream, served by A at once, with cached and reasoning tokens
    fake.script(A, {"usage": {"cached_tokens": 2, "reasoning_tokens": 1}})
    await sdk.chat.completions.create(model=PAID, messages=MSG)
    expect["plain"] = dict(keys=[A], tokens=(PROMPT_TOKENS, 2, 2, 1), cost=cost(3, 2))
    # 2. stream with failover: A's first event is an error, B serves 4 chunks
    fake.script(A, {"error_first": {"code": 502, "message": "Provider disconnected"}}, {})
    fake.script(B, {"chunks": 4})
    assert await stream_text(sdk) == "tok0 tok1 tok2 tok3 "
    expect["failover"] = dict(keys=[A, B], tokens=(PROMPT_TOKENS, 4, 0, 0), cost=cost(3, 4))
    # 3. stream that the upstream drops after 2 chunks: usage comes from /generation
    fake.scripts.clear()
    fake.default = {"chunks": 6, "drop_after": 2}
    with pytest.raises(openai.APIError):
        await stream_text(sdk)
    expect["dropped"] = dict(keys=None, tokens=(PROMPT_TOKENS, 2, 0, 0), cost=cost(3, 2))
    # 4. a client that hangs up mid-stream: usage from /generation too
    fake.default = {"chunks": 50, "interval": 0.05}
    await cut_stream(base_url)
    await until(lambda: _true(app.inflight == 0))
    expect["cut"] = dict(keys=None, tokens=(PROMPT_TOKENS, 2, 0, 0), cost=cost(3, 2))
    # the fake's /generation follows its default behaviour too: let the lookups end first
    await until(lambda: _true(not app.ledger.backfill.tasks))
    # 5. every key fails: one error, no usage
    fake.default = {"status": 500}
    with pytest.raises(openai.APIStatusError):
        await sdk.chat.completions.create(model=PAID, messages=MSG)
    expect["failed"] = dict(keys=None, tokens=None, cost=None)
    return expect


async def _true(value: bool) -> bool:
    return value


async def test_records_agree_with_the_upstream(app, fake, sdk, admin, base_url, api, in_order):
    expect = await scripted_mix(app, fake, sdk, base_url)

    async def all_known() -> bool:
        await app.ledger.flush()
        page = await admin.json("GET", "/admin/requests?limit=100")
        return page["total"] == 5 and sum(r["usage_known"] for r in page["data"]) == 4

    await until(all_known)
    page = await admin.json("GET", "/admin/requests?limit=100")
    # (a record that waited for /generation is written after later ones: order by start time)
    plain, failover, dropped, cut, failed = sorted(page["data"], key=lambda r: r["time"])

    # what each record says of its request
    assert (plain["stream"], failover["stream"], dropped["stream"]) == (False, True, True)
    assert [a["key"] for a in plain["attempts"]] == [key_id(A)]
    assert [a["key"] for a in failover["attempts"]] == [key_id(A), key_id(B)]
    assert [a["status"] for a in failover["attempts"]] == [502, 200]
    assert failover["attempts"][0]["verdict"] != "ok" and failover["key"]["id"] == key_id(B)
    assert dropped["status"] == 200 and dropped["error"]["code"] == "upstream_disconnected"
    assert cut["client_disconnected"] and not plain["client_disconnected"]
    assert failed["status"] >= 500 and failed["key"] is None and not failed["usage_known"]
    assert failed["tokens"] == {
        "prompt": None,
        "completion": None,
        "cached": None,
        "reasoning": None,
    }
    failed_keys = [a["key"] for a in failed["attempts"]]
    assert failed_keys == [key_id(k) for k in fake.order[-len(failed_keys) :]]
    for rec in (plain, failover, dropped, cut):
        assert rec["model"] == PAID and rec["answered_model"] == PAID
        assert rec["generation_id"] == "gen-fake" and rec["ttfb_ms"] is not None
        assert rec["bytes_out"] > 0 and rec["duration_ms"] >= rec["ttfb_ms"]
    for name, rec in zip(
        ("plain", "failover", "dropped", "cut"), (plain, failover, dropped, cut), strict=True
    ):
        t = rec["tokens"]
        assert (t["prompt"], t["completion"], t["cached"], t["reasoning"]) == expect[name][
            "tokens"
        ], name
        assert math.isclose(rec["cost"], expect[name]["cost"], abs_tol=1e-12), name

    # the totals, the CSV export and /metrics say the same
    records = (plain, failover, dropped, cut)
    total_cost = sum(r["cost"] for r in records)
    total_completion = sum(r["tokens"]["completion"] for r in records)
    usage = await admin.json("GET", "/admin/usage?group_by=model")
    (row,) = usage["data"]
    assert row["group"] == PAID and row["requests"] == 5 and row["errors"] == 2
    assert row["completion_tokens"] == total_completion == 10
    assert row["prompt_tokens"] == 4 * PROMPT_TOKENS and row["cached_tokens"] == 2
    assert abs(row["cost"] - total_cost) < 1e-9
    export = await admin.get("/admin/requests.csv")
    rows = list(csv.DictReader(io.StringIO(export.body.decode())))
    assert len(rows) == 5
    assert abs(sum(float(r["cost"] or 0) for r in rows) - total_cost) < 1e-9
    metrics = (await api("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).body.decode()
    assert f'orpoll_tokens_total{{model="{PAID}",type="completion"}} {float(total_completion)}' in (
        metrics
    )
    line = next(x for x in metrics.splitlines() if x.startswith("orpoll_cost_usd_total{"))
    assert abs(float(line.rsplit(" ", 1)[1]) - total_cost) < 1e-9
    retried = sum(len(r["attempts"]) - 1 for r in page["data"] if r["attempts"])
    assert retried == 1 + len(failed_keys) - 1
    assert f"orpoll_failovers_total {float(retried)}" in metrics
    for key in KEYS:
        assert key not in metrics and key not in export.body.decode()


async def test_every_v1_request_is_recorded_once(app, fake, api, admin):
    """Refusals before any key is picked (a bad body, an unknown model list path) are records
    too, with their error; /admin is not."""
    await api("/v1/chat/completions", body="{not json")
    await api("/v1/models")
    await admin.get("/admin/key-status")
    await app.ledger.flush()
    page = await admin.json("GET", "/admin/requests?limit=10")
    routes = sorted((r["route"], r["status"]) for r in page["data"])
    assert routes == [("/v1/chat/completions", 400), ("/v1/models", 200)]
    bad = next(r for r in page["data"] if r["status"] == 400)
    assert bad["error"] == {"type": "invalid_request_error", "code": "invalid_json"}
    assert bad["attempts"] == [] and bad["key"] is None
