"""``LazyCurlClient``: the curl handles and the multi that upstream transfers run on.

``shards.CurlPool`` runs relayed transfers (``transfer.Transfer``) on several of these
clients; ``control_client`` makes one for orpoll's own fetches.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback

from .transfer import BODY_LIMIT, CURLE_SETUP_FAILED, Transfer

log = logging.getLogger("orpoll.upstream")

# The error a transfer ends with when we end it ourselves (LazyCurlClient.abort).
CURLE_ABORTED_BY_CALLBACK = 42
CURLE_HTTP2 = 16  # an HTTP/2 framing error: also what a server without h2c answers to it
# curl's POLL_* as bits: 1 read, 2 write (POLL_NONE and POLL_REMOVE: none).
_CURL_EVENTS = {pycurl.POLL_IN: 1, pycurl.POLL_OUT: 2, pycurl.POLL_INOUT: 3}


class H2c:
    """UPSTREAM_H2C, shared by a pool's shards: on, until the upstream shows it does not speak
    HTTP/2 without TLS. It can show that only before any HTTP/2 answer came back (``proven``):
    an HTTP/1.1-only server answers the HTTP/2 preface with an HTTP/1.1 error, which curl
    reports as CURLE_HTTP2 before any status line. After one answer, a CURLE_HTTP2 is just a
    failed transfer."""

    __slots__ = ("on", "proven")

    def __init__(self) -> None:
        self.on, self.proven = True, False


class LazyCurlClient(CurlAsyncHTTPClient):
    """CurlAsyncHTTPClient that creates its curl handles as load needs them, runs orpoll's own
    ``Transfer`` requests on them, and can end a transfer on demand.

    Tornado builds all ``max_clients`` handles up front, for every transfer we allow. Growing
    ``_curls``/``_free_list`` on demand keeps an idle proxy small. ``send`` runs a Transfer
    (the relay's shards, shards.CurlPool); Tornado's
    ``fetch`` still works (the health checks' and the model list's own client), and waiting
    transfers go first when a handle frees.
    Tornado has no cancel for a fetch: ``abort`` finishes one the way curl would have, with an
    error, and a sweep every ``SWEEP_SECONDS`` (at most) ends transfers that stalled. All of it
    relies on ``_curls``, ``_free_list``, ``_requests``, ``_multi``, ``_fds``, ``_finish``,
    ``curl.info`` and the IOLoop's ``asyncio_loop`` (see the package's docstring).
    """

    SWEEP_SECONDS = 1.0

    def initialize(  # type: ignore[override]
        self,
        max_clients: int = 10,
        waiting: collections.deque[Transfer] | None = None,
        **kwargs: Any,
    ) -> None:
        """``waiting``: a queue shared with other clients (CurlPool), else one of its own."""
        # First: curl calls _set_timeout from within Tornado's initialize.
        self._aloop = IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
        super().initialize(max_clients=min(max_clients, 16), **kwargs)
        self.limit = max_clients
        self._pass_started = False  # a transfer was started at once in this loop pass
        self.h2c: H2c | None = None  # transfers to http:// URLs speak HTTP/2 while it is on
        self.running: dict[pycurl.Curl, Transfer] = {}
        self._waiting = collections.deque() if waiting is None else waiting
        self._sweeper: PeriodicCallback | None = None
        self.idle_since = time.monotonic()  # when its last running transfer finished

    def has_room(self) -> bool:
        """Whether a transfer sent now starts at once (a handle is free or can be made)."""
        return len(self.running) < self.limit

    def _grow(self) -> None:
        if not self._free_list and len(self._curls) < self.limit:
            curl = self._curl_create()
            self._curls.append(curl)
            self._free_list.append(curl)

    def fetch_impl(self, request: HTTPRequest, callback: Callable) -> None:
        self._grow()
        super().fetch_impl(request, callback)

    def send(self, transfer: Transfer) -> asyncio.Future[Transfer]:
        """Run ``transfer`` (queued while every handle is busy); the future gives it back
        finished, never raises: ``transfer.error`` tells a failure below HTTP."""
        transfer.future = future = asyncio.get_running_loop().create_future()
        self._grow()
        self._waiting.append(transfer)
        self._process_queue()
        if self._pass_started:
            self._set_timeout(0)  # as Tornado's fetch_impl: curl starts it on the next pass
        else:
            self._start_now()
        return future

    def _start_now(self) -> None:
        """Let curl start the first new transfer of a loop pass at once: run its due timers now,
        as ``_handle_timeout`` would on the next pass. Later ones in the same pass wait for that
        next pass and start together, one ``socket_action`` for all (each on its own cost
        far more CPU). Waiting behind the rest of the pass's events delayed a stream's first
        chunk under load."""
        self._pass_started = True
        self._aloop.call_soon(self._next_pass)
        if self._timeout is not None:
            self._timeout.cancel()  # type: ignore[attr-defined]  # our asyncio TimerHandle
        self._handle_timeout()

    def _next_pass(self) -> None:
        self._pass_started = False

    def close(self) -> None:
        """Stop, and close every handle and connection (idle upstream ones included)."""
        if self._sweeper is not None:
            self._sweeper.stop()
        for fd in list(self._fds):  # Tornado's close leaves these registered with the loop
            self._handle_socket(pycurl.POLL_REMOVE, fd, None, None)
        super().close()

    def _process_queue(self) -> None:
        waiting, free = self._waiting, self._free_list
        while waiting and free:
            transfer = waiting.popleft()
            if transfer.aborted:  # its client left while it waited
                transfer.error = CurlError(CURLE_ABORTED_BY_CALLBACK, "aborted by orpoll")
                self._resolve(transfer)
                continue
            curl = free.pop()
            curl.info = transfer  # type: ignore[attr-defined]  # Tornado's per-handle slot
            transfer.h2c = self.h2c is not None and self.h2c.on
            try:
                transfer.setup(curl)
            except Exception as e:  # a bad option value: fail this attempt, not the loop
                curl.info = None  # type: ignore[attr-defined]
                curl.reset()
                free.append(curl)
                transfer.error = CurlError(CURLE_SETUP_FAILED, f"request setup failed: {e}")
                self._resolve(transfer)
                continue
            self._started(curl, transfer)
            self._multi.add_handle(curl)
        if self._requests:
            super()._process_queue()

    def _started(self, curl: pycurl.Curl, transfer: Transfer) -> None:
        """``transfer`` runs on ``curl`` from now until curl or ``abort`` finishes it."""
        transfer.curl, transfer.client = curl, self
        self.running[curl] = transfer
        if transfer.stall or transfer.first_byte:
            transfer.quiet_since = transfer.begun = time.monotonic()
            interval = min(self.SWEEP_SECONDS, max(0.05, transfer.sweep_every))
            sweeper = self._sweeper
            if sweeper is None or sweeper.callback_time > 1000 * interval:
                if sweeper is not None:
                    sweeper.stop()
                self._sweeper = PeriodicCallback(self._sweep, 1000 * interval)
                self._sweeper.start()

    def abort(self, curl: pycurl.Curl) -> None:
        """End the transfer running on ``curl`` now; it finishes with curl error 42."""
        if curl not in self.running or getattr(curl, "info", None) is None:
            return  # already finished: the handle may serve another request by now
        self._finish(curl, CURLE_ABORTED_BY_CALLBACK, "aborted by orpoll")
        self._process_queue()  # a request may be waiting for this handle

    def _handle_socket(self, event: int, fd: int, multi: Any, data: Any) -> None:
        """curl SOCKETFUNCTION, on the asyncio loop itself, not through IOLoop.add_handler
        and its wrapper call per socket event (each chunk is one).
        As Tornado's, it drops the old registration before adding the new: curl may have
        closed the descriptor and opened another with the same number."""
        loop = self._aloop
        old = self._fds.pop(fd, 0)
        if old & 1:
            loop.remove_reader(fd)
        if old & 2:
            loop.remove_writer(fd)
        new = _CURL_EVENTS.get(event, 0)
        if new & 1:
            loop.add_reader(fd, self._handle_events, fd, pycurl.CSELECT_IN)
        if new & 2:
            loop.add_writer(fd, self._handle_events, fd, pycurl.CSELECT_OUT)
        if new:
            self._fds[fd] = new

    def _set_timeout(self, msecs: int) -> None:
        """curl TIMERFUNCTION on the asyncio loop, not IOLoop.add_timeout (an ABC isinstance
        check, a partial and a wrapper call each time); as Tornado's, -1 runs it at once."""
        if self._timeout is not None:
            self._timeout.cancel()  # type: ignore[attr-defined]  # our asyncio TimerHandle
        self._timeout = self._aloop.call_later(max(msecs, 0) / 1000.0, self._handle_timeout)

    def _handle_timeout(self) -> None:
        """Tornado's: curl runs its due timers, then the timer is re-armed from curl's view of
        the next one, unless curl armed it itself meanwhile."""
        self._timeout = None
        self._handle_events(pycurl.SOCKET_TIMEOUT, 0)
        if self._timeout is None:
            after = self._multi.timeout()
            if after >= 0:
                self._set_timeout(after)

    def _handle_events(self, fd: int, action: int) -> None:
        """Tornado's, minus the look for finished transfers after events that finished none.

        Tornado reads curl's message queue and restarts its request queue after every socket
        event, ~20 times per stream (each chunk is one). curl reports how many transfers are
        still running; only when that is below the handles in use has one finished.
        """
        while True:
            try:
                ret, running = self._multi.socket_action(fd, action)
            except pycurl.error as e:
                ret, running = int(e.args[0]), -1
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        if running < len(self._curls) - len(self._free_list) or self._requests or self._waiting:
            self._finish_pending_requests()

    def _finish(self, curl: pycurl.Curl, *args: Any, **kwargs: Any) -> None:
        transfer = curl.info  # type: ignore[attr-defined]
        if type(transfer) is not Transfer:  # a Tornado fetch
            return super()._finish(curl, *args, **kwargs)
        self._finish_transfer(curl, transfer, *args, **kwargs)

    def _finish_transfer(
        self,
        curl: pycurl.Curl,
        transfer: Transfer,
        curl_error: int | None = None,
        curl_message: str | None = None,
    ) -> None:
        curl.info = None  # type: ignore[attr-defined]
        del self.running[curl]
        transfer.curl = None  # from here on the handle belongs to the pool
        self._multi.remove_handle(curl)
        if transfer.h2c and self._h2c_refused(transfer, curl_error, curl_message):
            curl.reset()
            self._free_list.append(curl)
            self._waiting.appendleft(transfer)  # again, over HTTP/1.1, first in line
            return
        if curl_error:
            if transfer.size > BODY_LIMIT:
                curl_message = f"upstream response larger than {BODY_LIMIT} bytes"
            transfer.error = CurlError(curl_error, curl_message or "")
            transfer.os_errno = curl.getinfo(pycurl.OS_ERRNO) or _socket_errno(curl_error)
        else:
            transfer.status = curl.getinfo(pycurl.RESPONSE_CODE)
        curl.reset()
        self._free_list.append(curl)
        if not self.running:
            self.idle_since = time.monotonic()
        self._resolve(transfer)

    def _h2c_refused(self, transfer: Transfer, error: int | None, message: str | None) -> bool:
        """True if ``transfer`` failed because the upstream does not speak h2c; then h2c is
        off for every shard (one error in the log), and nothing counts against the key."""
        h2c = self.h2c
        if h2c is None:
            return False
        if not error:
            h2c.proven = True
            return False
        if error != CURLE_HTTP2 or transfer.status or h2c.proven:
            return False
        if h2c.on:
            h2c.on = False
            origin = "/".join(transfer.url.split("/", 3)[:3])
            log.error(
                "UPSTREAM_H2C is on, but %s does not speak HTTP/2 without TLS (%s); its "
                "transfers use HTTP/1.1 from now on: set UPSTREAM_H2C=0",
                origin,
                message,
            )
        transfer.h2c = False
        transfer.status, transfer.headers = 0, []
        return True

    @staticmethod
    def _resolve(transfer: Transfer) -> None:
        future, transfer.future = transfer.future, None
        if future is not None and not future.done():
            future.set_result(transfer)

    def _sweep(self) -> None:
        if not self.running:
            return
        now = time.monotonic()
        for transfer in list(self.running.values()):
            if transfer.stalled(now):
                transfer.timed_out = True  # classify_transport words the error from this
                transfer.abort()


def _socket_errno(curl_error: int) -> int:
    """Why curl could not connect, when it recorded no OS error: its socket() failed, which
    it reports as a refused connection (CURLE_COULDNT_CONNECT, errno 0). A socket of our own
    tells whether this process is out of descriptors (EMFILE) right now."""
    if curl_error != pycurl.E_COULDNT_CONNECT:
        return 0
    try:
        socket.socket().close()
    except OSError as e:
        return e.errno or 0
    return 0
