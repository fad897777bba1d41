"""Keys stay secret through a real run, and keyed inference holds (docs/security.md).

One server started as a user would (`serving up --detach` with `--admin-key-file`,
`--inference-key-file` and gRPC TLS from a throwaway CA), then verify and a short load test (shared
memory: the admin key is used), `serving status`, `serving down`. Every file the run wrote is
scanned for both keys: only the files that exist to hold a key (the key files, not the server's
record) may contain one, and they must be private. Without the inference key, inference is refused
with an error naming --key-file; with it (file, or $TRITON_API_KEY to loopback), the answers are
exact (verify against the golden set)."""

from __future__ import annotations

import json
import os

import pytest

from cnn_deploy.checks.pki import make_pki
from cnn_deploy_core.registry import get
from tests.conftest import port_args, run_cli
from tests.leaks import leaks, printed

ARCH = "resnet18"
ADMIN_KEY = "admin-3f9c1e7a5b2d4c6e"
API_KEY = "infer-8b1d2e4f6a7c9e0b"


def test_the_leak_scan_says_no(tmp_path):
    (tmp_path / "report.json").write_text(f'{{"command": "--admin-key {ADMIN_KEY}"}}')
    (tmp_path / "server.json").write_text(f'{{"admin_key": "{ADMIN_KEY}"}}')
    (tmp_path / "server.json").chmod(0o600)  # private, but a record is no place for a key
    (tmp_path / "admin.key").write_text(ADMIN_KEY)
    (tmp_path / "admin.key").chmod(0o644)
    assert leaks(tmp_path, (ADMIN_KEY,)) == ["admin.key (0644)", "report.json (0644)", "server.json (0600)"]
    (tmp_path / "report.json").unlink()
    (tmp_path / "server.json").write_text('{"admin_key_file": "admin.key"}')
    (tmp_path / "admin.key").chmod(0o600)
    assert leaks(tmp_path, (ADMIN_KEY,)) == []


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """A detached server with both keys from files; everything it and the clients write is under
    one folder (the state dir and the reports)."""
    from export.build import build_all
    from serving.repository import CpuPlan, place_models

    root = tmp_path_factory.mktemp("scan")
    (job,) = build_all([get(ARCH)], output=root / "models", weights="random")
    assert job.succeeded, job.error
    repo = root / "repo"
    place_models([get(ARCH)], models_dir=root / "models", repository=repo, cpu=CpuPlan(1, 2))
    keys = root / "keys"
    keys.mkdir()
    for name, key in (("admin.key", ADMIN_KEY), ("api.key", API_KEY)):
        (keys / name).write_text(key + "\n")
        (keys / name).chmod(0o600)
    pki = make_pki(root / "pki")
    ports, grpc = port_args()
    state = root / "state"
    up = run_cli(
        "serving", "up", "--detach", "--repository", str(repo), "--state-dir", str(state), *ports,
        "--admin-key-file", str(keys / "admin.key"), "--inference-key-file", str(keys / "api.key"),
        "--tls-cert", str(pki / "tls.crt"), "--tls-key", str(pki / "tls.key"), timeout=600,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield {"root": root, "repo": repo, "keys": keys, "state": state, "url": f"grpcs://127.0.0.1:{grpc}",
               "tls": ("--ca-cert", str(pki / "ca.crt")), "outputs": [up]}  # fmt: skip
    finally:
        run_cli("serving", "down", "--state-dir", str(state), timeout=120)


def _verify(server, *extra: str, env: dict | None = None):
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        out = run_cli(
            "clients", "verify", "--url", server["url"], "--repository", str(server["repo"]),
            "--model", ARCH, "--retries", "0", *server["tls"], *extra, timeout=300,
        )  # fmt: skip
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    server["outputs"].append(out)
    return out


def test_inference_without_the_key_is_refused_in_one_clear_line(keyed_server):
    out = _verify(keyed_server, "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    # A refusal of the server itself ends the whole command in one line, not a row per model.
    (line,) = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert "requires a key" in line and "--key-file" in line, out.stderr
    assert "Traceback" not in out.stderr and not out.stdout.strip()


def test_inference_with_the_key_file_answers_exactly(keyed_server):
    out = _verify(keyed_server, "--key-file", str(keyed_server["keys"] / "api.key"), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(r["passed"] for r in json.loads(out.stdout))


def test_the_environment_key_goes_to_loopback(keyed_server):
    out = _verify(keyed_server, env={"TRITON_API_KEY": API_KEY})
    assert out.returncode == 0 and "PASS" in out.stdout, out.stdout + out.stderr


def test_a_short_load_test_with_both_keys(keyed_server):
    out = run_cli(
        "clients", "loadtest", "--url", keyed_server["url"], *keyed_server["tls"], "--model", ARCH,
        "--concurrency", "1",
        "--warmup-s", "0.5", "--window-s", "0.5", "--max-windows", "3", "--min-samples", "5",
        "--shared-memory", "system", "--admin-key-file", str(keyed_server["keys"] / "admin.key"),
        "--key-file", str(keyed_server["keys"] / "api.key"), "--repository", str(keyed_server["repo"]),
        "--output", str(keyed_server["root"] / "reports"), timeout=600,
    )  # fmt: skip
    keyed_server["outputs"].append(out)
    assert out.returncode in (0, 99), out.stdout[-3000:] + out.stderr[-3000:]
    assert any((keyed_server["root"] / "reports").iterdir())


def test_no_key_in_any_file_or_output_of_the_run(keyed_server):
    status = run_cli("serving", "status", "--state-dir", str(keyed_server["state"]), "--json", timeout=120)
    keyed_server["outputs"].append(status)
    assert json.loads(status.stdout)["admin_key_in_server_argv"] is True  # said, not hidden
    text = run_cli("serving", "status", "--state-dir", str(keyed_server["state"]), timeout=120)
    keyed_server["outputs"].append(text)
    assert "admin key in its own command line" in text.stdout.replace("\n", " ")
    assert "admin key in its own command line" in keyed_server["outputs"][0].stdout.replace("\n", " ")  # up
    running = leaks(keyed_server["root"], (ADMIN_KEY, API_KEY))  # the record names the key's file only
    assert running == [] and (keyed_server["state"] / "admin.key").stat().st_mode & 0o077 == 0
    down = run_cli("serving", "down", "--state-dir", str(keyed_server["state"]), timeout=120)
    keyed_server["outputs"].append(down)
    assert leaks(keyed_server["root"], (ADMIN_KEY, API_KEY)) == []
    assert not (keyed_server["state"] / "admin.key").exists()  # `down` removed the server's copy
    assert printed(keyed_server["outputs"], (ADMIN_KEY, API_KEY)) == []
