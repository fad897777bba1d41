"""`serving up | status | down`: the local CPU server, in the foreground or detached.

With `--replicas N`, N servers of the same repository on consecutive blocks of ports (replica k
adds 3k to each port: 8000-8002, 8003-8005, ...), for failure drills and for a client that
spreads its load over them (`--url` repeated). One state file records them all; `status`,
`down` and `rollback` act on every replica.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from cnn_deploy_core import paths
from serving import ServingError
from serving.triton import (
    ADMIN_HEADER,
    ServerOptions,
    TritonProcess,
    check_ports,
    is_ready,
    kill_tree,
    remove_shm_regions,
)

STATE_NAME = "server.json"
LOG_NAME = "triton.log"


def state_file(state_dir: Path | None = None) -> Path:
    """The detached server's record; anchored to the project (see cnn_deploy_core.paths)."""
    return (state_dir or paths.state_dir()) / STATE_NAME


@dataclass
class ServerState:
    """What `status` and `down` need to find a detached server; written 0600 (it holds the key)."""

    pid: int
    http_url: str
    grpc_url: str
    metrics_url: str
    repository: str
    config_name: str
    admin_key: str
    log: str
    replicas: list[dict] = field(default_factory=list)  # the others: pid, *_url, log (same keys)

    def all(self) -> list[dict]:
        """Every replica, this record's first: {pid, http_url, grpc_url, metrics_url, log}."""
        first = {k: getattr(self, k) for k in ("pid", "http_url", "grpc_url", "metrics_url", "log")}
        return [first, *self.replicas]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ServerState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            raise ServingError(f"{path} is unreadable ({e}); remove it if no server is running") from e


def admin_key(explicit: str | None) -> str:
    return explicit or os.environ.get("TRITON_ADMIN_KEY") or secrets.token_urlsafe(18)


def pid_alive(pid: int) -> bool:
    """Is `pid` a running tritonserver? A recorded pid may have been reused since (a reboot)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not a server we started
    try:
        return "tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True  # no /proc (not Linux): trust the signal check


def model_table(http_url: str, key: str) -> list[dict]:
    """Every model in the repository with its state and, when not ready, Triton's reason."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(
        http_url.removeprefix("http://"), connection_timeout=5, network_timeout=10
    )
    try:
        return client.get_model_repository_index(headers={ADMIN_HEADER: key})
    except InferenceServerException as e:
        raise ServingError(f"cannot list models at {http_url}: {e.message()}") from e
    except Exception as e:  # socket errors and timeouts of the HTTP client library
        raise ServingError(f"cannot list models at {http_url}: {e.__class__.__name__}: {e}") from e
    finally:
        client.close()


def reload_model(http_url: str, key: str, model: str, timeout: float = 600.0) -> None:
    """Ask a running server to reload one model from the repository (explicit model control).

    Triton keeps serving the loaded versions until the new configuration is ready, so a rollback
    or a new version takes effect without a failed request.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(
        http_url.removeprefix("http://"), connection_timeout=10, network_timeout=timeout
    )
    try:
        client.load_model(model, headers={ADMIN_HEADER: key})
    except InferenceServerException as e:
        raise ServingError(f"the server at {http_url} could not reload {model}: {e.message()}") from e
    except Exception as e:
        raise ServingError(f"cannot reach {http_url} to reload {model}: {e.__class__.__name__}: {e}") from e
    finally:
        client.close()


def replica_options(opts: ServerOptions, replicas: int) -> list[ServerOptions]:
    """Replica k's options: every port shifted by 3k; each knows how many share the cores."""
    if replicas < 1:
        raise ServingError(f"--replicas must be >= 1, got {replicas}")
    return [
        replace(
            opts,
            http_port=opts.http_port + 3 * k,
            grpc_port=opts.grpc_port + 3 * k,
            metrics_port=opts.metrics_port + 3 * k,
            replicas=replicas,
        )
        for k in range(replicas)
    ]


def _log_name(k: int, opts: ServerOptions, detach: bool) -> str:
    if not detach:
        return f"triton-{opts.http_port}.log"
    return LOG_NAME if k == 0 else f"triton-{k + 1}.log"


def start(
    opts: ServerOptions,
    *,
    detach: bool,
    timeout: float = 600.0,
    state_dir: Path | None = None,
    replicas: int = 1,
) -> tuple[list[TritonProcess], ServerState]:
    """Start `replicas` servers, wait until all are ready (or stop them all), record them."""
    state_dir = state_dir or paths.state_dir()
    existing = ServerState.load(state_file(state_dir))
    if existing and any(pid_alive(r["pid"]) for r in existing.all()):
        raise ServingError(
            f"a server is already running (pid {existing.pid}, {existing.http_url}); "
            "stop it with `python -m serving down`"
        )
    every = replica_options(opts, replicas)
    for o in every:
        check_ports(o)
    processes: list[TritonProcess] = []
    try:
        for k, o in enumerate(every):
            processes.append(
                TritonProcess(o, log_path=state_dir / _log_name(k, o, detach)).start(detach=detach)
            )
        for process in processes:
            process.wait_ready(timeout)
    except BaseException:
        for process in processes:
            process.stop()
        raise
    records = [
        {
            "pid": p.process.pid,
            "http_url": p.opts.http_url,
            "grpc_url": p.opts.grpc_url,
            "metrics_url": p.opts.metrics_url,
            "log": str(p.log_path),
        }
        for p in processes
    ]
    state = ServerState(
        **records[0],
        repository=str(opts.repository),
        config_name=opts.config_name,
        admin_key=opts.admin_key or "",
        replicas=records[1:],
    )
    state.save(state_file(state_dir))
    return processes, state


def serve_foreground(processes: list[TritonProcess]) -> int:
    """Block until a server exits or Ctrl-C (or SIGTERM) stops them; the caller cleans up."""

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        while all(p.process.poll() is None for p in processes):
            time.sleep(0.5)
        return next(p.process.returncode for p in processes if p.process.poll() is not None) or 0
    except KeyboardInterrupt:
        return max(p.stop() or 0 for p in processes)
    finally:
        signal.signal(signal.SIGTERM, previous)


def replica_ready(replica: dict) -> bool:
    return pid_alive(replica["pid"]) and is_ready(replica["http_url"])


def status(state_dir: Path | None = None) -> tuple[ServerState | None, bool]:
    """The recorded server(s), and whether every replica is ready."""
    state = ServerState.load(state_file(state_dir))
    if state is None:
        return None, False
    return state, all(replica_ready(r) for r in state.all())


def down(timeout: float = 30.0, state_dir: Path | None = None) -> str:
    """SIGTERM every recorded replica (Triton drains in-flight requests), SIGKILL after `timeout`."""
    path = state_file(state_dir)
    state = ServerState.load(path)
    pids = [r["pid"] for r in state.all()] if state else []
    pids = [pid for pid in pids if pid_alive(pid)]
    for pid in list(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pids.remove(pid)
    if not pids:
        path.unlink(missing_ok=True)
        return "no server running"
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        for pid in pids:
            _reap(pid)
        time.sleep(0.2)
    for pid in pids:
        if pid_alive(pid):
            kill_tree(pid)  # its backend stubs too: they outlive a SIGKILLed server
    for replica in state.all():  # what a killed (or crashed) server could not remove
        remove_shm_regions(urlsplit(replica["grpc_url"]).port)
    path.unlink(missing_ok=True)
    return f"stopped server pid {', '.join(map(str, pids))}"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # only succeeds if we are its parent; harmless otherwise
    except ChildProcessError:
        pass
