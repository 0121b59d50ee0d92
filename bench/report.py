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


def _row(figure: str, direct="", proxy="", vs="", target="(info)", met="") -> list[str]:
    return [figure, direct, proxy, vs, target, met]


def _fast_rows(ns: dict, st: dict) -> list[list[str]]:
    """Non-stream and 200-stream figures."""
    d_rps, p_rps = _get(ns, "direct.rps"), _get(ns, "proxy.rps")
    ratio = p_rps / d_rps if d_rps and p_rps else None
    p99, cpu = _get(ns, "proxy.p99_ms"), _get(ns, "proxy.proxy_cpu_ms_per_req")
    rows = [
        _row(
            "non-stream req/s (64 conns)", _f(d_rps, ".0f"), _f(p_rps, ".0f"), _f(ratio, ".3f", "x")
        ),
        _row(
            "non-stream p99 latency",
            _f(_get(ns, "direct.p99_ms"), ".2f", " ms"),
            _f(p99, ".2f", " ms"),
            "",
            "<= 30 ms",
            _ok(p99, 30),
        ),
        _row(
            "proxy CPU per non-stream request",
            "",
            _f(cpu, ".3f", " ms"),
            "",
            "<= 0.30 ms",
            _ok(cpu, 0.30),
        ),
        _row(
            "bare relay (Tornado + curl, no features): CPU per request / p99",
            "",
            f"{_f(_get(ns, 'bare.proxy_cpu_ms_per_req'), '.3f', ' ms')} / "
            f"{_f(_get(ns, 'bare.p99_ms'), '.2f', ' ms')}",
            "",
        ),
        _row(
            "with the access log on (LOG_LEVEL=info, the default): CPU per request / p99",
            "",
            f"{_f(_get(ns, 'logged.proxy_cpu_ms_per_req'), '.3f', ' ms')} / "
            f"{_f(_get(ns, 'logged.p99_ms'), '.2f', ' ms')}",
            "",
            "(info)",
        ),
        _row(
            "with the 17 header lines an OpenAI SDK sends (wrk's: 4): CPU per request / p99",
            "",
            f"{_f(_get(ns, 'sdk_headers.proxy_cpu_ms_per_req'), '.3f', ' ms')} / "
            f"{_f(_get(ns, 'sdk_headers.p99_ms'), '.2f', ' ms')}",
            "",
            "(info)",
        ),
        _row(
            "proxy CPU per non-stream request vs the bare relay, same run",
            "",
            "",
            _f(ns.get("cpu_vs_bare"), ".2f", "x"),
            "(info: the 0.30 ms target on a ~0.25 ms floor is 1.2x)",
        ),
        _row(
            "200 streams: streams/s",
            _f(_get(st, "direct.streams_per_s"), ".1f"),
            _f(_get(st, "proxy.streams_per_s"), ".1f"),
            _f(st.get("ratio"), ".3f", "x"),
            ">= 0.95x",
            _ok(st.get("ratio"), 0.95, higher_is_better=True),
        ),
    ]
    rows.append(
        _row(
            "200 streams, bare relay: streams/s / added TTFC p50 / p99",
            "",
            _f(_get(st, "bare.streams_per_s"), ".1f"),
            f"{_f(st.get('bare_ratio'), '.3f', 'x')} / "
            f"{_f(st.get('bare_ttfc_added_p50_ms'), '+.2f', ' ms')} / "
            f"{_f(st.get('bare_ttfc_added_p99_ms'), '+.2f', ' ms')}",
        )
    )
    for pct, limit in (("p50", 1), ("p99", 10)):
        added = st.get(f"ttfc_added_{pct}_ms")
        rows.append(
            _row(
                f"200 streams: time to first chunk {pct}",
                _f(_get(st, f"direct.ttfc_ms_{pct}"), ".2f", " ms"),
                _f(_get(st, f"proxy.ttfc_ms_{pct}"), ".2f", " ms"),
                _f(added, "+.2f", " ms"),
                f"added <= {limit} ms",
                _ok(added, limit),
            )
        )
    c1 = [_f(st.get(f"ttfc_added_c1_{pct}_ms"), "+.2f") for pct in ("p50", "p99")]
    one = f"{c1[0]} / {c1[1]} ms"
    rows.append(_row("1 stream at a time: added time to first chunk p50 / p99", "", "", one))
    return rows


def _slow_rows(sl: dict) -> list[list[str]]:
    """Slow-stream figures; C is in every label."""
    c = sl.get("c")

    def both(key: str) -> tuple[str, str]:
        return _f(_get(sl, f"direct.{key}"), ".0f"), _f(_get(sl, f"proxy.{key}"), ".0f")

    inc, late = _get(sl, "proxy.incomplete"), _get(sl, "proxy.late_over_1s")
    backlog = _f(_get(sl, "proxy.listen_backlog"), ".0f")
    peak = (
        _f(_get(sl, "direct_fake_last.max_active"), ".0f"),
        _f(_get(sl, "proxy_last.fake.max_active"), ".0f"),
    )
    kb = _get(sl, "proxy.kb_per_stream")
    return [
        _row(
            f"{c} slow streams: incomplete",
            *both("incomplete"),
            "",
            "0 (all complete)",
            _ok(inc, 0),
        ),
        _row(f"{c} slow streams: late > 1 s", *both("late_over_1s"), "", "0", _ok(late, 0)),
        _row(
            f"{c} slow streams: SYNs dropped (listen queue full; proxy backlog {backlog})",
            *both("listen_drops"),
        ),
        _row(f"{c} slow streams: peak concurrent at upstream", *peak),
        _row(
            f"{c} slow streams: RSS per stream",
            "",
            _f(kb, ".1f", " KB"),
            "",
            "<= 40 KB",
            _ok(kb, 40),
        ),
        _row(
            f"{c} slow streams: RSS per stream, bare relay (Tornado's curl defaults)",
            "",
            _f(_get(sl, "bare.kb_per_stream"), ".1f", " KB"),
        ),
        _row(
            f"{c} slow streams: {_f(_get(sl, 'after.after_s'), '.0f')} s after the burst: "
            f"RSS (idle before: {_f(_get(sl, 'after.idle_rss_mb'), '.0f', ' MB')}) / open fds",
            "",
            f"{_f(_get(sl, 'after.after_rss_mb'), '.0f', ' MB')} / "
            f"{_f(_get(sl, 'after.after_fds'), '.0f')}",
        ),
    ]


def _key_rows(r: dict) -> list[list[str]]:
    """Key-count, admin and start-up figures (proxy only)."""
    us, ks = _get(r, "keys_micro.us_per_op"), _get(r, "key_status.median_ms")
    cold, rss = _get(r, "cold_start.seconds"), _get(r, "keys_idle.rss_mb")
    ks100 = _get(r, "keys_idle.key_status_100k.median_ms")
    return [
        _row(
            "key pick+report at 100k keys (keys_micro.py)",
            "",
            _f(us, ".2f", " us"),
            "",
            "<= 10 us",
            _ok(us, 10),
        ),
        _row(
            "key-status page at 10k keys (median of 20)",
            "",
            _f(ks, ".1f", " ms"),
            "",
            "<= 50 ms",
            _ok(ks, 50),
        ),
        _row("key-status page at 100k keys (median of 5)", "", _f(ks100, ".1f", " ms")),
        _row(
            "cold start to first completion", "", _f(cold, ".2f", " s"), "", "<= 1 s", _ok(cold, 1)
        ),
        _row("idle RSS with 100k keys", "", _f(rss, ".1f", " MB"), "", "<= 150 MB", _ok(rss, 150)),
        _row(
            "idle RSS with 2 keys (after one request)",
            "",
            _f(_get(r, "cold_start.rss_2_keys_mb"), ".1f", " MB"),
        ),
        _row(
            "10k keys: non-stream p99, quiet / during a full health sweep",
            "",
            f"{_f(_get(r, 'sweep.quiet_p99_ms'), '.1f')} / "
            f"{_f(_get(r, 'sweep.sweep_p99_ms'), '.1f')} ms",
        ),
        _row(
            "10k keys: full health sweep (8 probes at a time)",
            "",
            _f(_get(r, "sweep.sweep.seconds"), ".1f", " s"),
        ),
    ]


def target_rows(r: dict) -> list[list[str]]:
    """Rows: figure, direct, proxy, proxy vs direct, target, met."""
    ns, st, sl = r.get("nonstream", {}), r.get("streams200", {}), r.get("slow_streams", {})
    return _fast_rows(ns, st) + _slow_rows(sl) + _key_rows(r)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _clamp(value):
    """Tick-based accounting is good to about +-20% of a core; don't show negative shares."""
    return None if value is None else max(0.0, value)


def load_rows(r: dict) -> list[list[str]]:
    """CPU shares (% of one core) of each process during the load runs."""
    rows = []
    for scen in ("nonstream", "streams200", "slow_streams"):
        paths = ("direct", "proxy") if scen == "slow_streams" else ("direct", "bare", "proxy")
        for path in paths:
            m = _get(r, f"{scen}.{path}") or {}
            rows.append(
                [
                    f"{scen} / {'bare relay' if path == 'bare' else path}",
                    _f(m.get("proxy_core_pct"), ".0f", "%"),
                    _f(m.get("fake_core_pct"), ".0f", "%"),
                    _f(m.get("client_core_pct"), ".0f", "%"),
                    _f(m.get("irq_core_pct"), ".0f", "%"),
                    _f(_clamp(m.get("other_core_pct")), ".0f", "%"),
                    _f(m.get("machine_core_pct"), ".0f", "%"),
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
        f"Generated by `{meta['command']}` on {meta['date']} "
        f"(git {meta['git']}). See [README.md](README.md) for what each figure means.",
        "",
        f"Machine: {meta['cores']} cores, load average at start {meta['loadavg']}, "
        f"{meta['busy_pct']:.0f}% busy in the second before the run; RLIMIT_NOFILE "
        f"{meta['nofile']}; {meta['reps']} repetition(s), medians shown; total "
        f"{meta.get('elapsed_s', 0):.0f} s.",
        "",
        f"Proxy to fake upstream: {meta.get('upstream', 'HTTP/1.1 only')}.",
    ]
    for note in meta.get("notes", []):
        head.append(f"\n> Note: {note}")
    busy = [
        f"{row[0]} ({row[5]})" for row in load_rows(r) if row[5] != "n/a" and int(row[5][:-1]) > 30
    ]
    if busy:
        head.append(
            "\n> Note: other processes used more than 30% of a core during: "
            + ", ".join(busy)
            + ". Those figures are suspect; rerun on a quiet machine."
        )
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
        '"kernel irq" is interrupt and softirq time (loopback packet work). "other" is the '
        "machine-wide busy time minus all of the above: other jobs on the machine (accurate to "
        "about 20% of a core). A large value means something else competed with the proxy.",
        "",
        table(
            ["run", "proxy", "fake upstream", "load client", "kernel irq", "other", "machine"],
            load_rows(r),
        ),
    ]
    if errors:
        body += ["", "## Scenario errors", "", *errors]
    body += ["", "## Details", "", details(r), ""]
    return "\n".join(head + [""] + body)
