"""Keys and what happens to them: KeyState, the Verdict/Outcome of an attempt and the cooldown
policy. The pool itself is scheduler.KeyScheduler; keylist.py parses ``key[:weight]`` lists."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

MAX_WEIGHT = 1_000_000


class Verdict(enum.Enum):
    """What one upstream attempt says about the key that made it."""

    OK = "ok"
    REQUEST = "request"  # the request's fault: no retry, no penalty
    KEY_INVALID = "key_invalid"  # 401: disabled until a health check proves it
    KEY_CREDIT = "key_credit"  # 402 / key cap: long cooldown
    KEY_LOW_CREDIT = "key_low_credit"  # 402 "can only afford N": another key, no penalty
    KEY_RATE_LIMIT = "key_rate_limit"  # OpenRouter's 429 for this key/account
    PROVIDER = "provider"  # upstream provider throttling: another try, no penalty
    TRANSIENT = "transient"  # 408/5xx/network: counts toward the failure limit
    LOCAL = "local"  # the proxy's own failure (out of file descriptors): no retry, no penalty
    # OpenRouter itself is unreachable or failing for every key (refused, reset before any
    # answer, DNS, TLS): the upstream's state, never the key's.
    UPSTREAM = "upstream"


@dataclass(slots=True)
class Outcome:
    """A classified attempt. ``retry_at`` is the wall-clock time the key may return."""

    verdict: Verdict
    status: int = 0
    message: str = ""
    retry_at: float | None = None
    scope: str = "all"  # "all" models, or only ":free" models
    account: bool = False  # the account's state (balance, free quota): cool the whole group
    code: object = None
    metadata: object = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def try_another_key(self) -> bool:
        return self.verdict not in (Verdict.OK, Verdict.REQUEST, Verdict.LOCAL)


@dataclass(slots=True)
class CooldownPolicy:
    """The numbers behind cooldowns; swapped when settings change."""

    base: float = 600.0
    cap: float = 3600.0
    credit: float = 3600.0
    max_failures: int = 3

    def transient(self, failures: int) -> float:
        """Seconds to cool after ``failures`` transient failures in a row (0 = keep serving).

        base * 2 ** (failures - max_failures), from the max_failures-th failure on, capped.
        """
        if failures < self.max_failures:
            return 0.0
        return min(self.base * 2.0 ** min(failures - self.max_failures, 30), self.cap)

    def rate_limited(self, failures: int) -> float:
        """Seconds to cool after a 429 that named no reset time: base * 2 ** (failures - 1)."""
        return min(self.base * 2.0 ** min(max(failures - 1, 0), 30), self.cap)


def is_free_model(model: str | None) -> bool:
    """True for OpenRouter's ``:free`` model variants (they have quotas of their own)."""
    return model is not None and model.endswith(":free")


def key_id(key: str) -> str:
    """Stable short id of a key, safe to log and show."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def mask(key: str) -> str:
    return "..." + key[-4:]


@dataclass(slots=True, eq=False)
class KeyState:
    key: str
    weight: int = 1
    label: str = ""
    id: str = ""
    enabled: bool = True  # the operator's switch
    state: str = "available"  # available | cooling | disabled
    until: float = 0.0  # cooling (all models) until
    free_until: float = 0.0  # cooling for ":free" models only until
    reason: str = ""
    kind: str = ""  # Verdict value behind the current cooldown
    failures: int = 0  # consecutive
    last_status: int = 0
    last_error: str = ""
    last_used: float = 0.0
    requests: int = 0
    successes: int = 0
    errors: int = 0
    added_at: float = 0.0
    # When the operator last changed the key (added, weight, label, enabled): instances sharing
    # one pool merge their copies by it, the newer change winning.
    rev: float = 0.0
    slot: int = -1
    group: str = ""  # account the key belongs to (from /api/v1/key), "" = unknown
    info: dict[str, Any] = field(default_factory=dict)  # from /api/v1/key probes
    inflight: int = 0  # attempts on this key still waiting for or receiving an answer
    # Wall-clock start of the oldest of them still waiting for its answer (0 = none waiting): a
    # stream that is flowing is no sign of trouble, however long it runs.
    oldest_inflight: float = 0.0
    waiting: list[float] | None = None  # starts of the attempts not answered (made on use)
    stuck: bool = False  # out of the pick until its oldest unanswered attempt ends
    failed_at: float = 0.0  # when the last failure was counted (overlapping ones count once)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = key_id(self.key)

    @property
    def masked(self) -> str:
        return mask(self.key)

    @property
    def who(self) -> str:
        """The key as log lines name it: id, suffix and label, never the key."""
        return f"key {self.id} {self.masked}" + (f" ({self.label})" if self.label else "")

    def status_at(self, now: float) -> str:
        """available | cooling | disabled | paused, as shown to operators."""
        if not self.enabled:
            return "paused"
        if self.state == "cooling" and self.until <= now:
            return "available"
        return self.state
