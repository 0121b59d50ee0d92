"""The ledger's storage: write-behind batches, exact totals, pruning, today's per-key figures
across a restart, and a kill -9 in the middle of writing (a real subprocess)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from orpoll.ledger import DAY, HOUR, NANO, Ledger, nanos
from orpoll.ledgerquery import Filters, requests_page, usage_totals
from orpoll.usage import RequestRecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_700_000_000 // DAY * DAY  # a UTC midnight


def record(i: int, t: float = T0, **kw) -> RequestRecord:
    r = RequestRecord(
        time=t,
        request_id=f"r{i}",
        route="/v1/chat/completions",
        model="m" + str(i % 3),
        status=200 if i % 4 else 429,
        key_id="k" + str(i % 2),
        key_masked="...000" + str(i % 2),
        client="c" + str(i % 5),
        prompt_tokens=i,
        completion_tokens=2 * i,
        cost=i * 1e-6,
        usage_known=True,
    )
    for name, value in kw.items():
        setattr(r, name, value)
    return r


@pytest.fixture
def ledger(tmp_path):
    led = Ledger.open(str(tmp_path), interval=0.01, clock=lambda: T0 + 3600)
    yield led
    led.close()


async def test_records_are_written_behind_and_read_back(ledger):
    for i in range(100):
        ledger.add(record(i, T0 + i))
    assert ledger.written < 100 or ledger.added == 100  # add() returned before any write
    await ledger.flush()
    assert ledger.written == 100
    page = await ledger.read(requests_page, Filters(), 30, None)
    assert page["total"] == 100 and len(page["data"]) == 30
    assert [r["request_id"] for r in page["data"][:2]] == ["r99", "r98"]
    rest = await ledger.read(requests_page, Filters(), 100, int(page["next_cursor"]))
    assert len(rest["data"]) == 70 and rest["next_cursor"] is None


async def test_usage_totals_equal_the_records(ledger):
    records = [record(i, T0 + i * 600) for i in range(300)]  # ~2 days
    for r in records:
        ledger.add(r)
    await ledger.flush()
    for group_by in ("key", "model", "client", "hour", "day"):
        rows = await ledger.read(usage_totals, group_by, None, None)
        assert sum(row["requests"] for row in rows) == 300
        assert sum(row["errors"] for row in rows) == sum(r.failed for r in records)
        assert sum(row["prompt_tokens"] for row in rows) == sum(r.prompt_tokens for r in records)
        assert sum(row["cost"] for row in rows) == pytest.approx(sum(r.cost for r in records))
    # A range of whole hours is exact, through the hour totals
    since, until = T0 + 3 * HOUR, T0 + 20 * HOUR
    inside = [r for r in records if since <= r.time < until]
    rows = await ledger.read(usage_totals, "model", since, until)
    assert sum(row["requests"] for row in rows) == len(inside)
    by_model = {row["group"]: row["completion_tokens"] for row in rows}
    assert by_model["m1"] == sum(r.completion_tokens for r in inside if r.model == "m1")


async def test_prune_drops_old_records_and_old_totals(tmp_path):
    now = T0 + 30 * DAY
    led = Ledger.open(str(tmp_path), interval=0.01, record_days=7, usage_days=20, clock=lambda: now)
    try:
        for i, age in enumerate((1, 8, 25)):
            led.add(record(i, now - age * DAY))
        await led.flush()
        # The writer prunes in the background (at once after its first batch, then hourly)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            page = await led.read(requests_page, Filters(), 10, None)
            if len(page["data"]) == 1:
                break
            await asyncio.sleep(0.01)
        assert [r["request_id"] for r in page["data"]] == ["r0"]
        days = await led.read(usage_totals, "day", None, None)
        assert sum(row["requests"] for row in days) == 2  # 25 days old is past 20
    finally:
        led.close()


async def test_today_per_key_survives_a_restart(tmp_path):
    clock = lambda: T0 + 5 * HOUR  # noqa: E731
    led = Ledger.open(str(tmp_path), interval=0.01, clock=clock)
    for i in range(10):
        led.add(record(i, T0 + HOUR))
    led.add(record(99, T0 - HOUR))  # yesterday: not today's
    today = led.today("k1")
    assert today["today_requests"] == 5 and today["today_tokens"] == sum(
        3 * i for i in range(1, 10, 2)
    )
    await led.flush()
    led.close()
    again = Ledger.open(str(tmp_path), clock=clock)
    try:
        assert again.today("k1") == today
        assert again.today("nope") == {
            "today_requests": 0,
            "today_errors": 0,
            "today_cost": 0.0,
            "today_tokens": 0,
        }
    finally:
        again.close()


async def test_filters_select_records(ledger):
    ledger.add(record(1, T0 + 1, stream=True, status=200, error_type="upstream_error"))
    ledger.add(record(2, T0 + 2, answered_model="m-answered"))
    ledger.add(record(4, T0 + 3))  # status 429
    await ledger.flush()

    async def ids(**kw):
        page = await ledger.read(requests_page, Filters(**kw), 50, None)
        return sorted(r["request_id"] for r in page["data"])

    assert await ids(status="error") == ["r1", "r4"]
    assert await ids(status="ok") == ["r2"]
    assert await ids(status="429") == ["r4"]
    assert await ids(stream=True) == ["r1"]
    assert await ids(model="m-answered") == ["r2"]
    assert await ids(model="m1") == ["r1", "r4"]
    assert await ids(key="...0000") == ["r2", "r4"]
    assert await ids(client="c4") == ["r4"]
    assert await ids(since=T0 + 2, until=T0 + 3) == ["r2"]


WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    sys.path.insert(0, {root!r})
    from orpoll.ledger import Ledger
    from orpoll.usage import RequestRecord

    async def main():
        led = Ledger.open({data!r}, interval=0.005, batch=500)
        i = 0
        while True:
            for _ in range(500):
                led.add(RequestRecord(time=time.time(), request_id=str(i), status=200,
                                      key_id="k", prompt_tokens=1, usage_known=True))
                i += 1
            await led.flush()
            print(led.written, flush=True)

    asyncio.run(main())
    """
)


def test_kill_9_loses_at_most_the_last_batch_and_never_corrupts(tmp_path):
    data = str(tmp_path / "data")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(root=ROOT, data=data)],
        stdout=subprocess.PIPE,
        text=True,
    )
    confirmed = 0
    deadline = time.monotonic() + 30
    while confirmed < 20_000 and time.monotonic() < deadline:
        confirmed = int(child.stdout.readline())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert confirmed >= 20_000
    db = sqlite3.connect(os.path.join(data, "ledger.sqlite3"))
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    written = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    assert written >= confirmed  # every acknowledged batch is there
    # Records and totals are written in one transaction: they agree after the kill.
    totals = db.execute(
        "SELECT SUM(requests), SUM(prompt_tokens) FROM usage WHERE period = ? AND dim = 'all'",
        (DAY,),
    ).fetchone()
    assert totals == (written, written)
    db.close()


async def test_totals_are_exact_with_unknown_usage_and_empty_dimensions(ledger):
    rng = random.Random(7)
    records = [
        record(
            i,
            T0 + rng.randrange(3 * DAY),
            status=rng.choice([200, 200, 429, 502]),
            key_id=rng.choice(["k1", "k2", ""]),
            client=rng.choice(["c1", ""]),
            account=rng.choice(["u1", ""]),
            prompt_tokens=rng.choice([None, rng.randrange(100)]),
            cost=rng.choice([None, rng.random() / 1000]),
        )
        for i in range(500)
    ]
    for r in records:
        ledger.add(r)
    await ledger.flush()
    total_nanos = sum(nanos(r.cost) for r in records)
    for group_by in ("hour", "day"):
        rows = await ledger.read(usage_totals, group_by, None, None)
        assert sum(row["requests"] for row in rows) == 500
        assert sum(row["errors"] for row in rows) == sum(r.failed for r in records)
        assert sum(row["prompt_tokens"] for row in rows) == sum(
            r.prompt_tokens or 0 for r in records
        )
        assert round(sum(row["cost"] for row in rows) * NANO) == total_nanos
    for group_by, field in (("key", "key_id"), ("client", "client"), ("account", "account")):
        rows = await ledger.read(usage_totals, group_by, None, None)
        assert "" not in {row["group"] for row in rows}
        assert sum(row["requests"] for row in rows) == sum(1 for r in records if getattr(r, field))


async def test_the_writer_outlives_a_database_it_cannot_open(tmp_path, caplog):
    """The writer thread opens its connection with the first record; when that fails (the
    directory gone for a moment, no descriptor left) it tries again instead of dying, and the
    records wait in memory meanwhile."""
    data, away = tmp_path / "data", tmp_path / "away"
    data.mkdir()
    ledger = Ledger.open(str(data), interval=0.02)
    data.rename(away)
    ledger.add(record(1))
    await asyncio.sleep(0.3)
    assert ledger.written == 0
    assert "cannot open" in caplog.text
    away.rename(data)
    await ledger.flush(timeout=10)
    assert ledger.written == 1
    ledger.add(record(2))
    await ledger.flush(timeout=10)
    assert ledger.written == 2
    ledger.close()
