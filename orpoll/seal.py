"""Secrets at rest: key material sealed with AES-256-GCM, and the files that hold secrets (the
session secret, the database) created readable by their owner alone."""

from __future__ import annotations

import hashlib
import os
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRET_FILE = "session_secret"


class Sealer:
    """AES-256-GCM for key material at rest. The AES key is scrypt(ENCRYPTION_KEY, a random
    per-database salt); the key id is the associated data, so a sealed row cannot be moved."""

    def __init__(self, passphrase: str, salt: bytes) -> None:
        aes = hashlib.scrypt(passphrase.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
        self.aead = AESGCM(aes)

    def seal(self, text: str, kid: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, text.encode(), kid.encode())

    def open(self, blob: bytes, kid: str) -> str:
        return self.aead.decrypt(blob[:12], blob[12:], kid.encode()).decode()


def private_file(path: str) -> None:
    """Create ``path`` with mode 0600 if missing (SQLite gives its WAL files the same mode)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def ensure_secret(data_dir: str, name: str = SECRET_FILE) -> str:
    """A random secret kept in ``DATA_DIR/name`` (mode 0600), generated on first use."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = os.path.join(data_dir, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as f:
            return f.read().strip()
    with os.fdopen(fd, "w") as f:
        value = secrets.token_urlsafe(48)
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    return value
