"""ModelCatalog: /v1/models in OpenAI's list shape, cached, with concurrent misses coalesced.

A cache with refresh rules of its own, between the upstream client and the handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import errors

log = logging.getLogger("orpoll.catalog")


def openai_list(data: Any) -> dict[str, Any]:
    """OpenRouter's ``{"data": [...]}`` as ``{"object": "list", "data": [{id, object, ...}]}``.

    Keeps OpenRouter's extra fields (context_length, pricing, ...); adds ``object`` and
    ``owned_by`` (the id's prefix before "/").
    """
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise ValueError("upstream model list has no data array")
    out = []
    for m in models:
        if not isinstance(m, dict) or not isinstance(m.get("id"), str):
            continue
        item = dict(m)
        item["object"] = "model"
        item.setdefault("created", 0)
        item.setdefault("owned_by", m["id"].split("/", 1)[0] if "/" in m["id"] else "openrouter")
        out.append(item)
    return {"object": "list", "data": out}


class ModelCatalog:
    """Serves the model list from cache; one upstream call however many clients miss at once."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[int, Any, float]]],
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch, self.ttl, self.clock = fetch, ttl, clock
        self.body: bytes | None = None
        self.fetched_at = 0.0
        self._inflight: asyncio.Future[bytes] | None = None

    async def get(self) -> bytes:
        """The serialized list; raises ApiError when there has never been a copy.

        An expired copy is served at once while one refresh runs in the background (stale
        while revalidate): a slow or failing upstream never makes a client wait once a list
        has been fetched.
        """
        if self.body is not None and self.clock() - self.fetched_at < self.ttl:
            return self.body
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
            self._inflight.add_done_callback(self._refreshed)
        if self.body is not None:
            return self.body
        return await asyncio.shield(self._inflight)

    def _refreshed(self, fut: asyncio.Future[bytes]) -> None:
        self._inflight = None
        if not fut.cancelled():
            fut.exception()  # mark retrieved: waiters (if any) get it; a refresh may have none

    async def _refresh(self) -> bytes:
        status, data, _ = await self.fetch()
        try:
            if status != 200:
                raise ValueError(f"HTTP {status}{_reason(data)}")
            body = json.dumps(openai_list(data)).encode()
        except (ValueError, RecursionError) as e:
            if self.body is not None:
                log.warning("model list refresh failed (%s); serving the cached copy", e)
                return self.body
            raise errors.upstream_error(502, f"could not fetch the model list: {e}") from None
        self.body, self.fetched_at = body, self.clock()
        return body


def _reason(data: Any) -> str:
    """``: <message>`` from an error body (curl's reason when no answer came), else ""."""
    err = data.get("error") if isinstance(data, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return f": {message[:200]}" if isinstance(message, str) and message else ""
