"""Helpers for the admin tests.

- ``AdminClient``: an async client that keeps cookies, for the in-process app
- ``FakeUpstream``: tests/fake_upstream.py served from a thread (for subprocess tests)
- ``OrpollProcess``: ``python run.py`` in a subprocess, with its log in a file
- ``SyncAdmin``: a blocking cookie-keeping client for a subprocess
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from tests.fake_upstream import FakeOpenRouter, make_fake_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "test-admin-password"
# What a child process may inherit: stray OPENROUTER_* or ADMIN_* variables must not leak in.
KEEP_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", "PYENV_VERSION", "PYENV_ROOT")


class AdminClient:
    """Talks to one orpoll app like a script using the original's JSON admin API would."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        self.cookies: dict[str, str] = {}
        self.http = AsyncHTTPClient()

    async def request(
        self, method: str, path: str, body: Any = None, *, headers: dict | None = None, **kw: Any
    ) -> HTTPResponse:
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs.setdefault("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        data = kw.pop("raw", None)
        if body is not None:
            data = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        resp = await self.http.fetch(
            self.base + path,
            method=method,
            body=data,
            headers=hdrs,
            raise_error=False,
            follow_redirects=False,
            allow_nonstandard_methods=True,
            **kw,
        )
        self.absorb(resp)
        return resp

    def absorb(self, resp: HTTPResponse) -> None:
        for raw in resp.headers.get_list("Set-Cookie"):
            for name, morsel in SimpleCookie(raw).items():
                if morsel.value in ("", '""') or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def login(self, password: str = PASSWORD) -> HTTPResponse:
        return await self.request("POST", "/admin/login", {"password": password})

    async def get(self, path: str, **kw: Any) -> HTTPResponse:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> HTTPResponse:
        return await self.request("POST", path, {} if body is None else body, **kw)

    async def delete(self, path: str, **kw: Any) -> HTTPResponse:
        return await self.request("DELETE", path, **kw)

    async def json(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        """Make the call, assert its status, return the parsed body."""
        if method == "POST" and body is None:
            body = {}
        resp = await self.request(method, path, body)
        assert resp.code == status, (resp.code, resp.body)
        return json.loads(resp.body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeUpstream:
    """The fake OpenRouter on its own event loop in a thread; ``state`` scripts it."""

    def __init__(self) -> None:
        self.state = FakeOpenRouter()
        self.loop = asyncio.new_event_loop()
        sock, self.port = bind_unused_port()
        self.sock = sock
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)

            async def start() -> None:
                HTTPServer(make_fake_app(self.state)).add_sockets([sock])
                ready.set()

            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="fake-openrouter", daemon=True)
        self.thread.start()
        assert ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def stop(self) -> None:
        """Stop serving and release the socket and the loop (a test process runs hundreds of
        these, and descriptors above 1024 break ``select``)."""

        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()
            self.sock.close()


def child_env(upstream: FakeUpstream, data_dir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in KEEP_ENV}
    env.update(
        HOST="127.0.0.1",
        OPENROUTER_API_URL=f"{upstream.url}/chat/completions",
        OPENROUTER_MODELS_URL=f"{upstream.url}/models",
        DATA_DIR=data_dir,
        HEALTH_CHECK_INTERVAL_SECONDS="3600",
        RETRY_BACKOFF_SECONDS="0",
        LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_py(env: dict[str, str], cwd: str, **popen: Any) -> tuple[subprocess.Popen, str]:
    """``python run.py`` with ``env`` on a free port: (the process, its base URL)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "run.py")],
        env={**env, "PORT": str(port)},
        cwd=cwd,
        **popen,
    )
    return proc, f"http://127.0.0.1:{port}"


def post_chat(url: str, timeout: float = 5) -> int:
    """One non-stream chat completion against ``url``; its status."""
    body = json.dumps({"model": "a/b", "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until ``url``/healthz answers; fails if ``proc`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2).read()
            return
        except OSError:
            assert proc.poll() is None, f"exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"not ready in {timeout}s"
            time.sleep(0.05)


class OrpollProcess:
    """``python run.py`` with ``env`` (PORT is chosen here); the log goes to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: str) -> None:
        self.log_path = log_path
        self.log_file = open(log_path, "ab")  # noqa: SIM115 (closed in wait())
        self.proc, self.url = run_py(
            env, os.path.dirname(log_path), stdout=self.log_file, stderr=subprocess.STDOUT
        )
        self.port = int(self.url.rsplit(":", 1)[1])

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"not ready in {timeout}s:\n{self.log()}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log_file.close()
        return code

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


class SyncAdmin:
    """A blocking client with a cookie jar, for a server in a subprocess."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10) -> tuple:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.call(method, path, body)
        assert status == 200, (status, data)
        return data

    def login(self, password: str = PASSWORD) -> None:
        self.ok("POST", "/admin/login", {"password": password})
