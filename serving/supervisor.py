"""Keep local replicas alive, as a kubelet keeps a pod's containers.

One lifecycle for every supervised server (`serving up`, foreground or detached): `Supervisor.
start_all` starts the replicas side by side and settles each — ready only when every model is
READY *and* answered its golden set (serving/verified.py); a model that failed to load leaves the
replica up but unready, naming the model and Triton's reason. `run` then watches them: a replica
whose process exits, or whose `/v2/health/live` fails `liveness_failures` probes in a row (hung),
is killed, cleaned (its orphaned backend stubs, its shared-memory regions) and started again after
a backoff that doubles up to a cap; after `max_failures` failures in a row it is left down and
reported (`serving status` exits non-zero). A replica that stays ready for `stable_s` has its count
reset. Ctrl-C / SIGTERM (and `serving down`) stop every replica.

In the foreground `serving up` runs the supervisor itself; with `--detach` the same supervisor runs
in a small process of its own (`python -m serving.supervisor SPEC`), recorded in the state file,
whose children the servers are — only a parent learns a child's exit status.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnn_deploy_core.machine import processes_where
from serving import ServingError
from serving.record import forget, partial_record, record_replicas, state_path_of_spec
from serving.triton import (
    ServerOptions,
    TritonProcess,
    describe_failed,
    failed_models,
    is_live,
    is_ready,
    kill_tree,
    remove_shm_regions,
    repository_index,
    serve_all,
    serving_every_model,
    shm_prefix,
)
from serving.verified import verifiable, verify_replica

POLL_S = 0.5


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a replica, when to call it hung, and when to give up on it (data: the
    decisions are the small pure methods below)."""

    max_failures: int = 5  # this many failures in a row (deaths, hangs, failed starts): left down
    stable_s: float = 300.0  # ready this long and the count of failures in a row starts again
    first_backoff_s: float = 1.0  # doubled for each failure in a row, up to max_backoff_s
    max_backoff_s: float = 60.0
    ready_timeout_s: float = 600.0  # a restart not settled by then counts as a failure
    probe_period_s: float = 2.0  # /v2/health/live of a started replica, this often
    probe_timeout_s: float = 2.0
    liveness_failures: int = 3  # this many failed probes in a row: hung, killed and restarted

    def backoff(self, failures: int) -> float:
        """Seconds to wait before the next start, after `failures` failures in a row (>= 1)."""
        return min(self.first_backoff_s * 2 ** max(failures - 1, 0), self.max_backoff_s)

    def gives_up(self, failures: int) -> bool:
        """True when the replica failed `max_failures` times in a row."""
        return failures >= self.max_failures

    def hung(self, missed_probes: int) -> bool:
        """True when the liveness probe failed `liveness_failures` times in a row."""
        return missed_probes >= self.liveness_failures

    def settled(self, ready_since: float | None, now: float) -> bool:
        """True when a replica has been ready long enough to forget its past failures."""
        return ready_since is not None and now - ready_since >= self.stable_s


def describe_exit(returncode: int | None) -> str:
    """A process's end in words: 'killed by SIGKILL', 'exit code 1'."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def orphan_stubs(grpc_port: int) -> list[int]:
    """The Python backend stubs a dead server on `grpc_port` left behind: they ignore SIGTERM and
    poll their parent's shared memory for good (see TritonProcess.kill). Found by the per-server
    shared-memory prefix on their command line, since they are no longer the server's children."""
    prefix = shm_prefix(grpc_port).encode()
    return processes_where("cmdline", lambda cmd: b"triton_python_backend_stub" in cmd and prefix in cmd)


@dataclass
class Replica:
    """One supervised server: its process and its history."""

    index: int
    opts: ServerOptions
    log_path: Path
    process: TritonProcess | None = None
    state: str = "starting"  # starting | ready | unready | restarting | down
    restarts: int = 0
    last_exit: str | None = None
    failures: int = 0  # in a row: deaths, hangs and failed starts since it last stayed ready
    due: float = 0.0  # restarting: when to start again; starting: when to give up waiting
    ready_since: float | None = None
    missed_probes: int = 0
    next_probe: float = 0.0
    problem: str | None = None  # why it is not ready (unready, down)
    failed: list[dict] = field(default_factory=list)  # models that failed to load: Triton's index rows
    unverifiable: list[str] = field(default_factory=list)  # READY models no golden set can check

    @property
    def name(self) -> str:
        return f"replica {self.index + 1} ({self.opts.http_url})"

    def record(self) -> dict:
        """What the state file says of it (read by status, down, rollback, the tests)."""
        pid = self.process.process.pid if self.process and self.process.process else 0
        return {
            "pid": pid,
            "http_url": self.opts.http_url,
            "grpc_url": self.opts.grpc_url,
            "metrics_url": self.opts.metrics_url,
            "log": str(self.log_path),
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "problem": self.problem,
            "failed_models": self.failed,
        }


class Supervisor:
    """Starts replicas, settles them (ready = verified), restarts the ones that die or hang, stops
    them all when told to."""

    def __init__(
        self,
        replicas: list[Replica],
        *,
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        on_change: Callable[[list[dict]], None] = lambda records: None,
        verify: bool = True,
    ):
        self.replicas = replicas
        self.policy = policy or RestartPolicy()
        self.say = say
        self.on_change = on_change
        self.verify = verify

    def records(self) -> list[dict]:
        return [r.record() for r in self.replicas]

    def start_all(self, timeout: float) -> None:
        """Start every replica (they load side by side) and settle each; all stopped on failure."""
        try:
            servers = serve_all(
                [r.opts for r in self.replicas], [r.log_path for r in self.replicas], timeout, failed_ok=True
            )
            for r, server in zip(self.replicas, servers, strict=True):
                r.process = server
            for r in self.replicas:
                self._settle(r, r.process.failed, time.monotonic())
        except BaseException:
            self.stop_all()
            raise

    def _settle(self, r: Replica, failed: list[dict], now: float) -> None:
        """A started replica whose loading is over: ready only if no model failed and every model
        answered its golden set; else unready (it keeps serving the good ones), saying why."""
        r.failed, r.missed_probes, r.next_probe = failed, 0, now + self.policy.probe_period_s
        problem = f"model(s) failed to load: {describe_failed(failed)}" if failed else None
        if problem is None and self.verify:
            ready = [m["name"] for m in repository_index(r.opts.http_url, r.opts.admin_key)]
            checked, r.unverifiable = verifiable(r.opts.repository, sorted(set(ready)))
            problem = verify_replica(r.opts, checked)
        r.problem = problem
        r.state = "unready" if problem else "ready"
        r.ready_since = None if problem else time.monotonic()
        if problem:
            self.say(f"{r.name} NOT ready: {problem} (log: {r.log_path})")
        elif r.restarts:
            self.say(f"{r.name} ready again (restart {r.restarts})")

    def run(self) -> int:
        """Supervise until Ctrl-C / SIGTERM (exit 0 after stopping every replica) or until every
        replica is down for good (exit 1)."""

        def terminate(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            while any(r.state != "down" for r in self.replicas):
                if self.step(time.monotonic()):
                    self.on_change(self.records())
                time.sleep(POLL_S)
            self.say("every replica is down for good: stopping")
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop_all()

    def step(self, now: float) -> bool:
        """One look at every replica; True when something changed."""
        changed = False
        for r in self.replicas:
            exited = r.process is not None and r.process.process.poll() is not None
            if r.state in ("ready", "unready", "starting") and exited:
                self._died(r, describe_exit(r.process.process.returncode), now)
                changed = True
            elif r.state == "starting":
                changed |= self._starting(r, now)
            elif r.state in ("ready", "unready") and now >= r.next_probe:
                changed |= self._probe(r, now)
            elif r.state == "restarting" and now >= r.due:
                self._start(r, now)
                changed = True
        return changed

    def _starting(self, r: Replica, now: float) -> bool:
        url = r.opts.http_url
        failed = None
        if is_ready(url):
            failed = []
        elif is_live(url):
            with contextlib.suppress(ServingError):
                failed = failed_models(repository_index(url, r.opts.admin_key)) or None
        if failed is not None:
            self._settle(r, failed, now)
            return True
        if now >= r.due:
            self._kill(r)
            self._died(r, f"not ready after {self.policy.ready_timeout_s:.0f} s", now)
            return True
        return False

    def _probe(self, r: Replica, now: float) -> bool:
        """The liveness probe: a hung server (alive, not answering) is killed and restarted."""
        r.next_probe = now + self.policy.probe_period_s
        if is_live(r.opts.http_url, timeout=self.policy.probe_timeout_s):
            r.missed_probes = 0
            if r.failures and r.state == "ready" and self.policy.settled(r.ready_since, now):
                r.failures = 0
            mended = r.state == "unready" and r.failed
            if mended and serving_every_model(r.opts.http_url, r.opts.admin_key, r.opts.repository):
                self._settle(r, [], now)  # the failed model was mended and reloaded (`serving repo`)
                return True
            return False
        r.missed_probes += 1
        if not self.policy.hung(r.missed_probes):
            return False
        self._kill(r)
        self._died(r, f"hung: /v2/health/live failed {r.missed_probes} probes in a row", now)
        return True

    def _kill(self, r: Replica) -> None:
        if r.process and r.process.process and r.process.process.poll() is None:
            kill_tree(r.process.process.pid)  # SIGKILL reaches a stopped (SIGSTOP) process too
            r.process.process.wait()

    def _died(self, r: Replica, how: str, now: float) -> None:
        r.last_exit = how
        r.failures += 1
        r.ready_since = None
        pid = r.process.process.pid if r.process and r.process.process else "?"
        self._clean(r)
        if self.policy.gives_up(r.failures):
            r.state, r.problem = "down", f"{r.failures} failures in a row, the last: {how}"
            self.say(
                f"{r.name} (pid {pid}) failed: {how}; {r.failures} failures in a row: left down "
                f"(see {r.log_path})"
            )
            return
        wait = self.policy.backoff(r.failures)
        r.state, r.due, r.problem = "restarting", now + wait, how
        self.say(f"{r.name} (pid {pid}) failed: {how}; restarting in {wait:.0f} s (log: {r.log_path})")

    def _clean(self, r: Replica) -> None:
        """What a dead server leaves: its orphaned backend stubs and shared-memory regions."""
        for stub in orphan_stubs(r.opts.grpc_port):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(stub, signal.SIGKILL)
        if r.process:
            r.process.stop()  # closes its log; removes its regions (the process has ended)
        remove_shm_regions(r.opts.grpc_port)

    def _start(self, r: Replica, now: float) -> None:
        r.restarts += 1
        try:
            r.process = TritonProcess(r.opts, log_path=r.log_path).start()
        except ServingError as e:
            r.process = None
            self._died(r, f"could not start: {e}", now)
            return
        r.state, r.due = "starting", now + self.policy.ready_timeout_s

    def stop_all(self) -> None:
        for r in self.replicas:
            if r.process:
                r.process.stop()
            with contextlib.suppress(OSError):
                for stub in orphan_stubs(r.opts.grpc_port):
                    os.kill(stub, signal.SIGKILL)


# --- the detached supervisor: `python -m serving.supervisor SPEC` ---------------------------------


PATH_OPTIONS = ("tls_cert", "tls_key", "tls_client_ca")  # ServerOptions' optional paths (gRPC TLS)


def spec_to_json(
    every: list[ServerOptions], logs: list[Path], policy: RestartPolicy, timeout: float, verify: bool = True
) -> str:
    def plain(o: ServerOptions) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()}  # every path

    return json.dumps(
        {
            "replicas": [plain(o) for o in every],
            "logs": [str(p) for p in logs],
            "policy": asdict(policy),
            "timeout": timeout,
            "verify": verify,
        }
    )


def spec_from_json(text: str) -> tuple[list[ServerOptions], list[Path], RestartPolicy, float, bool]:
    spec = json.loads(text)
    every = []
    for d in spec["replicas"]:
        d = {**d, "repository": Path(d["repository"])}
        for key in ("backend_dir", *PATH_OPTIONS):
            d[key] = Path(d[key]) if d.get(key) else None
        for key in ("extra_args", "cpus"):
            d[key] = tuple(d[key])
        d["env"] = tuple(tuple(pair) for pair in d["env"])
        every.append(ServerOptions(**d))
    logs = [Path(p) for p in spec["logs"]]
    policy = RestartPolicy(**spec["policy"])
    return every, logs, policy, float(spec["timeout"]), bool(spec.get("verify", True))


def main(argv: list[str]) -> int:
    """The detached supervisor: start the replicas (its children), record them, supervise."""
    spec_path = Path(argv[0])
    try:
        every, logs, policy, timeout, verify = spec_from_json(spec_path.read_text())
    finally:
        spec_path.unlink(missing_ok=True)  # it holds the admin key
    say = lambda line: print(time.strftime("%H:%M:%S ") + line, flush=True)  # noqa: E731
    state_path = state_path_of_spec(spec_path)
    record = partial_record(every[0], os.getpid(), state_path.parent)
    supervisor = Supervisor(
        [Replica(k, o, logs[k]) for k, o in enumerate(every)],
        policy=policy,
        say=say,
        on_change=lambda records: record_replicas(state_path, record, records),
        verify=verify,
    )
    try:
        supervisor.start_all(timeout)
    except BaseException as e:
        say(f"error: {e}")
        forget(state_path)
        return 1
    record_replicas(state_path, record, supervisor.records())
    say(f"supervising {len(every)} replica(s)")
    try:
        return supervisor.run()
    finally:
        forget(state_path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
