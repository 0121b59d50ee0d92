"""Starting ``python run.py``: flags for every setting, and start-up errors that are one line
with an exit code (2: configuration or storage, 3: cannot listen), never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.admin_helpers import PASSWORD, ROOT, OrpollProcess, child_env, free_port, wait_healthy

RUN = [sys.executable, os.path.join(ROOT, "run.py")]


@pytest.fixture
def env(upstream, tmp_path) -> dict[str, str]:
    return child_env(
        upstream,
        str(tmp_path / "data"),
        ADMIN_PASSWORD=PASSWORD,
        OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111",
        PORT=str(free_port()),
    )


def run(
    env: dict[str, str], *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, *RUN, *args], env=env, capture_output=True, text=True, timeout=30
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("orpoll: "), proc.stderr
    for word in words:
        assert word in last, last
    return last


def test_data_dir_that_is_a_file(env, tmp_path):
    path = tmp_path / "a-file"
    path.write_text("x")
    assert_one_line_error(run({**env, "DATA_DIR": str(path)}), 2, "DATA_DIR", "is a file")


def test_data_dir_that_cannot_be_created(env, tmp_path):
    (tmp_path / "a-file").write_text("x")
    under = str(tmp_path / "a-file" / "data")
    assert_one_line_error(run({**env, "DATA_DIR": under}), 2, "DATA_DIR", "writable by uid")


def test_data_dir_that_is_not_writable(env, tmp_path):
    """As a root-owned bind mount in Docker is for the container's user. Root can write in any
    directory whatever its mode, so as root the directory is mounted read-only instead (in a
    mount namespace of the child's own)."""
    data = tmp_path / "data"
    data.mkdir()
    if os.geteuid() != 0:
        data.chmod(0o555)
        proc = run({**env, "DATA_DIR": str(data)})
    else:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare(1)")
        mount = f'mount --bind {data} {data} && mount -o remount,ro,bind {data} && exec "$@"'
        prefix = ("unshare", "-m", "sh", "-c", mount, "sh")
        probe = run(env, "--version", prefix=prefix)
        if probe.returncode != 0:
            pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()}")
        proc = run({**env, "DATA_DIR": str(data)}, prefix=prefix)
    assert_one_line_error(proc, 2, "DATA_DIR", "not writable")


def test_port_in_use(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        last = assert_one_line_error(run({**env, "PORT": str(port)}), 3, "cannot listen")
    assert str(port) in last and "in use" in last


def test_unknown_flag_exits_2_with_usage(env):
    proc = run(env, "--no-such-flag")
    assert proc.returncode == 2
    assert "usage: python run.py" in proc.stderr and "--no-such-flag" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_flag_value_names_the_flag(env):
    assert_one_line_error(run(env, "--port", "eighty"), 2, "--port", "expected an integer")


def test_help_lists_every_flag_and_its_variable(env):
    proc = run(env, "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for flag, var in [
        ("--port", "PORT"),
        ("--log-level", "LOG_LEVEL"),
        ("--app-api-key", "APP_API_KEY"),
        ("--shutdown-grace-seconds", "SHUTDOWN_GRACE_SECONDS"),
        ("--client-body-timeout-seconds", "CLIENT_BODY_TIMEOUT_SECONDS"),
    ]:
        assert flag in text and f"env {var}," in text, flag


def test_flags_win_over_the_environment(env, tmp_path):
    """``--port`` beats PORT, and ``--app-api-key`` makes /v1 ask for that key."""
    port = free_port()
    log_path = tmp_path / "orpoll.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*RUN, "--port", str(port), "--log-level", "info", "--app-api-key", "sk-client-1"],
            env={**env, "LOG_LEVEL": "error"},  # and PORT there is another free port
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        req = urllib.request.Request(url + "/v1/models")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 401
        req.add_header("Authorization", "Bearer sk-client-1")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["object"] == "list"
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    text = log_path.read_text()
    assert f":{port} (" in text


def test_a_bad_log_level_flag_is_refused(env):
    assert_one_line_error(run(env, "--log-level", "loud"), 2, "--log-level", "LOG_LEVEL")


@pytest.mark.parametrize(
    "host, client_key, warned",
    [("0.0.0.0", "", True), ("0.0.0.0", "sk-client-1", False), ("127.0.0.1", "", False)],
)
def test_an_open_relay_is_warned_about(env, tmp_path, host, client_key, warned):
    proc = OrpollProcess({**env, "HOST": host, "APP_API_KEY": client_key}, str(tmp_path / "o.log"))
    try:
        proc.wait_ready()
    finally:
        assert proc.stop() == 0
    assert ("OPEN RELAY" in proc.log()) == warned, proc.log()
