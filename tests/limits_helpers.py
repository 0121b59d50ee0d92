"""Helpers for tests of the process under limits.

- ``run_with_fd_limit(env, tmp_path, limit)``: ``python run.py`` with a lowered open-file limit
"""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

from tests.admin_helpers import run_py


def run_with_fd_limit(
    env: dict[str, str], tmp_path: Path, limit: int
) -> tuple[subprocess.Popen, str, int, Path]:
    """``python run.py`` with ``env`` under an open-file limit of ``limit``: (the process, its
    base URL, its port, its log file)."""

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    log_path = tmp_path / "orpoll.log"
    with open(log_path, "wb") as log:
        proc, url = run_py(
            env, str(tmp_path), stdout=log, stderr=subprocess.STDOUT, preexec_fn=low_limit
        )
    return proc, url, int(url.rsplit(":", 1)[1]), log_path
