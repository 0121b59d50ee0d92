"""Logging set-up: text or JSON lines on stderr, written from the event loop without blocking it.

The access log is one line per request, and writing it the standard way (a write and a flush
per line, blocking when the log reader stalls) took a real share of a short request's CPU and
could freeze every stream behind a full pipe. The lines themselves are built in access.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import stat
import sys
import threading
import time
from typing import Any

import orjson

from .config import Settings

access_log = logging.getLogger("orpoll.access")  # its lines are written by access.py


class LoopLogHandler(logging.Handler):
    """Log lines go out in one write per event-loop pass, and a slow log reader never blocks
    the loop.

    A record is formatted at once and queued; the first one in a pass schedules a write of
    everything queued at the loop's next pass. When stderr is a pipe or a terminal, the handler
    writes to its own non-blocking file description of it (opened through /proc, so the
    shared one keeps its flags): what the reader cannot take yet waits for the pipe to drain
    (``add_writer``) while the proxy goes on. Past ``MAX_PENDING`` bytes waiting, new lines are
    dropped and counted, and a line says how many once the pipe drains. Regular files are
    written directly. Records from other threads, or when no loop runs (start-up, shutdown),
    are written at once.
    """

    MAX_PENDING = 1 << 20

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd, self.nonblocking = _own_nonblocking(fd)
        self.pending: list[bytes] = []
        self.size = 0
        self.dropped = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduled = False
        self.waiting = False  # add_writer armed: the fd was full
        self.structured = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        self._queue(line)

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        # Whether lines carry fields (LOG_FORMAT=json): only then does the access log build them.
        self.structured = type(fmt) is JsonFormatter

    def line(self, levelno: int, name: str, message: str) -> None:
        """Log a finished ``message`` without a LogRecord (see ``direct_sink``): the access
        log's line per request, costly through ``Logger.log``."""
        if levelno >= self.level:
            text = self.formatter.line(time.time(), levelno, name, message)  # type: ignore[union-attr]
            self._queue((text + "\n").encode("utf-8", "replace"))

    def record(self, levelno: int, name: str, message: str, fields: dict) -> None:
        """``line`` with the access line's fields, for a JsonFormatter."""
        if levelno >= self.level:
            text = self.formatter.line(time.time(), levelno, name, message, fields)  # type: ignore[union-attr]
            self._queue((text + "\n").encode("utf-8", "replace"))

    def _queue(self, line: bytes) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._write_now(line)
            return
        if self.size > self.MAX_PENDING:
            self.dropped += 1
            return
        self.pending.append(line)
        self.size += len(line)
        if not self.scheduled and not self.waiting:
            self.scheduled, self.loop = True, loop
            loop.call_soon(self._write_pending)

    def _write_pending(self) -> None:
        self.scheduled = False
        if self.dropped and self.size < self.MAX_PENDING // 2:
            note = f"{plural(self.dropped, 'log line')} dropped: the log reader was too slow\n"
            self.pending.append(note.encode())
            self.dropped = 0
        data = self._take()
        try:
            sent = os.write(self.fd, data) if data else 0
        except BlockingIOError:
            sent = 0
        except OSError:  # the reader is gone: nothing to do with these lines
            sent = len(data)
        rest = data[sent:]
        self.size = len(rest)
        if rest:
            self.pending.append(rest)
            if not self.waiting and self.loop is not None:
                self.waiting = True
                self.loop.add_writer(self.fd, self._write_pending)
        elif self.waiting and self.loop is not None:
            self.waiting = False
            self.loop.remove_writer(self.fd)

    def _write_now(self, line: bytes) -> None:
        """Off the loop: a blocking write (the loop's queue first, in order, if it is ours)."""
        if threading.current_thread() is threading.main_thread() and self.pending:
            line = self._take() + line
        _write_all(self.fd, line, self.nonblocking)

    def _take(self) -> bytes:
        """Everything queued, as one bytes; the queue is left empty."""
        data = b"".join(self.pending)
        self.pending.clear()
        self.size = 0
        return data

    def flush(self) -> None:
        if self.pending and (self.loop is None or not self.loop.is_running()):
            _write_all(self.fd, self._take(), self.nonblocking)

    def close(self) -> None:
        self.flush()
        if self.waiting and self.loop is not None and not self.loop.is_closed():
            self.loop.remove_writer(self.fd)
            self.waiting = False
        if self.nonblocking:
            os.close(self.fd)
            self.nonblocking = False
        super().close()


def _own_nonblocking(fd: int) -> tuple[int, bool]:
    """(fd to write to, whether it is a non-blocking one of our own)."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            return os.open(f"/proc/self/fd/{fd}", flags), True
    except OSError:
        pass
    return fd, False


def _write_all(fd: int, data: bytes, nonblocking: bool, limit: float = 2.0) -> None:
    """Write ``data``, waiting on a non-blocking fd for at most ``limit`` seconds in all."""
    deadline = time.monotonic() + limit
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            left = deadline - time.monotonic()
            if not nonblocking or left <= 0:
                return
            select.select([], [fd], [], left)
        except OSError:
            return


def direct_sink(logger: logging.Logger) -> LoopLogHandler | None:
    """The LoopLogHandler that alone would see ``logger``'s records (no other handler or
    filter on the way to the root, as after ``setup_logging``), else None: then the caller
    must log the usual way (tests, for one, add their own handlers)."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        if node.handlers:
            if node.parent is not None or len(node.handlers) != 1:
                return None
            handler = node.handlers[0]
            ok = type(handler) is LoopLogHandler and not handler.filters
            if ok and hasattr(handler.formatter, "line"):
                return handler  # type: ignore[return-value]  # checked just above
            return None
        if not node.propagate:
            return None
        node = node.parent
    return None


class TextFormatter(logging.Formatter):
    """``2026-01-02 03:04:05,678 I name: message``, the date formatted once a second."""

    stamp_format = "%Y-%m-%d %H:%M:%S,"  # then the milliseconds

    def __init__(self, worker: int | None = None) -> None:
        # With WORKERS > 1, every line says which worker wrote it: ``I [worker 1] orpoll: ...``.
        self.tag = "" if worker is None else f"[worker {worker}] "
        self.worker = worker
        super().__init__(f"%(asctime)s %(levelname).1s {self.tag}%(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._time(record.created)

    def line(self, created: float, levelno: int, name: str, message: str) -> str:
        """What ``format`` gives for a record of these fields (no exception, no stack)."""
        level = logging.getLevelName(levelno)[:1]
        return f"{self._time(created)} {level} {self.tag}{name}: {message}"

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.stamp_format, self.converter(second))
        return f"{self._stamp}{int((created - second) * 1000):03d}"


class JsonFormatter(TextFormatter):
    """LOG_FORMAT=json: one JSON object per line, its time in UTC to the millisecond
    (``2026-01-02T03:04:05.678Z``); an access line adds its fields (``access_fields``)."""

    converter = time.gmtime  # type: ignore[assignment]  # as logging.Formatter documents
    stamp_format = "%Y-%m-%dT%H:%M:%S."

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            out["worker"] = self.worker
        fields = getattr(record, "access", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()

    def line(
        self, created: float, levelno: int, name: str, message: str, fields: dict | None = None
    ) -> str:
        """What ``format`` gives for a record of these fields (no exception)."""
        level = logging.getLevelName(levelno).lower()
        out: dict[str, Any] = {
            "time": self._time(created),
            "level": level,
            "logger": name,
            "message": message,
        }
        if self.worker is not None:
            out["worker"] = self.worker
        if fields:
            out.update(fields)
        return orjson.dumps(out, default=str).decode()

    def _time(self, created: float) -> str:
        return super()._time(created) + "Z"


def plural(n: int, noun: str) -> str:
    """``1 key``, ``2 keys``: a count for a log line (regular plurals only)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def setup_logging(config: Settings, worker: int | None = None) -> None:
    """Log lines on stderr as LOG_FORMAT and LOG_LEVEL say; ``worker``: the index every line
    names (WORKERS > 1)."""
    logging.addLevelName(5, "TRACE")
    try:
        handler: logging.Handler = LoopLogHandler(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # started with stderr closed
        handler = logging.NullHandler()
    fmt = JsonFormatter if config.log_format == "json" else TextFormatter
    handler.setFormatter(fmt(worker))
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level_number)
    # Tornado's own access log would duplicate ours.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
