"""Graceful shutdown of ``python run.py``: on SIGTERM it stops listening at once, lets requests
and streams finish within SHUTDOWN_GRACE_SECONDS, ends the streams still open with an error
event and ``[DONE]``, and exits 0."""

from __future__ import annotations

import json
import selectors
import signal
import socket
import time

from tests.admin_helpers import PASSWORD, child_env
from tests.conftest import raw_chat_request

STREAM = json.dumps(
    {"model": "openai/gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)


def dechunk(raw: bytes) -> tuple[bytes, bytes, bool]:
    """(head, body, complete) of an HTTP/1.1 chunked response: ``complete`` when the body
    ended with its last chunk, as a client reading it would check."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head, body, rest == b"\r\n"
        body, rest = body + rest[:size], rest[size + 2 :]
    return head, body, False


def read_until_closed(socks: list[socket.socket], limit: float) -> dict[socket.socket, bytes]:
    got = {s: b"" for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + limit
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            try:
                data = key.fileobj.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionError:
                data = b""
            if data:
                got[key.fileobj] += data
            else:
                sel.unregister(key.fileobj)
    return got


def sigterm_during_streams(upstream, spawn, tmp_path, n: int, grace: int, script: dict):
    """``n`` streams (the fake answers each per ``script``) through ``python run.py`` with
    SHUTDOWN_GRACE_SECONDS=``grace``, SIGTERM once all are under way: (what each client got,
    the exit code, seconds from SIGTERM to exit, the process)."""
    upstream.state.default = script
    env = child_env(
        upstream,
        str(tmp_path / "data"),
        ADMIN_PASSWORD=PASSWORD,
        OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111,sk-or-v1-test-bbbb2222",
        SHUTDOWN_GRACE_SECONDS=str(grace),
    )
    proc = spawn(env)
    socks = [socket.create_connection(("127.0.0.1", proc.port)) for _ in range(n)]
    try:
        for s in socks:
            s.sendall(raw_chat_request(STREAM))
        deadline = time.monotonic() + 30
        while upstream.state.active < n:
            assert time.monotonic() < deadline, upstream.state.active
            time.sleep(0.02)
        time.sleep(0.5)  # a chunk or two on every stream
        start = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = socket.socket()
        try:
            assert refused.connect_ex(("127.0.0.1", proc.port)) != 0  # no longer listening
        finally:
            refused.close()
        got = read_until_closed(socks, 15)
        code = proc.proc.wait(15)
        return list(got.values()), code, time.monotonic() - start, proc
    finally:
        for s in socks:
            s.close()


def test_sigterm_ends_100_long_streams_with_an_error_event_and_exits_0(upstream, spawn, tmp_path):
    script = {"chunks": 60, "interval": 1.0}  # 60 s streams
    got, code, took, proc = sigterm_during_streams(upstream, spawn, tmp_path, 100, 5, script)
    assert code == 0, proc.log()[-3000:]
    assert took < 6, took
    for raw in got:
        head, body, complete = dechunk(raw)
        assert head.startswith(b"HTTP/1.1 200"), raw[:300]
        assert complete, raw[-300:]
        events = [e for e in body.decode().split("\n\n") if e]
        assert len(events) >= 3, events  # content before the error event
        assert events[-1] == "data: [DONE]"
        err = json.loads(events[-2].removeprefix("data: "))["error"]
        assert err["code"] == "server_shutting_down", err
    log = proc.log()
    assert "ending 100 streams" in log and "Traceback" not in log, log[-3000:]


def test_sigterm_lets_short_streams_finish_and_exits_at_once(upstream, spawn, tmp_path):
    """Nothing open at the end: the process does not wait out the grace period."""
    script = {"chunks": 8, "interval": 0.2}
    got, code, took, _ = sigterm_during_streams(upstream, spawn, tmp_path, 10, 30, script)
    assert code == 0 and took < 10, took
    for raw in got:
        _, body, complete = dechunk(raw)
        assert complete and body.endswith(b"data: [DONE]\n\n")
        assert b"server_shutting_down" not in body
