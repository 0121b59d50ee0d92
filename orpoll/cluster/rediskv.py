"""RedisBackend: the cluster's event log as a Redis stream (XADD, XREAD BLOCK from the last id:
pushed at once, and nothing lost over a short disconnect) and its snapshot in Redis hashes.

``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs work, with AUTH given in the URL
(``redis://:password@host:6379/0``), as redis-py's ``from_url`` reads them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from .backend import Backend, BackendDown, Event

T = TypeVar("T")
PREFIX = "orpoll:"
STREAM = PREFIX + "events"
# The stream is trimmed to about this many events: an instance away for longer than that
# many changes takes the rest from the snapshot (the reconcile), not from the log.
MAX_EVENTS = 100_000
# Any Redis error (refused, timed out, NOAUTH, a replica that cannot write) leaves the
# instance serving from its own state, as an outage does.
FAILURES = (redis.exceptions.RedisError, OSError)


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        # socket_timeout must outlast the longest XREAD BLOCK, or the wait reads as a failure.
        self.client: Any = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 2.0),
            retry_on_timeout=False,
        )

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except FAILURES as e:
            raise BackendDown(str(e) or type(e).__name__) from None

    async def connect(self) -> str:
        info = await self._call(lambda: self.client.info("server"))
        return str(info.get("run_id", ""))

    async def tail(self) -> str:
        last = await self._call(lambda: self.client.xrevrange(STREAM, count=1))
        return last[0][0] if last else "0-0"

    async def read(self, cursor: str, timeout: float) -> tuple[str, list[Event]]:
        block = max(int(timeout * 1000), 1)
        got = await self._call(lambda: self.client.xread({STREAM: cursor}, count=1000, block=block))
        events: list[Event] = []
        for _, entries in got or ():
            for eid, fields in entries:
                cursor = eid
                events.append(json.loads(fields["e"]))
        return cursor, events

    async def commit(
        self,
        event: Event | None,
        put: Mapping[str, Mapping[str, str]] | None = None,
        drop: Mapping[str, Iterable[str] | None] | None = None,
    ) -> None:
        pipe = self.client.pipeline(transaction=True)
        for name, names in (drop or {}).items():
            if names is None:
                pipe.delete(PREFIX + name)
            elif names := list(names):
                pipe.hdel(PREFIX + name, *names)
        for name, fields in (put or {}).items():
            if fields:
                pipe.hset(PREFIX + name, mapping=dict(fields))
        if event is not None:
            pipe.xadd(STREAM, {"e": json.dumps(event)}, maxlen=MAX_EVENTS, approximate=True)
        await self._call(pipe.execute)

    async def hmget(self, name: str, fields: Sequence[str]) -> list[str | None]:
        if not fields:
            return []
        return await self._call(lambda: self.client.hmget(PREFIX + name, list(fields)))

    async def hgetall(self, name: str) -> dict[str, str]:
        # Page by page (HSCAN): neither Redis nor this loop is held by a large pool at once.
        found: dict[str, str] = {}

        async def scan() -> None:
            async for field, value in self.client.hscan_iter(PREFIX + name, count=1000):
                found[field] = value

        await self._call(scan)
        return found

    async def claim(self, names: Sequence[str], value: str, ttl: float) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.set(PREFIX + name, value, nx=True, px=max(int(ttl * 1000), 1))
        return [bool(r) for r in await self._call(pipe.execute)]

    async def get(self, name: str) -> str | None:
        return await self._call(lambda: self.client.get(PREFIX + name))

    async def close(self) -> None:
        await self.client.aclose()
