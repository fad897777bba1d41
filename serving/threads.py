"""How the ONNX Runtime sessions of one machine share its cores.

Every model instance of every served version of every CPU model is its own backend process with
its own ORT thread pool. Left at ORT's default (a thread per core each), two busy models run
twice as many threads as there are cores, and ORT's spinning workers burn the cores the other
model's threads are waiting for. Policies (`serving up --ort-threads`):
- "adapt" (default): a run that finds nobody else computing gets every core (÷ the replicas on
  this machine); a run that finds another model computing runs beside it on a narrow twin of
  its session, with its share of the cores (cores ÷ sessions), built once it has run beside
  others a few times. One file lock per server says which (cnn_deploy_core/cores.py). One busy model runs
  as with "cores", two busy models as with "share";
- "turns": every session gets every core, and executions of different models take turns on
  them through Triton's rate limiter (each CPU instance holds the "cores" resource while it
  runs; the server has one);
- "cores": every core for each session, without turns;
- "share": the sessions the repository loads split the cores (each gets cores ÷ sessions).
A config that names its own `intra_op_thread_count` (`--cpu-threads`, or a `serving tune`
plan like 1x2) keeps it and runs free of turns and twins. Spinning is turned off as soon as more than
one session shares the machine, but within an "adapt" run (see `cpu_share`). The figures behind
the default: `make bench-threads`. "turns" waits in Triton's rate
limiter, not on a lock in our backend: a lock takes its batch before waiting, where the rate
limiter lets the batch grow while it waits. "adapt"'s runs never wait while a core is free for them.

The backend reads the decision from the environment (ENV_ORT_THREADS, ENV_ORT_SPINNING, and for
"adapt" ENV_ORT_NARROW and ENV_ORT_GATE), because Triton starts it per model and it cannot see the
others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cnn_deploy_core.layout import ENV_ORT_NARROW, ENV_ORT_SPINNING, ENV_ORT_THREADS, SPINNING_MODES


@dataclass(frozen=True)
class CpuShare:
    sessions: int  # ORT sessions sharing the cores, without an explicit thread count
    pinned_threads: int  # threads claimed by sessions with an explicit count
    cores: int
    threads: int  # per shared session
    spinning: str  # a key of SPINNING_MODES: "1" on, "0" off, "run" within a run only
    turns: bool = False  # executions take turns on the cores (Triton's rate limiter)
    narrow: int = 0  # "adapt": the threads of a run beside another (0: no narrow twin)

    def environment(self) -> dict[str, str]:
        env = {ENV_ORT_THREADS: str(self.threads), ENV_ORT_SPINNING: self.spinning}
        return env | ({ENV_ORT_NARROW: str(self.narrow)} if self.narrow else {})

    def describe(self) -> str:
        how = "taking turns on them" if self.turns else "shared" if self.threads < self.cores else "all each"
        if self.narrow:
            how = f"alone, {self.narrow} beside another run"
        return (
            f"{self.sessions} ONNX Runtime session(s), {self.cores} cores: "
            f"{self.threads} intra-op thread(s) each, {how}, spinning {SPINNING_MODES[self.spinning]}"
            + (f"; {self.pinned_threads} more thread(s) set in configs" if self.pinned_threads else "")
        )


def _config(model_dir: Path, config_name: str) -> model_config_pb2.ModelConfig | None:
    path = model_dir / "configs" / f"{config_name}.pbtxt"  # what --model-config-name reads
    if not path.is_file():
        path = model_dir / "config.pbtxt"
    if not path.is_file():
        return None
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError):
        return None  # Triton reports a broken config when it loads it; it runs no session here


@dataclass(frozen=True)
class Sessions:
    shared: int = 0  # sessions without a thread count of their own
    pinned: int = 0  # sessions with one
    pinned_threads: int = 0  # the threads those claim

    def __mul__(self, n: int) -> Sessions:
        return Sessions(self.shared * n, self.pinned * n, self.pinned_threads * n)


def count_sessions(repository: Path, config_name: str = "cpu") -> Sessions:
    """The CPU ONNX Runtime sessions a repository loads: instances x served versions x models."""
    shared = pinned = pinned_threads = 0
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        config = _config(model_dir, config_name)
        if config is None or config.backend != "onnxruntime":
            continue
        groups = config.instance_group or [model_config_pb2.ModelInstanceGroup()]
        if any(g.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU for g in groups):
            continue
        instances = sum(g.count or 1 for g in groups)
        policy = config.version_policy
        versions = len(policy.specific.versions) if policy.HasField("specific") else 1
        try:
            threads = int(config.parameters["intra_op_thread_count"].string_value or 0)
        except ValueError:
            threads = 0
        if threads > 0:
            pinned += instances * versions
            pinned_threads += instances * versions * threads
        else:
            shared += instances * versions
    return Sessions(shared, pinned, pinned_threads)


POLICIES = ("adapt", "turns", "share", "cores")
DEFAULT_POLICY = "adapt"
# The rate-limiter resource a CPU instance holds while it runs (count 1; the server has 1).
CORES_RESOURCE = "cores"


def server_args(policy: str) -> list[str]:
    """The tritonserver flags a policy needs: the rate limiter, for "turns"."""
    if policy != "turns":
        return []
    return ["--rate-limit=execution_count", f"--rate-limit-resource={CORES_RESOURCE}:1"]


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    os.cpu_count() is the host's count; in a container limited to 4 CPUs on a 64-core node
    (Kubernetes `resources.limits.cpu`, `docker run --cpus`) it would give every session 16x
    too many threads.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))  # rounded up
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read: the affinity stands
    return max(1, cores)


def cpu_share(
    repository: Path,
    config_name: str = "cpu",
    *,
    replicas: int = 1,
    policy: str = DEFAULT_POLICY,
    cores: int | None = None,
) -> CpuShare:
    """Each session's threads under `policy` (see the module's docstring; the trade-off's figures:
    `make bench-threads`). `cores`: the server's own (pinned) count, else this
    process's `available_cores()`."""
    if policy not in POLICIES:
        raise ValueError(f"thread policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    cores = cores or available_cores()
    sessions = count_sessions(repository, config_name) * replicas
    # Explicit counts are not subtracted: they are the user's (or the tuner's) call, and the one
    # every repository has (identity, 1 thread) does no work worth a core.
    # "cores" and "turns": all the cores for each session, divided among the replicas on this
    # machine (separate servers, each meant to have its slice of the machine).
    shared = sessions.shared if policy == "share" else replicas
    threads = max(1, cores // shared) if shared else cores
    # "adapt": a narrow twin per session with its share of this server's cores, when that is less
    narrow = 0
    if policy == "adapt" and sessions.shared > replicas:
        narrow = max(1, threads // -(-sessions.shared // replicas))
        narrow = narrow if narrow < threads else 0
    # Spinning only for a session truly alone. Not for one busy model beside the identity model:
    # spinning workers take the cores a client on the same machine needs, and a served model then
    # falls behind into a backlog that grows its latency and memory (`make drills`' soak). Under
    # "adapt", spinning within a run only (ORT's `session.force_spinning_stop`): a wide run has the
    # cores to itself (a narrow run waits for it to end), and its workers stop spinning the moment
    # it returns, which serves faster than "off" (`make bench-threads`). Not under "turns": there
    # it is no better than "off".
    turns = policy == "turns"
    if sessions.shared + sessions.pinned <= 1:
        spinning = "1"
    else:
        spinning = "run" if narrow else "0"
    return CpuShare(
        sessions.shared, sessions.pinned_threads, cores, threads, spinning, turns=turns, narrow=narrow
    )
