"""The narrow interface every shared backend offers the cluster: an ordered event log and a
small key-value store (hashes, and names that expire for leases).

All methods are coroutines and raise ``BackendDown`` when the backend cannot be reached; the
caller keeps what it meant to write and tries again later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Event = dict[str, Any]  # JSON-serialisable; "o" is the origin instance, "t" the kind


class BackendDown(ConnectionError):
    """The backend did not answer (down, unreachable, timed out)."""


class Backend:
    """Event log + key-value store shared by every instance of one pool."""

    name = "none"

    async def connect(self) -> str:
        """Reach the backend; returns its epoch, a token that changes when the backend may have
        lost what it held (a restarted server): the cluster then merges everything again."""
        raise NotImplementedError

    async def tail(self) -> str:
        """A cursor at the end of the log (reading from it returns only later events)."""
        raise NotImplementedError

    async def read(self, cursor: str, timeout: float) -> tuple[str, list[Event]]:
        """Events after ``cursor``, waiting up to ``timeout`` seconds for one; returns the new
        cursor and the events in order (none when the wait ran out)."""
        raise NotImplementedError

    async def commit(
        self,
        event: Event | None,
        put: Mapping[str, Mapping[str, str]] | None = None,
        drop: Mapping[str, Iterable[str] | None] | None = None,
    ) -> None:
        """In one step: delete hash fields (``drop``: hash -> fields, or None for the whole
        hash), set hash fields (``put``: hash -> field -> value), then append ``event``."""
        raise NotImplementedError

    async def hmget(self, name: str, fields: Sequence[str]) -> list[str | None]:
        raise NotImplementedError

    async def hgetall(self, name: str) -> dict[str, str]:
        raise NotImplementedError

    async def claim(self, names: Sequence[str], value: str, ttl: float) -> list[bool]:
        """Set each name to ``value`` for ``ttl`` seconds where it is not set (a lease); True
        for the names this call set."""
        raise NotImplementedError

    async def get(self, name: str) -> str | None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError
