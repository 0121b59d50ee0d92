"""catalog.py: OpenRouter's model list in OpenAI's shape; one upstream call for any number of
concurrent misses; an expired copy served while one refresh runs; errors only without a copy.

The upstream is a small real fetcher whose answers the test sets and whose calls it counts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orpoll import errors
from orpoll.catalog import ModelCatalog, openai_list
from tests.pool_helpers import Clock

MODELS = {"data": [{"id": "openai/gpt-4o", "context_length": 128000}, {"id": "auto"}]}


class Fetcher:
    """Answers ``answer`` after ``delay`` seconds; counts its calls."""

    def __init__(self, answer: tuple[int, Any] = (200, MODELS), delay: float = 0.0) -> None:
        self.answer, self.delay, self.calls = answer, delay, 0

    async def __call__(self) -> tuple[int, Any, float]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return *self.answer, self.delay


def test_the_list_takes_openai_shape_and_keeps_openrouter_fields():
    out = openai_list({"data": [*MODELS["data"], {"no": "id"}, "junk"]})
    assert out["object"] == "list" and [m["id"] for m in out["data"]] == ["openai/gpt-4o", "auto"]
    gpt, auto = out["data"]
    assert gpt["object"] == "model" and gpt["owned_by"] == "openai" and gpt["created"] == 0
    assert gpt["context_length"] == 128000 and auto["owned_by"] == "openrouter"
    with pytest.raises(ValueError):
        openai_list({"models": []})


async def test_concurrent_misses_make_one_upstream_call():
    fetch = Fetcher(delay=0.05)
    catalog = ModelCatalog(fetch, ttl=60.0)
    bodies = await asyncio.gather(*(catalog.get() for _ in range(20)))
    assert fetch.calls == 1 and len(set(bodies)) == 1
    assert b'"openai/gpt-4o"' in bodies[0]


async def test_an_expired_copy_is_served_at_once_while_it_refreshes():
    clock = Clock()
    fetch = Fetcher()
    catalog = ModelCatalog(fetch, ttl=60.0, clock=clock)
    first = await catalog.get()
    clock.advance(61)
    fetch.answer, fetch.delay = (200, {"data": [{"id": "new/model"}]}), 0.05
    assert await catalog.get() == first  # no wait for the refresh
    await asyncio.sleep(0.1)
    assert b"new/model" in await catalog.get() and fetch.calls == 2


async def test_a_failed_refresh_keeps_the_copy_and_no_copy_is_a_502():
    clock = Clock()
    fetch = Fetcher((500, {"error": {"message": "upstream down"}}))
    catalog = ModelCatalog(fetch, ttl=60.0, clock=clock)
    with pytest.raises(errors.ApiError) as exc:
        await catalog.get()
    assert exc.value.status == 502 and "upstream down" in exc.value.message
    fetch.answer = (200, MODELS)
    good = await catalog.get()
    clock.advance(61)
    fetch.answer = (200, {"not": "a list"})
    assert await catalog.get() == good
    await asyncio.sleep(0.01)
    assert await catalog.get() == good
