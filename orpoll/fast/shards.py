"""``CurlPool``: the curl multis (``LazyCurlClient`` shards) the relay's upstream transfers run
on, one more per SHARD_TRANSFERS at once, and the heap tuning around a burst of them."""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from tornado.ioloop import PeriodicCallback

from ..logs import plural
from . import heap
from .curlpool import H2c, LazyCurlClient
from .transfer import BODY_LIMIT, Transfer

SHARD_TRANSFERS = 256  # transfers per curl multi (CurlPool)
SHARD_IDLE_SECONDS = 30.0  # a shard past the first with nothing running this long is closed
log = logging.getLogger("orpoll.upstream")


class CurlPool:
    """The curl multis upstream transfers run on: one more per SHARD_TRANSFERS at once.

    Each time a transfer starts, libcurl walks every connection its multi holds to that host,
    busy ones included, looking for one to reuse. With thousands of streams open on
    HTTP/1.1 (one connection each) that walk took much of the proxy's CPU. Each multi has
    its own connection cache, so the walk stays
    within a shard. A transfer goes to the first shard with a free slot, so a light load runs
    on the first one alone and reuses its connections. The shards share one waiting queue:
    when all ``limit`` slots are busy, whichever shard frees a handle first starts the oldest
    waiting transfer.

    After a burst, the shards past the first keep their handles and one idle upstream
    connection per transfer they ran (descriptors, and curl's memory for each). ``trim`` closes
    a shard that ran nothing for ``idle_seconds`` and hands the freed heap back to the system.
    """

    def __init__(self, limit: int, h2c: bool = False) -> None:
        self.room = limit  # slots not yet given to a shard
        self.h2c = H2c() if h2c else None
        self.waiting: collections.deque[Transfer] = collections.deque()
        self.shards: list[LazyCurlClient] = []
        self.idle_seconds = SHARD_IDLE_SECONDS
        self._trimmer: PeriodicCallback | None = None
        self.first = self._add()

    def _add(self) -> LazyCurlClient:
        size = min(SHARD_TRANSFERS, self.room)
        self.room -= size
        shard = LazyCurlClient(
            force_instance=True, max_clients=size, max_body_size=BODY_LIMIT, waiting=self.waiting
        )
        # UPSTREAM_H2C: a burst's transfers multiplex (no TCP connection per stream, and one
        # socket event brings many streams' chunks: fewer late chunks and less CPU). The first
        # shard's HTTP/1.1 connections, kept alive and reused, cost libcurl less per chunk
        # than HTTP/2 does, so the first shard keeps HTTP/1.1.
        shard.h2c = self.h2c if self.shards else None
        self.shards.append(shard)
        if len(self.shards) == 2 and self._trimmer is None:
            # A burst, from now until the trimmer stops: the new shards' upload buffers are
            # mmap'd (heap.py).
            heap.burst(True)
            every = 1000 * min(10.0, max(0.05, self.idle_seconds / 4))
            self._trimmer = PeriodicCallback(self._trim, every)
            self._trimmer.start()
        return shard

    def trim(self) -> int:
        """Close the shards past the first that ran nothing for ``idle_seconds``; how many."""
        now = time.monotonic()
        idle = [
            shard
            for shard in self.shards[1:]
            if not shard.running and now - shard.idle_since >= self.idle_seconds
        ]
        for shard in idle:
            self.shards.remove(shard)
            self.room += shard.limit
            shard.close()
        if len(self.shards) == 1 and self._trimmer is not None:
            self._trimmer.stop()
            self._trimmer = None
            heap.burst(False)
        if idle:
            heap.release_heap()
            log.info("closed %s after a burst", plural(len(idle), "idle upstream pool"))
        return len(idle)

    def _trim(self) -> None:
        self.trim()

    def send(self, transfer: Transfer) -> asyncio.Future[Transfer]:
        """As ``LazyCurlClient.send``, on the first shard with a free slot."""
        for shard in self.shards:
            if shard.has_room():
                return shard.send(transfer)
        if self.room > 0:
            return self._add().send(transfer)
        return self.first.send(transfer)  # waits for a handle to free in any shard

    def close(self) -> None:
        if self._trimmer is not None:
            self._trimmer.stop()
            heap.burst(False)
        for shard in self.shards:
            shard.close()
