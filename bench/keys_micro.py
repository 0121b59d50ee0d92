"""Micro-benchmark of the key scheduler: pick + report per request at 100, 10k and 100k keys.

Run: ``python -m bench.keys_micro``. Prints a Markdown table (microseconds per operation).
"""

from __future__ import annotations

import random
import resource
import sys
import time

from orpoll.keys import Outcome, Verdict
from orpoll.scheduler import KeyScheduler

OK = Outcome(Verdict.OK, 200)
FAIL = Outcome(Verdict.TRANSIENT, 502, "bad gateway")


def build(n: int) -> KeyScheduler:
    sched = KeyScheduler(rng=random.Random(1))
    for i in range(n):
        sched.add(f"sk-or-v1-{i:064x}", 1 + i % 5)
    return sched


def per_op(fn, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds * 1e6


def measure(n: int, rounds: int = 50_000) -> dict[str, float]:
    sched = build(n)

    def pick_ok() -> None:
        sched.report(sched.pick(), OK)

    def pick_fail_retry() -> None:
        # A failover request: first key fails (counted, may cool), second succeeds.
        first = sched.pick()
        sched.report(first, FAIL)
        second = sched.pick((first.id,))
        if second is not None:
            sched.report(second, OK)
        first.failures = 0  # keep the pool from draining over many rounds

    return {
        "pick+ok": min(per_op(pick_ok, rounds) for _ in range(3)),
        "fail+retry": min(per_op(pick_fail_retry, rounds // 2) for _ in range(3)),
    }


def main() -> None:
    sizes = [100, 10_000, 100_000]
    if "--quick" in sys.argv:
        sizes = [100, 10_000]
    print("| keys | pick + report OK (us) | pick, fail, re-pick, OK (us) |")
    print("|---:|---:|---:|")
    for n in sizes:
        r = measure(n)
        print(f"| {n:,} | {r['pick+ok']:.2f} | {r['fail+retry']:.2f} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process: {rss:.0f} MB")


if __name__ == "__main__":
    main()
