"""The measured scenarios. Each takes the run context and returns a plain dict of medians
(``direct`` = the fake upstream alone, ``proxy`` = through orpoll) plus raw repetitions."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

from bench import loadgen, procs
from orpoll.fast.shards import SHARD_IDLE_SECONDS


@dataclass
class Ctx:
    """What every scenario needs: options, the fake upstream, and the long-lived proxy."""

    reps: int
    quick: bool
    slow_streams: int
    slow_rate: int  # new slow streams per second while they ramp up (both paths)
    nofile: int
    fake: procs.Child
    fake_port: int
    proxy: procs.Child | None = None
    proxy_port: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.fake_port}/api/v1/chat/completions"

    def proxy_url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.proxy_port}/v1/chat/completions"


def medians(runs: list[dict]) -> dict:
    """Median of every numeric top-level field across repetitions."""
    out = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if vals and not isinstance(runs[0][key], bool):
            out[key] = statistics.median(vals)
    return out


def measured(ctx: Ctx, proxy: procs.Child | None, run, counter: str) -> dict:
    """Call ``run()`` (a load generator) and add CPU shares, in percent of one core, of the fake
    and the proxy, the proxy's CPU in seconds, and the upstream's request count ``counter``."""
    procs.fake_stats(ctx.fake_port, reset=True)
    p0 = procs.group_cpu_seconds(proxy.pid) if proxy else 0.0
    f0, m0 = procs.cpu_seconds(ctx.fake.pid), procs.machine_busy_seconds()
    t0 = time.monotonic()
    res = run()
    wall = time.monotonic() - t0
    res["fake_core_pct"] = 100 * (procs.cpu_seconds(ctx.fake.pid) - f0) / wall
    res["client_core_pct"] = 100 * res["client_cpu_s"] / wall
    m1 = procs.machine_busy_seconds()
    res["machine_core_pct"] = 100 * (m1[0] - m0[0]) / wall
    res["irq_core_pct"] = 100 * (m1[1] - m0[1]) / wall
    ours = res["fake_core_pct"] + res["client_core_pct"] + res["irq_core_pct"]
    if proxy:
        res["proxy_cpu_s"] = procs.group_cpu_seconds(proxy.pid) - p0
        res["proxy_core_pct"] = 100 * res["proxy_cpu_s"] / wall
        ours += res["proxy_core_pct"]
    # Anything else running on the machine (other jobs) competes with the proxy; a large
    # share here makes the run suspect.
    res["other_core_pct"] = res["machine_core_pct"] - ours
    res["upstream_requests"] = procs.fake_stats(ctx.fake_port).get(counter, 0)
    return res


# --- non-stream at 64 connections (wrk) ------------------------------------------------------


def _wrk_once(
    ctx: Ctx, url: str, seconds: float, relay: procs.Child | None, headers: dict | None = None
) -> dict:
    """One wrk run; with ``relay`` (orpoll or the bare relay) also its CPU per request."""
    res = measured(ctx, relay, lambda: loadgen.wrk(url, seconds, headers=headers), "chat_json")
    if relay is not None:
        res["proxy_cpu_ms_per_req"] = 1000 * res["proxy_cpu_s"] / max(1, res["requests"])
    return res


def nonstream(ctx: Ctx) -> dict:
    """wrk -c64 POST non-stream: direct, the bare relay (the floor) and orpoll, interleaved,
    ``reps`` times each."""
    seconds = 3 if ctx.quick else 8
    bare, bare_port = procs.start_bare_relay(ctx.fake_port)
    # orpoll as shipped: LOG_LEVEL=info, an access line per request (to a file here).
    logged, logged_port = procs.start_proxy("logged", ctx.fake_port, LOG_LEVEL="info")
    try:
        procs.wait_ready(logged, logged_port)
        loadgen.wrk(ctx.direct_url, 1)  # warm-up: connection pools, caches, lazy imports
        loadgen.wrk(ctx.proxy_url(bare_port), 1)
        loadgen.wrk(ctx.proxy_url(), 1 if ctx.quick else 2)
        loadgen.wrk(ctx.proxy_url(logged_port), 1)
        direct, floor, proxy, with_log, sdk = [], [], [], [], []
        for _ in range(ctx.reps):
            direct.append(_wrk_once(ctx, ctx.direct_url, seconds, None))
            floor.append(_wrk_once(ctx, ctx.proxy_url(bare_port), seconds, bare))
            proxy.append(_wrk_once(ctx, ctx.proxy_url(), seconds, ctx.proxy))
            with_log.append(_wrk_once(ctx, ctx.proxy_url(logged_port), seconds, logged))
            # What a real client sends: the OpenAI SDK's 17 header lines, not wrk's 4.
            sdk.append(_wrk_once(ctx, ctx.proxy_url(), seconds, ctx.proxy, loadgen.SDK_HEADERS))
    finally:
        bare.stop()
        logged.stop()
    cpu = "proxy_cpu_ms_per_req"
    ratio = [p[cpu] / b[cpu] for p, b in zip(proxy, floor, strict=True)]
    return {
        "seconds": seconds,
        "direct": medians(direct),
        "bare": medians(floor),
        "proxy": medians(proxy),
        "logged": medians(with_log),
        "sdk_headers": medians(sdk),
        "cpu_vs_bare": statistics.median(ratio),
        "runs": {"direct": direct, "bare": floor, "proxy": proxy, "logged": with_log, "sdk": sdk},
    }


# --- 200 concurrent fast streams -------------------------------------------------------------


def _streams_once(ctx: Ctx, url: str, n: int, relay: procs.Child | None) -> dict:
    # Workers start spread over one stream's length (200 ms), so arrivals are steady at
    # ~1000/s instead of 200 requests landing at once every 200 ms for the whole run.
    def run() -> dict:
        return loadgen.streamload(url, c=200, n=n, chunks=20, interval_ms=10, ramp_ms=200)

    res = measured(ctx, relay, run, "chat_stream")
    if relay is not None:
        res["proxy_cpu_ms_per_stream"] = 1000 * res["proxy_cpu_s"] / n
    return res


def streams200(ctx: Ctx) -> dict:
    """200 concurrent streams of 20 chunks x 10 ms: direct, the bare relay and orpoll,
    interleaved; added time to first chunk is paired per repetition."""
    n = 1000 if ctx.quick else 3000
    bare, bare_port = procs.start_bare_relay(ctx.fake_port)
    runs: dict[str, list[dict]] = {"direct": [], "bare": [], "proxy": []}
    try:
        urls = {
            "direct": (ctx.direct_url, None),
            "bare": (ctx.proxy_url(bare_port), bare),
            "proxy": (ctx.proxy_url(), ctx.proxy),
        }
        for url, _ in urls.values():  # warm-up
            loadgen.streamload(url, c=200, n=400, chunks=5, interval_ms=10)
        for _ in range(ctx.reps):
            for name, (url, relay) in urls.items():
                runs[name].append(_streams_once(ctx, url, n, relay))
    finally:
        bare.stop()
    direct, proxy = runs["direct"], runs["proxy"]
    out = {}
    for name in ("bare", "proxy"):
        pairs = list(zip(runs[name], direct, strict=True))
        prefix = "bare_" if name == "bare" else ""
        for pct in ("p50", "p99"):
            key = f"ttfc_ms_{pct}"
            added = [r[key] - d[key] for r, d in pairs]
            out[f"{prefix}ttfc_added_{pct}_ms"] = statistics.median(added)
        out[f"{prefix}ratio"] = statistics.median(
            r["streams_per_s"] / d["streams_per_s"] for r, d in pairs
        )
    # Unloaded baseline: one stream at a time, so added TTFC here is pure per-hop latency and
    # any extra under load is queueing in the proxy.
    one_d = loadgen.streamload(ctx.direct_url, c=1, n=100, chunks=2, interval_ms=10)
    one_p = loadgen.streamload(ctx.proxy_url(), c=1, n=100, chunks=2, interval_ms=10)
    return {
        "n": n,
        "direct": medians(direct),
        "bare": medians(runs["bare"]),
        "proxy": medians(proxy),
        "ttfc_added_c1_p50_ms": one_p["ttfc_ms_p50"] - one_d["ttfc_ms_p50"],
        "ttfc_added_c1_p99_ms": one_p["ttfc_ms_p99"] - one_d["ttfc_ms_p99"],
        **out,
        "runs": runs,
    }


# --- many slow streams -----------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples VmRSS of one process every 100 ms and keeps the maximum (backs up VmHWM)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.halt = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.1):
            self.peak_kb = max(self.peak_kb, procs.status_kb(self.pid, "VmRSS"))


def _slow_run(url: str, c: int, ramp_ms: int):
    return lambda: loadgen.streamload(url, c=c, n=c, chunks=10, interval_ms=500, ramp_ms=ramp_ms)


def _fresh_proxy(ctx: Ctx, rep: int) -> tuple[procs.Child, int]:
    proxy, port = procs.start_proxy(f"slow{rep}", ctx.fake_port, max_conns=12_000)
    procs.wait_ready(proxy, port)
    return proxy, port


def _slow_proxy_once(ctx: Ctx, c: int, ramp_ms: int, start, after_s: float = 0) -> dict:
    """A fresh relay (``start()`` -> ready (child, port)) per repetition, so memory kept by
    earlier scenarios does not blur the peak. ``after_s``: also RSS and open descriptors that
    long after the burst (what an idle proxy keeps of it)."""
    proxy, port = start()
    try:
        loadgen.streamload(ctx.proxy_url(port), c=50, n=100, chunks=3, interval_ms=10)
        time.sleep(0.5)
        idle_kb = procs.status_kb(proxy.pid, "VmRSS")
        hwm_reset = procs.reset_hwm(proxy.pid)
        sampler = RssSampler(proxy.pid)
        sampler.start()
        try:
            res = measured(ctx, proxy, _slow_run(ctx.proxy_url(port), c, ramp_ms), "chat_stream")
        finally:
            sampler.halt.set()
            sampler.join()
        peak_kb = max(sampler.peak_kb, procs.status_kb(proxy.pid, "VmHWM") if hwm_reset else 0)
        fake = procs.fake_stats(ctx.fake_port)
        # Per stream *held at once*: when the proxy falls behind, fewer than c are open at the
        # peak, and dividing by c would flatter it.
        held = max(1, min(c, int((fake or {}).get("max_active") or c)))
        if after_s:
            time.sleep(after_s)
            res.update(
                after_s=after_s,
                after_rss_mb=procs.status_kb(proxy.pid, "VmRSS") / 1024,
                after_fds=procs.open_fds(proxy.pid),
            )
        res.update(
            listen_backlog=procs.listen_backlog(port),
            idle_rss_mb=idle_kb / 1024,
            peak_rss_mb=peak_kb / 1024,
            kb_per_stream=(peak_kb - idle_kb) / held,
            streams_held=held,
            hwm_reset=hwm_reset,
            fake=fake,
            log=procs.log_problems(proxy),
            proxy_alive=proxy.alive(),
        )
        return res
    finally:
        proxy.stop()


AFTER_KEYS = ("after_s", "after_rss_mb", "after_fds", "idle_rss_mb")


def slow_streams(ctx: Ctx) -> dict:
    """C streams of 10 chunks x 500 ms, all open at once; completeness, lateness, RSS/stream."""
    c = ctx.slow_streams
    # The proxy holds two sockets per stream (client + upstream) under one RLIMIT_NOFILE.
    cap = (ctx.nofile - 100) // 2
    if c > cap:
        ctx.notes.append(
            f"slow streams capped at {cap} (asked {c}): RLIMIT_NOFILE hard limit "
            f"is {ctx.nofile} and the proxy needs 2 fds per stream"
        )
        c = cap
    ramp_ms = int(1000 * c / ctx.slow_rate)
    direct, proxy = [], []
    for rep in range(ctx.reps):
        d = measured(ctx, None, _slow_run(ctx.direct_url, c, ramp_ms), "chat_stream")
        d["fake"] = procs.fake_stats(ctx.fake_port)
        direct.append(d)
        # Once: what the proxy keeps after the burst, once its idle curl shards are closed.
        after = SHARD_IDLE_SECONDS + 5 if rep == 0 else 0
        proxy.append(_slow_proxy_once(ctx, c, ramp_ms, lambda r=rep: _fresh_proxy(ctx, r), after))
    # The floor once: the bare relay with Tornado's curl defaults, for RSS per stream.
    bare = _slow_proxy_once(ctx, c, ramp_ms, lambda: procs.start_bare_relay(ctx.fake_port, 12_000))
    return {
        "c": c,
        "ramp_ms": ramp_ms,
        "direct": medians(direct),
        "bare": {k: bare.get(k) for k in ("kb_per_stream", "incomplete", "late_over_1s")},
        "proxy": medians(proxy),
        "proxy_last": {k: proxy[-1][k] for k in ("fake", "log", "proxy_alive", "errors")},
        "after": {k: proxy[0].get(k) for k in AFTER_KEYS},
        "direct_fake_last": direct[-1]["fake"],
        "runs": {"direct": direct, "proxy": proxy},
    }


# --- cold start, key counts, admin -----------------------------------------------------------


def cold_start(ctx: Ctx) -> dict:
    """Seconds from spawning ``python run.py`` to the first answered chat completion."""
    times, statuses, rss_mb = [], [], []
    for rep in range(ctx.reps):
        proxy, port = procs.start_proxy(f"cold{rep}", ctx.fake_port)
        try:
            status, deadline = 0, time.monotonic() + 30
            while status == 0 and time.monotonic() < deadline and proxy.alive():
                try:
                    status = procs.chat_once(port, timeout=10)
                except OSError:
                    time.sleep(0.005)
            if status != 200:
                raise RuntimeError(f"no answer (status {status}): {proxy.log_tail(8)}")
            times.append(time.monotonic() - proxy.t_spawn)
            statuses.append(status)
            time.sleep(0.3)
            rss_mb.append(procs.status_kb(proxy.pid, "VmRSS") / 1024)
        finally:
            proxy.stop()
    return {
        "seconds": statistics.median(times),
        "rss_2_keys_mb": statistics.median(rss_mb),  # baseline for the 100k-key figure
        "runs": times,
        "statuses": statuses,
    }


def admin_session(port: int) -> tuple[dict, str]:
    """Log in through the JSON admin API; returns (headers to send, error text or '')."""
    jar = SimpleCookie()
    # A GET first picks up an _xsrf cookie if the proxy sets one; JSON clients then echo it.
    status, hdrs, _ = procs.http_call(port, "GET", "/admin/login")
    for raw in hdrs.get_all("Set-Cookie") or []:
        jar.load(raw)
    headers = {}
    if "_xsrf" in jar:
        headers["X-XSRFToken"] = jar["_xsrf"].value
    headers["Cookie"] = "; ".join(f"{k}={m.value}" for k, m in jar.items())
    body = {"password": procs.ADMIN_PASSWORD}
    status, hdrs, text = procs.http_call(port, "POST", "/admin/login", body, headers)
    if status >= 400:
        return headers, f"login HTTP {status}: {text[:200]!r}"
    for raw in hdrs.get_all("Set-Cookie") or []:
        jar.load(raw)
    headers["Cookie"] = "; ".join(f"{k}={m.value}" for k, m in jar.items())
    return headers, ""


def time_key_status(port: int, times: int) -> dict:
    """Median/max ms of GET /admin/key-status?page=1&limit=50; 'na' explains a skip."""
    headers, err = admin_session(port)
    if err:
        return {"na": err}
    path = "/admin/key-status?page=1&limit=50"
    status, _, body = procs.http_call(port, "GET", path, headers=headers, timeout=30)
    if status != 200:
        return {"na": f"key-status HTTP {status}: {body[:200]!r}"}
    samples = []
    for _ in range(times):
        t0 = time.perf_counter()
        status, _, body = procs.http_call(port, "GET", path, headers=headers, timeout=30)
        samples.append(1000 * (time.perf_counter() - t0))
    try:
        listed = len(json.loads(body).get("keys", []))
    except (ValueError, AttributeError):
        listed = -1
    return {
        "median_ms": statistics.median(samples),
        "max_ms": max(samples),
        "bytes": len(body),
        "keys_listed": listed,
        "status": status,
    }


def key_status(ctx: Ctx) -> dict:
    """Admin key-status page latency with 10,000 keys loaded."""
    proxy, port = procs.start_proxy("keys10k", ctx.fake_port, n_keys=10_000)
    try:
        ready_s = procs.wait_ready(proxy, port, timeout=120)
        return {"ready_s": ready_s, **time_key_status(port, 20), "log": procs.log_problems(proxy)}
    finally:
        proxy.stop()


def keys_idle(ctx: Ctx) -> dict:
    """RSS once ready with 100,000 keys (via .env), then one chat request and key-status."""
    proxy, port = procs.start_proxy("keys100k", ctx.fake_port, n_keys=100_000)
    try:
        ready_s = procs.wait_ready(proxy, port, timeout=300)
        time.sleep(0.5)
        rss_mb = procs.status_kb(proxy.pid, "VmRSS") / 1024
        chat_status = procs.chat_once(port)
        ks = time_key_status(port, 5)
        return {
            "ready_s": ready_s,
            "rss_mb": rss_mb,
            "chat_status": chat_status,
            "key_status_100k": ks,
            "log": procs.log_problems(proxy),
        }
    finally:
        proxy.stop()


def sweep(ctx: Ctx) -> dict:
    """Non-stream p99 (wrk -c64) on a 10,000-key proxy: quiet, then while "check all" probes
    every key against the fake's /api/v1/key (HEALTH_CHECK_CONCURRENCY 8)."""
    proxy, port = procs.start_proxy("sweep10k", ctx.fake_port, n_keys=10_000)
    seconds = 3 if ctx.quick else 6
    try:
        procs.wait_ready(proxy, port, timeout=120)
        headers, err = admin_session(port)
        if err:
            return {"na": err}
        url = ctx.proxy_url(port)
        # The start-up sweep (5 s after start) probes every new key: wait until it is over.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _, _, body = procs.http_call(port, "GET", "/admin/app-status", headers=headers)
            if (json.loads(body).get("health") or {}).get("probed"):
                break
            time.sleep(0.5)
        loadgen.wrk(url, 1)
        quiet = loadgen.wrk(url, seconds)
        done: dict = {}

        def check_all() -> None:
            t0 = time.perf_counter()
            status, _, body = procs.http_call(
                port, "POST", "/admin/check-keys", {}, headers=headers, timeout=300
            )
            done.update(status=status, seconds=time.perf_counter() - t0, body=body[:300])

        sweeper = threading.Thread(target=check_all)
        sweeper.start()
        during = loadgen.wrk(url, seconds)
        sweeper.join(300)
        return {
            "quiet_p99_ms": quiet["p99_ms"],
            "sweep_p99_ms": during["p99_ms"],
            "quiet_rps": quiet["rps"],
            "sweep_rps": during["rps"],
            "sweep": done,
            "log": procs.log_problems(proxy),
        }
    finally:
        proxy.stop()


def keys_micro(ctx: Ctx) -> dict:
    """Run bench/keys_micro.py if present and take its figure at 100k keys.

    Accepted output: a last line of JSON with ``us_per_op``, or a Markdown table row
    ``| 100,000 | <pick + report us> | ...``.
    """
    if not (procs.BENCH / "keys_micro.py").exists():
        return {"na": "bench/keys_micro.py not written yet"}
    argv = [sys.executable, "-m", "bench.keys_micro"]  # ~3 s; its --quick skips 100k keys
    out = subprocess.run(argv, cwd=procs.ROOT, capture_output=True, text=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[0].replace(",", "") == "100000":
            return {"us_per_op": float(cells[1]), "output": out.stdout}
    try:
        res = json.loads(lines[-1])
        return {"us_per_op": float(res["us_per_op"]), **res}
    except (IndexError, ValueError, KeyError, TypeError):
        tail = (out.stdout + out.stderr)[-500:]
        return {
            "na": f"no 100k-key figure in keys_micro output (rc {out.returncode})",
            "tail": tail,
        }
