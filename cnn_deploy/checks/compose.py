"""`make compose-test`: the CPU compose deployment, really run on this machine, then taken down.

Steps (each prints its status and time; a failed one stops the run, and the teardown always runs):
engine (start Debian's dockerd when none answers and we are root; else exit 2 saying what is
missing) -> compose v2 (Debian trixie's static plugin when `docker compose` is missing) -> base
images (offline: debootstrap + `docker import` of Debian trixie, Python 3.13, for the client and of
bookworm, Python 3.11, for the server, unless CNN_DEPLOY_BASE_IMAGE and CNN_DEPLOY_SERVING_BASE_IMAGE
name them) -> build -> the images' Python (3.13 and 3.11 on those bases) ->
up (`--profile cpu up -d triton-cpu`, wait for healthy: its health check verified every model once)
-> verify every model of the repository over gRPC and HTTP -> a short
load test -> non-root and admin-key checks -> down. It leaves no container, network, or engine
it started behind. Everything talks over 127.0.0.1 (host networking), never a bridge, and gRPC
over TLS: a throwaway CA (cnn_deploy/checks/pki.py) through CNN_DEPLOY_TLS_DIR (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cnn_deploy_core import CnnDeployError, paths
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.machine import provenance
from cnn_deploy_core.secrets import new_key
from cnn_deploy_core.steps import SkipStep, Status, Step, StepResult, run_steps

NOT_HERE_EXIT = 2


@dataclass(frozen=True)
class Base:
    """An offline base image: a Debian suite, its python3, and the compose variable that names it."""

    suite: str
    python: str
    variable: str
    image: str  # what is built on it

    @property
    def packages(self) -> str:
        # Beside Python in a minimal Debian: TLS roots for pip, and the shared libpython that
        # Triton's Python backend stub links against (python:3.X-slim has it built in).
        return f"python3,python3-venv,python3-pip,ca-certificates,libpython{self.python}"

    @property
    def tag(self) -> str:
        # Named after its suite and package list, so a change to either builds a new base image.
        return f"cnn-deploy-base:{self.suite}-{hashlib.sha256(self.packages.encode()).hexdigest()[:8]}"


# The clients on the newest Python the project supports (Debian trixie's 3.13), the server on the
# oldest (bookworm's 3.11): it runs on 3.11 and 3.12 only (serving/wheel.py says why).
BASES = (
    Base("trixie", "3.13", "CNN_DEPLOY_BASE_IMAGE", "cnn-deploy-client:local"),
    Base("bookworm", "3.11", "CNN_DEPLOY_SERVING_BASE_IMAGE", "cnn-deploy-serving-cpu:local"),
)
IMAGES = tuple(base.image for base in BASES)
PROJECT = "cnn-deploy-cpu"
ENGINE_DIR = Path("/tmp/cnn-deploy-docker")  # a short path: unix socket names are limited to 108 bytes


class NotHere(CnnDeployError):
    """Docker cannot run here (not root, no package manager): exit 2 with what is missing."""


@dataclass
class Run:
    root: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    started_engine: subprocess.Popen | None = None
    up: bool = False
    sizes: dict[str, str] = field(default_factory=dict)
    admin_key: str = field(default_factory=new_key)
    measured: dict = field(default_factory=dict)
    not_here: str | None = None  # what this machine lacks to run Docker at all
    tls_dir: Path | None = None  # the throwaway CA's files, mounted at /certs
    python_versions: dict[str, str] = field(default_factory=dict)  # image -> `python3 --version`

    def docker(
        self, *args: str, timeout: float = 600, check: bool = True, **kw
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["docker", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise CnnDeployError(f"`docker {' '.join(args[:4])} ...` failed: {' | '.join(detail)}")
        return result

    def compose(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
        return self.docker("compose", "-p", PROJECT, "--profile", "cpu", *args, timeout=timeout, check=check)


def _engine_answers(env: dict[str, str]) -> bool:
    try:
        return subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _apt_install(*packages: str) -> None:
    result = subprocess.run(
        ["apt-get", "install", "-y", "-q", *packages], capture_output=True, text=True, timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )  # fmt: skip
    if result.returncode != 0:
        raise NotHere(f"cannot install {' '.join(packages)}: {result.stderr.strip()[-300:]}")


def _clear_stale_pidfile(pidfile: Path, wait_s: float = 30) -> None:
    """An engine of an earlier run may still be shutting down: wait for it, then drop its pidfile."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pidfile.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + wait_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if Path(f"/proc/{pid}").exists():
        raise CnnDeployError(f"an earlier dockerd (pid {pid}) still holds {pidfile}: stop it first")
    pidfile.unlink(missing_ok=True)


def step_engine(run: Run) -> str:
    if shutil.which("docker") is None:
        raise NotHere("no docker CLI on PATH (Debian: apt-get install docker.io)")
    if _engine_answers(run.env):
        return f"using the running engine ({run.env.get('DOCKER_HOST', 'default socket')})"
    if os.geteuid() != 0:
        raise NotHere("no Docker engine answers, and starting one needs root (sudo make compose-test)")
    if shutil.which("dockerd") is None:
        if shutil.which("apt-get") is None:
            raise NotHere("no dockerd, and no apt-get to install Debian's docker.io")
        _apt_install("docker.io")
    ENGINE_DIR.mkdir(parents=True, exist_ok=True)
    _clear_stale_pidfile(ENGINE_DIR / "docker.pid")
    socket = ENGINE_DIR / "docker.sock"
    log = open(ENGINE_DIR / "dockerd.log", "ab")
    run.started_engine = subprocess.Popen(
        [
            "dockerd", "--storage-driver", "vfs", "--data-root", str(ENGINE_DIR / "data"),
            "--exec-root", str(ENGINE_DIR / "exec"), "--pidfile", str(ENGINE_DIR / "docker.pid"),
            "-H", f"unix://{socket}",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    run.env["DOCKER_HOST"] = f"unix://{socket}"
    deadline = time.monotonic() + 60
    while not _engine_answers(run.env):
        if run.started_engine.poll() is not None or time.monotonic() > deadline:
            raise CnnDeployError(f"dockerd did not come up; see {ENGINE_DIR / 'dockerd.log'}")
        time.sleep(1)
    version = run.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    return f"started dockerd {version} (vfs) on {socket}"


def step_compose(run: Run) -> str:
    found = run.docker("compose", "version", "--short", check=False)
    if found.returncode == 0:
        return f"compose {found.stdout.strip()}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise NotHere("no `docker compose` (v2) plugin; Debian trixie's docker-compose package has one")
    # Debian bookworm's compose is v1 (it rejects the `name:` key); trixie's docker-compose
    # package is compose v2, one static binary, fetched without touching the system's sources.
    with tempfile.TemporaryDirectory() as tmp:
        sources, lists = Path(tmp) / "trixie.list", Path(tmp) / "lists"
        (lists / "partial").mkdir(parents=True)
        sources.write_text("deb http://deb.debian.org/debian trixie main\n")
        apt = ["apt-get", "-q", "-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=-",
               "-o", f"Dir::State::Lists={lists}"]  # fmt: skip
        for args in ([*apt, "update"], [*apt, "download", "docker-compose"]):
            result = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise NotHere(f"cannot fetch docker-compose from trixie: {result.stderr.strip()[-300:]}")
        (deb,) = Path(tmp).glob("docker-compose_*.deb")
        subprocess.run(["dpkg", "-x", str(deb), str(Path(tmp) / "x")], check=True, timeout=120)
        (plugin,) = (Path(tmp) / "x").rglob("cli-plugins/docker-compose")
        target = Path.home() / ".docker" / "cli-plugins" / "docker-compose"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(plugin, target)
        target.chmod(0o755)
    return (
        f"installed compose {run.docker('compose', 'version', '--short').stdout.strip()} from Debian trixie"
    )


def _debootstrap(run: Run, base: Base) -> None:
    if os.geteuid() != 0:
        raise NotHere("no registry here and no base image: building one with debootstrap needs root")
    if shutil.which("debootstrap") is None:
        _apt_install("debootstrap")
    with tempfile.TemporaryDirectory(prefix="cnn-deploy-rootfs-") as tmp:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={base.packages}", base.suite, tmp,
             "http://deb.debian.org/debian"],
            capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        if result.returncode != 0:
            raise CnnDeployError(f"debootstrap {base.suite} failed: {result.stderr.strip()[-300:]}")
        os.chmod(tmp, 0o755)  # the temporary directory is 0700: the image's / must not be
        # pip in the builds trusts what the host's pip trusts (a TLS-intercepting proxy's CA too).
        host_bundle = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
        if host_bundle.is_file():
            shutil.copy2(host_bundle, Path(tmp) / "etc/ssl/certs/ca-certificates.crt")
        tar = subprocess.Popen(["tar", "-C", tmp, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "-", base.tag], stdin=tar.stdout, env=run.env, capture_output=True, text=True
        )
        tar.wait()
        if imported.returncode != 0:
            raise CnnDeployError(f"docker import failed: {imported.stderr.strip()[-300:]}")


def step_base_image(run: Run) -> str:
    done = []
    for base in BASES:
        if os.environ.get(base.variable):
            run.env[base.variable] = os.environ[base.variable]
            done.append(f"{base.variable}={os.environ[base.variable]}")
            continue
        run.env[base.variable] = base.tag
        if run.docker("image", "inspect", base.tag, check=False).returncode == 0:
            done.append(f"{base.tag} already built")
            continue
        _debootstrap(run, base)
        done.append(f"{base.tag} from debootstrap ({base.suite} minbase + {base.packages})")
    return "; ".join(done)


def step_certificates(run: Run) -> str:
    from cnn_deploy.checks.pki import compose_certificates

    run.tls_dir = compose_certificates(run.env)
    return f"throwaway CA in {run.tls_dir}: gRPC over TLS (grpcs://, --ca-cert /certs/ca.crt)"


GRPCS = ("--url", "grpcs://127.0.0.1:8001", "--ca-cert", "/certs/ca.crt")
HEALTH_MARKER = "/tmp/cnn-deploy-verified.json"  # triton-cpu's health check: verified once per start


def step_build(run: Run) -> str:
    run.env.setdefault("TRITON_ADMIN_KEY", run.admin_key)
    run.admin_key = run.env["TRITON_ADMIN_KEY"]
    run.compose("build", "triton-cpu", "verify-cpu")
    for image in IMAGES:
        size = int(run.docker("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
        run.sizes[image] = f"{size / 1e6:.0f} MB"
    return ", ".join(f"{k} {v}" for k, v in run.sizes.items())


def python_verdict(versions: dict[str, str], expected: dict[str, str | None]) -> str | None:
    """None when each image runs the Python `expected` says (`python3 --version` prints
    "Python 3.13.5"); else what is wrong. An image expected None (built on a base image of the
    user's) may run any version: it is recorded."""
    if not versions:
        return "no image reported its Python version"
    wrong = {
        image: seen
        for image, seen in versions.items()
        if expected.get(image) is not None
        and not seen.removeprefix("Python ").startswith(f"{expected[image]}.")
    }
    if not wrong:
        return None
    return "expected " + ", ".join(
        f"{image} on Python {expected[image]}, found {wrong[image]}" for image in wrong
    )


def step_image_python(run: Run) -> str:
    for image in IMAGES:
        result = run.docker("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "--version")
        run.python_versions[image] = (result.stdout or result.stderr).strip()
    # Only our own offline base images promise a Python; another is the user's choice.
    expected = {b.image: b.python if run.env.get(b.variable) == b.tag else None for b in BASES}
    wrong = python_verdict(run.python_versions, expected)
    if wrong:
        raise CnnDeployError(wrong)
    return ", ".join(f"{image} {version}" for image, version in run.python_versions.items())


def _ports_free() -> list[int]:
    from serving.triton import port_free

    return [p for p in (8000, 8001, 8002) if not port_free("127.0.0.1", p)]


def step_up(run: Run) -> str:
    busy = _ports_free()
    if busy:
        raise CnnDeployError(f"ports {busy} on 127.0.0.1 are taken (a local `serving up`?): stop that first")
    if not (run.root / "model_repository").is_dir() or not any((run.root / "model_repository").iterdir()):
        raise CnnDeployError("model_repository/ is empty: export on the host first (make export)")
    run.up = True  # from here on, `down` cleans up whatever `up` created, even half of it
    run.compose("up", "-d", "triton-cpu")
    deadline = time.monotonic() + 600
    container = run.compose("ps", "-q", "triton-cpu").stdout.strip()
    while time.monotonic() < deadline:
        health = run.docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
        if health == "healthy":  # the health check verified every model (docker-compose.yml)
            marker = run.compose("exec", "-T", "triton-cpu", "cat", HEALTH_MARKER, check=False).stdout
            if not marker.strip():
                raise CnnDeployError(
                    f"healthy without the health check's verification record {HEALTH_MARKER}"
                )
            verified = len(json.loads(marker)["counts"])
            return f"healthy: container {container[:12]}, {verified} model versions verified at start"
        if (
            health == "unhealthy"
            or run.docker("inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true"
        ):
            logs = run.compose("logs", "--tail", "20", "triton-cpu", check=False).stdout
            raise CnnDeployError(f"triton-cpu is {health or 'not running'}: {logs[-800:]}")
        time.sleep(2)
    raise CnnDeployError("triton-cpu not healthy after 10 minutes")


def step_verify(run: Run) -> str:
    lines = []
    for url in ("grpcs://127.0.0.1:8001", "http://127.0.0.1:8000"):
        tls = ["--ca-cert", "/certs/ca.crt"] if url.startswith("grpcs") else []
        command = ["python", "-m", "clients", "verify", "--url", url, *tls, "--json"]
        result = run.compose("run", "--rm", "--no-deps", "verify-cpu", *command, check=False)
        if result.returncode != 0:
            states = [ln for ln in run.compose("logs", "triton-cpu", check=False).stdout.splitlines()
                      if "UNAVAILABLE" in ln or "READY" in ln]  # fmt: skip
            detail = (result.stderr or result.stdout)[-400:]
            raise CnnDeployError(f"verify over {url} failed: {detail}; server: {' | '.join(states[-6:])}")
        verdicts = json.loads(result.stdout)
        scheme = url.split(":")[0]
        passed = sum(v["status"] == "PASS" for v in verdicts)
        lines.append(
            f"{scheme}: {passed} models/versions pass, {len(verdicts) - passed} skipped (no golden set)"
        )
        run.measured[f"verify_{scheme.removesuffix('s')}"] = verdicts  # verify_grpc (over TLS), verify_http
    return "; ".join(lines)


def step_loadtest(run: Run) -> str:
    model = os.environ.get("CNN_DEPLOY_LOADTEST_MODEL", "resnet18")
    result = run.compose(
        "run", "--rm", "--no-deps", "loadtest-cpu", "python", "-m", "clients", "loadtest",
        *GRPCS, "--model", model, "--concurrency", "1,4", "--warmup-s", "1",
        "--window-s", "1.5", "--max-windows", "5", "--min-samples", "30", "--output", "/tmp/reports",
        "--json", "--max-wrong", "0", check=False,
    )  # fmt: skip
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise CnnDeployError(f"the load test failed: {(result.stderr or result.stdout)[-600:]}") from None
    if result.returncode != 0:
        raise CnnDeployError(f"the load test missed: {report['slo']['violations'] + report['failures']}")
    run.measured["loadtest"] = [
        {"load": s["label"], "infer_per_s": s["inferences_per_s"], "p99_ms": s["latency_ms"]["p99"],
         "verified": s["verified"], "wrong": s["wrong"]}
        for s in report["steps"]
    ]  # fmt: skip
    return ", ".join(
        f"{s['load']} {s['infer_per_s']:.1f} infer/s p99 {s['p99_ms']:.0f} ms"
        for s in run.measured["loadtest"]
    )


def step_security(run: Run) -> str:
    uid = run.compose("exec", "-T", "triton-cpu", "id", "-u").stdout.strip()
    if uid == "0":
        raise CnnDeployError("triton-cpu runs as root")
    request = urllib.request.Request("http://127.0.0.1:8000/v2/repository/index", data=b"{}", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
        raise CnnDeployError("the admin API answered a request without the key")
    except urllib.error.HTTPError as e:
        refused = e.code
    request.add_header("admin-key", run.admin_key)
    with urllib.request.urlopen(request, timeout=10) as response:
        allowed = response.status
    return f"uid {uid}; admin API without the key: HTTP {refused}, with it: HTTP {allowed}"


def step_down(run: Run) -> str:
    if not run.up:
        raise SkipStep("nothing was started")
    run.compose("down", "--remove-orphans", "--volumes", "--timeout", "45")  # this project only
    left = run.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.strip()
    networks = run.docker(
        "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"
    ).stdout
    if left or networks.strip():
        raise CnnDeployError(f"left behind: containers {left.split()} networks {networks.split()}")
    return "no container or network left"


def prune(run: Run) -> str:
    """Our own engine stores every layer as a full copy (vfs): rebuilds leave GBs of dangling
    images and build cache behind (a few runs fill a CI disk). Keep the tagged
    images (the next run reuses them), drop the rest."""
    if run.started_engine is None:
        raise SkipStep("not our engine: its images are left as they were")
    run.docker("image", "prune", "-f")
    run.docker("builder", "prune", "-af")
    used = sum(
        f.stat().st_size for f in (ENGINE_DIR / "data").rglob("*") if f.is_file() and not f.is_symlink()
    )
    return f"dangling images and build cache removed; {used / 2**30:.1f} GiB kept in {ENGINE_DIR}"


def stop_engine(run: Run) -> str:
    if run.started_engine is None:
        raise SkipStep("the engine was running before: left as it was")
    run.started_engine.send_signal(signal.SIGTERM)
    try:
        run.started_engine.wait(60)
    except subprocess.TimeoutExpired:
        run.started_engine.kill()
        run.started_engine.wait()
    return "stopped the dockerd this run started"


def _noting_what_is_missing(step_fn):
    def wrapped(run: Run) -> str:
        try:
            return step_fn(run)
        except NotHere as e:
            run.not_here = str(e)
            raise

    return wrapped


STEPS = [
    Step("engine", _noting_what_is_missing(step_engine)),
    Step("compose v2", _noting_what_is_missing(step_compose)),
    Step("base images", _noting_what_is_missing(step_base_image)),
    Step("certificates", step_certificates),
    Step("build images", step_build),
    Step("Python in the images", step_image_python),
    Step("up, until healthy", step_up),
    Step("verify (gRPC, HTTP)", step_verify),
    Step("load test", step_loadtest),
    Step("non-root, admin key", step_security),
]


def run_compose_test(output: Path | None = None) -> int:
    run = Run(root=paths.project_root() or Path.cwd())

    def start(step) -> None:
        stderr.print(f"[bold]{step.name}[/] ...")

    def finish(result: StepResult) -> None:
        colour = {Status.OK: "green", Status.FAIL: "red", Status.SKIPPED: "yellow"}[result.status]
        stderr.print(
            f"  [{colour}]{result.status.value}[/] {result.detail} ({result.seconds:.0f}s)", highlight=False
        )

    results: list[StepResult] = []
    try:
        results = run_steps(STEPS, run, on_start=start, on_finish=finish, user_errors=(CnnDeployError,))
    finally:
        teardown = [
            Step("down", step_down, required=False),
            Step("prune", prune, required=False),
            Step("stop engine", stop_engine, required=False),
        ]
        results += run_steps(teardown, run, on_start=start, on_finish=finish, user_errors=(CnnDeployError,))
        if run.tls_dir is not None:
            shutil.rmtree(run.tls_dir, ignore_errors=True)  # the throwaway CA's keys go with the run
    from rich.table import Table

    table = Table(title="make compose-test")
    for col in ("step", "status", "detail", "time"):
        table.add_column(col)
    for r in results:
        table.add_row(r.name, r.status.value, r.detail, f"{r.seconds:.0f}s")
    stdout.print(table)
    if output is not None:
        from cnn_deploy_core.fsutil import atomic_write_text

        record = {
            "steps": [r.to_dict() for r in results],
            "image_sizes": run.sizes,
            "image_python": run.python_versions,
            "base_images": {b.variable: run.env.get(b.variable) for b in BASES},
            "measured": run.measured,
        }
        record["provenance"] = provenance()
        atomic_write_text(output, json.dumps(record, indent=2) + "\n")
    if run.not_here is not None:
        stderr.print(f"compose-test cannot run here: {run.not_here}", markup=False, highlight=False)
        return NOT_HERE_EXIT
    return 0 if all(r.status is not Status.FAIL for r in results) else 1
