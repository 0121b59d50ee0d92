"""Benchmark of the request ledger: the cost of ``Ledger.add`` on the loop, write throughput,
``/admin/usage`` and the first page of ``/admin/requests`` over a million records (through a
real server and an admin session), and disk use per million records.

Run: ``python -m bench.ledger [--records 1000000]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time

from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from orpoll.app import make_app
from orpoll.config import load_settings
from orpoll.ledger import DB_NAME, Ledger
from orpoll.usage import RequestRecord

PASSWORD = "bench-admin-password"
KEYS = [f"{i:012x}" for i in range(100)]
MODELS = [f"vendor/model-{i}" for i in range(20)]


def records(n: int, now: float, span: float = 7 * 86400) -> list[RequestRecord]:
    """``n`` plausible records over the last ``span`` seconds (100 keys, 20 models, 10 clients,
    two attempts on one request in ten)."""
    rng = random.Random(1)
    out = []
    for i in range(n):
        r = RequestRecord(
            time=now - span + span * i / n,
            request_id=f"abcdef-{i}",
            route="/v1/chat/completions",
            model=rng.choice(MODELS),
            stream=i % 3 != 0,
            status=200 if i % 20 else 429,
            client=f"{rng.randrange(10):08x}",
            client_addr="10.0.0.1",
            ttfb_ms=rng.uniform(50, 900),
            duration_ms=rng.uniform(200, 20000),
            bytes_out=rng.randrange(500, 20000),
            prompt_tokens=rng.randrange(10, 4000),
            completion_tokens=rng.randrange(1, 1000),
            cached_tokens=0,
            reasoning_tokens=0,
            cost=rng.uniform(0, 0.01),
            generation_id=f"gen-{i}",
            usage_known=True,
        )
        r.answered_model = r.model
        if i % 10 == 0:
            r.attempt(rng.choice(KEYS), "key_rate_limit", 429, 12.0)
        key = rng.choice(KEYS)
        r.attempt(key, "ok", 200, 300.0)
        r.serve(key, "...abcd", f"user_{int(key, 16) % 5}")
        out.append(r)
    return out


async def add_cost(ledger: Ledger, batch: list[RequestRecord]) -> float:
    """Microseconds per ``add`` as the loop sees it (the writer thread runs meanwhile)."""
    start = time.perf_counter()
    for r in batch:
        ledger.add(r)
    spent = time.perf_counter() - start
    await ledger.flush(timeout=600)
    return spent / len(batch) * 1e6


async def throughput(ledger: Ledger, batch: list[RequestRecord]) -> float:
    """Records per second from the first ``add`` until the last one is committed."""
    start = time.perf_counter()
    for r in batch:
        ledger.add(r)
    await ledger.flush(timeout=600)
    return len(batch) / (time.perf_counter() - start)


async def timed_gets(base: str, cookie: str, path: str, rounds: int = 20) -> float:
    """Median milliseconds of GET ``path`` through the server, with the admin session."""
    http = AsyncHTTPClient()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        resp = await http.fetch(base + path, headers={"Cookie": cookie})
        times.append((time.perf_counter() - start) * 1000)
        assert resp.code == 200, resp.body
    return statistics.median(times)


async def serve(data_dir: str) -> tuple[object, HTTPServer, str, str]:
    env = {"DATA_DIR": data_dir, "ADMIN_PASSWORD": PASSWORD, "LOG_LEVEL": "warning"}
    app = make_app(load_settings(env))
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    base = f"http://127.0.0.1:{port}"
    resp = await AsyncHTTPClient().fetch(
        base + "/admin/login",
        method="POST",
        body=json.dumps({"password": PASSWORD}),
        headers={"Content-Type": "application/json"},
    )
    cookie = "; ".join(c.split(";")[0] for c in resp.headers.get_list("Set-Cookie"))
    return app, server, base, cookie


async def main(n: int) -> None:
    now = time.time()
    data_dir = tempfile.mkdtemp(prefix="orpoll-ledger-bench-")
    print(f"building {n} records ...", flush=True)
    pool = records(n, now)
    app, server, base, cookie = await serve(data_dir)
    ledger = app.ledger  # type: ignore[attr-defined]
    rows = []
    # Live traffic: records of the last minute, as requests finish. The tally counts each
    # into its (minute, key, model, account, client) and folds per combination, so this is
    # the common case; the pool spread over 7 days (a combination per record) is the worst.
    live = records(50_000, now, span=60)
    rows.append(
        ("`Ledger.add` on the loop, live traffic", f"{await add_cost(ledger, live):.2f} µs")
    )
    rate = await throughput(ledger, records(50_000, now, span=60))
    rows.append(("write throughput, live traffic (50,000 records)", f"{rate:,.0f} records/s"))
    spread = f"{await add_cost(ledger, pool[:50_000]):.2f} µs"
    rows.append(("`Ledger.add` on the loop, records spread over 7 days", spread))
    rest = pool[50_000:]
    rate = await throughput(ledger, rest)
    rows.append((f"write throughput, spread ({len(rest):,} records)", f"{rate:,.0f} records/s"))
    for path in (
        "/admin/usage?group_by=model",
        "/admin/usage?group_by=key",
        "/admin/usage?group_by=day",
        f"/admin/usage?group_by=hour&since={int(now - 86400)}",
        "/admin/requests?limit=50",
        "/admin/requests?limit=50&status=error",
        f"/admin/requests?limit=50&key={KEYS[7]}",
    ):
        ms = await timed_gets(base, cookie, path)
        rows.append((f"`GET {path}` over {n + 100_000:,} records (median)", f"{ms:.1f} ms"))
    size = sum(
        os.path.getsize(os.path.join(data_dir, name))
        for name in os.listdir(data_dir)
        if name.startswith(DB_NAME)
    )
    written = n + 100_000  # the pool and the two minutes of live traffic
    rows.append(("disk use per million records", f"{size / written * 1e6 / 2**20:.0f} MiB"))
    server.stop()
    await app.shutdown()  # type: ignore[attr-defined]
    print("\n| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().records))
