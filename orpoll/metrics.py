"""Prometheus metrics: ``Counters`` (plain in-memory sums the ledger moves once per finished
request) and ``Collector``, which turns them and the pool's live state into metric families
only when /metrics is scraped, so a request pays nothing for them but a few dict updates.

Labels never carry a key, a key's label or a client key: keys are counted by state, credit
by account, and model names are capped to the busiest MODEL_LABELS (the rest are "other").
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .usage import RequestRecord

if TYPE_CHECKING:
    from .scheduler import KeyScheduler

MODEL_LABELS = 100
# Model names come from clients and upstream; past this many distinct ones, new names are
# counted as "other" at once, so the table stays bounded whatever clients send.
MODELS_TRACKED = 1000
ROUTES = 50
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FIRST_CHUNK_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
TOKEN_TYPES = ("prompt", "completion", "cached", "reasoning")


class Histogram:
    """Bucket counts and a sum, Prometheus style (cumulative when exported)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.total = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class Counters:
    """What finished requests add up to, since start. Loop-only (no locks); ``observe`` is
    called once per request by the ledger."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (route, status, stream)
        self.durations: dict[tuple[str, str], Histogram] = {}  # (route, stream)
        self.first_chunk: dict[tuple[str, str], Histogram] = {}
        self.verdicts: dict[str, int] = {}
        self.failovers = self.exhausted = 0
        self.models: dict[str, list[float]] = {}  # model -> [requests, 4 token types, cost]
        self.routes: set[str] = set()

    def observe(self, r: RequestRecord) -> None:
        # Written out (the histograms' bucket counts too): it runs for every request.
        stream, route = "true" if r.stream else "false", r.route
        if route not in self.routes:
            route = self._route(route)
        key = (route, str(r.status), stream)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        pair = (route, stream)
        hist = self.durations.get(pair) or self.durations.setdefault(
            pair, Histogram(DURATION_BUCKETS)
        )
        seconds = r.duration_ms / 1000
        hist.counts[bisect.bisect_left(hist.bounds, seconds)] += 1
        hist.total += seconds
        if r.ttfb_ms is not None:
            hist = self.first_chunk.get(pair) or self.first_chunk.setdefault(
                pair, Histogram(FIRST_CHUNK_BUCKETS)
            )
            seconds = r.ttfb_ms / 1000
            hist.counts[bisect.bisect_left(hist.bounds, seconds)] += 1
            hist.total += seconds
        attempts = r.attempts
        if len(attempts) == 1:
            verdict = attempts[0].verdict
            self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        else:
            for a in attempts:
                self.verdicts[a.verdict] = self.verdicts.get(a.verdict, 0) + 1
            self.failovers += max(len(attempts) - 1, 0)
        if r.error_code:
            self.exhausted += r.error_code in ("no_key_available", "no_keys")

    def _route(self, route: str) -> str:
        # Pass-through routes are whatever path a client sends: past ROUTES distinct ones,
        # new ones are "other", so a scanning client cannot grow the series without bound.
        if route in self.routes:
            return route
        if len(self.routes) >= ROUTES:
            return "other"
        self.routes.add(route)
        return route

    def add_model(self, name: str, sums: list[int]) -> None:
        """Add a model's sums (requests, errors, four token counts, nano-dollars): the
        ledger's tally folds them in per distinct model, not per request."""
        totals = self.models.get(name)
        if totals is None:
            if len(self.models) >= MODELS_TRACKED:
                name = "other"
            totals = self.models.setdefault(name, [0, 0, 0, 0, 0, 0.0])
        totals[0] += sums[0]
        totals[1] += sums[2]
        totals[2] += sums[3]
        totals[3] += sums[4]
        totals[4] += sums[5]
        totals[5] += sums[6] / 1e9

    def model_totals(self, top: int = MODEL_LABELS) -> dict[str, list[float]]:
        """Per model label: the ``top`` busiest by requests by name, the rest summed as
        "other"."""
        ranked = sorted(self.models.items(), key=lambda kv: kv[1][0], reverse=True)
        out: dict[str, list[float]] = {}
        named = 0
        for name, sums in ranked:
            label = name if named < top and name != "other" else "other"
            named += label != "other"
            slot = out.setdefault(label, [0, 0, 0, 0, 0, 0.0])
            for j, n in enumerate(sums):
                slot[j] += n
        return out


class Collector:
    """A prometheus_client collector reading ``counters`` and the pool at scrape time.

    ``streams_open`` and ``pool`` are callables so the collector holds no state of its own:
    ``pool()`` returns (counts by key state, credit remaining in USD by account).
    """

    def __init__(
        self,
        counters: Counters,
        streams_open: Callable[[], int],
        pool: Callable[[], tuple[dict[str, int], dict[str, float]]],
    ) -> None:
        self.counters, self.streams_open, self.pool = counters, streams_open, pool

    def describe(self) -> list[Metric]:
        return []  # no fixed description: the registry then never calls collect() to find one

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        yield family(
            CounterMetricFamily,
            "orpoll_requests",
            "Client requests by route, final status and stream",
            ["route", "status", "stream"],
            c.requests.items(),
        )
        yield from self._histograms()
        yield family(
            CounterMetricFamily,
            "orpoll_upstream_attempts",
            "Upstream attempts by what they said about the key",
            ["verdict"],
            (((k,), v) for k, v in c.verdicts.items()),
        )
        yield CounterMetricFamily(
            "orpoll_failovers", "Attempts retried on another key", value=c.failovers
        )
        yield CounterMetricFamily(
            "orpoll_pool_exhausted", "Requests refused for want of a usable key", value=c.exhausted
        )
        yield GaugeMetricFamily(
            "orpoll_streams_open", "Streams open now", value=self.streams_open()
        )
        yield from self._pool()
        yield from self._models()

    def _histograms(self) -> Iterator[Metric]:
        for name, text, table in (
            ("orpoll_request_duration_seconds", "Request duration", self.counters.durations),
            (
                "orpoll_time_to_first_chunk_seconds",
                "Time to the first byte or chunk sent to the client",
                self.counters.first_chunk,
            ),
        ):
            metric = HistogramMetricFamily(name, text, labels=["route", "stream"])
            for labels, hist in table.items():
                metric.add_metric(list(labels), hist.buckets(), hist.total)
            yield metric

    def _pool(self) -> Iterator[Metric]:
        states, credit = self.pool()
        yield family(
            GaugeMetricFamily, "orpoll_keys", "Keys by state", ["state"],
            (((k,), v) for k, v in states.items()),
        )  # fmt: skip
        yield family(
            GaugeMetricFamily,
            "orpoll_key_credit_remaining_usd",
            "Credit left under the keys' spend caps, summed per account (keys without a cap "
            "are not counted)",
            ["account"],
            (((k,), v) for k, v in credit.items()),
        )

    def _models(self) -> Iterator[Metric]:
        totals = self.counters.model_totals()
        tokens = CounterMetricFamily(
            "orpoll_tokens", "Tokens by type and model", labels=["type", "model"]
        )
        cost = CounterMetricFamily("orpoll_cost_usd", "Cost in USD by model", labels=["model"])
        for model, sums in totals.items():
            for i, kind in enumerate(TOKEN_TYPES, start=1):
                tokens.add_metric([kind, model], sums[i])
            cost.add_metric([model], sums[5])
        yield tokens
        yield cost


def family(cls: Any, name: str, text: str, labels: list[str], items: Any) -> Metric:
    metric = cls(name, text, labels=labels)
    for values, n in items:
        metric.add_metric(list(values), n)
    return metric


def pool_figures(scheduler: KeyScheduler) -> tuple[dict[str, int], dict[str, float]]:
    """Keys by state, and the credit left under the keys' caps summed per account ("unknown"
    for keys whose account no probe has named yet)."""
    states = {k: v for k, v in scheduler.counts().items() if k != "total"}
    credit: dict[str, float] = {}
    for ks in scheduler:
        remaining = ks.info.get("limit_remaining")
        if isinstance(remaining, (int, float)) and not isinstance(remaining, bool):
            account = ks.group or "unknown"
            credit[account] = credit.get(account, 0.0) + float(remaining)
    return states, credit


def make_registry(collector: Collector) -> CollectorRegistry:
    """A registry of its own (not the process-wide default): one per app, so tests and
    several apps in a process never share series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
