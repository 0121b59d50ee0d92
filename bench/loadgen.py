"""Run the load generators (wrk for JSON requests, streamload for SSE) and parse their output."""

from __future__ import annotations

import json
import re
import subprocess

from bench import procs

WRK_LUA = """-- POST one small non-stream chat completion per request (written by bench/loadgen.py)
wrk.method = "POST"
wrk.body = '{"model":"a/b","messages":[{"role":"user","content":"hi"}],"stream":false}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-client"
"""

# The headers the OpenAI Python SDK (3.57) sends besides Host and Content-Length, captured
# from the real client: with them, a request carries 17 header lines instead of wrk's 4.
SDK_HEADERS = {
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "accept": "application/json",
    "user-agent": "OpenAI/Python 3.57.0",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "3.57.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.7",
    "x-stainless-async": "false",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
}

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    """wrk latency like '812.00us' or '1.20ms' -> milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def parse_wrk(out: str) -> dict:
    """Requests/sec, requests, latency percentiles (ms) and error counts from ``wrk --latency``."""
    res: dict = {"non2xx": 0, "socket_errors": 0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+)(\w+)", out):
        res["requests"] = int(m.group(1))
    for pct, val in re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M):
        res[f"p{pct}_ms"] = _ms(val)
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        res["non2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res["socket_errors"] = sum(int(x) for x in m.groups())
    return res


def wrk(
    url: str, seconds: float, conns: int = 64, threads: int = 2, headers: dict | None = None
) -> dict:
    """One wrk run (``headers``: more request headers); adds 'client_cpu_s' (CPU wrk used,
    from RUSAGE_CHILDREN)."""
    extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    lua = procs.OUT / ("post-more-headers.lua" if extra else "post.lua")
    lua.write_text(WRK_LUA + extra)
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    before = procs.children_cpu()
    out = subprocess.run(
        [*argv, "-s", str(lua), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        start_new_session=True,
    )
    res = parse_wrk(out.stdout)
    res["client_cpu_s"] = procs.children_cpu() - before
    if "rps" not in res:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    return res


def streamload(
    url: str,
    c: int,
    n: int,
    chunks: int,
    interval_ms: int,
    ramp_ms: int = 0,
    timeout_s: int = 120,
    processing: bool = False,
) -> dict:
    """One streamload run (see streamload.go for the JSON fields); adds 'client_cpu_s'.
    ``processing``: streams of OpenRouter's other shape (a comment, then the first chunk at
    once)."""
    exe = procs.build_go("streamload")
    argv = [str(exe), f"-url={url}", f"-c={c}", f"-n={n}", f"-chunks={chunks}"]
    argv += [f"-interval-ms={interval_ms}", f"-ramp-ms={ramp_ms}", f"-timeout-s={timeout_s}"]
    argv += ["-processing"] if processing else []
    before, drops = procs.children_cpu(), procs.listen_drops()
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout_s + 30,
        start_new_session=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"streamload failed ({out.returncode}): {out.stderr[-2000:]}")
    res = json.loads(out.stdout)
    res["client_cpu_s"] = procs.children_cpu() - before
    res["listen_drops"] = procs.listen_drops() - drops
    # Flat copies of the distributions, so repetitions can be reduced to medians.
    for key in ("ttfc_ms", "total_ms", "late_ms", "connect_ms"):
        for stat in ("p50", "p99", "max"):
            res[f"{key}_{stat}"] = res[key].get(stat)
    return res
