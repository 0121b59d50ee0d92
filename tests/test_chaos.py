"""Chaos: random upstream faults of every kind on a pool of 120 keys, under concurrency, with
clients that leave mid-answer and admin changes mixed in, against ``python run.py``.

Invariants: every request that stays gets exactly one complete answer or one well-formed OpenAI
error (nothing duplicated, spliced or truncated); no key that never failed upstream is blamed for
anything; and afterwards nothing has leaked (in-flight count, descriptors, memory).

Seeded (CHAOS_SEED) and bounded; the seed is in every failure message.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from orpoll.keys import key_id
from tests.admin_helpers import PASSWORD, child_env

SEED = int(os.environ.get("CHAOS_SEED", "20261203"))
GOOD = [f"sk-or-v1-chaos-good-{i:04d}" for i in range(80)]
BAD = [f"sk-or-v1-chaos-bad-{i:04d}" for i in range(40)]
REQUESTS = 600
CONCURRENCY = 40
GOOD_ANSWER = {"chunks": 5, "interval": 0.005}


def faults(rng: random.Random) -> list[dict[str, Any]]:
    """Every kind of failure the pool must absorb, in a random order (good answers mixed in)."""
    kinds: list[dict[str, Any]] = [
        {"status": 429, "headers": {"Retry-After": "1"}},
        {"status": 401},
        {"status": 402},
        {"status": 403, "error": {"code": 403, "message": "Key limit exceeded"}},
        {"status": 408},
        {"status": 500},
        {"status": 502},
        {"status": 503},
        {"status": 524},
        {"status": 529},
        {"hang": True},
        {"chunks": 4, "drop_after": 2},
        {"chunks": 4, "mid_error": (2, {"code": 502, "message": "provider failed"})},
        {"error_first": {"code": 502, "message": "provider failed"}},
        {"inband_error": {"code": 429, "message": "rate-limited upstream"}},
        {"choice_error": {"code": 502, "message": "generation failed"}},
        {"chunks": 3, "silence": 6},
        {"chunks": 3, "first_delay": 0.3, "comments": 2},
        {"raw": [b"data: {not json at all\n\n"]},
        GOOD_ANSWER,
    ]
    return [dict(rng.choice(kinds)) for _ in range(400)]


def check_stream(body: bytes) -> str:
    """'ok' for a whole answer, 'error' for a stream that ends in one error event; else raises."""
    text = body.decode()
    assert text.endswith("\n\n"), f"stream cut mid-event: {text[-200:]!r}"
    payloads = [
        line[len("data: ") :]
        for event in text.split("\n\n")
        for line in event.split("\n")
        if line.startswith("data: ")
    ]
    assert payloads and payloads[-1] == "[DONE]", f"no [DONE] at the end: {text[-300:]!r}"
    assert payloads.count("[DONE]") == 1, "[DONE] twice"
    tokens, errors = [], 0
    for p in payloads[:-1]:
        obj = json.loads(p)  # never broken JSON
        if obj.get("error"):
            errors += 1
            assert p is payloads[-2], "an error event that is not the last"
            assert {"message", "code"} <= set(obj["error"]), obj
            continue
        for choice in obj.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                tokens.append(content)
    assert errors <= 1
    expected = [f"tok{i} " for i in range(len(tokens))]
    assert tokens == expected, f"duplicated or spliced tokens: {tokens}"
    return "error" if errors else "ok"


def check_error(status: int, body: bytes) -> None:
    obj = json.loads(body)
    err = obj["error"]
    assert isinstance(err["message"], str) and err["message"], obj
    assert {"type", "code", "param"} <= set(err), obj
    assert 400 <= status < 600


class Chaos:
    def __init__(self, url: str, rng: random.Random) -> None:
        self.url, self.rng = url, rng
        self.client = AsyncHTTPClient(force_instance=True, max_clients=CONCURRENCY + 8)
        self.outcomes: dict[str, int] = {}
        self.cookie = ""

    def note(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    async def chat(self, i: int) -> None:
        rng = random.Random(f"{SEED}-{i}")  # the same request i whatever the interleaving
        stream = rng.random() < 0.5
        leave = rng.random() < 0.1
        body = json.dumps(
            {
                "model": "openai/gpt-4o",
                "messages": [{"role": "user", "content": f"request {i}"}],
                "stream": stream,
            }
        )
        if leave:
            return await self.leave(body, rng.random() < 0.5)
        if rng.random() < 0.05:
            return await self.misbehave(rng)
        resp = await self.client.fetch(
            HTTPRequest(
                self.url + "/v1/chat/completions",
                method="POST",
                body=body,
                headers={"Content-Type": "application/json"},
                request_timeout=60,
            ),
            raise_error=False,
        )
        assert resp.code != 599, f"request {i}: transport error {resp.error}"
        if resp.code != 200:
            check_error(resp.code, resp.body)
            return self.note(f"error {resp.code}")
        if stream:
            return self.note("stream " + check_stream(resp.body))
        answer = json.loads(resp.body)
        content = answer["choices"][0]["message"]["content"]
        assert content.startswith("answer from "), answer
        self.note("json ok")

    async def misbehave(self, rng: random.Random) -> None:
        """A client's own fault: it gets a 4xx, and no key pays for it."""
        method, path, body = rng.choice(
            [
                ("GET", "/v1/%00", None),
                ("GET", "/v1/a%20b", None),
                ("GET", "/v1/%7f", None),
                ("GET", "/v1/%C3%A9", None),
                ("GET", "/v1/..%2f..%2f_stats", None),
                ("POST", "/v1/%2e%2e/%2e%2e/_control/defaults", "{}"),
                ("POST", "/v1/chat/completions", "{not json"),
                ("POST", "/v1/chat/completions", "[" * 100_000 + "]" * 100_000),
                ("POST", "/v1/chat/completions", '{"model": 5, "messages": []}'),
            ]
        )
        resp = await self.client.fetch(
            HTTPRequest(
                self.url + path,
                method=method,
                body=body,
                headers={"Content-Type": "application/json"},
                allow_nonstandard_methods=True,
            ),
            raise_error=False,
        )
        assert 400 <= resp.code < 500, (path, resp.code, resp.body[:300])
        check_error(resp.code, resp.body)
        self.note("refused")

    async def leave(self, body: str, after_first_bytes: bool) -> None:
        """A client that goes away: after the request, or after the first bytes of the answer."""
        host, port = self.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body.encode())
        await writer.drain()
        if after_first_bytes:
            try:
                await asyncio.wait_for(reader.read(100), 5)
            except TimeoutError:
                pass
        writer.close()
        self.note("left")

    async def admin(self, path: str, obj: Any = None, method: str = "POST") -> Any:
        resp = await self.client.fetch(
            HTTPRequest(
                self.url + path,
                method=method,
                body=json.dumps(obj)
                if obj is not None
                else (None if method in ("GET", "DELETE") else ""),
                headers={"Content-Type": "application/json", "Cookie": self.cookie},
            ),
            raise_error=False,
        )
        assert resp.code == 200, (path, resp.code, resp.body[:300])
        for value in resp.headers.get_list("Set-Cookie"):
            self.cookie = value.split(";", 1)[0]
        return json.loads(resp.body)

    async def meddle(self, stop: asyncio.Event) -> None:
        """Admin changes while requests run: keys added and deleted, weights, pause/resume."""
        n = 0
        while not stop.is_set():
            key = f"sk-or-v1-chaos-new-{n:04d}"
            await self.admin("/admin/add-key", {"openrouter_api_key": key})
            good = key_id(self.rng.choice(GOOD))
            await self.admin(f"/admin/keys/{good}/weight", {"weight": self.rng.randint(1, 5)})
            await self.admin(f"/admin/keys/{good}/disable")
            await asyncio.sleep(0.2)
            await self.admin(f"/admin/keys/{good}/enable")
            await self.admin(f"/admin/delete-key/{key_id(key)}", method="DELETE")
            n += 1
        self.note(f"admin rounds {n}")

    async def run(self) -> None:
        await self.admin("/admin/login", {"password": PASSWORD})
        queue = iter(range(REQUESTS))

        async def worker() -> None:
            for i in queue:
                await self.chat(i)

        stop = asyncio.Event()
        meddler = asyncio.ensure_future(self.meddle(stop))
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), 300)
        stop.set()
        await meddler


def process_usage(pid: int) -> tuple[int, int]:
    """(open descriptors, RSS in KB) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss


def settle(proc, admin_call, seconds: float = 30) -> dict:
    """Wait until nothing is in flight; the app status then."""
    deadline = time.monotonic() + seconds
    while True:
        status = admin_call()
        if status["requests"]["inflight"] == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_chaos_every_request_is_whole_or_a_clean_error(upstream, spawn, data_dir):
    rng = random.Random(SEED)
    for key in GOOD:
        upstream.state.script(key, GOOD_ANSWER)
    for key in BAD:
        upstream.state.script(key, *faults(rng))
    upstream.state.default = GOOD_ANSWER
    env = child_env(
        upstream,
        data_dir,
        ADMIN_PASSWORD=PASSWORD,
        OPENROUTER_API_KEYS=",".join(GOOD + BAD),
        LOG_LEVEL="warn",
        RETRY_WITH_NEW_KEY_COUNT="4",
        REQUEST_TIMEOUT_SECONDS="3",
        FIRST_BYTE_TIMEOUT_SECONDS="2",
        KEY_FAILURE_COOLDOWN_SECONDS="1",
        KEY_MAX_COOLDOWN_SECONDS="2",
        KEY_CREDIT_COOLDOWN_SECONDS="2",
        HEALTH_CHECK_INTERVAL_SECONDS="2",
    )
    proc = spawn(env)
    pid = proc.proc.pid

    def app_status() -> dict:
        async def get() -> dict:
            c = Chaos(proc.url, rng)
            await c.admin("/admin/login", {"password": PASSWORD})
            return await c.admin("/admin/app-status", method="GET")

        return asyncio.run(get())

    # Warm up (curl's connection cache, Tornado's buffers), then take the baseline.
    async def warm_up() -> None:
        warm = Chaos(proc.url, random.Random(SEED + 1))
        await asyncio.wait_for(asyncio.gather(*(warm.chat(REQUESTS + i) for i in range(60))), 120)

    asyncio.run(warm_up())
    settle(proc, app_status)
    time.sleep(1)
    fds_before, rss_before = process_usage(pid)

    async def unleash() -> dict[str, int]:
        chaos = Chaos(proc.url, rng)
        await chaos.run()
        return chaos.outcomes

    outcomes = asyncio.run(unleash())
    answered = sum(
        v for k, v in outcomes.items() if k not in ("left", "refused") and not k.startswith("admin")
    )
    whole = outcomes.get("json ok", 0) + outcomes.get("stream ok", 0)
    assert answered + outcomes.get("left", 0) + outcomes.get("refused", 0) == REQUESTS, (
        SEED,
        outcomes,
    )
    assert whole >= 0.8 * answered, (SEED, outcomes)

    status = settle(proc, app_status)
    assert status["requests"]["inflight"] == 0, (SEED, status["requests"])

    # No key that never failed upstream was blamed for anything (clients leaving included).
    async def rows() -> list[dict]:
        c = Chaos(proc.url, rng)
        await c.admin("/admin/login", {"password": PASSWORD})
        out, page = [], 1
        while True:
            data = await c.admin(f"/admin/key-status?limit=500&page={page}", method="GET")
            out += data["keys"]
            if page >= data["total_pages"]:
                return out
            page += 1

    good_ids = {key_id(k) for k in GOOD}
    for row in asyncio.run(rows()):
        if row["id"] in good_ids:
            assert row["status"] == "available", (SEED, row)
            assert row["errors"] == 0 and row["failures"] == 0, (SEED, row)

    # Nothing leaked: descriptors and memory come back to the warm baseline.
    time.sleep(2)
    fds_after, rss_after = process_usage(pid)
    assert fds_after <= fds_before + 16, (SEED, fds_before, fds_after)
    assert rss_after <= rss_before + 40_000, (SEED, rss_before, rss_after)
    assert proc.stop() == 0
