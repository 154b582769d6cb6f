"""TLS through Ray Serve's `http_options` (ssl_keyfile, ssl_certfile) on the Python proxy ingress, as the
README shows it: tritonclient over HTTPS verifies the server's certificate and infers with a token; plain
HTTP on the same port gets no answer; the launcher refuses TLS with the HAProxy ingress, which has none."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import subprocess
import sys

import gevent.ssl
import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from runtime.auth.tokens import digest
from runtime.serve.launcher import LocalServe
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow  # a server of its own, about a minute

TOKEN = "tls-infer-token"


def self_signed(directory):
    """A certificate for 127.0.0.1 and its key, as files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certfile, keyfile


def tls_config(directory, repository, port: int):
    certfile, keyfile = self_signed(directory)
    (directory / "tokens.txt").write_text(f"infer {digest(TOKEN)}\n")
    doc = {
        "proxy_location": "EveryNode",
        "http_options": {
            "host": "127.0.0.1",
            "port": port,
            "ssl_certfile": str(certfile),
            "ssl_keyfile": str(keyfile),
        },
        "applications": [
            {
                "name": "trtserve",
                "route_prefix": "/",
                "import_path": "runtime.serve.app:build_app",
                "args": {
                    "repository": str(repository),
                    "models": [{"name": "cnn"}],
                    "auth": {"tokens_file": str(directory / "tokens.txt")},
                },
            }
        ],
    }
    path = directory / "serve.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, certfile


def test_tritonclient_over_https_with_a_token(built_repository, tmp_path):
    port = free_port()
    config, certfile = tls_config(tmp_path, built_repository, port)
    with LocalServe(config, ingress="proxy", log_path=tmp_path / "serve.log") as server:
        assert server.url == f"https://127.0.0.1:{port}"
        client = httpclient.InferenceServerClient(
            f"127.0.0.1:{port}",
            ssl=True,
            ssl_options={"ca_certs": str(certfile)},  # verified against this certificate, hostname included
            ssl_context_factory=gevent.ssl.create_default_context,
        )
        image = np.zeros((1, 3, 32, 32), dtype=np.float32)
        tensor = httpclient.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image, binary_data=True)
        result = client.infer("cnn", [tensor], headers={"Authorization": f"Bearer {TOKEN}"})
        assert result.as_numpy("logits").shape == (1, 10)
        assert client.is_server_ready()  # health stays open, over TLS too
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, OSError)):  # plain HTTP to a TLS port: no HTTP answer
            plain.request("GET", "/v2/health/ready")
            status = plain.getresponse().status
            raise OSError(f"plain HTTP was answered {status}")


def test_tls_with_the_haproxy_ingress_is_refused_before_anything_starts(built_repository, tmp_path):
    config, _ = tls_config(tmp_path, built_repository, free_port())
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", str(config), "--ingress", "haproxy"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "need the proxy ingress" in proc.stderr and "Traceback" not in proc.stderr
