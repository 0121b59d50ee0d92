"""Who may use the proxy: the client bearer check (admin login and sessions live here too)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping


def parse_client_keys(value: str) -> tuple[bytes, ...]:
    """APP_API_KEY as a tuple of accepted keys (comma-separated; empty = /v1 is open)."""
    return tuple(k.strip().encode() for k in (value or "").split(",") if k.strip())


def bearer(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>`` ('' when absent)."""
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def client_key_ok(keys: tuple[bytes, ...], headers: Mapping[str, str]) -> bool:
    """True if /v1 is open or the request carries one of ``keys`` (constant-time compare)."""
    if not keys:
        return True
    token = bearer(headers).encode()
    ok = False
    for key in keys:  # compare against every key so timing does not tell which one matched
        ok |= hmac.compare_digest(token, key)
    return ok
