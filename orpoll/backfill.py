"""Backfill: usage for a request whose answer carried none (a stream cut before its last
chunk), from OpenRouter's ``GET /api/v1/generation?id=`` with the key that served it.

OpenRouter writes a generation's stats a little after the answer ends, so a 404 is retried
for up to ``deadline`` seconds. Fetches run a few at a time; past ``max_pending`` held records
new ones are committed at once without usage. Whatever happens the record is committed once,
with usage unknown (NULLs, not zeros) if none was found.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from .usage import RequestRecord, usage_from_generation

log = logging.getLogger("orpoll.ledger")


class Backfill:
    """``key_of(key_id)`` gives a pooled key's secret (None if gone); ``base_url()`` the
    upstream's ``.../api/v1``."""

    def __init__(
        self,
        key_of: Callable[[str], str | None],
        base_url: Callable[[], str],
        *,
        concurrency: int = 4,
        deadline: float = 10.0,
        retry_after: float = 1.0,
        max_pending: int = 10000,
    ) -> None:
        self.key_of, self.base_url = key_of, base_url
        self.deadline, self.retry_after, self.max_pending = deadline, retry_after, max_pending
        self.gate = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.http: AsyncHTTPClient | None = None  # made on first use, on the running loop
        self.tasks: set[asyncio.Task] = set()
        self.filled = self.missed = 0

    def wants(self, record: RequestRecord) -> bool:
        """Worth asking: a 200 answer without usage that names its generation and key."""
        return (
            not record.usage_known
            and record.status == 200
            and bool(record.generation_id and record.key_id)
            and len(self.tasks) < self.max_pending
        )

    def start(self, record: RequestRecord, done: Callable[[RequestRecord], None]) -> None:
        """Look the usage up in the background, then ``done(record)`` (sync by contract)."""
        task = asyncio.ensure_future(self._run(record, done))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, record: RequestRecord, done: Callable[[RequestRecord], None]) -> None:
        try:
            async with self.gate:
                found = await self.lookup(record)
            if found:
                self.filled += 1
            else:
                self.missed += 1
        except asyncio.CancelledError:
            self.missed += 1  # shutting down: the record goes in as it is
        except Exception:
            log.exception("usage backfill of request %s failed", record.request_id)
        finally:
            done(record)

    async def lookup(self, record: RequestRecord) -> bool:
        """Ask until the generation is known or the deadline passes; True if usage came."""
        key = self.key_of(record.key_id)
        if not key:
            return False
        query = urllib.parse.urlencode({"id": record.generation_id})
        request = HTTPRequest(
            f"{self.base_url()}/generation?{query}",
            headers={"Authorization": f"Bearer {key}"},
            connect_timeout=5,
            request_timeout=10,
        )
        if self.http is None:
            self.http = AsyncHTTPClient(force_instance=True, max_clients=self.concurrency)
        give_up = time.monotonic() + self.deadline
        while True:
            resp = await self.http.fetch(request, raise_error=False)
            if resp.code == 200:
                return record.apply(usage_from_generation(resp.body))
            if resp.code != 404 or time.monotonic() + self.retry_after > give_up:
                log.debug(
                    "no usage for request %s (generation %s): %s",
                    record.request_id,
                    record.generation_id,
                    resp.code,
                )
                return False
            await asyncio.sleep(self.retry_after)

    async def close(self) -> None:
        """Stop the lookups in flight (each still commits its record, without the figures it
        did not get) and close the client: shutdown does not wait for OpenRouter."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)
        if self.http is not None:
            self.http.close()
