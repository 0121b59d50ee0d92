"""Helpers for the dashboard's browser tests.

- ``AppThread``: an orpoll app served from a thread of its own, so that a test written with
  Playwright's sync API can still set the pool's state (``call(fn)`` runs ``fn`` on the app's
  loop, between requests, as the relay and scheduler would).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from tornado.testing import bind_unused_port

from orpoll.app import make_app
from orpoll.config import load_settings
from orpoll.fast import make_server


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
