"""``python -m bench [--quick] [--big]``: run every scenario against the fake upstream directly and
through the proxy, then write bench/results.md (and bench/out/results.json)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback

from bench import procs, report, scenarios

# Run order: the shared proxy serves the first two; the rest spawn their own proxies.
SCENARIOS = {
    "nonstream": scenarios.nonstream,
    "streams200": scenarios.streams200,
    "slow_streams": scenarios.slow_streams,
    "cold_start": scenarios.cold_start,
    "key_status": scenarios.key_status,
    "keys_idle": scenarios.keys_idle,
    "keys_micro": scenarios.keys_micro,
    "sweep": scenarios.sweep,
}
SHARED_PROXY = ("nonstream", "streams200")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1 repetition, shorter runs")
    p.add_argument("--big", action="store_true", help="10,000 slow streams instead of 2,000")
    p.add_argument("--reps", type=int, help="repetitions per scenario (default 3, quick 1)")
    p.add_argument("--slow-streams", type=int, help="concurrent slow streams (overrides --big)")
    p.add_argument(
        "--slow-rate", type=int, default=2500, help="slow streams opened per second (2500)"
    )
    p.add_argument(
        "--h1-upstream",
        action="store_true",
        help="the proxies talk HTTP/1.1 only to the fake (UPSTREAM_H2C=0)",
    )
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    p.add_argument("--out", default=str(procs.BENCH / "results.md"), help="report path")
    return p.parse_args(argv)


def meta(args: argparse.Namespace, argv: list[str], nofile: int, reps: int) -> dict:
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=procs.ROOT, capture_output=True, text=True
    )
    with open("/proc/loadavg") as f:
        loadavg = " ".join(f.read().split()[:3])
    return {
        "command": " ".join(["python -m bench", *argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": git.stdout.strip() or "uncommitted",
        "cores": len(os.sched_getaffinity(0)),
        "loadavg": loadavg,
        "busy_pct": 100 * procs.machine_busy(1.0),
        "nofile": nofile,
        "reps": reps,
        "upstream": (
            "HTTP/1.1, and HTTP/2 without TLS past the first 256 streams at once (UPSTREAM_H2C=1)"
            if procs.UPSTREAM_H2C
            else "HTTP/1.1 only (UPSTREAM_H2C=0"
            + ("" if procs.FAKE_H2C else "; no golang.org/x/net to build the fake's h2c")
            + ")"
        ),
    }


def ensure_shared_proxy(ctx: scenarios.Ctx) -> None:
    """Start the proxy shared by the first scenarios, or restart it (with a note) if it died."""
    if ctx.proxy and ctx.proxy.alive():
        return
    name = "shared"
    if ctx.proxy:
        rc = ctx.proxy.popen.returncode
        ctx.notes.append(f"shared proxy had exited (code {rc}); restarted it")
        ctx.proxy.stop()
        name = "shared-restarted"  # keep the dead one's log
    ctx.proxy, ctx.proxy_port = procs.start_proxy(name, ctx.fake_port)
    procs.wait_ready(ctx.proxy, ctx.proxy_port)


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    nofile = procs.raise_nofile()
    if args.h1_upstream:
        procs.UPSTREAM_H2C = False
    reps = args.reps or (1 if args.quick else 3)
    results = {"meta": meta(args, argv, nofile, reps)}
    wanted = args.only.split(",") if args.only else list(SCENARIOS)
    procs.OUT.mkdir(exist_ok=True)
    procs.build_go("fake_upstream")
    procs.build_go("streamload")
    fake, fake_port = procs.start_fake()
    slow = args.slow_streams or (10_000 if args.big else 2_000)
    ctx = scenarios.Ctx(
        reps=reps,
        quick=args.quick,
        slow_streams=slow,
        slow_rate=args.slow_rate,
        nofile=nofile,
        fake=fake,
        fake_port=fake_port,
    )
    for name in wanted:
        t0 = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            if name in SHARED_PROXY:
                ensure_shared_proxy(ctx)
            results[name] = SCENARIOS[name](ctx)
        except Exception as exc:  # keep going: one broken scenario must not hide the others
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}"}
        results[name]["elapsed_s"] = round(time.monotonic() - t0, 1)
        if name in SHARED_PROXY and ctx.proxy and not ctx.proxy.alive():
            rc = ctx.proxy.popen.returncode
            died = f"shared proxy died (exit {rc}; log tail: {ctx.proxy.log_tail(5)!r})"
            results[name]["error"] = f"{died}; {results[name].get('error', '')}"
    if ctx.proxy:
        results["shared_proxy_log"] = procs.log_problems(ctx.proxy)
    results["meta"]["notes"] = ctx.notes
    return results


def _interrupt(signum, frame) -> None:
    """SIGTERM takes the same path as Ctrl-C, so main's finally reaps every child."""
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()
    try:
        results = run(args, argv)
    finally:
        procs.stop_all()
    results["meta"]["elapsed_s"] = time.monotonic() - t0
    (procs.OUT / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = report.render(results)
    with open(args.out, "w") as f:
        f.write(text)
    rows = report.target_rows(results)
    print(report.table(["figure", "direct", "proxy", "vs direct", "target", "met"], rows))
    print(f"\nwrote {args.out} ({results['meta']['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
