"""WORKERS=N: ``python run.py`` as a supervisor of N worker processes on one port. Both serve,
a killed worker is started again while the port keeps serving, SIGTERM drains every worker,
/metrics counts every worker's requests, and WORKERS takes ``auto`` or a number."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import prometheus_client.mmap_dict
import pytest

from orpoll.server import STARTUP_SWEEP_SECONDS
from orpoll.workers import MAX_WORKERS, worker_count
from tests.admin_helpers import PASSWORD, ROOT, SyncAdmin, child_env, free_port
from tests.conftest import FAST, raw_chat_request
from tests.test_shutdown import STREAM, dechunk, read_until_closed
from tests.test_startup import assert_one_line_error, run

CHAT = json.dumps({"model": "a/b", "messages": [{"role": "user", "content": "hi"}]}).encode()
TOKEN = "metrics-token-for-tests"
LISTENING = re.compile(r"\[worker (\d+)\] orpoll: orpoll \S+ listening")
ACCESS = re.compile(r"\[worker (\d+)\] orpoll\.access: \S+ 200 POST /v1/chat/completions")


def workers_env(upstream, tmp_path, **extra: str) -> dict[str, str]:
    settings = {
        "ADMIN_PASSWORD": PASSWORD,
        "OPENROUTER_API_KEYS": "sk-or-v1-test-aaaa1111,sk-or-v1-test-bbbb2222",
        "WORKERS": "2",
        "METRICS_TOKEN": TOKEN,
        "FAST": "1" if FAST else "0",
    }
    return child_env(upstream, str(tmp_path / "data"), **{**settings, **extra})


def wait_for(predicate, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def start_workers(spawn, env: dict[str, str]):
    """The supervisor, once both workers said they listen."""
    proc = spawn(env)
    wait_for(lambda: len(set(LISTENING.findall(proc.log()))) == 2, what="two workers listening")
    return proc


def worker_pids(proc) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}


def chat(url: str) -> int:
    """One non-stream chat request on a connection of its own: the status, 0 if it failed."""
    req = urllib.request.Request(
        url + "/v1/chat/completions", data=CHAT, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def chat_in_parallel(url: str, n: int) -> list[int]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: chat(url), range(n)))


def scrape(url: str) -> str:
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def test_both_workers_serve_the_port(upstream, spawn, tmp_path):
    proc = start_workers(spawn, workers_env(upstream, tmp_path))
    assert len(worker_pids(proc)) == 2
    for _ in range(10):
        assert set(chat_in_parallel(proc.url, 40)) == {200}
        if set(ACCESS.findall(proc.log())) == {"0", "1"}:
            break
    assert set(ACCESS.findall(proc.log())) == {"0", "1"}, proc.log()[-3000:]
    assert "orpoll.supervisor: supervisor" in proc.log()


def test_workers_1_is_the_single_process(upstream, spawn, tmp_path):
    proc = spawn(workers_env(upstream, tmp_path, WORKERS="1"))
    assert chat(proc.url) == 200
    assert worker_pids(proc) == set()
    assert "supervisor" not in proc.log() and "[worker" not in proc.log()


def test_a_killed_worker_is_started_again_and_the_port_keeps_serving(upstream, spawn, tmp_path):
    proc = start_workers(spawn, workers_env(upstream, tmp_path))
    results: list[tuple[float, int]] = []
    done = threading.Event()

    def client() -> None:  # one request at a time: at most one can be on the killed worker
        while not done.is_set():
            results.append((time.monotonic(), chat(proc.url)))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(1)
        before = worker_pids(proc)
        victim = max(before)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: f"(pid {victim}) was killed by SIGKILL" in proc.log(), what="logged")
        wait_for(lambda: len(worker_pids(proc) - {victim}) == 2, what="a new worker")
        wait_for(lambda: len(LISTENING.findall(proc.log())) == 3, what="it listens")
        time.sleep(1)
    finally:
        done.set()
        thread.join(15)
    failed = [t for t, status in results if status != 200]
    assert len(failed) <= 1, (failed, proc.log()[-3000:])
    after = [status for t, status in results if t > killed_at + 0.1]
    assert len(after) > 20 and set(after) == {200}, (after, proc.log()[-3000:])
    assert victim not in worker_pids(proc)
    assert "starting it again" in proc.log()


def test_sigterm_drains_every_worker_and_exits_0(upstream, spawn, tmp_path):
    upstream.state.default = {"chunks": 60, "interval": 1.0}  # 60 s streams
    proc = start_workers(spawn, workers_env(upstream, tmp_path, SHUTDOWN_GRACE_SECONDS="3"))
    pids = worker_pids(proc)
    socks = [socket.create_connection(("127.0.0.1", proc.port)) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(raw_chat_request(STREAM))
        wait_for(lambda: upstream.state.active == 20, what="20 streams under way")
        time.sleep(0.5)
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
        took = time.monotonic() - start
    finally:
        for s in socks:
            s.close()
    log = proc.log()
    assert code == 0 and took < 8, (code, took, log[-3000:])
    for raw in got.values():
        head, body, complete = dechunk(raw)
        assert head.startswith(b"HTTP/1.1 200") and complete, raw[-300:]
        events = [e for e in body.decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == (
            "server_shutting_down"
        )
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), pid
    assert "Traceback" not in log and "worker 0 exited (0)" in log and "worker 1 exited (0)" in log


def test_only_worker_0_sweeps_the_keys(upstream, spawn, tmp_path):
    start_workers(spawn, workers_env(upstream, tmp_path))
    time.sleep(STARTUP_SWEEP_SECONDS + 2)  # the first sweep, soon after start-up
    assert dict(upstream.state.key_probes) == {
        "sk-or-v1-test-aaaa1111": 1,
        "sk-or-v1-test-bbbb2222": 1,
    }


def test_workers_stop_when_the_supervisor_is_killed(upstream, spawn, tmp_path):
    proc = start_workers(spawn, workers_env(upstream, tmp_path))
    pids = worker_pids(proc)
    proc.kill9()

    def gone(pid: int) -> bool:  # exited: no process, or a zombie nobody has reaped yet
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_for(lambda: all(gone(pid) for pid in pids), timeout=15, what="workers exited")
    assert "shutting down" in proc.log()


def test_metrics_count_the_requests_of_every_worker(upstream, spawn, tmp_path):
    proc = start_workers(spawn, workers_env(upstream, tmp_path))
    served = 0
    while set(ACCESS.findall(proc.log())) != {"0", "1"}:
        assert served < 400, proc.log()[-3000:]
        assert set(chat_in_parallel(proc.url, 40)) == {200}
        served += 40
    time.sleep(1.5)  # each worker copies its figures into the shared files every second
    series = 'orpoll_requests_total{route="/v1/chat/completions",status="200",stream="false"}'
    for _ in range(4):  # new connections: the scrapes land on either worker
        text = scrape(proc.url)
        assert f"{series} {float(served)}" in text, text
        assert "orpoll_streams_open 0.0" in text
        assert 'orpoll_keys{state="available"} 2.0' in text
    count = 'orpoll_request_duration_seconds_count{route="/v1/chat/completions",stream="false"}'
    assert f"{count} {float(served)}" in text


def test_metrics_files_format_is_still_there():
    """metricfiles.py writes prometheus_client's multiprocess files with these two names."""
    assert hasattr(prometheus_client.mmap_dict, "MmapedDict")
    assert hasattr(prometheus_client.mmap_dict, "mmap_key")


def test_workers_auto_is_one_per_core(upstream, spawn, tmp_path):
    assert worker_count("auto") == os.cpu_count()
    assert worker_count(" 3 ") == 3
    proc = spawn(workers_env(upstream, tmp_path, WORKERS="auto"))
    n = os.cpu_count() or 1
    wait_for(lambda: len(set(LISTENING.findall(proc.log()))) == n, what=f"{n} workers")
    assert f"starting {n} worker" in proc.log()
    assert len(worker_pids(proc)) == n


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", str(MAX_WORKERS + 1)])
def test_a_bad_workers_value_is_a_configuration_error(upstream, tmp_path, value):
    env = workers_env(upstream, tmp_path, WORKERS=value, PORT=str(free_port()))
    last = assert_one_line_error(run(env), 2, "configuration error", "WORKERS=")
    assert "auto" in last
    assert_one_line_error(run(env, "--workers", value), 2, "WORKERS=")


def test_a_worker_that_cannot_open_the_database_ends_the_supervisor_with_2(upstream, tmp_path):
    env = workers_env(upstream, tmp_path, PORT=str(free_port()))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "orpoll.db").write_text("not a database, " * 8)
    proc = run(env)
    assert proc.returncode == 2, proc.stderr
    assert "orpoll: storage error: cannot open the database" in proc.stderr
    assert "worker 0 could not start: stopping 0 workers" in proc.stderr
    assert "Traceback" not in proc.stderr


SUPERVISED = """
import os, sys, time
from orpoll.workers import Supervisor
def run(worker, socks):
    with open(os.path.join(sys.argv[1], f"w{worker.index}-{os.getpid()}"), "w") as f:
        f.write(os.environ["ORPOLL_WORKERS"] + " " + os.environ["ORPOLL_WORKER_INDEX"])
    worker.announce_ready()
    if worker.index == 1:
        sys.exit(1)  # a worker that dies young, again and again
    time.sleep(60)
import logging; logging.basicConfig(level=logging.INFO)
sys.exit(Supervisor(3, [[]] * 3, run, grace=1).serve())
"""


def test_the_supervisor_tells_each_worker_its_place_and_backs_off(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISED, str(tmp_path)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    said = {name.split("-")[0]: (tmp_path / name).read_text() for name in os.listdir(tmp_path)}
    assert said == {"w0": "3 0", "w1": "3 1", "w2": "3 2"}
    starts = [n for n in os.listdir(tmp_path) if n.startswith("w1-")]
    delays = [float(d) for d in re.findall(r"worker 1 \(pid \d+\) exited \(1\) .* in (\S+)s", err)]
    assert delays[:3] == [0.5, 1.0, 2.0], err  # doubling: a crash loop does not spin
    assert 2 <= len(starts) <= 4, err


def test_log_lines_name_the_worker_only_with_several():
    from orpoll.logs import JsonFormatter, TextFormatter

    assert "[worker" not in TextFormatter().line(0.0, 20, "orpoll", "hi")
    assert TextFormatter(1).line(0.0, 20, "orpoll", "hi").endswith(" I [worker 1] orpoll: hi")
    assert "worker" not in json.loads(JsonFormatter().line(0.0, 20, "orpoll", "hi"))
    assert json.loads(JsonFormatter(1).line(0.0, 20, "orpoll", "hi"))["worker"] == 1


def test_every_worker_shows_the_minutes_and_todays_figures_of_all(upstream, spawn, tmp_path):
    proc = start_workers(spawn, workers_env(upstream, tmp_path))
    served = 0
    while set(ACCESS.findall(proc.log())) != {"0", "1"}:
        assert served < 400, proc.log()[-3000:]
        assert set(chat_in_parallel(proc.url, 40)) == {200}
        served += 40
    admin = SyncAdmin(proc.url)
    admin.login()
    since = int(time.time()) - 3600

    def figures() -> tuple[int, int]:
        minutes = admin.ok("GET", f"/admin/usage?group_by=minute&since={since}")["data"]
        keys = admin.ok("GET", "/admin/key-status?page=1&limit=50")["keys"]
        return sum(m["requests"] for m in minutes), sum(k["today_requests"] for k in keys)

    # Each worker re-reads the shared ledger every 2 s; new connections land on either one.
    wait_for(lambda: figures() == (served, served), timeout=15, what="the figures of all")
    for _ in range(6):
        assert figures() == (served, served)
