"""One record per client request (RequestRecord) and the readers of OpenRouter's usage figures:
from a non-stream body, from the tail of a stream, and from ``/api/v1/generation``.

Pure code: no I/O, no clock of its own. Token counts and cost stay ``None`` while unknown, so an
unknown figure is never summed as a zero by mistake.
"""

from __future__ import annotations

import functools
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

# The usage chunk is the last event before [DONE] and is small; the tail kept of a stream
# holds it with room for OpenRouter's optional metadata on the same chunk.
TAIL_BYTES = 16 * 1024
# Events read back from the end of a stream before giving up on finding usage.
TAIL_EVENTS = 4
# A non-stream answer over WHOLE_BODY bytes has its usage read from its last BODY_END bytes.
WHOLE_BODY = 64 * 1024
BODY_END = 16 * 1024
# Where a non-stream answer's ``choices`` are looked for: its ``id`` and ``model`` come first.
HEAD_BYTES = 2048


def tenths(ms: float) -> float:
    """A duration (never negative) to a tenth of a millisecond, without ``round``'s decimal
    conversion: it runs several times for every request."""
    return int(ms * 10.0 + 0.5) / 10.0


@functools.lru_cache(maxsize=256)  # the same few client keys, on every request
def client_fingerprint(token: str) -> str:
    """A client key as the ledger names it: 8 hex characters of its SHA-256, never the token
    ('' for a request without one, as on an open /v1)."""
    if not token:
        return ""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass(slots=True)
class Usage:
    """What one answer cost; ``None`` where OpenRouter said nothing."""

    prompt: int | None = None
    completion: int | None = None
    cached: int | None = None
    reasoning: int | None = None
    cost: float | None = None
    model: str = ""
    generation_id: str = ""


@dataclass(slots=True)
class Attempt:
    """One upstream try: which key, what it said about the key, the status, how long."""

    key: str
    verdict: str
    status: int
    ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "verdict": self.verdict, "status": self.status, "ms": self.ms}


@dataclass(slots=True)
class RequestRecord:
    """Everything the ledger keeps about one client request.

    The relay fills it as the request goes (``attempt``, ``serve``, ``first_byte``) and hands it
    to ``Ledger.add`` once the answer is over. ``status`` is the status the client got; a stream
    that broke after its 200 keeps 200 and says why in ``error_type``/``error_code``.
    """

    time: float
    request_id: str = ""
    route: str = ""
    model: str = ""  # as the client asked
    answered_model: str = ""  # as the upstream answered
    stream: bool = False
    status: int = 0
    error_type: str = ""
    error_code: str = ""
    client_addr: str = ""
    client: str = ""  # label or client_fingerprint() of the APP_API_KEY entry used
    attempts: list[Attempt] = field(default_factory=list)
    key_id: str = ""  # the key that served the answer ('' if none did)
    key_masked: str = ""
    account: str = ""
    ttfb_ms: float | None = None  # to the first byte (non-stream) or chunk (stream) sent
    duration_ms: float = 0.0
    bytes_out: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: float | None = None
    generation_id: str = ""
    client_disconnected: bool = False
    usage_known: bool = False

    @property
    def failed(self) -> bool:
        """Counted as an error: an error status, or a stream that broke after its 200."""
        return self.status >= 400 or bool(self.error_type)

    @property
    def tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def attempt(self, key: str, verdict: str, status: int, ms: float) -> None:
        self.attempts.append(Attempt(key, verdict, status, tenths(ms)))

    def serve(self, key_id: str, masked: str, account: str = "") -> None:
        """The key whose answer went to the client."""
        self.key_id, self.key_masked, self.account = key_id, masked, account

    def apply(self, usage: Usage | None) -> bool:
        """Take ``usage`` in (figures it lacks stay as they were); True if it held any."""
        if usage is None:
            return False
        # One test per figure, not a loop over (name, value) pairs: this runs for every request.
        prompt, completion, cost = usage.prompt, usage.completion, usage.cost
        if prompt is not None:
            self.prompt_tokens = prompt
        if completion is not None:
            self.completion_tokens = completion
        if usage.cached is not None:
            self.cached_tokens = usage.cached
        if usage.reasoning is not None:
            self.reasoning_tokens = usage.reasoning
        if cost is not None:
            self.cost = cost
        if not self.answered_model:
            self.answered_model = usage.model
        if not self.generation_id:
            self.generation_id = usage.generation_id
        known = prompt is not None or completion is not None or cost is not None
        if known:
            self.usage_known = True
        return known


def _int(value: Any) -> int | None:
    kind = type(value)  # exact types: JSON gives no subclasses, and bool is not a count
    if kind is int:
        return value
    return int(value) if kind is float else None


def _float(value: Any) -> float | None:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str:  # OpenRouter writes prices as strings elsewhere; accept them
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _sub(obj: Any, name: str) -> dict:
    value = obj.get(name) if type(obj) is dict else None
    return value if type(value) is dict else {}


def usage_of(event: Any) -> Usage | None:
    """The ``usage`` of a parsed completion or chunk (None when it has none).

    Written out flat, with the usual types tested inline before any helper is called: it
    runs for every request.
    """
    u = event.get("usage") if type(event) is dict else None
    if type(u) is not dict:
        return None
    get = u.get
    prompt, completion, cost = get("prompt_tokens"), get("completion_tokens"), get("cost")
    details, more = get("prompt_tokens_details"), get("completion_tokens_details")
    cached = details.get("cached_tokens") if type(details) is dict else None
    reasoning = more.get("reasoning_tokens") if type(more) is dict else None
    model, gid = event.get("model"), event.get("id")
    return Usage(
        prompt if type(prompt) is int else _int(prompt),
        completion if type(completion) is int else _int(completion),
        cached if type(cached) is int else _int(cached),
        reasoning if type(reasoning) is int else _int(reasoning),
        cost if type(cost) is float else _float(cost),
        model if type(model) is str else "",
        gid if type(gid) is str else "",
    )


def usage_from_body(body: bytes) -> Usage | None:
    """Usage of a non-stream answer (None if the body is not JSON or has no usage).

    OpenRouter puts ``usage`` last, and the answer's ``id`` and ``model`` before its
    ``choices``: those two ends are read, not the answer between them, so the cost does not
    grow with the answer. A body laid out otherwise is parsed whole (up to WHOLE_BODY bytes;
    past that, its last ``usage`` object alone).
    """
    end = body[-BODY_END:]
    at = end.rfind(b'"usage"')
    start = end.find(b"{", at) if at >= 0 else -1
    choices = body.find(b'"choices"', 0, HEAD_BYTES)
    if start > 0 and choices > 0 and end[at + 7 : start].strip() == b":":
        try:
            # The usage object up to the body's own closing brace, and the members before
            # the choices (closed off with a stand-in for them).
            usage = orjson.loads(end[start : end.rstrip().rfind(b"}")])
            head = orjson.loads(body[:choices] + b'"choices":0}')
        except orjson.JSONDecodeError:
            usage = head = None
        if type(usage) is dict and type(head) is dict:
            head["usage"] = usage
            return usage_of(head)
    if len(body) > WHOLE_BODY:
        body = _usage_at_end(body)
    try:
        return usage_of(orjson.loads(body)) if body else None
    except orjson.JSONDecodeError:
        return None


def _usage_at_end(body: bytes) -> bytes:
    """``{"usage": {...}}`` from the last ``"usage"`` object in the body's end, or b''."""
    end = body[-BODY_END:]
    at = end.rfind(b'"usage"')
    start = end.find(b"{", at) if at >= 0 else -1
    if start < 0:
        return b""
    depth = 0
    for i in range(start, len(end)):
        c = end[i]
        if c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return b'{"usage":' + end[start : i + 1] + b"}"
    return b""


def usage_from_stream_tail(tail: bytes) -> Usage | None:
    """Usage of a stream, read from its last bytes only.

    OpenRouter sends usage once, in the last data event before ``[DONE]`` (with empty
    ``choices``), so the last few events are read back to front and nothing else is parsed.
    A first event cut by the tail's start simply fails to parse.
    """
    seen = 0
    for event in reversed(tail.replace(b"\r\n", b"\n").split(b"\n\n")):
        data = b"".join(
            line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if not data or data.startswith(b"[DONE]"):
            continue
        seen += 1
        if b'"usage"' in data:
            try:
                found = usage_of(orjson.loads(data))
            except orjson.JSONDecodeError:
                found = None
            if found is not None:
                return found
        if seen >= TAIL_EVENTS:
            break
    return None


def usage_from_generation(body: bytes) -> Usage | None:
    """Usage from ``GET /api/v1/generation?id=``: ``{"data": {...}}`` with OpenRouter's names
    (``native_tokens_*`` are the provider's own counts, what a completion's ``usage`` reports;
    ``tokens_*`` are the normalised ones, a fallback)."""
    try:
        data = _sub(orjson.loads(body), "data")
    except orjson.JSONDecodeError:
        return None
    if not data:
        return None

    def tokens(kind: str) -> int | None:
        native = _int(data.get("native_tokens_" + kind))
        return native if native is not None else _int(data.get("tokens_" + kind))

    cost = _float(data.get("total_cost"))
    model, gid = data.get("model"), data.get("id")
    return Usage(
        prompt=tokens("prompt"),
        completion=tokens("completion"),
        cached=_int(data.get("native_tokens_cached")),
        reasoning=_int(data.get("native_tokens_reasoning")),
        cost=cost if cost is not None else _float(data.get("usage")),
        model=model if isinstance(model, str) else "",
        generation_id=gid if isinstance(gid, str) else "",
    )


class StreamTail:
    """The last TAIL_BYTES (or a little more) of a stream, kept without copying each chunk:
    ``feed`` holds references to the newest chunks, ``bytes()`` joins them once at the end."""

    __slots__ = ("chunks", "size", "limit")

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self.chunks: deque[bytes] = deque()
        self.size, self.limit = 0, limit

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size - len(self.chunks[0]) >= self.limit:
            self.size -= len(self.chunks.popleft())

    def bytes(self) -> bytes:
        return b"".join(self.chunks)
