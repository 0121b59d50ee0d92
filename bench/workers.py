"""``python -m bench.workers``: orpoll at WORKERS=1 and at WORKERS=2 against one fake, in
alternating rounds, each round beside the fake served directly:

- non-stream: wrk -t2 -c64, requests/s, p99 and the proxy's CPU per request (all its processes);
- 200 concurrent streams of 20 chunks x 10 ms: time to first chunk p50 / p99 (ms);
- the same with streams of OpenRouter's other shape: a ``: OPENROUTER PROCESSING`` comment,
  then the first chunk at once.

The machine's speed drifts and other jobs share it, so only figures of the same round compare:
the summary gives medians over rounds of per-round ratios (WORKERS=2 over WORKERS=1) and of
the time each adds to the first chunk over the direct run. "Who used the CPU" (percent of one
core, medians) says whether wrk or the fake could have been the limit.

  python -m bench.workers --rounds 4 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import statistics

from bench import loadgen, procs, scenarios

STREAMS = 2000  # per round and per shape
# Rounds in which other jobs took less than this (percent of one core) while the proxies ran:
# WORKERS=2 needs the second core, so only those rounds show what it gains.
QUIET_PCT = 30


def stream_run(ctx: scenarios.Ctx, url: str, relay, processing: bool) -> dict:
    def run() -> dict:
        return loadgen.streamload(
            url, c=200, n=STREAMS, chunks=20, interval_ms=10, ramp_ms=200, processing=processing
        )

    return scenarios.measured(ctx, relay, run, "chat_stream")


def one_round(ctx: scenarios.Ctx, targets: dict, order: list[str], seconds: int) -> dict:
    """Every target in ``order``, each through the three loads."""
    out: dict[str, dict] = {}
    for name in order:
        url, relay = targets[name]
        out[name] = {
            "nonstream": scenarios._wrk_once(ctx, url, seconds, relay),
            "streams": stream_run(ctx, url, relay, processing=False),
            "processing": stream_run(ctx, url, relay, processing=True),
        }
    return out


def summary(rounds: list[dict]) -> dict:
    """Medians over rounds; ratios and added times paired within each round."""

    def med(values) -> float:
        return round(statistics.median(list(values)), 3)

    out: dict[str, dict] = {}
    for name in ("direct", "w1", "w2"):
        ns = [r[name]["nonstream"] for r in rounds]
        row = {
            "rps": med(n["rps"] for n in ns),
            "p99_ms": med(n["p99_ms"] for n in ns),
            "client_core_pct": med(n["client_core_pct"] for n in ns),
            "fake_core_pct": med(n["fake_core_pct"] for n in ns),
            "other_core_pct": med(n["other_core_pct"] for n in ns),
        }
        if name != "direct":
            row["proxy_core_pct"] = med(n["proxy_core_pct"] for n in ns)
            row["cpu_ms_per_req"] = med(n["proxy_cpu_ms_per_req"] for n in ns)
            row["rps_vs_direct"] = med(
                r[name]["nonstream"]["rps"] / r["direct"]["nonstream"]["rps"] for r in rounds
            )
        for shape in ("streams", "processing"):
            for pct in ("p50", "p99"):
                key = f"ttfc_ms_{pct}"
                row[f"{shape}_{key}"] = med(r[name][shape][key] for r in rounds)
                if name != "direct":
                    added = (r[name][shape][key] - r["direct"][shape][key] for r in rounds)
                    row[f"{shape}_added_{pct}_ms"] = med(added)
            row[f"{shape}_per_s"] = med(r[name][shape]["streams_per_s"] for r in rounds)
            row[f"{shape}_incomplete"] = sum(r[name][shape]["incomplete"] for r in rounds)
        out[name] = row
    ratios = [r["w2"]["nonstream"]["rps"] / r["w1"]["nonstream"]["rps"] for r in rounds]
    quiet = [x for x, r in zip(ratios, rounds, strict=True) if is_quiet(r)]
    out["w2_over_w1"] = {
        "rps": med(ratios),
        "per_round": [round(x, 2) for x in ratios],
        "other_pct_per_round": [
            [round(r[name]["nonstream"]["other_core_pct"]) for name in ("w1", "w2")] for r in rounds
        ],
        "rps_quiet": med(quiet) if quiet else None,
        "quiet_rounds": len(quiet),
    }
    return out


def is_quiet(r: dict) -> bool:
    """Other jobs took less than QUIET_PCT of a core during both proxies' non-stream runs."""
    return all(r[name]["nonstream"]["other_core_pct"] < QUIET_PCT for name in ("w1", "w2"))


def print_table(s: dict) -> None:
    print("| figure | direct | WORKERS=1 | WORKERS=2 |")
    print("|---|---|---|---|")
    rows = [
        ("non-stream req/s", "rps"),
        ("non-stream p99 (ms)", "p99_ms"),
        ("proxy CPU per request (ms)", "cpu_ms_per_req"),
        ("proxy CPU (% of one core)", "proxy_core_pct"),
        ("wrk CPU (% of one core)", "client_core_pct"),
        ("fake CPU (% of one core)", "fake_core_pct"),
        ("other jobs (% of one core)", "other_core_pct"),
        ("200 streams: TTFC p50 (ms)", "streams_ttfc_ms_p50"),
        ("200 streams: TTFC p99 (ms)", "streams_ttfc_ms_p99"),
        ("200 streams: added TTFC p50 (ms)", "streams_added_p50_ms"),
        ("200 streams: added TTFC p99 (ms)", "streams_added_p99_ms"),
        ("200 streams: incomplete, all rounds", "streams_incomplete"),
        ("comment-first streams: TTFC p50 (ms)", "processing_ttfc_ms_p50"),
        ("comment-first streams: TTFC p99 (ms)", "processing_ttfc_ms_p99"),
        ("comment-first streams: added TTFC p50 (ms)", "processing_added_p50_ms"),
        ("comment-first streams: added TTFC p99 (ms)", "processing_added_p99_ms"),
        ("comment-first streams: incomplete, all rounds", "processing_incomplete"),
    ]
    for label, key in rows:
        cells = [str(s[name].get(key, "")) for name in ("direct", "w1", "w2")]
        print(f"| {label} | {' | '.join(cells)} |")
    ratio = s["w2_over_w1"]
    print(
        f"\nWORKERS=2 / WORKERS=1 non-stream req/s: {ratio['rps']} (rounds: {ratio['per_round']})"
    )
    print(f"other jobs, % of a core, (w1, w2) per round: {ratio['other_pct_per_round']}")
    print(
        f"rounds where other jobs took < {QUIET_PCT}% of a core: {ratio['quiet_rounds']}; "
        f"the ratio over those: {ratio['rps_quiet']}"
    )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=int, default=5, help="wrk seconds per run")
    args = p.parse_args()
    procs.OUT.mkdir(exist_ok=True)
    nofile = procs.raise_nofile()
    procs.build_go("fake_upstream")
    procs.build_go("streamload")
    fake, fake_port = procs.start_fake()
    ctx = scenarios.Ctx(1, False, 0, 0, nofile, fake, fake_port)
    proxies = []
    try:
        targets: dict[str, tuple] = {"direct": (ctx.direct_url, None)}
        for name, workers in (("w1", "1"), ("w2", "2")):
            child, port = procs.start_proxy(f"workers-{workers}", fake_port, WORKERS=workers)
            proxies.append(child)
            procs.wait_ready(child, port)
            targets[name] = (ctx.proxy_url(port), child)
        for url, _ in targets.values():  # warm-up: connections, caches, every worker started
            loadgen.wrk(url, 2)
            loadgen.streamload(url, c=200, n=400, chunks=5, interval_ms=10)
        rounds = []
        for r in range(args.rounds):
            order = ["direct", "w1", "w2"] if r % 2 == 0 else ["direct", "w2", "w1"]
            rounds.append(one_round(ctx, targets, order, args.seconds))
            figures = {
                name: (round(res["nonstream"]["rps"]), round(res["nonstream"]["other_core_pct"]))
                for name, res in rounds[-1].items()
            }
            print(f"[bench.workers] round {r + 1}: (req/s, other jobs %) {figures}", flush=True)
    finally:
        for child in proxies:
            child.stop()
        fake.stop()
    s = summary(rounds)
    (procs.OUT / "workers.json").write_text(json.dumps({"summary": s, "rounds": rounds}, indent=1))
    print_table(s)


if __name__ == "__main__":
    main()
