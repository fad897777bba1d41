"""Keys kept out of sight (docs/security.md): key files that others may read are refused, the
environment key goes only where it cannot be overheard, and the verdicts behind that say no. No
server needed here; tests/test_security_scan.py scans what a real run writes."""

from __future__ import annotations

import os

import pytest

from cnn_deploy_core.secrets import (
    SecretFileError,
    exposure,
    is_loopback,
    may_send_env_key,
    read_key_file,
    write_private,
)
from serving import ServingError
from tests.conftest import run_cli


def _key_file(tmp_path, mode: int, text: str = "s3cret-key\n"):
    path = tmp_path / f"key-{mode:o}"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_private_key_file_is_read_and_stripped(tmp_path):
    assert read_key_file(_key_file(tmp_path, 0o600)) == "s3cret-key"
    assert read_key_file(_key_file(tmp_path, 0o640)) == "s3cret-key"  # a Secret with defaultMode 0440


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666])
def test_a_world_readable_key_file_is_refused_with_the_fix(tmp_path, mode):
    with pytest.raises(SecretFileError, match=rf"readable by every user \(mode 0{mode:o}\); .*chmod 600"):
        read_key_file(_key_file(tmp_path, mode))


def test_unusable_key_files_are_refused(tmp_path):
    with pytest.raises(SecretFileError, match="does not exist"):
        read_key_file(tmp_path / "missing")
    with pytest.raises(SecretFileError, match="is empty"):
        read_key_file(_key_file(tmp_path, 0o600, "\n"))
    with pytest.raises(SecretFileError, match="may not contain"):
        read_key_file(_key_file(tmp_path, 0o600, "a,b=c"))  # would break Triton's flag syntax
    with pytest.raises(SecretFileError, match="not a file"):
        read_key_file(tmp_path)


def test_the_exposure_verdict_says_no():
    assert exposure(0o100600) is None and exposure(0o100640) is None
    assert exposure(0o100644) == "readable by every user"
    assert exposure(0o100602) == "writable by every user"


def test_private_files_are_private_from_the_start(tmp_path):
    path = write_private(tmp_path / "sub" / "k", "x")
    assert os.stat(path).st_mode & 0o077 == 0 and path.read_text() == "x"


@pytest.mark.parametrize(
    ("host", "tls", "allowed"),
    [
        ("127.0.0.1", False, True),
        ("localhost", False, True),
        ("::1", False, True),
        ("127.0.0.2", False, True),
        ("10.0.0.5", False, False),
        ("triton", False, False),
        ("triton", True, True),
        ("0.0.0.0", False, False),
    ],
)
def test_the_environment_key_goes_only_to_loopback_or_over_tls(host, tls, allowed):
    assert may_send_env_key(host, tls) is allowed
    assert is_loopback(host) is (allowed and not tls)


def test_serving_admin_key_comes_from_a_file_or_one_place_only(tmp_path, monkeypatch):
    from serving.local import admin_key

    monkeypatch.setenv("TRITON_ADMIN_KEY", "from-env")
    assert admin_key(None, _key_file(tmp_path, 0o600)) == "s3cret-key"
    assert admin_key(None) == "from-env"
    with pytest.raises(ServingError, match="not both"):
        admin_key("k", _key_file(tmp_path, 0o600))
    with pytest.raises(ServingError, match="chmod 600"):
        admin_key(None, _key_file(tmp_path, 0o644))


def test_serving_up_refuses_a_world_readable_admin_key_file_in_one_line(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    out = run_cli(
        "serving", "up", "--repository", str(repo), "--admin-key-file", str(_key_file(tmp_path, 0o644)),
        "--state-dir", str(tmp_path / "state"), timeout=120,
    )  # fmt: skip
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1 and "chmod 600" in lines[0], out.stderr
    assert "s3cret-key" not in out.stdout + out.stderr


def test_certificates_with_a_plain_url_are_one_clear_line(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked before the scheme")
    out = run_cli("clients", "verify", "--url", "grpc://127.0.0.1:1", "--ca-cert", str(ca), timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1 and "grpcs://" in lines[0], out.stderr


# --- keyed inference: the server's flags, the client's header, Triton's refusal ---


def test_keyed_inference_flags_put_only_the_chosen_apis_behind_the_key(tmp_path):
    from serving.triton import ServerOptions, key_args

    opts = ServerOptions(tmp_path, inference_key="k1", inference_apis="inference,statistics")
    assert key_args(opts) == [
        "--http-restricted-api=inference,statistics:api-key=k1",
        "--grpc-restricted-protocol=inference,statistics:api-key=k1",
    ]
    assert key_args(ServerOptions(tmp_path)) == []
    with pytest.raises(ServingError, match="choose from inference, metadata, model-config, statistics"):
        ServerOptions(tmp_path, inference_key="k1", inference_apis="inference,health")  # probes stay open


def test_the_inference_header_is_named_per_protocol(tmp_path):
    from clients.endpoints import parse_urls
    from clients.keys import inference_headers

    key = _key_file(tmp_path, 0o600)
    assert inference_headers(key, parse_urls("grpc://10.0.0.5:8001"), print) == {
        "triton-grpc-protocol-api-key": "s3cret-key"
    }  # a key file is the user's explicit choice: sent where they say
    assert inference_headers(key, parse_urls("http://127.0.0.1:8000"), print) == {"api-key": "s3cret-key"}


def test_the_environment_key_is_withheld_from_a_plaintext_remote_with_one_warning(monkeypatch):
    from clients.endpoints import parse_urls
    from clients.keys import from_env, inference_headers

    monkeypatch.setenv("TRITON_API_KEY", "env-key")
    said: list[str] = []
    assert inference_headers(None, parse_urls("grpc://10.0.0.5:8001"), said.append) is None
    assert len(said) == 1 and "not sent" in said[0] and "env-key" not in said[0]
    assert inference_headers(None, parse_urls("grpcs://10.0.0.5:8001"), said.append) == {
        "triton-grpc-protocol-api-key": "env-key"
    }
    assert (
        from_env("TRITON_API_KEY", parse_urls("grpc://127.0.0.1:8001,grpc://10.0.0.5:8001"), said.append)
        is None
    )
    monkeypatch.delenv("TRITON_API_KEY")
    assert (
        from_env("TRITON_API_KEY", parse_urls("grpc://10.0.0.5:8001"), said.append) is None and len(said) == 2
    )


def test_a_refusal_for_want_of_a_key_names_the_option_and_other_errors_are_left_alone():
    from clients.keys import KeyRequiredError, restricted_error

    api = restricted_error(
        "This protocol is restricted, expecting header 'triton-grpc-protocol-api-key'", "x"
    )
    assert isinstance(api, KeyRequiredError) and "--key-file" in str(api)
    admin = restricted_error("This API is restricted, expecting header 'admin-key'", "x")
    assert "--admin-key-file" in str(admin)
    assert restricted_error("failed to connect to all addresses", "x") is None


def test_keys_are_never_in_a_repr():
    from pathlib import Path

    from clients.loadtest.config import LoadTestConfig
    from serving.triton import ServerOptions

    opts = ServerOptions(Path("/tmp"), admin_key="admin-secret", inference_key="api-secret")
    config = LoadTestConfig("grpc://127.0.0.1:8001", "m", admin_key="admin-secret", api_key="api-secret")
    for text in (repr(opts), repr(config)):
        assert "admin-secret" not in text and "api-secret" not in text


def test_the_detached_supervisors_orders_keep_tls_paths(tmp_path):
    from cnn_deploy.checks.pki import make_pki
    from serving.supervisor import RestartPolicy, spec_from_json, spec_to_json
    from serving.triton import ServerOptions

    pki = make_pki(tmp_path / "pki")
    tls = {"tls_cert": pki / "tls.crt", "tls_key": pki / "tls.key", "tls_client_ca": pki / "ca.crt"}
    opts = ServerOptions(tmp_path, admin_key="k", **tls)
    (back,), _, _, _, verify = spec_from_json(spec_to_json([opts], [tmp_path / "log"], RestartPolicy(), 5.0))
    assert back == opts and back.grpc_url.startswith("grpcs://") and verify is True


def test_the_security_guides_commands_parse():
    import re
    import shlex

    from clients import cli as clients_cli
    from serving import cli as serving_cli
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "security.md").read_text()
    parsers = {"serving": serving_cli.build_parser(), "clients": clients_cli.build_parser()}
    found = re.findall(r"python -m (serving|clients) ([^\n`]*)", doc)
    assert {package for package, _ in found} == {"serving", "clients"}
    for package, args in found:
        parsers[package].parse_args(shlex.split(args, comments=True))


def test_a_generated_key_never_begins_with_a_dash(monkeypatch):
    """`--admin-key KEY` reads a key beginning with '-' as an option (one token_urlsafe in 64)."""
    import secrets

    from cnn_deploy_core.secrets import new_key
    from serving.local import admin_key

    drawn = iter(["-starts-with-dash", "--again", "fine-key"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert new_key() == "fine-key"
    drawn = iter(["-dash", "ok"])
    monkeypatch.delenv("TRITON_ADMIN_KEY", raising=False)
    assert admin_key(None) == "ok"


def test_every_server_options_carry_an_admin_key(tmp_path):
    from serving.triton import RESTRICTED, ServerOptions, Wheel, command

    opts = ServerOptions(tmp_path)  # as the tuner, the harness, drills and gpu-check make theirs
    assert opts.admin_key and not opts.admin_key.startswith("-")
    assert f"--http-restricted-api={RESTRICTED}:admin-key={opts.admin_key}" in command(opts, Wheel(tmp_path))
    assert opts.admin_key not in repr(opts)


def test_state_and_key_files_are_private_and_never_written_through_a_link(tmp_path):
    from cnn_deploy_core.secrets import write_private

    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    (tmp_path / "server.json").symlink_to(target)
    write_private(tmp_path / "server.json", "{}")
    assert target.read_text() == "untouched"  # the link was replaced, not followed
    assert (tmp_path / "server.json").read_text() == "{}" and not (tmp_path / "server.json").is_symlink()
    assert (tmp_path / "server.json").stat().st_mode & 0o777 == 0o600
