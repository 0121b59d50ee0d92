"""Helpers for the cluster tests: a real redis-server in a temporary directory, and polling
one instance until it shows what another was told.

- ``RedisServer``: ``redis-server`` on a free loopback port and a unix socket, with its own
  dir (default persistence), optionally a password (AUTH) and TLS only (``rediss://``, a
  self-signed certificate the URL names as its CA); ``kill()`` is kill -9,
  ``start()`` starts it again on the same port and dir
- ``until(fn, timeout)``: poll ``fn`` until it returns a true value; returns (value, seconds)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.admin_helpers import SyncAdmin, free_port

T = TypeVar("T")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, directory: str, password: str = "", tls: bool = False) -> None:
        self.dir, self.password, self.tls = directory, password, tls
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        os.makedirs(directory, exist_ok=True)
        if tls:
            self_signed(os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "redis.sock")

    @property
    def unix_url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            ca = os.path.join(self.dir, "cert.pem")
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        if self.tls:  # TLS only, on the same port
            cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
            args = [
                REDIS_SERVER,
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--bind",
                "127.0.0.1",
            ]
            args += ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert]
            args += ["--tls-auth-clients", "no"]
        args += ["--dir", self.dir, "--daemonize", "no", "--logfile", "redis.log"]
        if self.password:
            args += ["--requirepass", self.password]
        args += ["--unixsocket", self.socket, "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def until(fn: Callable[[], T], timeout: float = 5.0, step: float = 0.02) -> tuple[T, float]:
    """Poll ``fn`` until it returns a true value; (that value, seconds it took)."""
    start = time.monotonic()
    while True:
        value = fn()
        if value:
            return value, time.monotonic() - start
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {value!r}"
        time.sleep(step)


def key_rows(admin: SyncAdmin) -> dict[str, dict[str, Any]]:
    """Every key row of the instance's /admin/key-status, by id."""
    rows, page = {}, 1
    while True:
        data = admin.ok("GET", f"/admin/key-status?limit=500&page={page}")
        rows.update({row["id"]: row for row in data["keys"]})
        if page >= data["total_pages"]:
            return rows
        page += 1


def self_signed(cert_path: str, key_path: str) -> None:
    """A certificate for 127.0.0.1 that is its own CA (the client trusts it by file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
