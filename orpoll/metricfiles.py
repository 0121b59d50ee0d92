"""/metrics across worker processes (WORKERS > 1): each worker copies its figures into
prometheus_client's multiprocess files, and a scrape of any worker merges every worker's files
with ``MultiProcessCollector``.

Requests go on counting in memory (``metrics.Counters``) as in a single process: a request
pays nothing more. A worker copies its totals into its files once a second, just before it
answers a scrape, and when it stops; another worker's figures are thus at most a second old.
The files are written with ``prometheus_client.mmap_dict.MmapedDict`` and ``mmap_key``, the
format ``MultiProcessCollector`` reads (not in prometheus_client's documented API; a test
checks both names still exist).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from tornado.ioloop import PeriodicCallback

from .metrics import Collector

PUBLISH_EVERY = timedelta(seconds=1)
# How a gauge merges across workers (prometheus_client's multiprocess modes; "live": the values
# of a dead worker go with it). Open streams add up; the pool's figures are each worker's view
# of the same keys, so the one written last stands.
GAUGE_MODES = {"orpoll_streams_open": "livesum"}
GAUGE_MODE = "livemostrecent"


class MetricFiles:
    """This worker's figures, as read from ``source``, written into its files in ``path``."""

    def __init__(self, source: Collector, path: str) -> None:
        self.source, self.path, self.pid = source, path, os.getpid()
        self.files: dict[str, MmapedDict] = {}
        self.written: dict[tuple[str, str], float] = {}
        self.periodic: PeriodicCallback | None = None

    def publish(self) -> None:
        """Write every figure that changed since the last call."""
        now = time.time()
        for metric in self.source.collect():
            kind = file_kind(metric)
            stamp = now if kind.startswith("gauge") else 0.0
            for name, labels, value in rows(metric):
                key = mmap_key(
                    metric.name, name, list(labels), list(labels.values()), metric.documentation
                )
                if self.written.get((kind, key)) != value:
                    self.written[(kind, key)] = value
                    self.file(kind).write_value(key, value, stamp)

    def file(self, kind: str) -> MmapedDict:
        found = self.files.get(kind)
        if found is None:
            # Named as prometheus_client names its own: the kind, then the writer's pid.
            name = os.path.join(self.path, f"{kind}_{self.pid}.db")
            found = self.files[kind] = MmapedDict(name)
        return found

    def start(self) -> None:
        self.periodic = PeriodicCallback(self.publish, PUBLISH_EVERY)
        self.periodic.start()

    def stop(self) -> None:
        """Write the last figures and close the files (the worker is about to exit)."""
        if self.periodic is not None:
            self.periodic.stop()
            self.periodic = None
        self.publish()
        for f in self.files.values():
            f.close()
        self.files.clear()


class Merged:
    """The registry's one collector: this worker's latest figures written, then every worker's
    files merged."""

    def __init__(self, files: MetricFiles) -> None:
        self.files = files
        self.merged = MultiProcessCollector(None, files.path)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Any:
        self.files.publish()
        return self.merged.collect()


def file_kind(metric: Metric) -> str:
    if metric.type == "gauge":
        return "gauge_" + GAUGE_MODES.get(metric.name, GAUGE_MODE)
    return metric.type  # counter, histogram


def rows(metric: Metric) -> Iterator[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) as the files hold them: a histogram's buckets each count
    only their own observations (the merge adds them up again, and makes ``_count``)."""
    below: dict[tuple[tuple[str, str], ...], float] = {}
    for s in metric.samples:
        if metric.type != "histogram":
            yield s.name, s.labels, s.value
        elif s.name.endswith("_bucket"):
            series = tuple((k, v) for k, v in s.labels.items() if k != "le")
            yield s.name, s.labels, s.value - below.get(series, 0.0)
            below[series] = s.value
        elif s.name.endswith("_sum"):
            yield s.name, s.labels, s.value


def shared_registry(files: MetricFiles) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged(files))
    return registry
