"""Server-sent events: cutting a byte stream at event boundaries, reading events, building ours.

Pure functions over bytes. Upstream chunks do not line up with events, so the relay only ever
forwards whole events and keeps the unfinished tail.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")


def _boundary_end(buf: bytes | bytearray, start: int) -> int:
    """Where the last event boundary that lies within ``buf[start:]`` ends; -1 if none."""
    end = -1
    for sep in _BOUNDARIES:
        i = buf.rfind(sep, start)
        if i >= 0 and i + len(sep) > end:
            end = i + len(sep)
    return end


def feed(buf: bytearray, chunk: bytes) -> bytes:
    """Add ``chunk`` to the unfinished events in ``buf``; take out and return the complete
    events that ends (b"" if none), leaving the unfinished tail in ``buf``.

    Only the new bytes are searched, plus the 3 before them where a ``\r\n\r\n`` may begin:
    ``buf`` never holds a whole boundary between calls. So one large event costs time linear
    in its size, not a copy and a search of all of it per chunk.
    """
    if not buf:
        end = _boundary_end(chunk, 0)
        if end < 0:
            buf += chunk
            return b""
        if end < len(chunk):
            buf += memoryview(chunk)[end:]
        return chunk[:end]
    start = len(buf) - 3 if len(buf) > 3 else 0
    buf += chunk
    end = _boundary_end(buf, start)
    if end < 0:
        return b""
    with memoryview(buf) as view:
        complete = view[:end].tobytes()
    del buf[:end]  # cheap: CPython moves a bytearray's start, it does not copy the rest
    return complete


def events(block: bytes) -> list[bytes]:
    """The events of a block of complete events (each without its blank-line terminator)."""
    block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return [e for e in block.split(b"\n\n") if e.strip()]


def data_of(event: bytes) -> bytes | None:
    """The joined ``data:`` payload of one event; None for a comment-only event."""
    lines = [
        line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in event.split(b"\n")
    ]
    data = [d for d in lines if d is not None]
    return b"\n".join(data) if data else None


def error_of(payload: bytes) -> dict[str, Any] | None:
    """The top-level ``error`` of a JSON payload, or of a choice that finished with "error".

    Returns None when the payload carries no error (cheap substring test before any parse).
    Never raises: JSON nested past the parser's depth is an error (502) of its own.
    """
    if b'"error"' not in payload:
        return None
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    except RecursionError:  # nested deeper than the parser goes: no answer to pass on
        return {"message": "upstream answer is JSON nested too deeply to read", "code": 502}
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, dict):
        return err
    if err:
        return {"message": str(err)}
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason") == "error":
            inner = choice.get("error")
            return inner if isinstance(inner, dict) else {"message": "generation failed"}
    return None


def ends_with_done(tail: bytes) -> bool:
    """True if the stream's last bytes (``tail``: its last block) are a ``data: [DONE]`` event."""
    return tail[-64:].rstrip().endswith(b"[DONE]")


def error_event(
    message: str,
    *,
    code: Any = "upstream_error",
    etype: str = "upstream_error",
    status: int | None = None,
) -> bytes:
    """One SSE event carrying an OpenAI-shaped error (the OpenAI SDK raises APIError on it)."""
    err = {"message": message, "type": etype, "param": None, "code": code}
    if status is not None:
        err["status"] = status
    body = {"object": "chat.completion.chunk", "choices": [], "error": err}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
