"""Child processes for the benchmark: build the Go tools, start and stop the fake upstream and
the proxy in their own process groups, and read CPU and memory figures from /proc."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"  # gitignored: binaries, logs, raw JSON
CLK_TCK = os.sysconf("SC_CLK_TCK")
ADMIN_PASSWORD = "bench-admin-pw"
# Environment variables a child may inherit; everything else (stray OPENROUTER_* etc.) is dropped.
KEEP_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", "PYENV_VERSION", "PYENV_ROOT")

_children: list[Child] = []


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# Debian's golang-golang-x-net-dev: golang.org/x/net, for the fake's h2c (fake_h2c.go).
GO_XNET = Path("/usr/share/gocode")
FAKE_H2C = (GO_XNET / "src/golang.org/x/net/http2/h2c").is_dir()
UPSTREAM_H2C = FAKE_H2C  # the proxies run with UPSTREAM_H2C=1 (bench --h1-upstream: off)


def build_go(name: str) -> Path:
    """Build bench/<name>.go into bench/out/<name> unless the binary is newer; stdlib only,
    but for the fake's fake_h2c.go, built in when golang.org/x/net is installed (FAKE_H2C)."""
    srcs = [BENCH / f"{name}.go"]
    if name == "fake_upstream" and FAKE_H2C:
        srcs.append(BENCH / "fake_h2c.go")
        name += "-h2c"
    exe = OUT / name
    if exe.exists() and all(exe.stat().st_mtime > src.stat().st_mtime for src in srcs):
        return exe
    OUT.mkdir(exist_ok=True)
    env = clean_env(CGO_ENABLED="0", GO111MODULE="off", GOFLAGS="", GOPROXY="off")
    env.setdefault("HOME", str(OUT))
    # Keep Go's caches inside bench/out so the build needs no network and no writable $HOME.
    env.update(GOCACHE=str(OUT / "gocache"), GOPATH=f"{OUT / 'gopath'}:{GO_XNET}")
    argv = ["go", "build", "-o", str(exe), *map(str, srcs)]
    subprocess.run(argv, env=env, check=True, timeout=300)
    return exe


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment for children plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k in KEEP_ENV or k.startswith("LC_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A long-lived child in its own session (process group), logging to a file."""

    def __init__(
        self, name: str, argv: list[str], env: dict, cwd: Path | str = ROOT, tmp: Path | None = None
    ):
        self.name, self.tmp = name, tmp  # tmp: a directory removed by stop()
        self.log_path = OUT / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.t_spawn = time.monotonic()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        _children.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL after 5 s."""
        if self in _children:
            _children.remove(self)
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if self.popen.poll() is not None:
                break
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self._log.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, n: int = 15) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def stop_all() -> None:
    """Stop every child still running (called from the runner's finally)."""
    for child in list(_children):
        child.stop()


# --- /proc readers -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime+stime of one process, in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime summed over a process group (the proxy might fork workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = _stat_fields(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, needs ptrace rights); True on success."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def listen_drops() -> int:
    """TcpExt ListenDrops (includes ListenOverflows), machine-wide: SYNs dropped because an
    accept queue was full; the client retries such a SYN after ~1 s."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(row.get("ListenDrops", 0))
    return 0


def listen_backlog(port: int) -> int:
    """Accept-queue size of the socket listening on ``port`` (Send-Q in ``ss -ltn``); -1 if
    unknown."""
    try:
        out = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        ).stdout.split()
        return int(out[2])
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return -1


def children_cpu() -> float:
    """CPU of reaped children (wrk, streamload) so far; diff around one run to get its share."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, irq) CPU seconds of all cores since boot: busy excludes idle and iowait (guest
    time is already in user); irq is hard+soft interrupt time, e.g. loopback packet work."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK, (v[5] + v[6]) / CLK_TCK


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all cores busy over ``seconds`` (0..1), from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle+iowait

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


# --- HTTP ----------------------------------------------------------------------------------


def http_call(
    port: int,
    method: str,
    path: str,
    body: dict | None = None,
    headers: dict | None = None,
    timeout: float = 10,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to 127.0.0.1:port; returns (status, headers, body).

    Headers are an HTTPMessage: ``get`` is case-insensitive and ``get_all`` returns repeats.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Authorization": "Bearer bench-client", **(headers or {})}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.msg, resp.read()
    finally:
        conn.close()


CHAT = {"model": "a/b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def chat_once(port: int, timeout: float = 10) -> int:
    """One non-stream chat completion through the proxy; returns the status."""
    return http_call(port, "POST", "/v1/chat/completions", CHAT, timeout=timeout)[0]


# --- fake upstream and proxy ----------------------------------------------------------------


def start_fake() -> tuple[Child, int]:
    """Start the Go fake OpenRouter on a free port; returns (child, port) once it accepts."""
    exe, port = build_go("fake_upstream"), free_port()
    # GOMAXPROCS stays at the core count: the fake must never be the bottleneck.
    child = Child("fake_upstream", [str(exe), "-addr", f"127.0.0.1:{port}"], clean_env())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return child, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("fake upstream did not start:\n" + child.log_tail())


def start_bare_relay(fake_port: int, max_clients: int = 1000) -> tuple[Child, int]:
    """The floor (bench/bare_relay.py) in front of the fake; returns (child, port) once up."""
    port = free_port()
    url = f"http://127.0.0.1:{fake_port}/api/v1/chat/completions"
    argv = [sys.executable, str(BENCH / "bare_relay.py"), str(port), url, str(max_clients)]
    child = Child("bare_relay", argv, clean_env(PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError("bare relay exited:\n" + child.log_tail())
        try:
            if chat_once(port, timeout=5) == 200:
                return child, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("bare relay did not start:\n" + child.log_tail())


def fake_stats(port: int, reset: bool = False) -> dict:
    status, _, body = http_call(port, "POST" if reset else "GET", "/bench/stats")
    return json.loads(body) if status == 200 else {}


def bench_keys(n: int) -> list[str]:
    """n distinct, realistic-looking OpenRouter keys (deterministic)."""
    return ["sk-or-v1-" + hashlib.sha256(b"%d" % i).hexdigest() for i in range(n)]


def start_proxy(
    name: str, fake_port: int, n_keys: int = 2, max_conns: int | None = None, **extra: str
) -> tuple[Child, int]:
    """Spawn ``python run.py`` against the fake, cwd = a fresh temp dir (its own .env, DATA_DIR).

    Large key lists go through that .env: one environment string is capped at 128 KiB by Linux.
    ``max_conns`` sets UPSTREAM_MAX_CONNECTIONS (else the proxy's default). Returns at once;
    see wait_ready.
    """
    if max_conns:
        extra["UPSTREAM_MAX_CONNECTIONS"] = str(max_conns)
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix=f"orpoll-{name}-", dir=OUT))
    keys = ",".join(bench_keys(n_keys))
    env = clean_env(
        PORT=str(port),
        HOST="127.0.0.1",
        OPENROUTER_API_URL=f"http://127.0.0.1:{fake_port}/api/v1/chat/completions",
        OPENROUTER_MODELS_URL=f"http://127.0.0.1:{fake_port}/api/v1/models",
        LOG_LEVEL="warn",  # no access log, like the bare relay; nonstream also runs with it
        DATA_DIR=str(tmp / "data"),
        HEALTH_CHECK_INTERVAL_SECONDS="3600",
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        PYTHONUNBUFFERED="1",
        UPSTREAM_H2C="1" if UPSTREAM_H2C else "0",
    )
    env.update(extra)
    if len(keys) < 100_000:
        env["OPENROUTER_API_KEYS"] = keys
    else:
        (tmp / ".env").write_text(f"OPENROUTER_API_KEYS={keys}\n")
    argv = [sys.executable, str(ROOT / "run.py")]
    child = Child(f"proxy-{name}", argv, env, cwd=tmp, tmp=tmp)
    return child, port


def wait_ready(child: Child, port: int, timeout: float = 60) -> float:
    """Poll GET /healthz (/v1/models if that is 404) until 200; returns seconds since spawn."""
    path = "/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        try:
            status = http_call(port, "GET", path, timeout=5)[0]
        except OSError:
            status = 0
        if status == 200:
            return time.monotonic() - child.t_spawn
        if status == 404:
            path = "/v1/models"
        time.sleep(0.02)
    raise RuntimeError(f"{child.name} not ready after {timeout}s:\n{child.log_tail()}")


def log_problems(child: Child) -> dict:
    """Counts of worrying lines in a child's log, plus the first few of them."""
    text = child.log_path.read_text(errors="replace")
    lines = text.splitlines()
    marks = ("Traceback", "ERROR", "Exception", "CRITICAL", "Uncaught")
    bad = [ln for ln in lines if any(m in ln for m in marks)]
    warn = [ln for ln in lines if "WARN" in ln]
    return {"lines": len(lines), "errors": len(bad), "warnings": len(warn), "samples": bad[:5]}
