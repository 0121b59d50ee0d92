"""One upstream attempt with one key (``Attempt``): holds the answer back until it is known
good, then forwards it to the client's ``Sink``; a stream event by event, watching for an
error event before the first data and for one mid-stream."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Protocol

import orjson
from tornado.curl_httpclient import CurlError

from . import sse
from .classify import classify, classify_transport
from .fast import ERROR_BODY_LIMIT, Transfer
from .keys import KeyState, Outcome, Verdict
from .scheduler import KeyScheduler
from .upstream import OpenRouterClient

STREAM_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)
# The upstream response header worth passing on to the client.
PASS_HEADER = "X-Generation-Id"
_EVENT_RE = re.compile(rb".*?(?:\r\n\r\n|\n\n|\r\r)", re.S)


class Sink(Protocol):
    """The client side of a relay (implemented by the API handler)."""

    client_gone: bool
    transfer: Transfer | None  # the attempt in flight, for the sink to abort()

    @property
    def request_id(self) -> str: ...

    def start(self, status: int, headers: list[tuple[str, str]]) -> None: ...

    def send(self, data: bytes) -> None: ...


class Attempts:
    """What happened to one request: keys tried and their verdicts, the key that served it and
    where its usage figures are (for the access log, headers and the request ledger)."""

    __slots__ = (
        "items",
        "ms",
        "first_byte",
        "status",
        "broken",
        "broken_code",
        "served",
        "body",
        "tail",
        "head",
        "generation_id",
    )

    def __init__(self) -> None:
        self.items: list[tuple[str, str, int]] = []
        self.ms: list[float] = []  # each attempt's duration, beside ``items``
        self.first_byte = 0.0
        self.status = 0
        self.broken = ""  # why a stream failed after its 200 went out ("" = it did not)
        self.broken_code = ""
        self.served: KeyState | None = None  # the key whose answer went to the client
        # Where the usage is read from once the answer is over, never while it flows: a
        # non-stream answer's body, a stream's last events, and its first committed block
        # (which names the generation when the usage never came).
        self.body = b""
        self.tail = b""
        self.head = b""
        self.generation_id = ""

    def add(self, ks: KeyState, outcome: Outcome | None, ms: float = 0.0) -> None:
        verdict = outcome.verdict.value if outcome else "aborted"
        self.items.append((ks.id, verdict, outcome.status if outcome else 0))
        self.ms.append(ms)

    def __str__(self) -> str:
        return ",".join(f"{kid}:{v}:{s}" for kid, v, s in self.items) or "-"


class Attempt:
    """One upstream attempt with one key: holds output back until it is known good."""

    __slots__ = (
        "ks",
        "sink",
        "upstream",
        "attempts",
        "stream",
        "transfer",
        "committed",
        "pending",
        "error_body",
        "pre_error",
        "tail",
        "prev",
        "mid_error",
        "started",
        "sched",
        "model",
        "begun",
        "waiting",
    )

    def __init__(
        self,
        upstream: OpenRouterClient,
        ks: KeyState,
        sink: Sink,
        attempts: Attempts,
        stream: bool,
        sched: KeyScheduler,
        model: str | None,
    ) -> None:
        self.upstream, self.ks, self.sink, self.attempts = upstream, ks, sink, attempts
        self.stream = stream
        self.transfer = Transfer(self.on_chunk if stream else None)
        self.committed = False
        self.pending: bytes | bytearray = b""
        self.error_body: list[bytes] = []
        self.pre_error: Outcome | None = None
        self.mid_error: dict | None = None
        self.tail = self.prev = b""
        self.started = time.monotonic()
        self.sched, self.model = sched, model
        self.begun = sched.begin(ks)  # the attempt's start, as the scheduler knows it
        self.waiting = True  # no answer yet: holds a place in the key's unanswered attempts
        if stream:
            # A stream's first byte (even a keep-alive comment) comes within seconds; past this
            # the attempt is abandoned and the next key tried, nothing having been sent.
            self.transfer.first_byte = upstream.config.first_byte_timeout

    def start(
        self, url: str, body: bytes | None, method: str, content_type: str | None
    ) -> asyncio.Future:
        """Send the attempt; the future is done when the transfer is (see ``result``)."""
        self.sink.transfer = self.transfer  # lets the handler abort us on disconnect
        return self.upstream.send(
            self.ks.key, url, self.transfer, method=method, body=body, content_type=content_type
        )

    def result(self) -> Outcome | None:
        """The finished attempt's outcome; None if the client went away."""
        t, sink = self.transfer, self.sink
        # The curl handle is back in the pool already. Break the handler -> transfer ->
        # on_chunk -> attempt -> handler cycle, so the request's objects are freed now, not by
        # a full GC pass (which freed thousands of streams at once: a pause of every stream).
        t.on_chunk = None
        sink.transfer = None
        if sink.client_gone:
            return None
        if t.error is not None:
            return self._transport_failed(t.error)
        if not self.stream:
            return self._buffered_done(t.status, t.body(), t.header)
        return self._stream_done()

    # ---- buffered ---------------------------------------------------------------------------

    def _buffered_done(self, status: int, body: bytes, header) -> Outcome:
        if not 200 <= status < 300:
            return classify(status, body, header)
        err = sse.error_of(body) if status == 200 else None  # an in-band error
        if err is not None:
            return classify(200, body, header, error=err)
        content_type = header("Content-Type") or "application/json"
        # A JSON answer that does not parse (cut short, garbled), or an HTML page where an API
        # answer belongs (a captive portal, an error page), is no answer: the next key may do.
        # Other types pass as they are (pass-through endpoints answer audio, for one).
        if status == 200 and ("json" in content_type or "html" in content_type):
            if not _looks_like_json(body):
                return _not_json()
        self._commit(status, content_type)
        self.attempts.body = body
        self.sink.send(body)
        return Outcome(Verdict.OK, status)

    def _commit(self, status: int, content_type: str | None) -> None:
        out = [("Content-Type", content_type)] if content_type else list(STREAM_HEADERS)
        # The one header passed on names the generation, which the request ledger keeps too.
        generation_id = self.transfer.header(PASS_HEADER)
        if generation_id:
            out.append((PASS_HEADER, generation_id))
        out.append(("X-Orpoll-Attempts", str(len(self.attempts.items) + 1)))
        attempts = self.attempts
        attempts.status, attempts.served = status, self.ks
        attempts.generation_id = generation_id or ""
        attempts.first_byte = time.time()  # the access log measures ttfb from it
        self.sink.start(status, out)
        self.committed = True
        if self.waiting:
            self.waiting = False
            self.sched.answered(self.ks, self.begun, self.model)

    # ---- streaming --------------------------------------------------------------------------

    def on_chunk(self, chunk: bytes) -> None:
        """Each body chunk of a stream, as it arrives (curl's WRITEFUNCTION on the fast pool,
        Tornado's streaming_callback under FAST=0; sync by contract): forward whole events
        once committed."""
        if self.transfer.aborted:
            return
        if self.sink.client_gone:
            self.transfer.abort()
            return
        if self.transfer.status != 200:
            if sum(map(len, self.error_body)) < ERROR_BODY_LIMIT:
                self.error_body.append(chunk)
            return
        pending = self.pending
        if pending or not chunk.endswith(b"\n\n"):
            if not isinstance(pending, bytearray):  # the first chunk that ends inside an event
                self.pending = pending = bytearray()
            complete = sse.feed(pending, chunk)
            if len(pending) > self.upstream.config.max_sse_event_bytes:
                return self._event_too_large()
            if not complete:
                return
        else:  # the common case: the chunk ends on an event boundary
            complete = chunk
        if not self.committed:
            complete = self._first_events(complete)
            if not complete:
                return
        elif b'"error"' in complete:
            self._watch_error(complete)
        # References, not copies: the usage event is in the last block or the one before it
        # ([DONE] may come on its own), read once when the stream is over.
        self.prev, self.tail = self.tail, complete
        self.sink.send(complete)

    def _event_too_large(self) -> None:
        """An event outgrew MAX_SSE_EVENT_BYTES: end the transfer (and the stream, with an error
        event, if it was committed); not the key's fault, so another key may try."""
        message = (
            "an upstream stream event is larger than the proxy's limit "
            f"({self.upstream.config.max_sse_event_bytes} bytes)"
        )
        self.pre_error = Outcome(Verdict.PROVIDER, 502, message, code="upstream_event_too_large")
        self.pending = b""
        self.transfer.abort()
        if self.committed:
            self.sink.send(
                sse.error_event(message, code="upstream_event_too_large", status=502) + sse.DONE
            )

    def _first_events(self, block: bytes) -> bytes:
        """Before the first data event: drop comments, fail over on an error, else commit.

        OpenRouter's ``: OPENROUTER PROCESSING`` keep-alives are dropped here: passing them on
        would commit the 200 status and rule out failover. Once the first data event is later
        than STREAM_KEEPALIVE_AFTER_SECONDS, they are passed on after all (committing the
        stream to this key), so clients and proxies with read timeouts see a live stream.
        """
        for m in _EVENT_RE.finditer(block):
            payload = sse.data_of(m.group().strip(b"\r\n"))
            if payload is None:
                continue
            err = sse.error_of(payload)
            if err is not None:
                self.pre_error = classify(200, payload, self.transfer.header, error=err)
                self.transfer.abort()
                return b""
            if payload != b"[DONE]" and not _is_json(payload):
                self.pre_error = _not_json()
                self.transfer.abort()
                return b""
            self._commit(200, None)
            self.attempts.head = block = block[m.start() :]
            return block
        if time.monotonic() - self.started >= self.upstream.config.stream_keepalive_after:
            self._commit(200, None)
            return block
        return b""

    def _watch_error(self, block: bytes) -> None:
        for event in sse.events(block):
            payload = sse.data_of(event)
            err = sse.error_of(payload) if payload else None
            if err is not None:
                self.mid_error = err

    def _stream_done(self) -> Outcome:
        t = self.transfer
        if t.status != 200:
            return classify(t.status, b"".join(self.error_body), t.header)
        if self.pre_error is not None:
            return self.pre_error
        pending = bytes(self.pending)
        if not self.committed:
            leftover = pending.strip()
            err = sse.error_of(sse.data_of(leftover) or leftover) if leftover else None
            if err is not None:
                return classify(200, leftover, t.header, error=err)
            if leftover.startswith(b"{") and _is_json(leftover):  # a plain JSON answer
                self._commit(200, "application/json")
                self.attempts.body = pending
                self.sink.send(pending)
                return Outcome(Verdict.OK, 200)
            return Outcome(Verdict.TRANSIENT, 502, "upstream stream ended before any data")
        if pending.strip():
            self.sink.send(pending + b"\n\n")
            self.tail = pending
        if not sse.ends_with_done(self.tail):
            self.sink.send(sse.DONE)
        self.attempts.tail = self.prev + self.tail
        if self.mid_error is not None:
            outcome = classify(200, b"", t.header, error=self.mid_error)
            self.attempts.broken = outcome.message
            self.attempts.broken_code = str(outcome.code or "upstream_error")
            return outcome
        return Outcome(Verdict.OK, 200)

    def _transport_failed(self, err: CurlError) -> Outcome | None:
        if self.pre_error is not None:
            return self.pre_error  # we aborted it ourselves after an error event
        t = self.transfer
        outcome = classify_transport(err, t)
        if t.aborted and self.sink.client_gone:
            return None  # we ended it because the client left
        if outcome.verdict is Verdict.TRANSIENT and not (t.status or t.timed_out or t.aborted):
            # No answer at all (refused, reset, name or TLS failure): no key can cause that.
            outcome.verdict = Verdict.UPSTREAM
        if self.committed:
            # Mid-stream drop: end the stream cleanly, never a silent truncation. The partial
            # event in ``pending`` is discarded so the client never sees broken JSON.
            timed_out = self.transfer.timed_out
            code = "upstream_timeout" if timed_out else "upstream_disconnected"
            self.sink.send(
                sse.error_event(
                    outcome.message if timed_out else "upstream connection lost mid-stream",
                    code=code,
                    status=outcome.status,
                )
                + sse.DONE
            )
            self.attempts.broken, self.attempts.broken_code = outcome.message, code
        return outcome


def _looks_like_json(body: bytes) -> bool:
    """A JSON object or array from end to end, judged by its first and last bytes only: a body
    cut short, or an HTML page, fails. Parsing a whole answer would cost time in proportion to
    its size on every request; curl already refuses a body shorter than its framing says."""
    head, tail = body[:64].lstrip(), body[-64:].rstrip()
    return (head[:1], tail[-1:]) in ((b"{", b"}"), (b"[", b"]"))


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def _not_json() -> Outcome:
    return Outcome(
        Verdict.TRANSIENT,
        502,
        "upstream answered 200 with a body that is not JSON",
        code="upstream_invalid_json",
    )
