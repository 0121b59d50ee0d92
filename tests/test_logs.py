"""Log lines leave in one write per loop pass, in order, and a stalled log reader never blocks
the proxy (orpoll.logs.LoopLogHandler)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import subprocess
import threading
import time

import pytest

from orpoll.logs import JsonFormatter, LoopLogHandler, TextFormatter, direct_sink
from tests.admin_helpers import child_env, post_chat, run_py, wait_healthy


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def logger(pipe):
    handler = LoopLogHandler(pipe[1])
    handler.setFormatter(TextFormatter())
    log = logging.getLogger("orpoll.test-logs")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.handlers[:] = [handler]
    yield log
    log.handlers[:] = []
    handler.close()


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def drain(fd: int) -> bytes:
    out = b""
    while readable(fd):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        out += chunk
    return out


async def test_lines_leave_together_at_the_next_pass_in_order(logger, pipe):
    r, _ = pipe
    for i in range(200):
        logger.info("line %d of %s", i, "two hundred")
    assert not readable(r)  # nothing written during the pass that logged
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    lines = drain(r).decode().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        f"line {i} of two hundred" for i in range(200)
    ]
    assert all(line[:4].isdigit() and " I orpoll.test-logs: " in line for line in lines)


async def test_a_stalled_reader_never_blocks_the_loop(logger, pipe):
    """Nobody reads the pipe (64 KiB) while 4 MiB of lines are logged: logging returns at
    once, the loop keeps its timers, lines past LoopLogHandler.MAX_PENDING are dropped and
    counted, and once the reader drains the pipe, what was kept arrives whole and in order,
    followed by a line saying how many were dropped."""
    r, _ = pipe
    payload = "x" * 1000
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    start = time.monotonic()
    for i in range(4096):
        logger.info("%05d %s", i, payload)
        if i % 256 == 0:
            await asyncio.sleep(0.01)
    took = time.monotonic() - start
    assert took < 2.0 and ticks >= 10  # the loop ran its timers all along

    got = b""
    deadline = time.monotonic() + 10
    while b"log lines dropped" not in got and time.monotonic() < deadline:
        got += drain(r)
        await asyncio.sleep(0.01)
    task.cancel()
    lines = got.decode().splitlines()
    note = lines[-1]
    assert note.endswith("log lines dropped: the log reader was too slow"), note
    kept = [int(line.split(": ", 1)[1][:5]) for line in lines[:-1]]
    dropped = int(note.split()[0])
    assert kept == sorted(kept) and len(kept) + dropped == 4096
    assert 0 < dropped < 4096
    assert all(line.endswith(payload) for line in lines[:-1])  # no torn line


async def test_other_threads_write_at_once(logger, pipe):
    r, _ = pipe
    t = threading.Thread(target=logger.info, args=("from a worker",))
    t.start()
    t.join()
    assert drain(r).decode().endswith(": from a worker\n")  # no loop pass needed


def test_the_server_keeps_serving_while_its_log_pipe_is_full(upstream, tmp_path):
    """``python run.py`` with stderr on a pipe nobody reads: requests are still answered
    (each one logs a line), and when reading resumes the access lines are there."""
    env = child_env(upstream, str(tmp_path / "data"), OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111")
    proc, url = run_py(env, str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(url, proc)
        # Each request logs ~150 bytes; 1,500 of them are several times a pipe's 64 KiB.
        slowest = 0.0
        for _ in range(1500):
            t = time.monotonic()
            assert post_chat(url) == 200
            slowest = max(slowest, time.monotonic() - t)
        assert slowest < 2.0
    finally:
        proc.terminate()
        err = proc.communicate(timeout=20)[1].decode()
    access = [line for line in err.splitlines() if "POST /v1/chat/completions" in line]
    assert access, err[-2000:]
    assert len(access) == 1500 or "log lines dropped" in err


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
@pytest.mark.parametrize("levelno", [5, logging.INFO, logging.WARNING])
def test_a_direct_line_reads_as_the_same_record_through_logging(formatter, levelno):
    logging.addLevelName(5, "TRACE")
    for created in (1764150000.0, 1764150000.999, 1764150123.0456):
        record = logging.LogRecord("orpoll.access", levelno, __file__, 1, "%s", ("r-1 200",), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert formatter.line(created, levelno, "orpoll.access", "r-1 200") == formatter.format(
            record
        )


def test_the_direct_path_only_when_nothing_else_would_see_the_record(pipe):
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = LoopLogHandler(pipe[1])
    try:
        handler.setFormatter(TextFormatter())
        root.handlers[:] = [handler]
        access = logging.getLogger("orpoll.access")
        assert direct_sink(access) is handler
        extra = logging.NullHandler()  # say, pytest's log capture
        logging.getLogger("orpoll").addHandler(extra)
        assert direct_sink(access) is None
        logging.getLogger("orpoll").removeHandler(extra)
        root.handlers.append(extra)
        assert direct_sink(access) is None
    finally:
        root.handlers[:] = saved
        handler.close()


def test_the_server_runs_with_stderr_closed(upstream, tmp_path):
    env = child_env(upstream, str(tmp_path / "data"), OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111")
    proc, url = run_py(
        env, str(tmp_path), stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(2)
    )
    try:
        wait_healthy(url, proc)
        assert post_chat(url) == 200
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_a_direct_json_line_with_fields_reads_as_the_same_record():
    formatter = JsonFormatter()
    fields = {"request_id": "r-1", "status": 200, "keys": [{"id": "k", "verdict": "ok"}]}
    record = logging.LogRecord("orpoll.access", logging.INFO, __file__, 1, "%s", ("r-1",), None)
    record.created, record.msecs, record.access = 1764150000.5, 500.0, fields
    line = formatter.line(1764150000.5, logging.INFO, "orpoll.access", "r-1", fields)
    assert line == formatter.format(record)
    assert json.loads(line) == {
        "time": "2025-11-26T09:40:00.500Z",
        "level": "info",
        "logger": "orpoll.access",
        "message": "r-1",
        **fields,
    }
