"""The daemon over TLS (`--tls-cert/--tls-key`), as a client on another machine would use it:
GYRUS_ADDR=https://..., GYRUS_TOKEN and GYRUS_TLS_CA, with a self-signed certificate made here.
The daemon still listens on 127.0.0.1 only.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from e2e_helpers import EXAMPLES, Gyrus


def self_signed(dir: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gyrus test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir / "cert.pem", dir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(base)
    g = Gyrus(base / "home")
    g.env.update(
        GYRUS_ADDR=f"https://{g.addr}",
        GYRUS_TLS_CERT=str(cert),
        GYRUS_TLS_KEY=str(key),
        GYRUS_TLS_CA=str(cert),
        GYRUS_HEADER_TIMEOUT="3s",
    )
    g.cert = cert
    yield g
    g.teardown()


def test_deploy_and_predict_over_https(tls):
    g = tls
    proc = g.deploy(EXAMPLES / "hello")
    assert proc.returncode == 0, g.diag(proc=proc)
    info = g.get("hello")
    assert info["status"] == "live" and info["url"].startswith("https://127.0.0.1:"), info
    r = requests.post(info["url"], json={}, verify=str(g.cert), timeout=30)
    assert r.status_code == 200, r.text
    out = g.ok("predict", "hello", "{}").stdout
    assert out.strip(), out


def test_plain_http_and_untrusted_clients_get_nothing(tls):
    g = tls
    with pytest.raises(requests.RequestException):
        requests.get(f"http://{g.addr}/_gyrus/v1/health", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{g.addr}/_gyrus/v1/health", timeout=5)
    # The CLI without the certificate refuses the daemon rather than trusting it.
    env = dict(g.env)
    del env["GYRUS_TLS_CA"]
    other = Gyrus(g.home, port=g.port)
    other.env = env
    proc = other.run("get")
    assert proc.returncode == 1, other.diag(proc=proc)


def test_remote_client_needs_the_token(tls, tmp_path):
    """A client elsewhere has its own GYRUS_HOME (no token file): GYRUS_TOKEN is what lets it in."""
    g = tls
    remote = Gyrus(tmp_path / "remote-home", port=g.port)
    remote.env.update(GYRUS_ADDR=f"https://{g.addr}", GYRUS_TLS_CA=str(g.cert))
    proc = remote.run("get")
    assert proc.returncode == 1 and "GYRUS_TOKEN" in proc.stderr, remote.diag(proc=proc)
    remote.env["GYRUS_TOKEN"] = g.token()
    proc = remote.run("get", "hello")
    assert proc.returncode == 0 and "hello" in proc.stdout, remote.diag(proc=proc)
    r = requests.get(
        f"https://{g.addr}/_gyrus/v1/apis",
        headers={"Authorization": f"Bearer {g.token()}"},
        verify=str(g.cert),
        timeout=10,
    )
    assert r.status_code == 200 and [a["name"] for a in r.json()] == ["hello"], r.text


def test_a_stalled_handshake_is_dropped(tls):
    """A client that connects and never starts TLS is closed within the header timeout (3 s
    here); the daemon keeps answering meanwhile."""
    g = tls
    s = socket.create_connection(("127.0.0.1", g.port), timeout=20)
    try:
        started = time.monotonic()
        assert g.ok("get").returncode == 0
        s.settimeout(20)
        assert s.recv(10) == b""
        assert time.monotonic() - started < 10
    finally:
        s.close()
