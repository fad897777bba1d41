"""Run the real `tritonserver` from the nvidia-pytriton wheel on CPU, without Docker.

The wheel ships the server and the Python backend, not the ONNX Runtime backend; we build a
backend directory where `onnxruntime/` holds our Python-based backend (see
serving/triton_side/onnxruntime/model.py), so the repository's `backend: "onnxruntime"` configs
load unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cnn_deploy_core import paths
from cnn_deploy_core.layout import ENV_ORT_GATE
from cnn_deploy_core.machine import children, pss_mb, rss_mb  # noqa: F401  (re-exported for callers)
from cnn_deploy_core.secrets import is_loopback, new_key
from serving import ServingError
from serving.ports import check_ports, free_port_block, free_ports, port_free  # noqa: F401  (re-exported)
from serving.threads import DEFAULT_POLICY, CpuShare, cpu_share, server_args
from serving.wheel import BACKEND_SOURCE, Wheel, environment, prepare_backends  # noqa: F401 (re-exported)

RESTRICTED = "model-repository,shared-memory,trace,logging"  # admin APIs, behind a key
ADMIN_HEADER = "admin-key"
API_HEADER = "api-key"  # keyed inference (clients.keys.API_KEY_HEADER)
# What a server may put behind the inference key: never health (probes), never the admin categories.
KEYABLE_APIS = ("inference", "metadata", "model-config", "statistics")


@dataclass(frozen=True)
class ServerOptions:
    repository: Path
    config_name: str = "cpu"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    # Every server's admin APIs are behind a key: this one, else a random one made here (never
    # absent, whoever starts the server: a scratch server is as reachable as `serving up`'s).
    admin_key: str | None = field(default=None, repr=False)  # keys never in a repr, log or traceback
    backend_dir: Path | None = None  # default: <state dir>/backends
    log_verbose: int = 0
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    replicas: int = 1  # servers on this machine sharing the cores (see serving/threads.py)
    ort_threads: str = DEFAULT_POLICY  # see serving/threads.py: POLICIES
    env: tuple[tuple[str, str], ...] = ()  # extra environment, e.g. a fixed thread count
    # Pin the server and its backend processes to these CPUs (as a container's cpuset does), e.g.
    # to keep a load generator on the same machine off the server's cores; () = not pinned.
    cpus: tuple[int, ...] = ()
    # gRPC over TLS (docs/security.md): the server's certificate and private key; with a client CA
    # too, mutual TLS (a client must present a certificate that CA signed). Triton's HTTP front end
    # has no TLS: with a certificate and a host beyond loopback it listens on loopback only (see
    # http_host), unless http_plaintext says the operator wants it open anyway.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    http_plaintext: bool = False
    # Keyed inference (docs/security.md): these API categories need the header `api-key` (gRPC:
    # triton-grpc-protocol-api-key) holding this key; health stays open for probes.
    inference_key: str | None = field(default=None, repr=False)
    inference_apis: str = "inference"

    def __post_init__(self) -> None:
        if not self.admin_key:
            object.__setattr__(self, "admin_key", new_key())
        check_tls(self.tls_cert, self.tls_key, self.tls_client_ca)
        keyed = set(self.inference_apis.split(","))
        if not keyed <= set(KEYABLE_APIS):
            raise ServingError(
                f"--inference-key-apis: choose from {', '.join(KEYABLE_APIS)}, got {self.inference_apis!r}"
            )
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ServingError(f"--{name.replace('_', '-')} must be a port from 1 to 65535, got {port}")
        ports = {self.http_port, self.grpc_port, self.metrics_port}
        if len(ports) != 3:
            raise ServingError("the HTTP, gRPC and metrics ports must differ")
        if any(c < 0 for c in self.cpus) or len(set(self.cpus)) != len(self.cpus):
            raise ServingError(f"CPUs to pin the server to must be distinct and >= 0, got {list(self.cpus)}")

    @classmethod
    def on_free_ports(cls, repository: Path, **kwargs) -> ServerOptions:
        """Options for a throwaway server (tests, benchmarks) on three ports nothing else holds."""
        http_port, grpc_port, metrics_port = free_ports(3, kwargs.get("host", "127.0.0.1"))
        return cls(
            repository=repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            **kwargs,
        )

    @property
    def http_host(self) -> str:
        """Where Triton's HTTP front end listens: beside gRPC over TLS, loopback only, since that
        plaintext endpoint would serve inference around the TLS (and the client CA) on every
        interface; `http_plaintext` opens it on `host` all the same."""
        if self.tls_cert and not self.http_plaintext and not is_loopback(self.host):
            return "127.0.0.1"
        return self.host

    @property
    def http_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{'grpcs' if self.tls_cert else 'grpc'}://{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def check_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> None:
    """Certificate and key come together, a client CA only with them, the key is private."""
    from cnn_deploy_core.secrets import SecretFileError, check_private, check_readable

    if bool(cert) != bool(key):
        raise ServingError("--tls-cert and --tls-key go together: give both, or neither")
    if client_ca and not cert:
        raise ServingError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    try:
        if cert:
            check_readable(cert, "TLS certificate")
            check_private(key, "TLS private key")
        if client_ca:
            check_readable(client_ca, "TLS client CA")
    except SecretFileError as e:
        raise ServingError(str(e)) from None


def key_args(opts: ServerOptions) -> list[str]:
    """Triton's flags for keyed inference (a second restricted group beside the admin one)."""
    if not opts.inference_key:
        return []
    return [
        f"--http-restricted-api={opts.inference_apis}:{API_HEADER}={opts.inference_key}",
        f"--grpc-restricted-protocol={opts.inference_apis}:{API_HEADER}={opts.inference_key}",
    ]


def tls_args(opts: ServerOptions) -> list[str]:
    """Triton's gRPC TLS flags (the file paths are read by Triton at start)."""
    if not opts.tls_cert:
        return []
    args = [
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={Path(opts.tls_cert).resolve()}",
        f"--grpc-server-key={Path(opts.tls_key).resolve()}",
    ]
    if opts.tls_client_ca:
        args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={Path(opts.tls_client_ca).resolve()}"]
    return args


def shm_prefix(grpc_port: int) -> str:
    """The name every shared-memory region of the server on this gRPC port starts with."""
    return f"cnn_deploy_{grpc_port}_"


def remove_shm_regions(grpc_port: int, shm_dir: Path = Path("/dev/shm")) -> int:
    """Unlink what is left of the Python backend's shared-memory regions once the server on this
    port has ended; how many there were. Triton removes them on a clean exit; a SIGKILLed server
    cannot, and each region (32 MB of RAM: /dev/shm is tmpfs) stays until reboot: a day of
    drills and tests would leave gigabytes of them."""
    removed = 0
    for region in shm_dir.glob(f"{shm_prefix(grpc_port)}*"):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()
            removed += 1
    return removed


def command(opts: ServerOptions, wheel: Wheel) -> list[str]:
    # taskset (util-linux) rather than a preexec_fn: pinning in the forked child runs Python
    # between fork and exec, which is unsafe beside the gRPC threads a load test runs.
    pin = ["taskset", "--cpu-list", ",".join(map(str, opts.cpus))] if opts.cpus else []
    args = [
        *pin,
        str(wheel.binary),
        f"--model-repository={opts.repository.resolve()}",
        f"--model-config-name={opts.config_name}",
        # Explicit control, every model loaded at start: `serving rollback` and `serving repo` can then
        # reload one model on a running server (admin API), which keeps serving until it is ready.
        "--model-control-mode=explicit",
        "--load-model=*",
        f"--backend-directory={backend_dir(opts).resolve()}",
        f"--http-address={opts.http_host}",
        f"--http-port={opts.http_port}",
        f"--grpc-address={opts.host}",
        f"--grpc-port={opts.grpc_port}",
        f"--metrics-address={opts.host}",
        f"--metrics-port={opts.metrics_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=true",
        # A broken model must not take the others down: it stays UNAVAILABLE, with its reason
        # in the log and the repository index, and the others serve on. But the server is not
        # *ready* while one is (a probe, a load balancer, `serving status` must see it).
        "--exit-on-error=false",
        "--strict-readiness=true",
        "--exit-timeout-secs=10",
        f"--log-verbose={opts.log_verbose}",
        # Room for a max batch of 224x224 images without regrowing the shared memory, and a
        # per-server prefix so several servers (tests, demo) can share /dev/shm.
        "--backend-config=python,shm-default-byte-size=33554432",
        # Grown in 8 MB steps: a backlog that needs a few MB more than that (a batch of ~24 with
        # the next batch's inputs already in) then costs a few MB of RAM for good, not 32.
        "--backend-config=python,shm-growth-byte-size=8388608",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix(opts.grpc_port)}",
    ]
    args += [
        f"--http-restricted-api={RESTRICTED}:{ADMIN_HEADER}={opts.admin_key}",
        f"--grpc-restricted-protocol={RESTRICTED}:{ADMIN_HEADER}={opts.admin_key}",
    ]
    return args + server_args(opts.ort_threads) + key_args(opts) + tls_args(opts) + list(opts.extra_args)


def backend_dir(opts: ServerOptions) -> Path:
    return opts.backend_dir or paths.state_dir() / "backends"


def _health(url: str, what: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/{what}", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def is_ready(url: str, timeout: float = 1.0) -> bool:
    """Ready: serving, and every model of its repository READY (strict readiness)."""
    return _health(url, "ready", timeout)


def is_live(url: str, timeout: float = 1.0) -> bool:
    """Live: the server answers (whatever its models' states); a hung one does not."""
    return _health(url, "live", timeout)


def repository_index(http_url: str, admin_key: str, timeout: float = 10.0) -> list[dict]:
    """Every model of the server's repository: name, version, state and, when not READY, Triton's
    reason (an admin API: it takes the key)."""
    request = urllib.request.Request(
        f"{http_url}/v2/repository/index", data=b"{}", method="POST", headers={ADMIN_HEADER: admin_key}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise ServingError(f"cannot list models at {http_url}: HTTP {e.code} {e.read()[:200]!r}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ServingError(f"cannot list models at {http_url}: {e}") from e


LOADING_STATES = ("LOADING", "UNLOADING")


def failed_models(index: list[dict], repository: Path | None = None) -> list[dict] | None:
    """The models that are not READY once loading is over; None while one is still (un)loading
    (verdict over Triton's repository index).

    With `repository`, a version that failed to load and is no longer on disk is history, not a
    failure: Triton keeps such an entry (UNAVAILABLE) after the model was reloaded without it, as
    after a failed reload that `serving repo` undid, and its strict readiness then stays false."""
    if any(m.get("state") in LOADING_STATES for m in index):
        return None

    def gone(m: dict) -> bool:
        return bool(repository and m.get("version")) and not (repository / m["name"] / m["version"]).is_dir()

    return [m for m in index if m.get("state") != "READY" and not gone(m)]


def serving_every_model(http_url: str, admin_key: str, repository: Path) -> bool:
    """Ready (strict readiness), or answering with every model on disk READY (see failed_models)."""
    if is_ready(http_url):
        return True
    if not is_live(http_url):
        return False
    try:
        return failed_models(repository_index(http_url, admin_key), repository) == []
    except ServingError:
        return False


def describe_failed(models: list[dict]) -> str:
    """'alexnet: <Triton's reason>; ...' in one line."""
    return "; ".join(f"{m['name']}: {m.get('reason') or m.get('state') or 'not ready'}" for m in models)


def gate_dir(opts: ServerOptions) -> Path:
    """Where the backends of this server ("adapt") keep the lock files of its cores' gate."""
    return backend_dir(opts).resolve() / f"cores-{opts.grpc_port}"


def server_share(opts: ServerOptions) -> CpuShare:
    """The ONNX Runtime threads each session of this server gets (see serving/threads.py)."""
    return cpu_share(
        opts.repository,
        opts.config_name,
        replicas=opts.replicas,
        policy=opts.ort_threads,
        cores=len(opts.cpus) or None,
    )


class TritonProcess:
    """A tritonserver child process: start, wait until ready, stop (and really be gone)."""

    def __init__(self, opts: ServerOptions, *, log_path: Path | None = None):
        self.opts = opts
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.share: CpuShare | None = None
        self.failed: list[dict] = []  # models that did not load (wait_ready with failed_ok)
        self._log_file = None

    def start(self, *, detach: bool = False) -> TritonProcess:
        wheel = Wheel.find()
        if not self.opts.repository.is_dir():
            raise ServingError(
                f"model repository {self.opts.repository} does not exist; "
                "create it with `python -m serving repo ARCH...`"
            )
        prepare_backends(backend_dir(self.opts), wheel)
        env = environment(wheel)
        self.share = server_share(self.opts)
        for key, value in self.share.environment().items():
            env.setdefault(key, value)  # the user's own setting wins
        if self.share.narrow:  # "adapt": the gate of this server's cores (cnn_deploy_core/cores.py)
            env.setdefault(ENV_ORT_GATE, str(gate_dir(self.opts)))
        env.update(self.opts.env)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")
        out = self._log_file or subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                command(self.opts, wheel),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )
        except OSError as e:
            self.stop()
            raise ServingError(f"cannot start {wheel.binary}: {e.strerror or e}") from e
        return self

    def wait_ready(
        self, timeout: float = 300.0, poll: float = 0.25, *, failed_ok: bool = False
    ) -> list[dict]:
        """Wait until the server is ready, i.e. every model READY (strict readiness).

        Once loading is over with a model that failed, raise naming it and Triton's reason, or with
        `failed_ok` (`serving up`: the others serve on) return those models; else return []."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServingError(
                    f"tritonserver exited with code {self.process.returncode} while starting"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if is_ready(self.opts.http_url):
                return []
            if is_live(self.opts.http_url):
                failed = failed_models(repository_index(self.opts.http_url, self.opts.admin_key))
                if failed and failed_ok:
                    return failed
                if failed:
                    raise ServingError(
                        f"model(s) failed to load: {describe_failed(failed)}"
                        + (f"; see {self.log_path}" if self.log_path else "")
                    )
            time.sleep(poll)
        raise ServingError(
            f"tritonserver not ready after {timeout:.0f}s"
            + (f"; see {self.log_path}" if self.log_path else "")
        )

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), SIGKILL after `timeout`; returns the exit code."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None:
            remove_shm_regions(self.opts.grpc_port)  # left behind if it crashed or was killed
            shutil.rmtree(gate_dir(self.opts), ignore_errors=True)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return None if self.process is None else self.process.returncode

    def kill(self) -> None:
        """SIGKILL the server and its backend processes, as a container runtime kills a container.

        Triton's Python-backend stubs outlive a SIGKILLed server: they ignore SIGTERM and keep
        polling their dead parent's shared memory, using CPU, for good. So they go with it.
        """
        if self.process is not None and self.process.poll() is None:
            kill_tree(self.process.pid)
            self.process.wait()
            remove_shm_regions(self.opts.grpc_port)

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def kill_tree(pid: int) -> None:
    """SIGKILL a server and its backend stubs (which would otherwise live on: see TritonProcess.kill)."""
    stubs = children(pid)
    for p in (pid, *stubs):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


def serve(
    opts: ServerOptions, log_path: Path | None = None, timeout: float = 300.0, *, failed_ok: bool = False
) -> TritonProcess:
    """A started tritonserver with every model READY (it is stopped again if it never is): the one
    way a throwaway server (tests, benchmarks, the tuner, drills, checks) starts. Its admin APIs
    are keyed (ServerOptions) and its readiness strict, as `serving up`'s are. With `failed_ok` a
    model that failed to load is left for the caller to report (`failed` lists them)."""
    (server,) = serve_all([opts], [log_path], timeout, failed_ok=failed_ok)
    return server


def serve_all(
    options: list[ServerOptions],
    log_paths: list[Path | None],
    timeout: float = 300.0,
    *,
    failed_ok: bool = False,
) -> list[TritonProcess]:
    """Servers of one deployment (replicas), as :func:`serve` starts one: all started first, so they
    load side by side, then each awaited. If one never becomes ready, every one is stopped."""
    servers: list[TritonProcess] = []
    try:
        for opts, log_path in zip(options, log_paths, strict=True):
            servers.append(TritonProcess(opts, log_path=log_path).start())  # recorded at once: stopped below
        for server in servers:
            server.failed = server.wait_ready(timeout, failed_ok=failed_ok)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
