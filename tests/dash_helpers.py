"""Helpers for the dashboard's browser tests.

- ``AppThread``: an orpoll app served from a thread of its own, so that a test written with
  Playwright's sync API can still set the pool's state (``call(fn)`` runs ``fn`` on the app's
  loop, between requests, as the relay and scheduler would).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tornado.testing import bind_unused_port

from orpoll.app import make_app
from orpoll.config import load_settings
from orpoll.fast import make_server

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Headless chromium as root, on a machine whose only network is loopback.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class AppThread:
    def __init__(self, env: dict[str, str]) -> None:
        self.loop = asyncio.new_event_loop()
        sock, port = bind_unused_port()
        self.url = f"http://127.0.0.1:{port}"
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)

            async def start() -> None:
                self.app = make_app(load_settings(env))
                make_server(self.app, fast=self.app.config.fast).add_sockets([sock])
                ready.set()

            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="orpoll-app", daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(app)`` on the app's loop; its result."""

        async def run() -> Any:
            return fn(self.app)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def served_app(data_dir: str) -> Iterator[AppThread]:
    """orpoll with the test keys, in a thread, against a fake OpenRouter of its own."""
    from tests.admin_helpers import PASSWORD, FakeUpstream, child_env
    from tests.conftest import KEYS

    upstream = FakeUpstream()
    env = child_env(upstream, data_dir, ADMIN_PASSWORD=PASSWORD, OPENROUTER_API_KEYS=",".join(KEYS))
    app = AppThread(env)
    try:
        yield app
    finally:
        app.stop()
        upstream.stop()
