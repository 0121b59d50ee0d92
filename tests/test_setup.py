"""The README's set-up: its run command starts orpoll from a clean virtual environment, and its
test command is the one CI runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.admin_helpers import ROOT, child_env, free_port, post_chat, wait_healthy

# What the run command needs from a checkout (tests, bench and docs are not needed to run).
RUNTIME = ("orpoll", "templates", "static", "run.py", "requirements.txt")


def readme_commands() -> list[str]:
    """The indented command lines of the README's Set-up section, in order."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^    (\S.*)$", section, re.MULTILINE)


def test_the_readme_test_command_is_what_ci_runs():
    commands = readme_commands()
    assert commands[1] == "sh tests/install.sh && python -m pytest && FAST=0 python -m pytest"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert commands[1] in f.read().splitlines()


def pypi_reachable(tmp: str) -> str | None:
    """None when pip can fetch a package here, else why not."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "tornado"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def test_the_readme_run_command_works_in_a_clean_venv(upstream, tmp_path):
    """The Set-up section's first command, exactly as written, in a copy of the checkout with
    no virtual environment: it creates one, installs into it and serves a chat completion."""
    command = readme_commands()[0]
    assert ".venv" in command and "run.py" in command
    if shutil.which("python3") is None:
        pytest.skip("no python3 on PATH: the README's command starts with it")
    why = pypi_reachable(str(tmp_path / "download"))
    if why is not None:
        pytest.skip(f"pip cannot download packages here, so a clean venv cannot be built: {why}")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in RUNTIME:
        src = os.path.join(ROOT, name)
        copy = shutil.copytree if os.path.isdir(src) else shutil.copy
        copy(src, checkout / name)
    env = child_env(upstream, str(tmp_path / "data"), OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111")
    env.pop("VIRTUAL_ENV", None)
    env["PORT"] = str(port := free_port())
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        ["sh", "-c", command],
        cwd=checkout,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the shell's children (pip, then orpoll) are ended with it
    )
    try:
        try:
            wait_healthy(url, proc, timeout=600)  # the first pip install can be slow
        except AssertionError:
            raise AssertionError((tmp_path / "run.log").read_text()[-3000:]) from None
        assert post_chat(url) == 200
        venv_python = checkout / ".venv" / "bin" / "python"
        assert venv_python.exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


def test_an_unusable_data_dir_fails_with_one_clear_line(upstream, tmp_path):
    """A DATA_DIR orpoll cannot write (as a root-owned bind mount is for the image's user;
    here a path through a regular file, which stops root too): exit 2 and one line naming
    the directory and what to do, not a traceback."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env = child_env(upstream, str(blocker / "data"), OPENROUTER_API_KEYS="sk-or-v1-test-aaaa1111")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py")],
        env={**env, "PORT": str(free_port())},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "storage error" in line]
    assert f"cannot use DATA_DIR {blocker / 'data'}" in line and "writable by uid" in line
