"""Turn the scenario results into bench/results.md: the targets table, then load shares and
per-scenario details as evidence."""

from __future__ import annotations

import json


def _get(d: dict, path: str):
    """``_get(res, "nonstream.proxy.rps")``; None if any step is missing."""
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _f(value, spec: str = ".2f", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:{spec}}{unit}"


def _ok(value, limit: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "n/a"
    good = value >= limit if higher_is_better else value <= limit
    return "yes" if good else "**NO**"


def target_rows(r: dict) -> list[list[str]]:
    """Rows: figure, direct, proxy, proxy vs direct, target, met."""
    ns, st, sl = r.get("nonstream", {}), r.get("streams200", {}), r.get("slow_streams", {})
    rows = []
    d_rps, p_rps = _get(ns, "direct.rps"), _get(ns, "proxy.rps")
    ratio = p_rps / d_rps if d_rps and p_rps else None
    rows.append(
        [
            "non-stream req/s (64 conns)",
            _f(d_rps, ".0f"),
            _f(p_rps, ".0f"),
            _f(ratio, ".3f", "x"),
            "(info)",
            "",
        ]
    )
    p99 = _get(ns, "proxy.p99_ms")
    rows.append(
        [
            "non-stream p99 latency",
            _f(_get(ns, "direct.p99_ms"), ".2f", " ms"),
            _f(p99, ".2f", " ms"),
            "",
            "<= 30 ms",
            _ok(p99, 30),
        ]
    )
    cpu = _get(ns, "proxy.proxy_cpu_ms_per_req")
    rows.append(
        [
            "proxy CPU per non-stream request",
            "",
            _f(cpu, ".3f", " ms"),
            "",
            "<= 0.30 ms",
            _ok(cpu, 0.30),
        ]
    )
    rows.append(
        [
            "200 streams: streams/s",
            _f(_get(st, "direct.streams_per_s"), ".1f"),
            _f(_get(st, "proxy.streams_per_s"), ".1f"),
            _f(st.get("ratio"), ".3f", "x"),
            ">= 0.95x",
            _ok(st.get("ratio"), 0.95, higher_is_better=True),
        ]
    )
    for pct, limit in (("p50", 1), ("p99", 10)):
        added = st.get(f"ttfc_added_{pct}_ms")
        rows.append(
            [
                f"200 streams: time to first chunk {pct}",
                _f(_get(st, f"direct.ttfc_ms_{pct}"), ".2f", " ms"),
                _f(_get(st, f"proxy.ttfc_ms_{pct}"), ".2f", " ms"),
                _f(added, "+.2f", " ms"),
                f"added <= {limit} ms",
                _ok(added, limit),
            ]
        )
    c = sl.get("c")
    inc_d, inc_p = _get(sl, "direct.incomplete"), _get(sl, "proxy.incomplete")
    rows.append(
        [
            f"{c} slow streams: incomplete",
            _f(inc_d, ".0f"),
            _f(inc_p, ".0f"),
            "",
            "0 (all complete)",
            _ok(inc_p, 0),
        ]
    )
    late = _get(sl, "proxy.late_over_1s")
    rows.append(
        [
            f"{c} slow streams: late > 1 s",
            _f(_get(sl, "direct.late_over_1s"), ".0f"),
            _f(late, ".0f"),
            "",
            "0",
            _ok(late, 0),
        ]
    )
    kb = _get(sl, "proxy.kb_per_stream")
    rows.append(
        [f"{c} slow streams: RSS per stream", "", _f(kb, ".1f", " KB"), "", "<= 40 KB", _ok(kb, 40)]
    )
    us = _get(r, "keys_micro.us_per_op")
    rows.append(
        [
            "key pick+report at 100k keys (keys_micro.py)",
            "",
            _f(us, ".2f", " us"),
            "",
            "<= 10 us",
            _ok(us, 10),
        ]
    )
    ks = _get(r, "key_status.median_ms")
    rows.append(
        [
            "key-status page at 10k keys (median of 20)",
            "",
            _f(ks, ".1f", " ms"),
            "",
            "<= 50 ms",
            _ok(ks, 50),
        ]
    )
    cold = _get(r, "cold_start.seconds")
    rows.append(
        ["cold start to first completion", "", _f(cold, ".2f", " s"), "", "<= 1 s", _ok(cold, 1)]
    )
    rss = _get(r, "keys_idle.rss_mb")
    rows.append(
        ["idle RSS with 100k keys", "", _f(rss, ".1f", " MB"), "", "<= 150 MB", _ok(rss, 150)]
    )
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def load_rows(r: dict) -> list[list[str]]:
    """CPU shares (% of one core) of each process during the load runs."""
    rows = []
    for scen, client in (("nonstream", "wrk_core_pct"), ("streams200", "client_core_pct")):
        for path in ("direct", "proxy"):
            m = _get(r, f"{scen}.{path}") or {}
            rows.append(
                [
                    f"{scen} / {path}",
                    _f(m.get("proxy_core_pct"), ".0f", "%"),
                    _f(m.get("fake_core_pct"), ".0f", "%"),
                    _f(m.get(client), ".0f", "%"),
                ]
            )
    return rows


def details(r: dict) -> str:
    """Everything else worth seeing, as compact JSON per scenario (raw reps are in out/)."""
    out = []
    for name, res in r.items():
        if name == "meta" or not isinstance(res, dict):
            continue
        slim = {k: v for k, v in res.items() if k != "runs"}
        out.append(f"### {name}\n\n```json\n{json.dumps(slim, indent=1, default=str)}\n```")
    return "\n\n".join(out)


def render(r: dict) -> str:
    meta = r["meta"]
    head = [
        "# orpoll benchmark results",
        "",
        f"Generated by `python -m bench {meta['args']}` on {meta['date']} "
        f"(git {meta['git']}). See [README.md](README.md) for what each figure means.",
        "",
        f"Machine: {meta['cores']} cores, load average at start {meta['loadavg']}, "
        f"{meta['busy_pct']:.0f}% busy in the second before the run; RLIMIT_NOFILE "
        f"{meta['nofile']}; {meta['reps']} repetition(s), medians shown; total "
        f"{meta.get('elapsed_s', 0):.0f} s.",
    ]
    for note in meta.get("notes", []):
        head.append(f"\n> Note: {note}")
    errors = [
        f"- `{k}` failed: {v['error']}"
        for k, v in r.items()
        if isinstance(v, dict) and "error" in v
    ]
    body = [
        "## Targets",
        "",
        table(["figure", "direct", "proxy", "proxy vs direct", "target", "met"], target_rows(r)),
        "",
        "## Who used the CPU (percent of one core, 2 cores = 200%)",
        "",
        table(["run", "proxy", "fake upstream", "load client"], load_rows(r)),
    ]
    if errors:
        body += ["", "## Scenario errors", "", *errors]
    body += ["", "## Details", "", details(r), ""]
    return "\n".join(head + [""] + body)
