"""Benchmark of the dashboard's data calls: each API call the dashboard and the Requests page
make on load, through a real server with an admin session, with 10,000 keys pooled and a
million requests recorded (spread over 7 days, the keys' ids in the records).

Run: ``python -m bench.dashboard [--records 1000000] [--keys 10000]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time

from bench.ledger import records, serve, timed_gets
from orpoll.keys import key_id
from orpoll.ledger import Ledger

DAY = 86400


def calls(now: float) -> list[str]:
    """What the pages ask for on load (static/dashboard.js, usage.js, requests.js)."""
    today = int(now // DAY * DAY)
    first_day = today - 29 * DAY
    return [
        "/admin/key-status?page=1&limit=50&sort=added&status=&q=",
        "/admin/key-status?page=1&limit=50&sort=-today_cost&status=&q=",
        "/admin/overview",
        f"/admin/usage?group_by=minute&since={now - DAY:.3f}",
        f"/admin/usage?group_by=day&since={first_day}",
        f"/admin/usage?group_by=key&since={first_day}&top=10",
        f"/admin/usage?group_by=model&since={first_day}&top=10",
        f"/admin/usage?group_by=client&since={first_day}&top=10",
        "/admin/requests?limit=50",
    ]


async def main(n: int, n_keys: int, span: float) -> None:
    now = time.time()
    data_dir = tempfile.mkdtemp(prefix="orpoll-dash-bench-")
    app, server, base, cookie = await serve(data_dir)
    keys = [f"sk-or-v1-{i:064x}" for i in range(n_keys)]
    for key in keys:
        app.scheduler.add(key, 1)  # type: ignore[attr-defined]
    ids = [key_id(k) for k in keys]
    print(f"building {n:,} records over {span / DAY:g} days ...", flush=True)
    pool = records(n, now - 60, span)
    for i, r in enumerate(pool):  # the records name the pooled keys
        kid = ids[(i * 7919) % n_keys]
        r.attempts[-1].key = kid
        r.key_id = kid
    ledger = app.ledger  # type: ignore[attr-defined]
    for r in pool:
        ledger.add(r)
    await ledger.flush(timeout=900)
    print("\n| call | median ms |\n|---|---|")
    for path in calls(time.time()):
        ms = await timed_gets(base, cookie, path)
        shown = re.sub(r"since=[0-9.]+", "since=<t>", path)
        print(f"| `GET {shown}` | {ms:.1f} |", flush=True)
    server.stop()
    await app.shutdown()  # type: ignore[attr-defined]
    start = time.perf_counter()
    Ledger.open(data_dir).close()  # reads the last 25 h of minutes back from the records
    ms = (time.perf_counter() - start) * 1000
    print(f"| opening the ledger (per-minute figures read back) | {ms:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=7, help="the span the records cover")
    args = parser.parse_args()
    asyncio.run(main(args.records, args.keys, args.days * DAY))
