"""WORKERS=N: a supervisor process that holds the listening socket, forks N worker processes
that serve it, starts again a worker that dies (with a back-off), and passes SIGTERM/SIGINT on
so that every worker drains as a single process does."""

from __future__ import annotations

import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.multiprocess import mark_process_dead

from .cli import EXIT_CONFIG, EXIT_LISTEN
from .logs import plural
from .values import ConfigError

log = logging.getLogger("orpoll.supervisor")
WORKERS_ENV, INDEX_ENV = "ORPOLL_WORKERS", "ORPOLL_WORKER_INDEX"  # what each worker is told
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_WORKERS = 256
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0  # seconds before a worker that died young starts again
STABLE_SECONDS = 30.0  # a worker that lived this long is started again at once
KILL_AFTER = 10.0  # past the grace: a worker still running at shutdown is killed
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_count(raw: str) -> int:
    """WORKERS as a number of processes: ``auto`` is one per core; ConfigError otherwise."""
    text = raw.strip().lower()
    if text == "auto":
        return os.cpu_count() or 1
    if text.isdigit() and 1 <= int(text) <= MAX_WORKERS:
        return int(text)
    raise ConfigError(f"WORKERS={raw!r}: expected a number from 1 to {MAX_WORKERS}, or auto")


@dataclass
class Worker:
    """A worker process's place: ``index`` among ``count``, the pipe on which it tells the
    supervisor it serves, and the directory of the Prometheus files every worker writes."""

    index: int
    count: int
    metrics_dir: str
    ready_fd: int = -1

    @property
    def tag(self) -> str:
        return f"worker {self.index}"

    def runs_sweeps(self) -> bool:
        """Whether this worker runs the periodic health sweep. Until the workers share their
        pool, worker 0 alone does, so that N workers do not probe every key N times; a lease
        held by one worker at a time can take this decision over."""
        return self.index == 0

    def announce_ready(self) -> None:
        """Tell the supervisor this worker serves (it then starts the others)."""
        if self.ready_fd >= 0:
            try:
                os.write(self.ready_fd, b"r")
            except OSError:
                pass  # the supervisor is gone: the death signal follows
            os.close(self.ready_fd)
            self.ready_fd = -1


@dataclass
class Slot:
    """The supervisor's record of one worker index: its current process, if any."""

    index: int
    pid: int = 0
    started: float = 0.0
    ready_r: int = -1  # read end of the ready pipe, until the worker writes or dies
    ready: bool = False  # has served at least once
    backoff: float = 0.0
    restart_at: float | None = None


Run = Callable[[Worker, list[socket.socket]], None]


class Supervisor:
    """Runs ``run(worker, sockets)`` in ``count`` forked processes; ``sockets[i]`` are worker
    i's listening sockets (the same ones for all when they share one). ``serve()`` returns the
    exit code once every worker has exited after SIGTERM or SIGINT."""

    def __init__(
        self, count: int, sockets: list[list[socket.socket]], run: Run, grace: float
    ) -> None:
        self.count, self.sockets, self.run, self.grace = count, sockets, run, grace
        self.slots = [Slot(i) for i in range(count)]
        self.by_pid: dict[int, Slot] = {}
        self.stopping = self.killed = self.all_started = False
        self.deadline = 0.0
        self.failed = 0  # a worker's start-up failure code (configuration, storage, listen)
        self.metrics_dir = ""
        self.wake_r = self.wake_w = -1

    def serve(self) -> int:
        self.metrics_dir = tempfile.mkdtemp(prefix="orpoll-metrics-")
        os.environ[METRICS_DIR_ENV] = self.metrics_dir
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)  # the wake-up pipe carries the signal's number
        log.info("supervisor (pid %d) starting %s", os.getpid(), plural(self.count, "worker"))
        try:
            # Worker 0 first and alone: it makes what DATA_DIR lacks (the database, the cookie
            # secret, a generated admin password) before the others open it.
            self.start(self.slots[0])
            while self.by_pid or not self.stopping:
                self.step()
        finally:
            signal.set_wakeup_fd(-1)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.close_sockets()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.failed or (1 if self.killed else 0)

    def step(self) -> None:
        """Wait for a signal, a worker's word that it serves, or the next timer; act on it."""
        waiting = {s.ready_r: s for s in self.slots if s.ready_r >= 0}
        readable, _, _ = select.select([self.wake_r, *waiting], [], [], self.timeout())
        if self.wake_r in readable:
            for signum in os.read(self.wake_r, 256):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.stop(signal.Signals(signum))
        for fd in readable:
            if fd in waiting:
                self.on_ready(waiting[fd])
        self.reap()
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self.stopping:
                self.start(slot)
        if self.stopping and self.by_pid and now >= self.deadline:
            for pid, slot in self.by_pid.items():
                log.error("worker %d (pid %d) still running: killing it", slot.index, pid)
                os.kill(pid, signal.SIGKILL)
            self.killed = True
            self.deadline = now + 3600

    def timeout(self) -> float | None:
        times = [s.restart_at for s in self.slots if s.restart_at is not None]
        if self.stopping:
            times.append(self.deadline)
        return max(0.0, min(times) - time.monotonic()) if times else None

    def start(self, slot: Slot) -> None:
        ready_r, ready_w = os.pipe()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            self.child(slot, ready_w, supervisor)  # never returns
        os.close(ready_w)
        slot.pid, slot.started, slot.ready_r, slot.restart_at = pid, time.monotonic(), ready_r, None
        self.by_pid[pid] = slot

    def child(self, slot: Slot, ready_w: int, supervisor: int) -> None:
        """In the forked worker: forget the supervisor's signals and descriptors, then serve."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            die_with_parent()
            if os.getppid() != supervisor:  # it died before the death signal was asked for
                os._exit(1)
            for fd in (self.wake_r, self.wake_w, *(s.ready_r for s in self.slots)):
                if fd >= 0:
                    os.close(fd)
            for socks in self.sockets:
                if socks is not self.sockets[slot.index]:
                    for sock in socks:
                        sock.close()
            os.environ[WORKERS_ENV], os.environ[INDEX_ENV] = str(self.count), str(slot.index)
            worker = Worker(slot.index, self.count, self.metrics_dir, ready_w)
            self.run(worker, self.sockets[slot.index])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            logging.shutdown()  # os._exit skips it: the log's last lines would be lost
            sys.stderr.flush()
            os._exit(code)  # never the supervisor's clean-up (its temp directory, its sockets)

    def on_ready(self, slot: Slot) -> None:
        try:
            said = os.read(slot.ready_r, 1)
        except OSError:
            said = b""
        os.close(slot.ready_r)
        slot.ready_r = -1
        if said:
            slot.ready = True
            if not self.all_started and not self.stopping:
                self.all_started = True
                for other in self.slots[1:]:
                    self.start(other)

    def reap(self) -> None:
        while self.by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.by_pid.pop(pid, None)
            if slot is not None:
                self.exited(slot, pid, os.waitstatus_to_exitcode(status))

    def exited(self, slot: Slot, pid: int, code: int) -> None:
        mark_process_dead(pid, self.metrics_dir)
        slot.pid = 0
        if slot.ready_r >= 0:
            os.close(slot.ready_r)
            slot.ready_r = -1
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"
        if self.stopping:
            log.log(logging.INFO if code == 0 else logging.WARNING, "worker %d %s", slot.index, how)
            return
        if code in (EXIT_CONFIG, EXIT_LISTEN) and not slot.ready:
            self.failed = code
            self.stop(signal.SIGTERM, f"worker {slot.index} could not start")
            return
        lived = time.monotonic() - slot.started
        if lived >= STABLE_SECONDS:
            slot.backoff = 0.0
        else:
            slot.backoff = min(max(2 * slot.backoff, BACKOFF_FIRST), BACKOFF_MAX)
        slot.restart_at = time.monotonic() + slot.backoff
        log.warning(
            "worker %d (pid %d) %s after %.1fs; starting it again in %gs",
            slot.index,
            pid,
            how,
            lived,
            slot.backoff,
        )

    def stop(self, sig: signal.Signals, why: str = "") -> None:
        """Pass the signal on to every worker; stop listening here at once (the workers close
        their own copies of the socket as they begin to drain)."""
        if not self.stopping:
            self.stopping = True
            self.deadline = time.monotonic() + self.grace + KILL_AFTER
            self.close_sockets()
            for slot in self.slots:
                slot.restart_at = None
            level = logging.ERROR if why else logging.INFO
            log.log(level, "%s: stopping %s", why or sig.name, plural(len(self.by_pid), "worker"))
        for pid in self.by_pid:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def close_sockets(self) -> None:
        for socks in self.sockets:
            for sock in socks:
                sock.close()


def die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when the supervisor dies (Linux), so a worker
    whose supervisor was killed drains and exits instead of serving on unsupervised."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
