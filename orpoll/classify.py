"""Classification: one Verdict for a failed upstream attempt, from its status, headers and body
(OpenRouter's error statuses: https://openrouter.ai/docs/api/reference/errors-and-debugging).

Pure functions: upstream.py sends, this module judges.
"""

from __future__ import annotations

import calendar
import errno
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tornado.curl_httpclient import CurlError

from .fast.transfer import CURLE_SETUP_FAILED
from .keys import Outcome, Verdict

if TYPE_CHECKING:
    from .fast.transfer import Transfer

FREE_PER_MIN_COOLDOWN = 60.0
# OpenRouter's errors nest a few levels (metadata.headers, previous_errors[]); far deeper is
# not an error body anyone can use.
MAX_ERROR_DEPTH = 32
MAX_WAIT = 31 * 86400.0  # the furthest reset time believed (seconds from now)


def parse_error(body: bytes | str) -> dict[str, Any]:
    """The ``error`` object of an upstream body ({} when there is none)."""
    try:
        obj = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return {}
    if not isinstance(obj, dict):
        return {}
    err = obj.get("error")
    if isinstance(err, dict):
        return err
    return {"message": str(err)} if err else {}


def _reset_time(value: Any, now: float) -> float | None:
    """X-RateLimit-Reset as an epoch second: ms epoch, s epoch, or seconds from now."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if v > 1e11:
        return _bounded(v / 1000.0, now)
    if v > 1e9:
        return _bounded(v, now)
    return _bounded(now + v, now) if v >= 0 else None


def _retry_after(value: Any, now: float) -> float | None:
    try:
        return _bounded(now + max(0.0, float(value)), now)
    except (TypeError, ValueError):
        return None


def _iso_time(value: Any, now: float) -> float | None:
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return _bounded(at, now)


def _bounded(at: float, now: float) -> float | None:
    """A time the upstream named, if it is a real one: none that is not finite (``inf``,
    ``nan``), and none further off than MAX_WAIT (the longest OpenRouter reset is a month's)."""
    if not math.isfinite(at):
        return None
    return min(at, now + MAX_WAIT)


def next_utc_midnight(now: float) -> float:
    day = time.gmtime(now)
    return calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0)) + 86400.0


def _shallow(obj: Any, depth: int) -> bool:
    """True if ``obj`` nests dicts and lists no more than ``depth`` levels (no recursion)."""
    level: list[Any] = [obj]
    while level:
        if depth < 0:
            return False
        depth -= 1
        inner: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                inner.extend(item.values())
            elif isinstance(item, list):
                inner.extend(item)
        level = inner
    return True


def _status_of(code: Any, default: int) -> int:
    """An in-band ``error.code`` (int or string) as an HTTP status."""
    try:
        n = int(str(code).strip())
    except (TypeError, ValueError):
        return default
    return n if 400 <= n <= 599 else default


Headers = Callable[[str], str | None]


@dataclass(slots=True)
class _Failure:
    """What one failed attempt said, read once for the rules below."""

    status: int
    err: dict[str, Any]  # OpenRouter's error object ({} when the body held none)
    meta: dict[str, Any]  # its metadata ({} when absent)
    message: str
    text: str  # the words verdicts match on (see _words)
    etype: str
    source: str  # metadata.limit_source: which limit was hit
    headers: Headers
    now: float

    def out(self, verdict: Verdict, **kw: Any) -> Outcome:
        code = self.err.get("code", self.status)
        return Outcome(
            verdict, self.status, self.message, code=code, metadata=self.meta or None, **kw
        )

    def retry_after(self) -> float | None:
        return _retry_after(self.headers("Retry-After"), self.now)


def classify(
    status: int,
    body: bytes | str,
    headers: Headers = lambda name: None,
    now: float | None = None,
    error: dict[str, Any] | None = None,
) -> Outcome:
    """One verdict for a failed attempt, from its status, headers and body.

    ``status`` 200 with ``error`` given means an in-band error (non-stream body or SSE event);
    its ``code`` decides. Never raises.
    """
    now = time.time() if now is None else now
    err = _readable(error if error is not None else parse_error(body))
    if status == 200:
        status = _status_of(err.get("code"), 502)
    metadata = err.get("metadata")
    meta: dict[str, Any] = metadata if isinstance(metadata, dict) else {}
    message = str(err.get("message") or f"upstream returned HTTP {status}")
    raw = meta.get("raw")
    if raw and "provider returned error" in message.lower():
        message = f"{message}: {str(raw)[:300]}"
    etype = str(meta.get("error_type") or err.get("error_type") or "")
    source = str(meta.get("limit_source") or "")
    f = _Failure(status, err, meta, message, _words(err, meta, body), etype, source, headers, now)
    return _judge(f)


def _readable(err: dict[str, Any]) -> dict[str, Any]:
    """``err``, or a stand-in when it nests too deeply: its metadata reaches the client, the
    logs and code that walks it recursively."""
    if _shallow(err, MAX_ERROR_DEPTH):
        return err
    code = err.get("code")
    code = code if isinstance(code, (int, str)) else None
    return {"message": "upstream error nested too deeply to read", "code": code}


def _judge(f: _Failure) -> Outcome:
    status = f.status
    if status == 401 or f.etype == "authentication":
        return f.out(Verdict.KEY_INVALID)
    if status == 402 or f.etype == "payment_required":
        return _classify_402(f)
    if status == 403:
        return _classify_403(f)
    if status == 404:
        if "data policy" in f.text or "privacy" in f.text:
            return f.out(Verdict.PROVIDER)  # account privacy settings: another account may work
        return f.out(Verdict.REQUEST)
    if status == 429:
        if not f.err and not f.headers("X-RateLimit-Reset"):
            # No error of OpenRouter's: something in front of it (a CDN) limits this proxy's
            # address, and every key would get the same.
            return f.out(Verdict.PROVIDER, retry_at=f.retry_after())
        return _classify_429(f)
    if status in (400, 413, 422) or 400 <= status < 500 and status != 408:
        return f.out(Verdict.REQUEST)
    return f.out(Verdict.TRANSIENT, retry_at=f.retry_after())


def _classify_402(f: _Failure) -> Outcome:
    text = f.text
    # This request's size against what is left: another key may afford it. The second:
    # this request alone outweighs the whole in-flight budget.
    if "can only afford" in text or "fewer max_tokens" in text or "weight_exceeds" in text:
        return f.out(Verdict.KEY_LOW_CREDIT)
    if f.source == "openrouter_in_flight_budget":
        return f.out(Verdict.KEY_RATE_LIMIT, retry_at=f.retry_after())
    # The balance belongs to the account (every key of it is out), a key cap to the key.
    return f.out(Verdict.KEY_CREDIT, account=f.source != "openrouter_key_limit")


KEY_BUDGETS = ("openrouter_key_limit", "openrouter_workspace_budget", "openrouter_guardrail_budget")


def _classify_403(f: _Failure) -> Outcome:
    meta, text = f.meta, f.text
    if meta.get("flagged_input") or meta.get("reasons") or meta.get("patterns"):
        # Moderation/guardrail: flagged_input echoes the client's text, so no substring
        # test below may see it (a client could otherwise write "Key limit exceeded").
        return f.out(Verdict.REQUEST)
    if "key limit exceeded" in text or f.source in KEY_BUDGETS or "budget of" in text:
        return f.out(Verdict.KEY_CREDIT, retry_at=_iso_time(meta.get("resets_at"), f.now))
    if "region_restricted" in text or "is banned" in text:
        return f.out(Verdict.PROVIDER)  # account-specific: another key may be allowed
    return f.out(Verdict.REQUEST)  # moderation, guardrail, permissions


def _words(err: dict[str, Any], meta: dict[str, Any], body: bytes | str) -> str:
    """The text verdicts match on, lowercased: OpenRouter's message, the provider's raw error
    and the typed codes. Other fields are never read: they can echo what the client sent
    (model names in ``requested_models``, flagged input), and a client must not be able to
    write its way into a key's cooldown. A body that holds no error object counts whole."""
    if not err:
        text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
        return str(text)[:8192].lower()
    availability = err.get("availability")
    parts = (
        err.get("message"),
        err.get("error_type"),
        meta.get("raw"),
        meta.get("error_type"),
        meta.get("limit_source"),
        meta.get("reason"),
        availability.get("code") if isinstance(availability, dict) else None,
    )
    return " ".join(str(p)[:8192] for p in parts if p).lower()


def _classify_429(f: _Failure) -> Outcome:
    text, meta, now = f.text, f.meta, f.now
    retry_after = f.retry_after()
    if (
        "rate-limited upstream" in text
        or "capacity_exhausted" in text
        or (meta.get("provider_name") or meta.get("provider_code") is not None)
        and "free-models-per" not in text
    ):
        return f.out(Verdict.PROVIDER, retry_at=retry_after)
    meta_headers = meta.get("headers")
    reset = f.headers("X-RateLimit-Reset")
    if not reset and isinstance(meta_headers, dict):
        reset = meta_headers.get("X-RateLimit-Reset")
    until = _reset_time(reset, now) if reset else None
    until = until or retry_after
    if "free-models-per-day" in text:
        return f.out(
            Verdict.KEY_RATE_LIMIT,
            retry_at=until or next_utc_midnight(now),
            scope="free",
            account=True,  # the daily :free quota is per account, shared by all its keys
        )
    if "free-models-per-min" in text:
        return f.out(
            Verdict.KEY_RATE_LIMIT,
            retry_at=until or now + FREE_PER_MIN_COOLDOWN,
            scope="free",
            account=True,  # 20 requests/min on :free models per account
        )
    return f.out(Verdict.KEY_RATE_LIMIT, retry_at=until)


# The proxy itself is out of file descriptors or memory (curl's socket() failed, or curl
# reports CURLE_OUT_OF_MEMORY): no key is at fault and no other key would fare better.
# connections.Server pauses accept() on the same errors.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
CURLE_OUT_OF_MEMORY = 27
CURLE_OPERATION_TIMEDOUT = 28
# curl would not send the request at all, for its own bytes: a URL with a space, a control or
# a non-ASCII character, a header value an option refuses. Nothing reached the upstream, and
# the same request would fail the same way with any key.
CURLE_URL_MALFORMAT = 3
REQUEST_REFUSED = frozenset({CURLE_URL_MALFORMAT, CURLE_SETUP_FAILED})


def classify_transport(err: CurlError, transfer: Transfer | None = None) -> Outcome:
    """A transfer that failed below HTTP (connect error, timeout, dropped connection).

    Only a failure after the upstream began to answer can be a key's (TRANSIENT, as a 5xx);
    one that left nothing upstream, or that no answer ever began, is the request's (LOCAL) or
    the upstream's (UPSTREAM). Timeouts stay TRANSIENT.
    """
    os_errno = transfer.os_errno if transfer is not None else 0
    if os_errno in LOCAL_ERRNOS or err.errno == CURLE_OUT_OF_MEMORY:
        reason = os.strerror(os_errno) if os_errno else "out of memory"
        return Outcome(
            Verdict.LOCAL,
            503,
            f"the proxy is overloaded ({reason}); retry shortly",
            retry_at=time.time() + 1,
            code="proxy_overloaded",
        )
    if err.errno in REQUEST_REFUSED:
        return Outcome(
            Verdict.LOCAL,
            400,
            f"the request cannot be sent upstream ({err.message})",
            code="invalid_request_path" if err.errno == CURLE_URL_MALFORMAT else "invalid_request",
        )
    if transfer is not None and transfer.timed_out:
        return Outcome(
            Verdict.TRANSIENT,
            504,
            f"upstream sent nothing for {transfer.stall:g} s",
            code="upstream_timeout",
        )
    if err.errno == CURLE_OPERATION_TIMEDOUT:
        verdict, code = Verdict.TRANSIENT, "upstream_unreachable"
    elif transfer is not None and (transfer.status or transfer.headers):
        verdict, code = Verdict.TRANSIENT, "upstream_disconnected"  # the answer began
    else:
        verdict, code = Verdict.UPSTREAM, "upstream_unreachable"
    return Outcome(verdict, 502, f"upstream connection failed: {err.message}", code=code)
