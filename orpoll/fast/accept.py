"""``Acceptor``: Tornado's accept loop for one listening socket, pausing instead of spinning
when the process is out of file descriptors."""

from __future__ import annotations

import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop

from .. import classify
from ..logs import plural

log = logging.getLogger("orpoll")


class Acceptor:
    """Tornado's ``netutil.add_accept_handler``, except when accept() fails for want of file
    descriptors (EMFILE, ENFILE) or kernel memory. Tornado lets that error out of the handler
    while the listening socket stays readable: the loop spun at full CPU and logged a traceback
    per pass until a descriptor freed. Here accepting pauses for ``pause_seconds`` instead: the
    running streams go on, new clients wait in the listen queue, ``shed()`` closes stalled or
    idle connections, and one warning (at most every 10 s) says why."""

    def __init__(
        self,
        sock: socket.socket,
        handle: Callable[[socket.socket, Any], None],
        shed: Callable[[], int],
        *,
        batch: int,
        pause_seconds: float,
    ) -> None:
        self.sock, self.handle, self.shed = sock, handle, shed
        self.batch, self.pause_seconds = batch, pause_seconds
        self.io_loop = IOLoop.current()
        self.removed = self.paused = False
        self.warned = 0.0
        self.refused = self.closed = 0
        self.io_loop.add_handler(sock, self.accept, IOLoop.READ)

    def accept(self, fd: socket.socket, events: int) -> None:
        for _ in range(self.batch):
            if self.removed or self.paused:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno not in classify.LOCAL_ERRNOS:
                    raise
                self.pause(e)
                return
            self.handle(connection, address)

    def pause(self, e: OSError) -> None:
        self.paused = True
        self.refused += 1
        self.io_loop.remove_handler(self.sock)
        self.io_loop.call_later(self.pause_seconds, self.resume)
        # Stalled and idle keep-alive clients would otherwise hold every descriptor while the
        # clients in the listen queue wait for one: close them.
        self.closed += self.shed()
        now = time.monotonic()
        if now - self.warned >= 10.0:
            log.warning(
                "cannot accept connections (%s; fd limit %d): pausing accept() for %g s; "
                "new clients wait in the listen queue (%s, %s closed so far)",
                e.strerror,
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                self.pause_seconds,
                plural(self.refused, "pause"),
                plural(self.closed, "stalled or idle connection"),
            )
            self.warned = now

    def resume(self) -> None:
        self.paused = False
        if not self.removed:
            self.io_loop.add_handler(self.sock, self.accept, IOLoop.READ)

    def remove(self) -> None:
        """Stop accepting (``add_accept_handler``'s returned callable)."""
        if not self.removed and not self.paused:
            self.io_loop.remove_handler(self.sock)
        self.removed = True
