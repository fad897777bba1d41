"""TLS for the clients: `grpcs://` (and `https://`) URLs with the CA to trust and, for mutual TLS, a
client certificate and key (docs/security.md).

    TritonClient("grpcs://triton:8001", tls=TlsOptions(ca_cert=Path("ca.crt")))

Without `ca_cert` the system's trust store is used (a publicly signed certificate, e.g. at an
ingress). A failed handshake is a :class:`TlsError` naming what to fix, not "unreachable": retrying
it, or failing over to a replica with the same certificate, cannot help.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from clients import ClientError
from cnn_deploy_core.secrets import SecretFileError, check_private, check_readable


class TlsError(ClientError):
    """The TLS handshake failed (an untrusted server certificate, a missing client certificate)."""


@dataclass(frozen=True)
class TlsOptions:
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def __post_init__(self) -> None:
        if bool(self.client_cert) != bool(self.client_key):
            raise ClientError("--client-cert and --client-key go together: give both, or neither")
        try:
            if self.ca_cert:
                check_readable(self.ca_cert, "CA certificate")
            if self.client_cert:
                check_readable(self.client_cert, "client certificate")
                check_private(self.client_key, "client private key")
        except SecretFileError as e:
            raise ClientError(str(e)) from None

    @property
    def given(self) -> bool:
        return bool(self.ca_cert or self.client_cert)

    def grpc_kwargs(self) -> dict:
        """tritonclient.grpc(.aio).InferenceServerClient's TLS keywords (it reads the files)."""
        kw: dict = {"ssl": True}
        if self.ca_cert:
            kw["root_certificates"] = str(self.ca_cert)
        if self.client_cert:
            kw["certificate_chain"], kw["private_key"] = str(self.client_cert), str(self.client_key)
        return kw

    def grpc_credentials(self):
        """grpc.ChannelCredentials for a raw grpc.aio channel (the load generator's)."""
        import grpc

        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_cert),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """For HTTPS (tritonclient.http.aio takes an SSLContext)."""
        context = ssl.create_default_context(cafile=str(self.ca_cert) if self.ca_cert else None)
        if self.client_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


NO_TLS = TlsOptions()


def check_schemes(tls: TlsOptions, secure: list[bool]) -> None:
    """Certificates with a plaintext URL would be silently unused: say so instead."""
    if tls.given and not all(secure):
        raise ClientError("--ca-cert/--client-cert need grpcs:// (or https://) URLs; a grpc:// URL is plain")


# What gRPC core and OpenSSL say when a handshake fails; any of them means TLS, not the network.
_HANDSHAKE = (
    "handshake",
    "certificate_verify_failed",
    "certificate verify failed",
    "ssl_error",
    "tlsv1 alert",
    "tlsv13 alert",
    "wrong_version_number",
    "certificate required",
)


def handshake_error(message: str, where: object, tls: TlsOptions) -> TlsError | None:
    """A TlsError saying what to check, when `message` is a failed TLS handshake (verdict)."""
    lowered = message.lower()
    if not any(marker in lowered for marker in _HANDSHAKE):
        return None
    if "alert" in lowered or "certificate required" in lowered:
        hint = (
            "the server refused this client: it wants a client certificate its CA signed "
            "(--client-cert/--client-key)"
            if not tls.client_cert
            else "the server refused this client's certificate (--client-cert): is it signed by the CA "
            "the server trusts?"
        )
    elif "wrong_version_number" in lowered:
        hint = "the server does not speak TLS on this port: use grpc:// (or turn TLS on in the server)"
    else:
        hint = (
            "the server's certificate is not trusted: give the CA that signed it with --ca-cert"
            if not tls.ca_cert
            else f"the server's certificate is not signed by {tls.ca_cert}, or does not name this host"
        )
    return TlsError(f"TLS handshake with {where} failed: {hint}")


def with_mutual_tls_hint(error: ClientError, tls: TlsOptions) -> ClientError:
    """Under TLS 1.3 a server that wants a client certificate closes the connection only after the
    client's side of the handshake is done, so the client sees "Socket closed", as it would from a
    server going away. That stays a (fail-over-able) unreachable error, with the likely cause said."""
    if tls.client_cert or "socket closed" not in str(error).lower():
        return error
    return type(error)(
        f"{error} (if the server requires mutual TLS, give a client certificate its CA signed: "
        "--client-cert/--client-key)"
    )


def add_tls_arguments(parser) -> None:
    parser.add_argument(
        "--ca-cert",
        type=Path,
        default=None,
        help="grpcs:// (and https://): the CA certificate (PEM) to check the server's certificate "
        "against (default: the system's trust store)",
    )
    parser.add_argument(
        "--client-cert", type=Path, default=None, help="mutual TLS: this client's certificate (PEM)"
    )
    parser.add_argument(
        "--client-key", type=Path, default=None, help="mutual TLS: this client's private key (PEM, chmod 600)"
    )


def tls_from_args(args) -> TlsOptions:
    return TlsOptions(
        ca_cert=getattr(args, "ca_cert", None),
        client_cert=getattr(args, "client_cert", None),
        client_key=getattr(args, "client_key", None),
    )
