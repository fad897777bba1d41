"""gRPC over TLS end to end: a throwaway CA (cnn_deploy/checks/pki.py), the real tritonserver serving with
its certificate (`serving up --tls-cert/--tls-key [--tls-client-ca]`), `clients verify` over
grpcs://, and the clients that must fail (no CA; no client certificate under mutual TLS) failing
with one clear line. The option checks and verdicts below need no server."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from clients import ClientError, ServerUnavailableError
from clients.tls import TlsError, TlsOptions, check_schemes, handshake_error, with_mutual_tls_hint
from cnn_deploy.checks.pki import make_pki
from serving import ServingError
from serving.triton import ServerOptions, TritonProcess, tls_args
from tests.conftest import run_cli

ARCH = "resnet18"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- options and verdicts, no server ---


def test_server_tls_takes_certificate_and_key_together(pki, tmp_path):
    with pytest.raises(ServingError, match="--tls-cert and --tls-key go together"):
        ServerOptions(tmp_path, tls_cert=pki / "tls.crt")
    with pytest.raises(ServingError, match="needs --tls-cert"):
        ServerOptions(tmp_path, tls_client_ca=pki / "ca.crt")


def test_server_refuses_a_world_readable_private_key(pki, tmp_path):
    key = tmp_path / "open.key"
    shutil.copy(pki / "tls.key", key)
    key.chmod(0o644)
    with pytest.raises(ServingError, match=r"readable by every user \(mode 0644\); .*chmod 600"):
        ServerOptions(tmp_path, tls_cert=pki / "tls.crt", tls_key=key)


def test_server_tls_flags_and_url(pki, tmp_path):
    opts = ServerOptions(tmp_path, tls_cert=pki / "tls.crt", tls_key=pki / "tls.key")
    assert opts.grpc_url.startswith("grpcs://") and opts.http_url.startswith("http://")
    assert tls_args(opts)[0] == "--grpc-use-ssl=true" and not any("mutual" in a for a in tls_args(opts))
    mutual = ServerOptions(
        tmp_path, tls_cert=pki / "tls.crt", tls_key=pki / "tls.key", tls_client_ca=pki / "ca.crt"
    )
    assert "--grpc-use-ssl-mutual=true" in tls_args(mutual)
    assert f"--grpc-root-cert={(pki / 'ca.crt').resolve()}" in tls_args(mutual)
    assert tls_args(ServerOptions(tmp_path)) == []


def test_client_tls_options_are_checked(pki, tmp_path):
    with pytest.raises(ClientError, match="go together"):
        TlsOptions(client_cert=pki / "client.crt")
    with pytest.raises(ClientError, match="does not exist"):
        TlsOptions(ca_cert=tmp_path / "missing.crt")
    with pytest.raises(ClientError, match="need grpcs://"):
        check_schemes(TlsOptions(ca_cert=pki / "ca.crt"), [False])
    check_schemes(TlsOptions(ca_cert=pki / "ca.crt"), [True])
    check_schemes(TlsOptions(), [False])


def test_the_handshake_verdict_says_no_to_other_failures():
    tls = TlsOptions()
    assert handshake_error("failed to connect to all addresses; Connection refused", "x", tls) is None
    assert handshake_error("Deadline Exceeded", "x", tls) is None
    untrusted = handshake_error("Ssl handshake failed: ... CERTIFICATE_VERIFY_FAILED", "grpcs://h:1", tls)
    assert isinstance(untrusted, TlsError) and "--ca-cert" in str(untrusted)
    refused = handshake_error("SSL_ERROR_SSL: tlsv13 alert certificate required", "grpcs://h:1", tls)
    assert "--client-cert" in str(refused)


def test_a_closed_socket_gets_the_mutual_tls_hint_only_without_a_client_certificate(pki):
    closed = ServerUnavailableError("Triton server at grpcs://h:1 is unreachable: Socket closed")
    hinted = with_mutual_tls_hint(closed, TlsOptions())
    assert isinstance(hinted, ServerUnavailableError) and "--client-cert" in str(hinted)  # still fails over
    with_cert = TlsOptions(client_cert=pki / "client.crt", client_key=pki / "client.key")
    assert with_mutual_tls_hint(closed, with_cert) is closed
    refused = ServerUnavailableError("Triton server at grpcs://h:1 is unreachable: Connection refused")
    assert with_mutual_tls_hint(refused, TlsOptions()) is refused


# --- the real server over TLS ---


@pytest.fixture(scope="module")
def tls_repository(tmp_path_factory) -> Path:
    """resnet18 only (random weights): a quick server to start twice."""
    from cnn_deploy_core.registry import get
    from export.build import build_all
    from serving.repository import CpuPlan, place_models

    models = tmp_path_factory.mktemp("tls-models")
    (job,) = build_all([get(ARCH)], output=models, weights="random")
    assert job.succeeded, job.error
    repo = tmp_path_factory.mktemp("tls-repo")
    place_models([get(ARCH)], models_dir=models, repository=repo, cpu=CpuPlan(1, 2))
    return repo


@pytest.fixture(scope="module", params=["tls", "mutual"])
def tls_server(request, tls_repository, pki, tmp_path_factory):
    mutual = request.param == "mutual"
    opts = ServerOptions.on_free_ports(
        tls_repository,
        admin_key="tls-test-admin-key",
        backend_dir=tmp_path_factory.mktemp("backends"),
        tls_cert=pki / "tls.crt",
        tls_key=pki / "tls.key",
        tls_client_ca=pki / "ca.crt" if mutual else None,
    )
    log = tmp_path_factory.mktemp("triton-tls") / "triton.log"
    server = TritonProcess(opts, log_path=log).start()
    try:
        server.wait_ready(timeout=300)
        yield opts, mutual
    except BaseException:
        print(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        server.stop()


def _verify(opts, repo, *tls: str):
    return run_cli(
        "clients", "verify", "--url", opts.grpc_url, "--repository", str(repo), "--model", ARCH,
        "--retries", "0", "--timeout", "60", *tls,
    )  # fmt: skip


def test_verify_passes_over_tls_with_the_ca(tls_server, tls_repository, pki):
    opts, mutual = tls_server
    client = ("--client-cert", str(pki / "client.crt"), "--client-key", str(pki / "client.key"))
    out = _verify(opts, tls_repository, "--ca-cert", str(pki / "ca.crt"), *(client if mutual else ()))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout and opts.grpc_url.startswith("grpcs://")


def _one_line(out) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1, out.stdout + out.stderr
    return lines[0]


def test_a_client_without_the_ca_fails_with_one_clear_line(tls_server, tls_repository):
    opts, _ = tls_server
    line = _one_line(_verify(opts, tls_repository))
    assert "TLS handshake" in line and "--ca-cert" in line, line


def test_a_client_without_a_certificate_is_refused_under_mutual_tls(tls_server, tls_repository, pki):
    opts, mutual = tls_server
    if not mutual:
        pytest.skip("only a mutual-TLS server asks for a client certificate")
    line = _one_line(_verify(opts, tls_repository, "--ca-cert", str(pki / "ca.crt")))
    assert "mutual TLS" in line and "--client-cert" in line, line


def test_a_plain_client_cannot_talk_to_the_tls_port(tls_server, tls_repository):
    opts, _ = tls_server
    plain = opts.grpc_url.replace("grpcs://", "grpc://")
    out = run_cli(
        "clients", "verify", "--url", plain, "--repository", str(tls_repository), "--model", ARCH,
        "--retries", "0", "--timeout", "20",
    )  # fmt: skip
    assert out.returncode == 1 and "PASS" not in out.stdout


def test_key_files_written_for_the_tests_are_private(pki):
    for name in ("tls.key", "client.key"):
        assert os.stat(pki / name).st_mode & 0o077 == 0


def test_a_short_load_test_over_tls(tls_server, tls_repository, pki, tmp_path):
    opts, mutual = tls_server
    client = ("--client-cert", str(pki / "client.crt"), "--client-key", str(pki / "client.key"))
    out = run_cli(
        "clients", "loadtest", "--url", opts.grpc_url, "--ca-cert", str(pki / "ca.crt"),
        *(client if mutual else ()), "--model", ARCH, "--repository", str(tls_repository),
        "--concurrency", "1", "--warmup-s", "0.5", "--window-s", "0.5", "--max-windows", "3",
        "--min-samples", "5", "--output", str(tmp_path), "--json", timeout=600,
    )  # fmt: skip
    assert out.returncode in (0, 99), out.stdout[-2000:] + out.stderr[-2000:]  # 99: only a p99 objective
    (step,) = json.loads(out.stdout)["steps"]
    assert step["verified"] > 0 and step["wrong"] == 0


# --- no plaintext side door: TLS beyond loopback keeps Triton's HTTP on loopback ---


def _this_machines_address() -> str | None:
    """A non-loopback address of this machine (no packet is sent), or None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_with_tls_beyond_loopback_http_listens_on_loopback_unless_asked(pki, tmp_path):
    from serving.triton import Wheel, command

    tls = {"tls_cert": pki / "tls.crt", "tls_key": pki / "tls.key"}
    wheel = Wheel(tmp_path)  # only the command line is looked at
    closed = ServerOptions(tmp_path, host="0.0.0.0", **tls)
    assert {"--http-address=127.0.0.1", "--grpc-address=0.0.0.0"} <= set(command(closed, wheel))
    assert closed.http_url.startswith("http://127.0.0.1:")
    opened = ServerOptions(tmp_path, host="0.0.0.0", http_plaintext=True, **tls)
    assert "--http-address=0.0.0.0" in command(opened, wheel)
    plain = ServerOptions(tmp_path, host="0.0.0.0")
    assert "--http-address=0.0.0.0" in command(plain, wheel)  # no TLS: as asked


@pytest.mark.integration
def test_a_tls_server_on_every_interface_serves_no_plaintext_http_beyond_loopback(pki, tmp_path):
    """Also: a server started without an admin key (as the tuner, the harness and gpu-check start
    theirs) still keeps its admin APIs behind one, made for it."""
    import urllib.error
    import urllib.request

    from serving.repository import place_identity
    from serving.triton import serve

    address = _this_machines_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    place_identity(tmp_path / "repo")
    opts = ServerOptions.on_free_ports(
        tmp_path / "repo", host="0.0.0.0", backend_dir=tmp_path / "backends",
        tls_cert=pki / "tls.crt", tls_key=pki / "tls.key",
    )  # fmt: skip
    with serve(opts, tmp_path / "triton.log", 120):
        with urllib.request.urlopen(f"http://127.0.0.1:{opts.http_port}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        with pytest.raises(OSError):  # refused: nothing listens there
            urllib.request.urlopen(f"http://{address}:{opts.http_port}/v2/models/identity", timeout=5)
        index = f"http://127.0.0.1:{opts.http_port}/v2/repository/index"
        with pytest.raises(urllib.error.HTTPError):  # no key: no loading models on it
            urllib.request.urlopen(urllib.request.Request(index, data=b"{}"), timeout=5)
        keyed = urllib.request.Request(index, data=b"{}", headers={"admin-key": opts.admin_key})
        with urllib.request.urlopen(keyed, timeout=5) as r:
            assert r.status == 200
