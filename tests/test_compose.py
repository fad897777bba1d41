"""docker-compose.yml, the Dockerfile and docs/deploy-gpu.md, checked without a Docker engine.

The Compose file is interpolated the way Docker Compose does it, then validated against the
Compose Specification schema that Docker Compose embeds (tests/data/compose-spec.json, from
compose-spec/compose-go v2.13.0, Apache-2.0). Its commands, paths, ports and image tag are then
checked against the code they run: the export CLI, serving/triton_side/engines.py, the serving
constants, the clients CLI and the `tritonserver` binary in the nvidia-pytriton wheel.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
DOC = ROOT / "docs" / "deploy-gpu.md"
CPU_DOC = ROOT / "docs" / "deploy-cpu.md"
SECURITY_DOC = ROOT / "docs" / "security.md"
ENV = {"TRITON_ADMIN_KEY": "test-admin-key"}
REPOSITORY_SOURCE = "./model_repository"
# NGC release -> Triton server version, from Triton's build.py TRITON_VERSION_MAP at the server's
# release tag (v2.51.0: "2.51.0": ("24.10", ...)) and the release notes. Add a row when moving the tag.
NGC_RELEASE_TO_SERVER = {"24.10": "2.51.0"}


# --- Compose's variable interpolation (compose-go's template package), enough for this file ---


class MissingVariable(Exception):
    pass


_VARIABLE = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([_A-Za-z][_A-Za-z0-9]*))")
_OPERATORS = (":?", "?", ":-", "-", ":+", "+")  # the one found first in the expression applies


def substitute(text: str, env: dict[str, str]) -> str:
    def replace(m: re.Match) -> str:
        if m.group(1):
            return "$"
        if m.group(3):
            return env.get(m.group(3), "")
        expr = m.group(2)
        found = [(expr.find(op), i, op) for i, op in enumerate(_OPERATORS) if op in expr]
        if not found:
            return env.get(expr, "")
        at, _, op = min(found)
        name, arg = expr[:at], expr[at + len(op) :]
        is_set, value = name in env, env.get(name, "")
        present = bool(value) if op.startswith(":") else is_set
        if op.endswith("?"):
            if not present:
                raise MissingVariable(f"{name}: {substitute(arg, env)}")
            return value
        if op.endswith("-"):
            return value if present else substitute(arg, env)
        return substitute(arg, env) if present else ""

    return _VARIABLE.sub(replace, text)


def interpolate(node, env: dict[str, str]):
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    return substitute(node, env) if isinstance(node, str) else node


def load_compose(env: dict[str, str] | None = None) -> dict:
    """The Compose file as Compose sees it: YAML (anchors, merge keys), then interpolated."""
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), ENV if env is None else env)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def schema_errors(document: dict) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    checker = jsonschema.FormatChecker()

    @checker.checks("duration", raises=ValueError)
    def _go_duration(value) -> bool:  # compose-go registers Go's time.ParseDuration as "duration"
        if not isinstance(value, str):
            return True
        if not re.fullmatch(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+|0", value):
            raise ValueError(f"{value!r} is not a Go duration")
        return True

    validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def command_args(service: dict) -> list[str]:
    """A service's command as Compose runs it: a string is split like a shell would."""
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def flags(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only), for the short and the long volume syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
        else:
            out[v["target"]] = (v["source"], bool(v.get("read_only")))
    return out


def mount_target(service: dict, source: str) -> str:
    targets = [t for t, (s, _) in mounts(service).items() if s == source]
    assert len(targets) == 1, f"expected one mount of {source}, got {mounts(service)}"
    return targets[0]


# --- The file against the Compose Specification ---


def test_compose_file_matches_the_compose_specification(compose):
    assert schema_errors(compose) == []


def test_schema_check_catches_a_misspelled_key(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["triton"]["healthchek"] = broken["services"]["triton"].pop("healthcheck")
    assert any("healthchek" in e for e in schema_errors(broken))


def test_triton_admin_key_is_required():
    with pytest.raises(MissingVariable, match="TRITON_ADMIN_KEY: set TRITON_ADMIN_KEY"):
        load_compose(env={})


def test_interpolation_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    text = "${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$SET ${SET:+alt}"
    assert substitute(text, env) == "v d  d $SET alt"
    assert substitute("${UNSET:---all}", env) == "--all"


@pytest.mark.skipif(not shutil.which("docker"), reason="no docker CLI")
def test_docker_compose_config_accepts_the_file(tmp_path):
    """Where the Compose v2 plugin is installed (it needs no engine for `config`), ask it too."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here")
    proc = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


# --- The Triton image ---


def test_engines_and_triton_run_one_pinned_triton_image(services):
    text = COMPOSE_FILE.read_text()
    assert len(re.findall(r"^\s+(image|TRITON_IMAGE): \*triton-image\s*$", text, re.MULTILINE)) == 2, (
        "engines and triton must both use the x-triton-image anchor: a plan loads only where it was built"
    )
    image = services["engines"]["image"]
    build = services["triton"]["build"]  # the server: that image plus Pillow (Dockerfile, triton-gpu)
    assert build["target"] == "triton-gpu" and build["args"]["TRITON_IMAGE"] == image
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", image), image


def _wheel_tritonserver_version(tmp_path: Path) -> str:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("nvidia-pytriton is not installed; it is a project dependency")
    package = Path(next(iter(spec.submodule_search_locations)))
    binary = package / "tritonserver" / "bin" / "tritonserver"
    libs = package.parent / "nvidia_pytriton.libs"
    library_path = os.pathsep.join(filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH")]))
    env = {**os.environ, "LD_LIBRARY_PATH": library_path}
    # The server prints its metadata table, then stops at the missing repository (in well under a second).
    proc = subprocess.run(
        [
            str(binary),
            f"--model-repository={tmp_path / 'missing'}",
            "--exit-on-error=true",
            "--allow-http=false",
            "--allow-grpc=false",
            "--allow-metrics=false",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    found = re.search(r"^\|\s*server_version\s*\|\s*(\S+)\s*\|", proc.stdout + proc.stderr, re.MULTILINE)
    assert found, f"no server_version in `tritonserver` output:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return found.group(1)


def test_triton_image_is_the_server_version_of_the_pytriton_wheel(services, tmp_path):
    release = re.search(r":(\d\d\.\d\d)-py3$", services["engines"]["image"]).group(1)
    assert release in NGC_RELEASE_TO_SERVER, (
        f"add {release}'s server version to NGC_RELEASE_TO_SERVER (Triton release notes / build.py)"
    )
    assert _wheel_tritonserver_version(tmp_path) == NGC_RELEASE_TO_SERVER[release], (
        "the compose image and the nvidia-pytriton wheel must run the same Triton server"
    )


# --- What each service runs, against the code ---


def _export_commands(service: dict) -> tuple[list[str], list[str]]:
    """The export service's `sh -c "python -m export build … && python -m serving repo …"`."""
    args = command_args(service)
    assert args[:2] == ["sh", "-c"] and len(args) == 3
    export, repo = (shlex.split(part) for part in args[2].split("&&"))
    return export, repo


def test_export_command_parses_with_the_export_and_serving_clis(services):
    from cnn_deploy_core import registry
    from export.cli import build_parser
    from serving import cli as serving_cli

    service = services["export"]
    export, repo = _export_commands(service)
    assert export[:3] == ["python", "-m", "export"] and repo[:3] == ["python", "-m", "serving"]
    ns = build_parser().parse_args(export[3:])
    assert ns.command == "build" and ns.all and ns.architectures == []
    assert ns.weights == "imagenet"
    assert str(ns.output).startswith("/work/build/")
    placed = serving_cli.build_parser().parse_args(repo[3:])
    assert placed.command == "repo" and placed.all
    assert placed.tensorrt, "--tensorrt: the engines service builds plans for the <name>_trt models"
    assert str(placed.models) == str(ns.output), "serving repo places what the export wrote"
    assert str(placed.repository) == mount_target(service, REPOSITORY_SOURCE)
    assert re.search(r"chmod 1777 [^\n]*/work/build\b", DOCKERFILE.read_text()), (
        "the export's output directory must be writable by any UID the service runs as"
    )

    chosen = load_compose({**ENV, "CNN_DEPLOY_MODELS": "resnet50 alexnet"})["services"]["export"]
    for args, parser in zip(
        _export_commands(chosen), (build_parser(), serving_cli.build_parser()), strict=True
    ):
        ns = parser.parse_args(args[3:])
        assert [a.name for a in registry.resolve(ns.architectures, all_=ns.all)] == ["resnet50", "alexnet"]


def test_export_caches_torch_hub_downloads_in_a_named_volume(compose, services):
    torch_home = re.search(r"TORCH_HOME=(\S+)", DOCKERFILE.read_text()).group(1)
    source, _ = mounts(services["export"])[torch_home]
    assert source in compose["volumes"]


def test_engines_service_runs_this_repositorys_script(compose, services):
    from serving.triton_side import engines

    service = services["engines"]
    args = command_args(service)
    assert args[0] == "python3", "the Triton image's own interpreter"
    script = Path(args[1])
    serving_mount = mount_target(service, "./serving")
    assert mounts(service)[serving_mount][1], "./serving is mounted read-only"
    script_here = ROOT / "serving" / script.relative_to(serving_mount)
    assert script_here == ROOT / "serving" / "triton_side" / "engines.py"

    ns = engines.build_parser().parse_args(args[2:])
    assert str(ns.repository) == mount_target(service, REPOSITORY_SOURCE)
    assert not mounts(service)[str(ns.repository)][1], "engines writes the plans into the repository"
    cache = mount_target(services["triton"], "trt-cache")
    assert str(ns.cache_dir) == cache == mount_target(service, "trt-cache")
    assert ns.cache_owner == services["triton"]["user"], "the cache must be writable by the server's user"
    assert service["user"] == "0:0", "chown of the cache volume needs root"
    assert "trt-cache" in compose["volumes"]


def test_triton_serves_the_gpu_configs_of_the_mounted_repository(services):
    service = services["triton"]
    args = command_args(service)
    assert args[0] == "tritonserver"
    f = flags(args)
    repo = f["--model-repository"]
    assert mount_target(service, REPOSITORY_SOURCE) == repo
    assert mounts(service)[repo][1], "the server mounts the repository read-only"
    assert f["--model-control-mode"] == "explicit" and f["--load-model"] == "*"
    assert f["--strict-readiness"] == "true"

    from serving import repository
    from serving.config import GPU

    assert f["--model-config-name"] == GPU
    assert mount_target(service, "trt-cache") == repository.TRT_CACHE_ROOT, (
        "gpu configs point ONNX Runtime's TensorRT cache at TRT_CACHE_ROOT/<model>"
    )


def test_triton_restricts_the_admin_apis_like_the_local_server(services):
    from serving import triton

    f = flags(command_args(services["triton"]))
    expected = f"{triton.RESTRICTED}:{triton.ADMIN_HEADER}={ENV['TRITON_ADMIN_KEY']}"
    assert f["--http-restricted-api"] == expected
    assert f["--grpc-restricted-protocol"] == expected


def test_triton_publishes_its_three_ports(services):
    service = services["triton"]
    f = flags(command_args(service))
    ports = {f[k] for k in ("--http-port", "--grpc-port", "--metrics-port")}
    assert {p.split(":")[-1] for p in service["ports"]} == ports


def published_addresses(service: dict) -> set[str]:
    """The host addresses a service's ports are published on ("0.0.0.0" when none is given:
    Docker then publishes on every interface)."""
    out = set()
    for port in service.get("ports", []):
        parts = str(port).split(":")
        out.add(":".join(parts[:-2]) if len(parts) > 2 else "0.0.0.0")
    return out


def test_nothing_is_published_beyond_loopback_by_default(services):
    exposed = {name: published_addresses(s) for name, s in services.items() if s.get("ports")}
    assert exposed == {"triton": {"127.0.0.1"}, "prometheus": {"127.0.0.1"}}
    assert all(s.get("network_mode") == "host" for n, s in services.items() if n.endswith("-cpu"))
    assert "--host=127.0.0.1" in command_args(services["triton-cpu"])


def test_the_bind_addresses_are_the_operators_choice():
    env = {**ENV, "CNN_DEPLOY_BIND_ADDRESS": "10.0.0.5", "CNN_DEPLOY_PROMETHEUS_BIND_ADDRESS": "10.0.0.6"}
    services = load_compose(env)["services"]
    assert published_addresses(services["triton"]) == {"10.0.0.5"}
    assert published_addresses(services["prometheus"]) == {"10.0.0.6"}


def test_the_published_address_check_says_no():
    assert published_addresses({"ports": ["8000:8000"]}) == {"0.0.0.0"}
    assert published_addresses({"ports": ["[::1]:8000:8000"]}) == {"[::1]"}


# --- gRPC TLS: off unless CNN_DEPLOY_TLS_DIR names the certificates, mutual with CNN_DEPLOY_TLS_MUTUAL ---

TLS_ENV = {**ENV, "CNN_DEPLOY_TLS_DIR": "/etc/cnn-deploy/tls"}
MTLS_ENV = {**TLS_ENV, "CNN_DEPLOY_TLS_MUTUAL": "1"}
CLIENTS = ("verify", "loadtest", "verify-cpu", "loadtest-cpu")


def test_every_grpc_service_mounts_the_certificate_directory_read_only(services):
    for name in ("triton", "triton-cpu", *CLIENTS):
        source, read_only = mounts(services[name])["/certs"]
        assert source == "./deploy/tls" and read_only, name
    for name in ("triton", *CLIENTS):
        assert mounts(load_compose(TLS_ENV)["services"][name])["/certs"][0] == "/etc/cnn-deploy/tls"


def test_grpc_is_plain_without_a_certificate_directory(services):
    assert not any("ssl" in a for a in command_args(services["triton"]))
    assert "--http-address" not in flags(command_args(services["triton"]))  # the published port works
    assert not any(a.startswith("--tls") for a in command_args(services["triton-cpu"]))
    for name in CLIENTS:
        args = command_args(services[name])
        assert args[args.index("--url") + 1].startswith("grpc://") and "--ca-cert" not in args


@pytest.mark.parametrize("env", [TLS_ENV, MTLS_ENV], ids=["tls", "mutual"])
def test_tls_turns_on_in_server_and_clients_with_the_same_certificates(env):
    from clients import cli as clients_cli
    from serving import cli as serving_cli

    services = load_compose(env)["services"]
    mutual = "CNN_DEPLOY_TLS_MUTUAL" in env
    f = flags(command_args(services["triton"]))
    assert f["--grpc-use-ssl"] == "true" and f["--grpc-server-cert"] == "/certs/tls.crt"
    assert f["--grpc-server-key"] == "/certs/tls.key"
    assert (f.get("--grpc-use-ssl-mutual"), f.get("--grpc-root-cert")) == (
        ("true", "/certs/ca.crt") if mutual else (None, None)
    )
    # No side door: plaintext HTTP (no TLS, no client CA) inside the container only; metrics open.
    assert (f["--http-address"], f["--metrics-address"]) == ("127.0.0.1", "0.0.0.0")
    cpu = serving_cli.build_parser().parse_args(command_args(services["triton-cpu"])[3:])
    assert (str(cpu.tls_cert), str(cpu.tls_key)) == ("/certs/tls.crt", "/certs/tls.key")
    assert (str(cpu.tls_client_ca) if mutual else cpu.tls_client_ca) == ("/certs/ca.crt" if mutual else None)
    for name in CLIENTS:
        ns = clients_cli.build_parser().parse_args(command_args(services[name])[3:])
        assert all(u.startswith("grpcs://") for u in ns.url), name
        assert str(ns.ca_cert) == "/certs/ca.crt"
        pair = (str(ns.client_cert), str(ns.client_key)) if mutual else (ns.client_cert, ns.client_key)
        assert pair == (("/certs/client.crt", "/certs/client.key") if mutual else (None, None))


def test_the_default_certificate_directory_holds_no_secret():
    assert sorted(p.name for p in (ROOT / "deploy" / "tls").iterdir()) == ["README.md"]


def test_every_triton_is_strictly_ready(services):
    """Ready only while every model is READY: Triton's own default, which nothing here turns off."""
    assert flags(command_args(services["triton"]))["--strict-readiness"] == "true"
    assert not any("strict-readiness" in a for a in command_args(services["triton-cpu"]))  # serving up's


def healthcheck_verify(service: dict):
    """The `clients verify` a health check runs, parsed by the clients CLI."""
    from clients import cli

    test = service["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "clients"], test
    return cli.build_parser().parse_args(test[4:])


def test_the_cpu_healthcheck_verifies_every_model_once_per_start_then_polls_readiness(services):
    service = services["triton-cpu"]
    ns = healthcheck_verify(service)
    assert ns.command == "verify" and ns.models is None  # every model of the repository index
    assert ns.url == ["http://127.0.0.1:8000"]  # loopback: the admin key from the environment may go
    assert str(ns.repository) == mount_target(service, REPOSITORY_SOURCE)
    marker = str(ns.once_per_start)
    assert any(marker.startswith(t.split(":")[0] + "/") for t in service["tmpfs"])  # gone with the container
    assert "TRITON_ADMIN_KEY" in service["environment"]
    # A first verification takes longer than a readiness poll.
    assert service["healthcheck"]["timeout"] == "5m" and service["healthcheck"]["start_period"] == "10m"


def test_the_verify_services_list_every_model_with_the_admin_key_over_loopback(services):
    for name in ("verify", "verify-cpu"):
        service = services[name]
        assert "TRITON_ADMIN_KEY" in service["environment"], name
        url = command_args(service)[command_args(service).index("--url") + 1]
        assert url.split("//")[1].startswith("127.0.0.1:"), name
    assert services["verify"]["network_mode"] == "service:triton"  # triton's own loopback


def test_triton_healthcheck_polls_readiness(services):
    service = services["triton"]
    test = service["healthcheck"]["test"]
    http_port = flags(command_args(service))["--http-port"]
    assert test[:2] == ["CMD", "curl"], "curl is in the Triton image; CMD runs it without a shell"
    assert f"http://localhost:{http_port}/v2/health/ready" in test


def test_gpu_services_reserve_nvidia_gpus(services):
    for name in ("engines", "triton"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    for name in ("export", "loadtest", "verify", "prometheus"):
        assert "deploy" not in services[name], f"{name} needs no GPU"


def test_triton_runs_as_non_root_with_shared_memory(services):
    service = services["triton"]
    uid, gid = service["user"].split(":")
    assert int(uid) != 0 and int(gid) != 0
    assert service["shm_size"]


def test_services_start_in_order(services):
    def condition(name, dependency):
        return services[name]["depends_on"][dependency]["condition"]

    assert condition("engines", "export") == "service_completed_successfully"
    assert condition("triton", "engines") == "service_completed_successfully"
    assert condition("loadtest", "triton") == "service_healthy"
    assert condition("verify", "triton") == "service_healthy"


def test_optional_services_sit_behind_profiles(services):
    assert {n: s.get("profiles", []) for n, s in services.items()} == {
        "export": [],
        "engines": [],
        "triton": [],
        "loadtest": ["loadtest"],
        "verify": ["verify"],
        "prometheus": ["monitoring"],
        "triton-cpu": ["cpu"],
        "verify-cpu": ["cpu"],
        "loadtest-cpu": ["cpu"],
    }


def test_the_cpu_profile_serves_like_the_gpu_service(services):
    """Same admin restriction, readiness healthcheck, non-root user and ports; loopback only."""
    from serving import cli as serving_cli
    from serving.triton import RESTRICTED

    cpu, gpu = services["triton-cpu"], services["triton"]
    args = command_args(cpu)
    assert args[:3] == ["python", "-m", "serving"]
    ns = serving_cli.build_parser().parse_args(args[3:])
    assert ns.command == "up" and ns.config_name == "cpu" and ns.host == "127.0.0.1"
    assert (ns.http_port, ns.grpc_port, ns.metrics_port) == tuple(
        int(flags(command_args(gpu))[f"--{k}-port"]) for k in ("http", "grpc", "metrics")
    )
    assert str(ns.repository) == mount_target(cpu, REPOSITORY_SOURCE) and mounts(cpu)[str(ns.repository)][1]
    assert cpu["user"] == gpu["user"] == "1000:1000" and cpu["read_only"] is True
    assert cpu["network_mode"] == "host" and "ports" not in cpu
    assert "TRITON_ADMIN_KEY" in cpu["environment"]
    restricted = flags(command_args(gpu))["--http-restricted-api"].split(":")[0]
    assert restricted == RESTRICTED  # the local server, hence triton-cpu, restricts the same APIs
    assert healthcheck_verify(cpu).command == "verify"
    assert cpu["build"]["target"] == "serving-cpu" and cpu["build"]["network"] == "host"
    for name in ("verify-cpu", "loadtest-cpu"):
        client = services[name]
        assert client["build"]["target"] == "client" and client["network_mode"] == "host"
        assert client["depends_on"]["triton-cpu"]["condition"] == "service_healthy"
        assert "grpc://127.0.0.1:8001" in " ".join(command_args(client))


def test_client_services_use_our_image_and_reach_triton_by_service_name(services):
    grpc_port = flags(command_args(services["triton"]))["--grpc-port"]
    for name, host in (("loadtest", "triton"), ("verify", "127.0.0.1")):  # verify: in triton's namespace
        service = services[name]
        assert service["image"] == "cnn-deploy-client:local" and service["build"]["target"] == "client"
        assert service["build"]["args"] == services["export"]["build"]["args"]
        args = command_args(service)
        assert args[:3] == ["python", "-m", "clients"]
        assert args[args.index("--url") + 1] == f"grpc://{host}:{grpc_port}"


def test_loadtest_command_parses_with_the_clients_cli(services):
    from clients import cli

    service = services["loadtest"]
    ns = cli.build_parser().parse_args(command_args(service)[3:])
    assert ns.command == "loadtest"
    assert str(ns.output) == mount_target(service, "./reports")


def test_verify_command_parses_with_the_clients_cli(services):
    from clients import cli

    ns = cli.build_parser().parse_args(command_args(services["verify"])[3:])
    assert ns.command == "verify"


def test_prometheus_scrapes_tritons_metrics_port(services):
    service = services["prometheus"]
    assert not service["image"].endswith(":latest") and ":" in service["image"]
    config_path = mount_target(service, "./serving/prometheus.yml")
    assert config_path == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / "serving" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    metrics_port = flags(command_args(services["triton"]))["--metrics-port"]
    assert f"triton:{metrics_port}" in targets


def test_bind_mount_sources_exist(services):
    created_by_the_user = {"./reports"}  # git-ignored output; docs/deploy-gpu.md says `mkdir -p reports`
    for name, service in services.items():
        for source, _ in mounts(service).values():
            if source.startswith("./") and source not in created_by_the_user:
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


# --- The Dockerfile ---


def _dockerfile() -> list[str]:
    """Instructions, one per line (continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _pinned(requirement_name: str) -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["export"]
    return next(d.split("==")[1] for d in deps if d.split("==")[0].strip() == requirement_name)


def test_dockerfile_is_python313_slim_by_default_with_cpu_torch_pinned_like_pyproject():
    lines = _dockerfile()
    assert "ARG BASE_IMAGE=python:3.13-slim" in lines
    assert "${CNN_DEPLOY_BASE_IMAGE:-python:3.13-slim}" in (ROOT / "docker-compose.yml").read_text()
    stages = {"${BASE_IMAGE}", "${TRITON_IMAGE}"}  # the GPU server: tests/test_triton_gpu_image.py
    for ln in (ln for ln in lines if ln.startswith("FROM ")):
        parts = ln.split()
        assert parts[1] in stages, f"{ln}: every stage starts from BASE_IMAGE or an earlier stage"
        stages.add(parts[-1])
    assert {"client", "serving-cpu", "export"} <= stages
    torch_install = next(ln for ln in lines if "torch==" in ln)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_install
    assert f"torch=={_pinned('torch')}" in torch_install.split()
    assert f"torchvision=={_pinned('torchvision')}" in torch_install.split()


def test_dockerfile_runs_as_non_root():
    user = [ln.split()[1] for ln in _dockerfile() if ln.startswith("USER ")][-1]
    assert user.split(":")[0] not in ("0", "root")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""

    def regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            else:
                out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        return out

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rx = regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(rx, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_copies_only_files_that_exist_and_reach_the_build_context():
    patterns = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert _ignored(".venv/bin/python", patterns) and _ignored("model_repository/x/1/model.onnx", patterns)
    assert _ignored("export/__pycache__/cli.cpython-311.pyc", patterns)
    copies = [ln.split()[1:-1] for ln in _dockerfile() if ln.startswith("COPY ") and "--from=" not in ln]
    sources = [s for srcs in copies for s in srcs]
    assert sources, "no COPY in the Dockerfile?"
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not _ignored(source, patterns), f".dockerignore keeps {source} out of the build context"
    for package in ("cnn_deploy_core", "export", "serving", "clients", "cnn_deploy"):
        assert package + "/" in sources and not _ignored(f"{package}/cli.py", patterns)


def test_compose_builds_our_image_from_this_dockerfile(services):
    build = services["export"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


# --- The deployment guide ---


def test_deploy_guide_shows_the_compose_commands():
    doc = DOC.read_text()
    for command in (
        "docker compose up -d",
        "docker compose --profile loadtest run --rm --no-deps loadtest",
        "docker compose --profile monitoring up -d",
        "docker compose run --rm --no-deps engines",
        "mkdir -p reports",
        "export TRITON_ADMIN_KEY=",
    ):
        assert command in doc, f"docs/deploy-gpu.md should show `{command}`"


def test_deploy_guide_documents_every_variable_the_compose_file_reads():
    variables = set(re.findall(r"\$\{([_A-Za-z][_A-Za-z0-9]*)", COMPOSE_FILE.read_text()))
    assert variables >= {"TRITON_ADMIN_KEY", "CNN_DEPLOY_MODELS", "CNN_DEPLOY_BASE_IMAGE"}
    doc = DOC.read_text() + CPU_DOC.read_text() + SECURITY_DOC.read_text()
    assert sorted(v for v in variables if v not in doc) == []


def _doc_commands(package: str) -> list[list[str]]:
    found = re.findall(rf"python -m {package} [^\n`]*", DOC.read_text())
    return [shlex.split(c, comments=True)[3:] for c in found if "--help" not in c]


def test_deploy_guide_export_commands_parse():
    from export.cli import build_parser

    commands = _doc_commands("export")
    assert commands, "docs/deploy-gpu.md shows no `python -m export` command"
    for args in commands:
        build_parser().parse_args(args)


def test_deploy_guide_serving_commands_parse():
    from serving import cli

    commands = _doc_commands("serving")
    assert commands, "docs/deploy-gpu.md shows no `python -m serving` command"
    for args in commands:
        cli.build_parser().parse_args(args)


def test_deploy_guide_engines_commands_parse():
    from serving.triton_side import engines

    found = re.findall(r"serving/triton_side/engines\.py ([^\n`]*)", DOC.read_text())
    assert found
    for args in found:
        engines.build_parser().parse_args(shlex.split(args))


def test_schema_file_records_where_it_came_from_and_its_license():
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"].endswith("2020-12/schema") and schema["title"] == "Compose Specification"
    assert "compose-spec/compose-go" in schema["$comment"] and "Apache License 2.0" in schema["$comment"]


def test_the_server_image_is_built_on_a_python_that_the_server_runs_on(services):
    """The serving extra has no nvidia-pytriton on Python 3.13 (serving/wheel.py says why): the
    server's image takes its own base image, a Python 3.11 one by default, and a build on 3.13 stops."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pytriton,) = [d for d in extras["serving"] if d.startswith("nvidia-pytriton")]
    assert "python_version < '3.13'" in pytriton
    args = services["triton-cpu"]["build"]["args"]
    assert args["BASE_IMAGE"] == "python:3.11-slim" and "EXTRA_CA_CERT" in args
    assert "${CNN_DEPLOY_SERVING_BASE_IMAGE:-python:3.11-slim}" in (ROOT / "docker-compose.yml").read_text()
    install = next(ln for ln in _dockerfile() if "[serving" in ln)
    assert "python_refusal" in install


def test_the_image_python_check_says_no():
    from cnn_deploy.checks.compose import python_verdict

    both = {"serving": "Python 3.11.2", "client": "Python 3.13.5"}
    expected = {"serving": "3.11", "client": "3.13"}
    assert python_verdict(both, expected) is None
    assert python_verdict({**both, "client": "Python 3.11.2"}, expected) == (
        "expected client on Python 3.13, found Python 3.11.2"
    )
    assert python_verdict({"serving": "Python 3.1.0"}, {"serving": "3.1"}) is None
    assert python_verdict({"serving": "Python 3.13.5"}, {"serving": "3.1"}) is not None  # not 3.1
    assert python_verdict({}, expected) == "no image reported its Python version"
    assert python_verdict(both, {"serving": None, "client": "3.13"}) is None  # the user's base image
