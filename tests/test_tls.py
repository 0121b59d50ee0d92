"""The relay over HTTPS, as against the real OpenRouter: the fake upstream served with TLS, its
certificate trusted through UPSTREAM_CA_BUNDLE (and refused without it)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from tests.conftest import assert_openai_error
from tests.fake_upstream import make_fake_app

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def cert_files(tmp_path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orpoll test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "upstream.pem", tmp_path / "upstream.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def upstream_url(io_loop, fake, cert_files):
    """The fake OpenRouter over HTTPS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert_files)
    sock, port = bind_unused_port()
    server = HTTPServer(make_fake_app(fake), ssl_options=context)
    server.add_sockets([sock])
    yield f"https://127.0.0.1:{port}/api/v1"
    server.stop()


@pytest.fixture
def trusted(env, cert_files):
    env["UPSTREAM_CA_BUNDLE"] = cert_files[0]


async def test_streams_answers_and_models_over_https(trusted, app, fake, sdk):
    """Streaming and buffered completions and the model list all go over TLS, verified
    against the bundle."""
    stream = await sdk.chat.completions.create(model="openai/gpt-4o", messages=MSG, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text
    answer = await sdk.chat.completions.create(model="openai/gpt-4o", messages=MSG)
    assert answer.choices[0].message.content
    models = await sdk.models.list()
    assert models.data and fake.models_calls == 1
    assert sum(fake.requests.values()) == 2


async def test_an_untrusted_upstream_certificate_is_refused(app, fake, api):
    """Without the bundle, the self-signed upstream fails verification: no request reaches
    it, and the client gets a 503 (the upstream's state, no key's) that says why."""
    resp = await api("/v1/chat/completions", {"model": "openai/gpt-4o", "messages": MSG})
    e = assert_openai_error(resp, 503)
    assert "certificate" in e["message"].lower()
    assert sum(fake.requests.values()) == 0
