"""Settings: the original's env names and defaults, validation, --help, .env (real subprocesses)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from orpoll.config import ConfigError, Settings, load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "run.py")

# The Go original's variables and defaults (ADMIN_PASSWORD/SESSION_SECRET_KEY: the admin's).
ORIGINAL = {
    "OPENROUTER_API_KEYS": "",
    "APP_API_KEY": "",
    "PORT": 8000,
    "LOG_LEVEL": "info",
    "DEFAULT_MODEL": "deepseek/deepseek-chat-v3-0324:free",
    "REQUEST_TIMEOUT_SECONDS": 180,
    "KEY_FAILURE_COOLDOWN_SECONDS": 600,
    "KEY_MAX_CONSECUTIVE_FAILURES": 3,
    "RETRY_WITH_NEW_KEY_COUNT": 3,
    "HEALTH_CHECK_INTERVAL_SECONDS": 300,
    "HTTP_REFERER": "",
    "X_TITLE": "",
    "OPENROUTER_API_URL": "https://openrouter.ai/api/v1/chat/completions",
    "OPENROUTER_MODELS_URL": "https://openrouter.ai/api/v1/models",
    "HOST": "0.0.0.0",
    "MODELS_CACHE_SECONDS": 300,
    "MAX_REQUEST_BODY_BYTES": 32 * 1024 * 1024,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The parent environment without any orpoll setting, plus ``extra``."""
    names = {f.metadata["env"] for f in dataclasses.fields(Settings)} | {"GIN_MODE"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, RUN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )


class Server:
    """``python run.py`` in a subprocess; stopped with SIGTERM by its pid."""

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, RUN],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_listening(self, port: int, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def server_env(tmp_path):
    return clean_env(DATA_DIR=str(tmp_path / "data"), HOST="127.0.0.1")


@pytest.fixture
def start(tmp_path):
    started: list[Server] = []

    def _start(env: dict[str, str], cwd: str | None = None) -> Server:
        server = Server(env, cwd or str(tmp_path))
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


# ---- declared settings ------------------------------------------------------------------------


def test_original_names_and_defaults():
    settings = load_settings({})
    public = settings.public()
    for env, default in ORIGINAL.items():
        assert env in public, env
        if env in ("OPENROUTER_API_KEYS", "APP_API_KEY"):
            assert public[env] is False  # secrets only say whether they are set
        else:
            assert public[env] == default, env


def test_values_are_parsed_and_typed():
    s = load_settings(
        {
            "PORT": " 9001 ",
            "REQUEST_TIMEOUT_SECONDS": "2.5",
            "RETRY_WITH_NEW_KEY_COUNT": "0",
            "LOG_LEVEL": "WARN",
            "OPENROUTER_API_KEYS": "sk-a,sk-b:3",
            "GIN_MODE": "release",
        }
    )
    assert s.port == 9001 and s.request_timeout == 2.5 and s.retry_count == 0
    assert s.log_level == "warn" and s.openrouter_api_keys == "sk-a,sk-b:3"


@pytest.mark.parametrize("level", ["trace", "debug", "info", "warn", "error", "fatal", "panic"])
def test_every_original_log_level_is_accepted(level):
    assert load_settings({"LOG_LEVEL": level}).log_level == level


@pytest.mark.parametrize(
    "env,value",
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("REQUEST_TIMEOUT_SECONDS", "-1"),
        ("KEY_FAILURE_COOLDOWN_SECONDS", "soon"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_FORMAT", "xml"),
        ("KEY_MAX_CONSECUTIVE_FAILURES", "0"),
        ("UPSTREAM_CA_BUNDLE", "/nonexistent/ca.pem"),
        ("HEALTH_CHECK_INTERVAL_SECONDS", "1e300"),
        ("CONNECT_TIMEOUT_SECONDS", "inf"),
        ("SESSION_LIFETIME_SECONDS", "nan"),
        ("RETRY_WITH_NEW_KEY_COUNT", "2.5"),
        ("PORT", "1e3"),
        ("PUBLIC_URL", "orpoll.example.com"),
        ("PUBLIC_URL", "ftp://orpoll.example.com"),
    ],
)
def test_malformed_values_name_the_variable(env, value):
    with pytest.raises(ConfigError) as exc:
        load_settings({env: value})
    assert str(exc.value).startswith(f"{env}=")


def test_env_example_lists_every_setting():
    with open(os.path.join(os.path.dirname(__file__), "..", ".env.example")) as f:
        text = f.read()
    for f in dataclasses.fields(Settings):
        assert f"# {f.metadata['env']}=" in text


# ---- python run.py ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env,value,accepts",
    [
        ("PORT", "abc", "integer"),
        ("REQUEST_TIMEOUT_SECONDS", "-5", ">= 0"),
        ("LOG_LEVEL", "loud", "trace"),
    ],
)
def test_run_py_exits_2_with_one_line_naming_the_variable(server_env, env, value, accepts):
    proc = run({**server_env, env: value})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert env in lines[0] and accepts in lines[0]
    assert "Traceback" not in proc.stderr


def test_run_py_help_lists_every_setting(server_env):
    proc = run(server_env, "--help")
    assert proc.returncode == 0
    for f in dataclasses.fields(Settings):
        assert f.metadata["env"] in proc.stdout


def test_run_py_starts_with_no_configuration_and_says_it_has_no_keys(server_env, start, tmp_path):
    port = free_port()
    server = start({**server_env, "PORT": str(port), "GIN_MODE": "release"})
    assert server.wait_listening(port), server.stop()
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and b'"total": 0' in body
    code, err = server.stop()
    assert code == 0, err
    assert "no OpenRouter keys" in err


def test_dotenv_is_loaded_from_the_working_directory(server_env, start, tmp_path):
    port = free_port()
    (tmp_path / ".env").write_text(f"PORT={port}\nOPENROUTER_API_KEYS=sk-or-v1-dotenv-1111\n")
    server = start(server_env, cwd=str(tmp_path))
    assert server.wait_listening(port), server.stop()
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and b'"total": 1' in body


def test_dotenv_never_overrides_the_real_environment(server_env, start, tmp_path):
    env_port, dotenv_port = free_port(), free_port()
    (tmp_path / ".env").write_text(f"PORT={dotenv_port}\nLOG_LEVEL=nonsense\n")
    server = start({**server_env, "PORT": str(env_port), "LOG_LEVEL": "info"}, cwd=str(tmp_path))
    assert server.wait_listening(env_port), server.stop()
    status, _ = get(f"http://127.0.0.1:{env_port}/healthz")
    assert status == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", dotenv_port), timeout=0.5).close()


def test_readme_configuration_table_lists_every_setting_with_its_help():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for f in dataclasses.fields(Settings):
        env, meta = f.metadata["env"], f.metadata
        row = re.search(rf"^\| `{env}` \| `[^`]*` \| (.*) \|$", readme, re.M)
        assert row, env
        assert row.group(1).removesuffix(" *(editable at run time)*") == meta["help"], env
