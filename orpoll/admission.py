"""Admission: how many /v1 requests the process, and each client key, may have in progress.

MAX_CONCURRENT_REQUESTS and MAX_CONCURRENT_REQUESTS_PER_CLIENT are read on every request (both
are editable at run time); a request over either gets 429 ``too_many_requests`` with
Retry-After before its body is read or a key is picked. O(1) per request.
"""

from __future__ import annotations

from . import errors

RETRY_AFTER = "1"  # a slot frees as soon as any request in progress ends


class Admission:
    """Requests in progress per client key (the process-wide count is ``app.inflight``)."""

    __slots__ = ("clients",)

    def __init__(self) -> None:
        # Keyed by the accepted bearer token itself: the auth check already proved it is one of
        # APP_API_KEY's entries, so there are at most that many, and none outlives its requests.
        self.clients: dict[bytes, int] = {}

    def admit(self, total_limit: int, client_limit: int, inflight: int, client: bytes) -> bool:
        """Take a slot for one more request, or raise RateLimited; True if a client slot was
        taken (give it back with ``release(client)``). ``client`` is b"" when /v1 is open."""
        if total_limit and inflight >= total_limit:
            raise _busy(f"{inflight} requests are in progress (MAX_CONCURRENT_REQUESTS)")
        if not client_limit or not client:
            return False
        n = self.clients.get(client, 0)
        if n >= client_limit:
            raise _busy(
                f"this API key has {n} requests in progress (MAX_CONCURRENT_REQUESTS_PER_CLIENT)"
            )
        self.clients[client] = n + 1
        return True

    def release(self, client: bytes) -> None:
        n = self.clients.pop(client, 0) - 1
        if n > 0:
            self.clients[client] = n


def _busy(why: str) -> errors.RateLimited:
    return errors.RateLimited(
        f"too many requests at once: {why}; retry shortly",
        code="too_many_requests",
        headers={"Retry-After": RETRY_AFTER},
    )
