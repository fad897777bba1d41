"""`serving up | status | down`: the local CPU server, in the foreground or detached."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cnn_deploy_core import paths
from serving import ServingError
from serving.triton import ADMIN_HEADER, ServerOptions, TritonProcess, check_ports, is_ready

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


def start(
    opts: ServerOptions, *, detach: bool, timeout: float = 600.0, state_dir: Path | None = None
) -> tuple[TritonProcess, ServerState]:
    state_dir = state_dir or paths.state_dir()
    existing = ServerState.load(state_file(state_dir))
    if existing and pid_alive(existing.pid):
        raise ServingError(
            f"a server is already running (pid {existing.pid}, {existing.http_url}); "
            "stop it with `python -m serving down`"
        )
    check_ports(opts)
    log = state_dir / (LOG_NAME if detach else f"triton-{opts.http_port}.log")
    process = TritonProcess(opts, log_path=log).start(detach=detach)
    try:
        process.wait_ready(timeout)
    except BaseException:
        process.stop()
        raise
    state = ServerState(
        pid=process.process.pid,
        http_url=opts.http_url,
        grpc_url=opts.grpc_url,
        metrics_url=opts.metrics_url,
        repository=str(opts.repository),
        config_name=opts.config_name,
        admin_key=opts.admin_key or "",
        log=str(log),
    )
    state.save(state_file(state_dir))
    return process, state


def serve_foreground(process: TritonProcess) -> int:
    """Block until the server exits or Ctrl-C (or SIGTERM) stops it; the caller cleans up."""

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        while process.process.poll() is None:
            time.sleep(0.5)
        return process.process.returncode or 0
    except KeyboardInterrupt:
        return process.stop() or 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def status(state_dir: Path | None = None) -> tuple[ServerState | None, bool]:
    state = ServerState.load(state_file(state_dir))
    if state is None:
        return None, False
    return state, pid_alive(state.pid) and is_ready(state.http_url)


def down(timeout: float = 30.0, state_dir: Path | None = None) -> str:
    path = state_file(state_dir)
    state = ServerState.load(path)
    if state is None or not pid_alive(state.pid):
        path.unlink(missing_ok=True)
        return "no server running"
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return "no server running"
    deadline = time.monotonic() + timeout
    while pid_alive(state.pid) and time.monotonic() < deadline:
        _reap(state.pid)
        time.sleep(0.2)
    if pid_alive(state.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return f"stopped server pid {state.pid}"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # only succeeds if we are its parent; harmless otherwise
    except ChildProcessError:
        pass
