"""``Transfer``: one upstream attempt, as orpoll's own request object on a curl handle.

``curlpool.LazyCurlClient`` runs transfers (the fast path); ``plain.PlainPool`` runs them
through Tornado's public ``fetch`` (FAST=0).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Protocol

import pycurl
from tornado.curl_httpclient import CurlError

log = logging.getLogger("orpoll.upstream")
_HTTP_S = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS

ERROR_BODY_LIMIT = 64 * 1024
# The error a transfer ends with when a curl option refuses the request's own values (a NUL
# or a non-ASCII character in its URL, say): curl's CURLE_BAD_FUNCTION_ARGUMENT.
CURLE_SETUP_FAILED = 43
BODY_LIMIT = 256 * 1024 * 1024  # a buffered upstream answer
USER_AGENT = "Mozilla/5.0 (compatible; pycurl)"  # what Tornado's fetch sends
_NO_LINES: list[bytes] = []
# Without NOSIGNAL libcurl guards every socket event against SIGPIPE: 3 rt_sigaction calls per
# event, each chunk one. Its only other use of signals is an alarm that bounds a blocking name
# lookup; a libcurl that resolves in a thread (AsynchDNS, as pycurl's wheels) needs none, and
# Python ignores SIGPIPE. Elsewhere, Tornado's rule: only when other threads run.
_NOSIGNAL = bool(pycurl.version_info()[4] & pycurl.VERSION_ASYNCHDNS)


class Aborter(Protocol):
    """What runs a transfer, as far as ``Transfer.abort`` needs it."""

    def abort(self, curl: pycurl.Curl) -> None: ...


class Transfer:
    """One upstream attempt, from request to result: what curl needs to send it, what came back,
    an abort switch and a stall timer.

    It is its own request object: ``LazyCurlClient.send`` runs it on a curl handle without
    Tornado's HTTPRequest, header dicts and HTTPResponse (memory and time per request for
    what nothing here reads). The result is on the transfer itself: ``status``, ``header()``,
    ``body()`` (buffered mode), or ``error`` when it failed below HTTP.

    ``stall`` (seconds, 0 = off) ends a transfer that moves no body byte for that long, before
    the first byte or between chunks; ``first_byte`` (seconds, 0 = off) ends one that has
    received no body byte at all that long after it started; ``timed_out`` tells that one of
    them is why it ended. On the fast pool, both the abort and the stall check work without a
    per-transfer curl progress callback (two Python calls per chunk): see LazyCurlClient.
    On the fallback (``plain.PlainPool``) they go through that callback.
    """

    __slots__ = (
        "status",
        "h2c",
        "headers",
        "_abort",
        "curl",
        "client",
        "on_chunk",
        "stall",
        "first_byte",
        "begun",
        "timed_out",
        "_in_write",
        "_moved",
        "quiet_since",
        "error",
        "os_errno",
        "chunks",
        "size",
        "future",
        "url",
        "method",
        "lines",
        "payload",
        "connect_timeout",
        "ca_bundle",
    )

    def __init__(self, on_chunk: Callable[[bytes], None] | None = None) -> None:
        self.status = 0
        self.headers: list[bytes] = []
        self._abort = False
        self.curl: pycurl.Curl | None = None  # the handle, while the transfer runs
        self.client: Aborter | None = None  # what runs it, while it runs
        self.on_chunk = on_chunk  # None: buffer the body (``body()``)
        self.stall = 0.0
        self.first_byte = 0.0
        self.begun = 0.0  # monotonic time curl started it (set by the client)
        self.timed_out = False
        self._in_write = False
        self._moved = -1
        self.quiet_since = 0.0
        self.error: CurlError | None = None
        self.os_errno = 0  # the OS error behind ``error``, when curl saw one
        self.chunks: list[bytes] = []
        self.size = 0
        self.future: asyncio.Future[Transfer] | None = None
        self.url = ""
        self.h2c = False  # HTTP/2 without TLS to an http:// URL (set by the curl client)
        self.method = "GET"
        self.lines = _NO_LINES
        self.payload: bytes | None = None
        self.connect_timeout = 20.0
        self.ca_bundle = ""  # a PEM file to trust instead of the system's CAs

    @property
    def aborted(self) -> bool:
        return self._abort

    def abort(self) -> None:
        """End the transfer now, so a client that leaves stops the upstream (and its billing)
        at once. Inside curl's write callback the callback's short return does it instead:
        curl must not be re-entered from its own callbacks."""
        self._abort = True
        if self.curl is not None and not self._in_write and self.client is not None:
            self.client.abort(self.curl)

    def write(self, chunk: bytes) -> int | None:
        """curl WRITEFUNCTION: a stream's chunks go to ``on_chunk`` at once; otherwise the body
        is kept (up to BODY_LIMIT).

        Tornado's own streaming callback queues chunks and delivers them on a later loop
        iteration (a deque, a callback and a flush per chunk). ``on_chunk`` never re-enters the
        curl client (it writes to the client's IOStream), so it can run right here, inside
        curl. Returning 0 (a short write) ends the transfer when it was aborted meanwhile.
        """
        if self.on_chunk is None:
            self.size += len(chunk)
            if self.size > BODY_LIMIT:
                return 0  # curl error 23; _finish words it
            self.chunks.append(chunk)
            return None
        self._in_write = True
        try:
            self.on_chunk(chunk)
        except Exception:
            log.exception("stream chunk handler failed; aborting the transfer")
            self._abort = True
        finally:
            self._in_write = False
        return 0 if self._abort else None

    def body(self) -> bytes:
        """The buffered body (buffered mode), joined once."""
        if len(self.chunks) != 1:
            self.chunks = [b"".join(self.chunks)]
        return self.chunks[0]

    def on_header(self, raw: bytes) -> None:
        """curl HEADERFUNCTION: records the status line and header lines.

        Runs inside curl, synchronously, so the status is known before the first body chunk
        reaches ``on_chunk`` (Tornado's header_callback is queued and may arrive after it).
        Lines stay bytes until ``header()`` asks (rarely: errors and the commit).
        """
        if raw.startswith(b"HTTP/"):
            parts = raw.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.headers = []
        elif raw.strip():
            self.headers.append(raw)

    def on_header_line(self, line: str) -> None:
        """Tornado's ``header_callback``: ``on_header`` for a line it decoded."""
        self.on_header(line.encode("latin1"))

    def header(self, name: str) -> str | None:
        name = name.lower()
        for raw in self.headers:
            k, _, v = raw.decode("latin1").partition(":")
            if k.strip().lower() == name:
                return v.strip()
        return None

    @property
    def sweep_every(self) -> float:
        """How often ``stalled`` needs asking (0 = never): a quarter of the shorter limit."""
        stall, first = self.stall, self.first_byte
        if stall and first:
            return min(stall, first) / 4
        return (stall or first) / 4

    def stalled(self, now: float) -> bool:
        """``stalled_at`` for a transfer on a curl handle (sweep-time check)."""
        curl = self.curl
        if curl is None:
            return False
        down = curl.getinfo(pycurl.SIZE_DOWNLOAD_T)
        # A long request upload is not silence either.
        return self.stalled_at(now, down, down + curl.getinfo(pycurl.SIZE_UPLOAD_T))

    def stalled_at(self, now: float, down: int, moved: int) -> bool:
        """True once no body byte moved, either way, for ``stall`` seconds, or none came in
        ``first_byte`` seconds after the start; ``down`` and ``moved`` are the bytes received,
        and received plus sent, so far."""
        if self.first_byte and not down and now - self.begun >= self.first_byte:
            self.stall = self.first_byte  # the silence classify_transport reports
            return True
        if not self.stall:
            return False
        if moved != self._moved:
            self._moved, self.quiet_since = moved, now
            return False
        return now - self.quiet_since >= self.stall

    def setup(self, curl: pycurl.Curl) -> None:
        """Options for a handle fresh from ``curl.reset()``: only what differs from reset's
        defaults (Tornado's generic setup sets some 40 options and parses every header line)."""
        curl.setopt(pycurl.PROTOCOLS, _HTTP_S)
        curl.setopt(pycurl.REDIR_PROTOCOLS, _HTTP_S)
        curl.setopt(pycurl.URL, self.url)
        curl.setopt(pycurl.HTTPHEADER, self.lines)  # copied by curl: let go of ours
        if not self.h2c:  # (an h2c transfer may run again: LazyCurlClient._h2c_refused)
            self.lines = _NO_LINES
        curl.setopt(pycurl.HEADERFUNCTION, self.on_header)
        curl.setopt(pycurl.WRITEFUNCTION, self.write)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(1000 * self.connect_timeout))
        curl.setopt(pycurl.USERAGENT, USER_AGENT)
        curl.setopt(pycurl.ENCODING, "gzip,deflate")
        curl.setopt(pycurl.TCP_NODELAY, 1)
        if self.url.startswith("https:"):
            # HTTP/2 (OpenRouter over TLS): a transfer that starts while the first connection
            # is in its handshake waits to share it, not opens a TLS connection of its own.
            curl.setopt(pycurl.PIPEWAIT, 1)
        elif self.h2c:
            curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE)
            curl.setopt(pycurl.PIPEWAIT, 1)
        # libcurl's default upload buffer is most of a stream's memory; bodies are sent from
        # memory, so its minimum size costs nothing.
        curl.setopt(pycurl.UPLOAD_BUFFERSIZE, 16384)
        body = self.payload
        if body is not None:
            curl.setopt(pycurl.POST, 1)
            curl.setopt(pycurl.POSTFIELDSIZE, len(body))
            curl.setopt(pycurl.POSTFIELDS, body)  # pycurl keeps the bytes alive; no copy
        if self.method not in ("GET", "POST"):
            curl.setopt(pycurl.CUSTOMREQUEST, self.method)
        if self.ca_bundle:
            curl.setopt(pycurl.CAINFO, self.ca_bundle)
        if _NOSIGNAL or threading.active_count() > 1:
            curl.setopt(pycurl.NOSIGNAL, 1)
