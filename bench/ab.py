"""``python -m bench.ab REV_A REV_B``: the proxies of two commits, against one fake, in
alternating rounds; CPU per request or stream, latency and throughput of each.

Every A/B figure in the commit messages was measured this way: the machine's speed drifts by
15-30% within an hour, so only runs interleaved in the same minutes compare. Each round runs
both trees, in turns (A then B, then B then A), and reads the proxy's CPU from /proc.

  python -m bench.ab HEAD~1 HEAD --mode streams --rounds 10
  python -m bench.ab HEAD~1 HEAD --mode nonstream --rounds 6 --seconds 5 --sdk-headers
  python -m bench.ab main HEAD --mode nonstream --env REDIS_URL=redis://127.0.0.1:6379/0

``streams``: 200 concurrent streams of 20 chunks x 10 ms, 3,000 per round (the streams200
scenario); prints CPU ms per stream, time to first chunk p50 / p99 (ms) and streams/s.
``nonstream``: wrk with 64 connections; prints CPU ms per request, p99 (ms) and req/s.
``--sdk-headers`` sends the OpenAI SDK's 17 header lines instead of wrk's 4 (nonstream).
``--env NAME=VALUE`` (repeatable) sets a setting on both proxies (a tree that does not know
the setting ignores it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench import loadgen, procs, scenarios

TREE = ("orpoll", "run.py", "templates", "static")
STREAMS = 3000  # per round, as a full run of the streams200 scenario


def export(rev: str, into: Path) -> Path:
    """The files a proxy runs from, as of ``rev``, in a directory of their own."""
    tree = into / rev.replace("/", "_").replace("~", "-").replace("^", "-")
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(procs.ROOT), "archive", rev, *TREE], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def one_round(ctx: scenarios.Ctx, mode: str, url: str, proxy, seconds: int, headers) -> tuple:
    """One round on one proxy: the streams200 scenario's load, or its nonstream wrk run."""
    if mode == "streams":
        s = scenarios._streams_once(ctx, url, STREAMS, proxy)
        return s["proxy_cpu_ms_per_stream"], s["ttfc_ms_p50"], s["ttfc_ms_p99"], s["streams_per_s"]
    w = scenarios._wrk_once(ctx, url, seconds, proxy, headers)
    return w["proxy_cpu_ms_per_req"], w["p99_ms"], w["rps"]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    p.add_argument("revs", nargs=2, metavar="REV", help="two git revisions (A, then B)")
    p.add_argument("--mode", choices=("streams", "nonstream"), default="streams")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seconds", type=int, default=5, help="wrk seconds per round")
    p.add_argument("--sdk-headers", action="store_true", help="nonstream: the SDK's headers")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = p.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    headers = loadgen.SDK_HEADERS if args.sdk_headers else None
    procs.OUT.mkdir(exist_ok=True)
    nofile = procs.raise_nofile()
    home = procs.ROOT
    with tempfile.TemporaryDirectory(prefix="ab-", dir=procs.OUT) as tmp:
        trees = [export(rev, Path(tmp)) for rev in args.revs]
        fake, fake_port = procs.start_fake()
        ctx = scenarios.Ctx(1, False, 0, 0, nofile, fake, fake_port)
        proxies = []
        try:
            for tree in trees:
                procs.ROOT = tree  # start_proxy runs ROOT/run.py
                child, port = procs.start_proxy(f"ab-{tree.name}", fake_port, **extra)
                procs.wait_ready(child, port)
                proxies.append((child, f"http://127.0.0.1:{port}/v1/chat/completions"))
            procs.ROOT = home
            for _, url in proxies:  # warm-up: connections, caches, lazy imports
                loadgen.wrk(url, 2)
                loadgen.streamload(url, c=200, n=400, chunks=5, interval_ms=10)
            results: list[list[tuple]] = [[], []]
            for r in range(args.rounds):
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for i in order:
                    child, url = proxies[i]
                    results[i].append(one_round(ctx, args.mode, url, child, args.seconds, headers))
        finally:
            procs.ROOT = home
            for child, _ in proxies:
                child.stop()
            fake.stop()
    names = ("cpu_ms", "ttfc_p50_ms", "ttfc_p99_ms", "streams_per_s")
    if args.mode == "nonstream":
        names = ("cpu_ms", "p99_ms", "req_per_s")
    print("medians over", args.rounds, "rounds:", " ".join(names))
    for rev, rows in zip(args.revs, results, strict=True):
        medians = " ".join(f"{statistics.median(col):.3f}" for col in zip(*rows, strict=True))
        print(f"{rev}: {medians}   cpu per round: {[round(row[0], 3) for row in rows]}")


if __name__ == "__main__":
    main()
