"""The README's password recovery, done as written: a lost generated password is replaced
(through ADMIN_PASSWORD, or by deleting the stored hash with the README's command)."""

from __future__ import annotations

import os
import re
import subprocess

from tests.admin_helpers import ROOT, SyncAdmin, child_env

KEY = "sk-or-v1-test-aaaa1111"
GENERATED = re.compile(r"admin password generated \(.*?\): (\S+)  -- sign in")


def generated_password(proc) -> str:
    (password,) = GENERATED.findall(proc.log())
    return password


def login_status(url: str, password: str) -> int:
    return SyncAdmin(url).call("POST", "/admin/login", {"password": password})[0]


def readme_reset_command() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Password recovery", 1)[1].split("\n## ", 1)[0]
    (command,) = [line.strip() for line in section.splitlines() if "DELETE FROM meta" in line]
    return command


def test_a_lost_generated_password_is_reset_by_the_readme_command(upstream, spawn, tmp_path):
    env = child_env(upstream, str(tmp_path / "data"), OPENROUTER_API_KEYS=KEY)
    first = spawn(env)
    lost = generated_password(first)
    admin = SyncAdmin(first.url)
    admin.login(lost)
    assert admin.call("GET", "/admin/key-status")[0] == 200
    assert first.stop() == 0

    # The README's command runs from the checkout, where DATA_DIR is ./data.
    subprocess.run(["sh", "-c", readme_reset_command()], cwd=tmp_path, check=True, timeout=30)

    second = spawn(env)
    new = generated_password(second)
    assert new != lost
    assert login_status(second.url, lost) == 401
    admin.base = second.url  # the same cookie (cookies do not depend on the port)
    assert admin.call("GET", "/admin/key-status")[0] == 401  # the old session is gone too
    assert login_status(second.url, new) == 200


def test_admin_password_replaces_a_lost_one_and_stays_once_removed(upstream, spawn, tmp_path):
    env = child_env(upstream, str(tmp_path / "data"), OPENROUTER_API_KEYS=KEY)
    first = spawn(env)
    lost = generated_password(first)
    assert first.stop() == 0

    chosen = "a-new-long-admin-password"
    second = spawn({**env, "ADMIN_PASSWORD": chosen})
    assert login_status(second.url, lost) == 401
    assert login_status(second.url, chosen) == 200  # this login stores its hash
    assert second.stop() == 0

    third = spawn(env)  # ADMIN_PASSWORD removed again
    assert "admin password generated" not in third.log()
    assert login_status(third.url, chosen) == 200
    assert login_status(third.url, lost) == 401
