"""Helpers for the cluster tests: a real redis-server in a temporary directory, and polling
one instance until it shows what another was told.

- ``RedisServer``: ``redis-server`` on a free loopback port and a unix socket, with its own
  dir (default persistence) and optionally a password (AUTH); ``kill()`` is kill -9,
  ``start()`` starts it again on the same port and dir
- ``until(fn, timeout)``: poll ``fn`` until it returns a true value; returns (value, seconds)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.admin_helpers import SyncAdmin, free_port

T = TypeVar("T")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, directory: str, password: str = "") -> None:
        self.dir, self.password = directory, password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        os.makedirs(directory, exist_ok=True)

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "redis.sock")

    @property
    def unix_url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", self.dir, "--daemonize", "no", "--logfile", "redis.log"]
        if self.password:
            args += ["--requirepass", self.password]
        args += ["--unixsocket", self.socket, "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def until(fn: Callable[[], T], timeout: float = 5.0, step: float = 0.02) -> tuple[T, float]:
    """Poll ``fn`` until it returns a true value; (that value, seconds it took)."""
    start = time.monotonic()
    while True:
        value = fn()
        if value:
            return value, time.monotonic() - start
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {value!r}"
        time.sleep(step)


def key_rows(admin: SyncAdmin) -> dict[str, dict[str, Any]]:
    """Every key row of the instance's /admin/key-status, by id."""
    rows, page = {}, 1
    while True:
        data = admin.ok("GET", f"/admin/key-status?limit=500&page={page}")
        rows.update({row["id"]: row for row in data["keys"]})
        if page >= data["total_pages"]:
            return rows
        page += 1
