"""Helpers for tests of the key pool: a settable clock, settings changes on a running app, and
the request the pool tests send."""

from __future__ import annotations

import dataclasses

PAID = "openai/gpt-4o"
FREE = "deepseek/deepseek-chat-v3-0324:free"
MSG = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def set_config(app, **changes) -> None:
    app.apply_settings(dataclasses.replace(app.config, **changes))


def ks_of(app, key):
    return next(k for k in app.scheduler if k.key == key)
