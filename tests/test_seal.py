"""seal.py: key material sealed with AES-GCM and bound to its key id, and private secret
files."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.exceptions import InvalidTag

from orpoll.seal import Sealer, ensure_secret, private_file


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


def test_session_secret_is_generated_once_and_private(data_dir):
    first = ensure_secret(data_dir)
    assert len(first) >= 40
    assert ensure_secret(data_dir) == first
    assert mode(os.path.join(data_dir, "session_secret")) == 0o600


def test_a_sealed_key_opens_only_with_its_passphrase_and_id():
    salt = os.urandom(16)
    blob = Sealer("passphrase", salt).seal("sk-or-v1-secret", "kid1")
    assert b"sk-or-v1-secret" not in blob
    assert Sealer("passphrase", salt).open(blob, "kid1") == "sk-or-v1-secret"
    with pytest.raises(InvalidTag):
        Sealer("other", salt).open(blob, "kid1")
    with pytest.raises(InvalidTag):  # a sealed row moved to another key's id
        Sealer("passphrase", salt).open(blob, "kid2")


def test_sealing_twice_gives_different_bytes():
    sealer = Sealer("passphrase", os.urandom(16))
    assert sealer.seal("sk-or-v1-x", "k") != sealer.seal("sk-or-v1-x", "k")


def test_a_private_file_is_made_owner_only_even_if_it_existed(tmp_path):
    path = str(tmp_path / "db")
    with open(path, "w") as f:
        f.write("x")
    os.chmod(path, 0o644)
    private_file(path)
    assert mode(path) == 0o600
    with open(path) as f:
        assert f.read() == "x"  # left as it was
