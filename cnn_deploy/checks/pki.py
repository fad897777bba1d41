"""A throwaway certificate authority for the TLS tests and `make compose-test` (the `cryptography`
package, in the dev extra): a CA, a server certificate for the loopback names and the compose
service name, and a client certificate, written as the files docker-compose.yml and the k8s Secret
use (ca.crt, tls.crt, tls.key, client.crt, client.key), keys 0600. Never for production: the CA key
is thrown away, the certificates last a day."""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cnn_deploy_core.secrets import write_private

SERVER_NAMES = ("localhost", "triton")
SERVER_IPS = ("127.0.0.1",)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _issue(subject: str, key, issuer: x509.Name, issuer_key, *, ca: bool, usage=None, names=(), ips=()):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names or ips:
        alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, name: str = "cnn-deploy test CA") -> Path:
    """ca.crt, tls.crt/tls.key (server: localhost, triton, 127.0.0.1), client.crt/client.key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(name, ca_key, _name(name), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "triton", server_key, ca.subject, ca_key, ca=False,
        usage=ExtendedKeyUsageOID.SERVER_AUTH, names=SERVER_NAMES, ips=SERVER_IPS,
    )  # fmt: skip
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("client", client_key, ca.subject, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    (directory / "ca.crt").write_bytes(_pem(ca))
    (directory / "tls.crt").write_bytes(_pem(server))
    write_private(directory / "tls.key", _key_pem(server_key))
    (directory / "client.crt").write_bytes(_pem(client))
    write_private(directory / "client.key", _key_pem(client_key))
    return directory


def compose_certificates(env: dict[str, str], uid: int = 1000) -> Path:
    """A throwaway PKI for docker-compose.yml's gRPC TLS: CNN_DEPLOY_TLS_DIR set in `env`, the keys
    owned by the containers' user (`uid`; they stay 0600), the directory readable by it."""
    directory = make_pki(Path(tempfile.mkdtemp(prefix="cnn-deploy-tls-")))
    directory.chmod(0o755)
    if os.geteuid() == 0:
        for key in ("tls.key", "client.key"):
            os.chown(directory / key, uid, uid)
    env["CNN_DEPLOY_TLS_DIR"] = str(directory)
    return directory
