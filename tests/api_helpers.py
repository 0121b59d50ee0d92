"""Helpers for the /v1 tests that speak raw HTTP: a connection, a wait, an abandoned upload,
and whether the pool was left alone."""

from __future__ import annotations

import asyncio


async def connect(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP connection to the app at ``base_url`` (``http://127.0.0.1:PORT``)."""
    host, port = base_url.rsplit("/", 1)[1].split(":")
    return await asyncio.open_connection(host, int(port))


async def until(cond, timeout: float = 10.0) -> bool:
    """Wait for ``cond()`` to hold (polling); its last value."""
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


def untouched(app) -> bool:
    """No key was used, blamed or cooled."""
    return all(
        ks.requests == 0 and ks.failures == 0 and ks.errors == 0 and ks.state == "available"
        for ks in app.scheduler
    )


async def abandon_upload(
    base_url: str, path: str, size: int, *, chunked: bool, headers: bytes = b""
) -> None:
    """Send headers and all but the last KB of a ``size``-byte body, then close the socket."""
    reader, writer = await connect(base_url)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s%s\r\n\r\n"
        % (path.encode(), headers, framing)
    )
    block = b"x" * (256 * 1024)
    sent = 0
    while sent < size - 1024:
        part = block[: min(len(block), size - 1024 - sent)]
        writer.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
        sent += len(part)
        await writer.drain()
    await asyncio.sleep(0.05)  # let the server read what was sent
    writer.close()
