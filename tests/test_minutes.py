"""The ledger's per-minute figures: counted as records come, the same after a restart (read
back from the records), and only the last day and an hour kept."""

from __future__ import annotations

import pytest

from orpoll.ledger import Ledger
from orpoll.minutes import MINUTE, SPAN
from orpoll.usage import RequestRecord

T0 = 1_780_000_000 // 86400 * 86400  # a UTC midnight


def record(at: float, *, status: int = 200, cost: float | None = 0.25) -> RequestRecord:
    r = RequestRecord(time=at, status=status, cost=cost, prompt_tokens=2, completion_tokens=3)
    r.serve("k1", "...abcd")
    return r


async def test_minutes_are_counted_and_survive_a_restart(tmp_path):
    now = T0 + 10 * 3600
    led = Ledger.open(str(tmp_path), interval=0.01, clock=lambda: now)
    for at, status in ((now - 119, 200), (now - 100, 502), (now - 30, 200), (now - 2 * 86400, 200)):
        led.add(record(at, status=status))
    led.add(record(now - 5, cost=None))
    rows = led.minutes_between(now - 3600, now)
    assert [r["time"] for r in rows] == [now - 120, now - 60]
    assert [(r["requests"], r["errors"]) for r in rows] == [(2, 1), (2, 0)]
    assert rows[0]["cost"] == pytest.approx(0.5) and rows[1]["cost"] == pytest.approx(0.25)
    assert rows[0]["prompt_tokens"] == 4 and rows[0]["completion_tokens"] == 6
    assert rows[0]["group"].endswith("+00:00")
    assert led.minutes_between(now - 60, now) == rows[1:]
    await led.flush()
    led.close()
    again = Ledger.open(str(tmp_path), clock=lambda: now)
    try:
        assert again.minutes_between(now - 3600, now) == rows
        assert again.minutes_between(now - 3 * 86400, now) == rows  # 2 days back is not held
    finally:
        again.close()


async def test_only_the_last_day_and_an_hour_is_kept(tmp_path):
    led = Ledger.open(str(tmp_path), interval=0.01, clock=lambda: T0)
    try:
        for minute in range(SPAN + 2 * MINUTE):
            led.add(record(T0 + minute * MINUTE))
        newest = T0 + (SPAN + 2 * MINUTE - 1) * MINUTE
        led.fold()
        assert len(led.minutes.slots) <= SPAN + MINUTE
        kept = led.minutes_between(T0, newest + MINUTE)
        assert kept[-1]["time"] == newest and len(kept) >= SPAN
        led.add(record(T0))  # a late record from before the window: not counted
        assert led.minutes_between(T0, T0 + MINUTE) == []
    finally:
        await led.flush()
        led.close()
