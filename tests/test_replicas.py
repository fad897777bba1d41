"""Replicas and failover: several endpoints in the client and the load test, `serving up --replicas`,
timeouts never retried, the backend's per-request re-run of a failed batch, the cores' share.

Real tritonservers on a small repository (identity + a model that fails on a bad input); the
"server that never answers" for the timeout tests is a plain socket that accepts and stays silent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clients import ClientError, InferenceError, RequestTimeoutError, ServerOverloadedError
from clients.client import AsyncTritonClient, TritonClient, parse_urls, translate
from cnn_deploy_core.layout import IDENTITY_MODEL, INPUT_NAME, OUTPUT_NAME
from serving import ServingError
from serving.triton import free_port_block, kill_tree
from tests.conftest import run_cli

pytestmark = pytest.mark.integration
GATHER_MODEL = "gather"  # logits = x + table[int(x[0])]: an index past the table fails in ORT
TABLE_ROWS = 10


# --- units ---------------------------------------------------------------------------------


def test_several_urls_as_a_list_or_comma_separated():
    assert [str(e) for e in parse_urls("grpc://a:1, grpc://b:2")] == ["grpc://a:1", "grpc://b:2"]
    assert len(parse_urls(["http://a:1", "http://b:2,http://c:3"])) == 3
    with pytest.raises(ClientError, match="one protocol"):
        parse_urls("grpc://a:1,http://b:2")
    with pytest.raises(ClientError, match="twice"):
        parse_urls("grpc://a:1,grpc://a:1")
    with pytest.raises(ClientError, match="no server URL"):
        parse_urls(" , ")


def test_a_full_queue_is_overload_not_unavailable():
    from tritonclient.utils import InferenceServerException

    (endpoint,) = parse_urls("grpc://a:1")
    error = InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
    assert isinstance(translate(error, endpoint, "m"), ServerOverloadedError)  # so: not retried
    # ... and the load generator's raw gRPC transport says the same (not "unreachable", which
    # would mark the replica down and fail the request over).
    import grpc

    from clients.loadtest.transport import translate_grpc

    raw = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "Exceeds maximum queue size"
    )
    assert isinstance(translate_grpc(raw, "a:1", "m"), ServerOverloadedError)


def test_cpu_share_counts_sessions_across_models_and_replicas(tmp_path):
    from serving.repository import place_identity
    from serving.threads import available_cores, count_sessions, cpu_share

    place_identity(tmp_path)  # 1 instance with its own thread count: pinned
    _place_gather(tmp_path, instances=2)  # 2 instances sharing the cores
    sessions = count_sessions(tmp_path, "cpu")
    assert (sessions.shared, sessions.pinned, sessions.pinned_threads) == (2, 1, 1)
    cores = available_cores()
    turns = cpu_share(tmp_path, "cpu", replicas=2, policy="turns")  # every core, ÷ replicas, in turns
    assert turns.turns and turns.threads == max(1, cores // 2) and turns.spinning == "0"
    assert turns.environment()["CNN_DEPLOY_ORT_SPINNING"] == "0" and not turns.narrow
    free = cpu_share(tmp_path, "cpu", replicas=2, policy="cores")  # the same, without the turns
    assert not free.turns and free.threads == max(1, cores // 2) and free.spinning == "0"
    share = cpu_share(tmp_path, "cpu", replicas=2, policy="share")
    assert not share.turns and share.sessions == 4
    assert share.threads == max(1, cores // 4) and share.spinning == "0"
    assert share.environment()["CNN_DEPLOY_ORT_SPINNING"] == "0"
    # "adapt": every core alone; beside another run, the sessions' share of the server's cores
    adapt = cpu_share(tmp_path, "cpu", replicas=1, policy="adapt", cores=8)
    assert (adapt.threads, adapt.narrow, adapt.spinning, adapt.turns) == (8, 4, "run", False)
    assert cpu_share(tmp_path, "cpu", cores=8) == adapt  # the default
    assert adapt.environment()["CNN_DEPLOY_ORT_NARROW"] == "4"
    halves = cpu_share(tmp_path, "cpu", replicas=2, policy="adapt", cores=8)  # each replica its half
    assert (halves.threads, halves.narrow) == (4, 2)
    assert cpu_share(tmp_path, "cpu", replicas=1, policy="adapt", cores=1).narrow == 0  # 1 thread
    assert "CNN_DEPLOY_ORT_NARROW" not in every_core_env(tmp_path)
    every = cpu_share(tmp_path, "cpu", replicas=1, policy="cores")  # each session every core
    assert every.threads == cores and every.spinning == "0" and not every.turns
    alone = tmp_path / "alone"
    _place_gather(alone, instances=1)
    assert cpu_share(alone, "cpu", policy="adapt").narrow == 0  # alone: no narrow twin
    for policy in ("adapt", "turns", "cores", "share"):  # a session alone spins, whatever the policy
        assert cpu_share(alone, "cpu", policy=policy).spinning == "1"
        assert cpu_share(alone, "cpu", policy=policy).threads == cores


def every_core_env(repository):
    from serving.threads import cpu_share

    return cpu_share(repository, "cpu", policy="cores").environment()


def test_only_sessions_without_their_own_thread_count_take_turns_on_the_cores(tmp_path):
    """The CPU config's instance holds the rate limiter's "cores" resource while it runs, unless
    its thread count is its own (--cpu-threads, the tuner's winner); a server started with policy
    "turns" has one such resource, so executions of different models take turns. The default,
    "adapt", needs no rate limiter (cnn_deploy_core/cores.py)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from cnn_deploy_core.registry import get
    from serving.repository import CpuPlan, cpu_config, gpu_config, served_versions
    from serving.threads import CORES_RESOURCE, DEFAULT_POLICY, count_sessions, cpu_share, server_args
    from tests.test_serving_config import _version_dir

    _version_dir(tmp_path / "resnet50", 1)
    served = served_versions(tmp_path / "resnet50")

    def limiter(plan):
        text = cpu_config(get("resnet50"), served, plan).to_pbtxt()
        group = text_format.Parse(text, model_config_pb2.ModelConfig()).instance_group[0]
        return [(r.name, r.count) for r in group.rate_limiter.resources]

    assert limiter(CpuPlan(1, 0)) == [(CORES_RESOURCE, 1)]
    assert limiter(CpuPlan(2, 1)) == []
    limit = ["--rate-limit=execution_count", f"--rate-limit-resource={CORES_RESOURCE}:1"]
    assert server_args("turns") == limit and DEFAULT_POLICY == "adapt"
    assert server_args("adapt") == server_args("share") == server_args("cores") == []
    # GPU configs are unaffected: their instances name no resource (the rate limiter lets an
    # instance without one run whenever it is free), and no CPU session is counted for them.
    text = gpu_config(get("resnet50"), served).to_pbtxt()
    gpu = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert all(not g.rate_limiter.resources for g in gpu.instance_group)
    (tmp_path / "resnet50" / "configs").mkdir()
    (tmp_path / "resnet50" / "configs" / "gpu.pbtxt").write_text(text)
    assert count_sessions(tmp_path, "gpu").shared == 0
    # nor by "adapt": no CPU session, so no narrow twin and no gate (the backend also builds a
    # twin for KIND_CPU instances only)
    assert cpu_share(tmp_path, "gpu", policy="adapt", cores=8).narrow == 0


# --- a silent server: timeouts are not retried ---------------------------------------------------


class SilentServer:
    """Accepts connections and never answers: every request to it times out."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


# HTTP only: a gRPC call to a socket that never answers never finished its handshake, so it never
# reached a server and is failed over (clients/errors.py); gRPC's "sent, then timed out" case is in
# tests/test_errors.py, against a real gRPC server that takes the call and sleeps.
@pytest.mark.parametrize("protocol", ["http"])
def test_a_timeout_is_not_retried_nor_failed_over(protocol, replicas):
    silent = SilentServer()
    try:
        healthy = replicas["grpc"][0] if protocol == "grpc" else replicas["http"][0]
        urls = [f"{protocol}://127.0.0.1:{silent.port}", healthy]
        with TritonClient(urls, timeout=1.0, retries=2, backoff=0.05) as client:
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError):
                client._run(client._async._call(lambda c: c.is_server_live(**client._async._kw())))
            elapsed = time.monotonic() - started
            # One attempt only: a retry (or a failover) would have ended in an answer or taken 2 s+.
            assert elapsed < 1.9, elapsed
            assert len(silent.accepted) <= 1
            # The silent endpoint is not marked down by a timeout: it is slow, not gone.
            assert len(client._async.healthy()) == 2
    finally:
        silent.close()


# --- replicas: `serving up --replicas 2` ---------------------------------------------------------


def _gather_onnx():
    from onnx import TensorProto, helper, numpy_helper

    table = np.arange(TABLE_ROWS * 4, dtype=np.float32).reshape(TABLE_ROWS, 4)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", [INPUT_NAME, "zero"], ["first"], axis=1),  # x[:, 0]
            helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["rows"], axis=0),
            helper.make_node("Add", [INPUT_NAME, "rows"], [OUTPUT_NAME]),
        ],
        GATHER_MODEL,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _expected(x: np.ndarray) -> np.ndarray:
    table = np.arange(TABLE_ROWS * 4, dtype=np.float32).reshape(TABLE_ROWS, 4)
    return x + table[x[:, 0].astype(np.int64)]


def _place_gather(repository: Path, *, instances: int = 1) -> None:
    from serving.config import ModelConfig, Tensor

    model_dir = repository / GATHER_MODEL
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(_gather_onnx().SerializeToString())
    config = ModelConfig(
        name=GATHER_MODEL,
        backend="onnxruntime",
        inputs=(Tensor(INPUT_NAME, (4,)),),
        outputs=(Tensor(OUTPUT_NAME, (4,)),),
        max_batch_size=8,
        instance_count=instances,
        queue_delay_us=300_000,  # long: concurrent requests surely meet in one batch
        default_model_filename="model.onnx",
        warmup_batch_sizes=(),  # Triton's random warm-up data makes an index out of bounds
    )
    (model_dir / "configs").mkdir()
    for name in ("cpu", "gpu"):
        (model_dir / "configs" / f"{name}.pbtxt").write_text(config.to_pbtxt())
    (model_dir / "config.pbtxt").write_text(config.to_pbtxt())


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """`python -m serving up --replicas 2 --detach` on identity + gather, as a user runs it."""
    from serving.repository import place_identity

    repo = tmp_path_factory.mktemp("replica-repo")
    place_identity(repo)
    _place_gather(repo)
    state = tmp_path_factory.mktemp("replica-state")
    base = free_port_block(6)
    up = run_cli(
        "serving", "up", "--repository", str(repo), "--state-dir", str(state), "--detach", "--replicas", "2",
        "--http-port", str(base), "--grpc-port", str(base + 1), "--metrics-port", str(base + 2),
        timeout=300,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    record = json.loads((state / "server.json").read_text())
    info = {
        "up": up,
        "state": state,
        "repository": repo,
        "pids": [record["pid"], *(r["pid"] for r in record["replicas"])],
        "grpc": [record["grpc_url"], *(r["grpc_url"] for r in record["replicas"])],
        "http": [record["http_url"], *(r["http_url"] for r in record["replicas"])],
    }
    try:
        yield info
    finally:
        down = run_cli("serving", "down", "--state-dir", str(state), timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


def test_serving_up_starts_replicas_on_consecutive_ports_and_shares_the_cores(replicas):
    up = replicas["up"]
    assert "replica 2" in up.stdout
    assert "ONNX Runtime session(s)" in up.stderr  # the cores' share, said at start
    ports = [int(u.rsplit(":", 1)[1]) for u in replicas["http"]]
    assert ports[1] == ports[0] + 3
    status = run_cli("serving", "status", "--state-dir", str(replicas["state"]), "--json", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert len(json.loads(status.stdout)["replicas"]) == 2


def test_round_robin_spreads_calls_over_the_replicas(replicas):
    x = np.ones((1, 3, 224, 224), dtype=np.float32)
    counts = []
    with TritonClient(replicas["grpc"]) as client:
        for _ in range(6):
            client.infer(IDENTITY_MODEL, x)
        for url in replicas["grpc"]:
            with TritonClient(url) as one:
                counts.append(int(one.statistics(IDENTITY_MODEL)["inference_count"]))
    assert all(c >= 3 for c in counts), counts  # warm-up adds to both alike


def test_the_backend_reruns_a_failed_batch_one_request_at_a_time(replicas):
    good = [np.array([[k, 1, 2, 3]], dtype=np.float32) for k in (1, 2)]
    bad = np.array([[TABLE_ROWS + 5, 0, 0, 0]], dtype=np.float32)  # index past the table

    async def run():
        async with AsyncTritonClient(replicas["grpc"][0], retries=0) as client:
            before = await client.statistics(GATHER_MODEL)
            results = await asyncio.gather(
                *(client.infer(GATHER_MODEL, b, retry=False) for b in (good[0], bad, good[1])),
                return_exceptions=True,
            )
            return before, results, await client.statistics(GATHER_MODEL)

    before, results, after = asyncio.run(run())
    np.testing.assert_array_equal(results[0], _expected(good[0]))
    np.testing.assert_array_equal(results[2], _expected(good[1]))
    assert isinstance(results[1], InferenceError), results[1]
    assert "out of bounds" in str(results[1]) or "indices" in str(results[1]).lower()
    # They met in one dynamic batch (one execution for three requests): the re-run did the rest.
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert executions == 1, (before, after)
    with TritonClient(replicas["grpc"][0]) as client:  # and the model serves on
        np.testing.assert_array_equal(client.infer(GATHER_MODEL, good[0]), _expected(good[0]))


def test_loadtest_over_two_replicas_reports_each(replicas):
    from clients.loadtest import LoadTestConfig, run_loadtest

    config = LoadTestConfig(
        url=",".join(replicas["grpc"]),
        model=IDENTITY_MODEL,
        levels=(2,),
        warmup_s=0.5,
        window_s=1.0,
        max_step_s=10,
        min_samples=50,
    )
    report = run_loadtest(config)
    assert report.totals.wrong == 0 and report.totals.verified > 0
    assert [r.url for r in report.replicas] == replicas["grpc"]
    assert all(r.responses > 0 and not r.errors for r in report.replicas)


def test_a_killed_replica_fails_over_and_is_restarted(replicas):
    """Last in this module: it kills replica 2; the clients leave it out, its supervisor restarts it."""
    x = np.ones((2, 3, 224, 224), dtype=np.float32)
    kill_tree(replicas["pids"][1])  # with its backend stubs, as a container runtime would
    time.sleep(0.5)
    for protocol in ("grpc", "http"):
        with TritonClient(replicas[protocol], timeout=10, retries=0, cooldown=30) as client:
            for _ in range(4):  # every call answers, though every other one was sent to the dead one
                np.testing.assert_array_equal(client.infer(IDENTITY_MODEL, x), x.reshape(2, -1)[:, :1000])
            assert [str(e) for e in client._async.healthy()] == [replicas[protocol][0]]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = run_cli("serving", "status", "--state-dir", str(replicas["state"]), timeout=60)
        if status.returncode == 0:
            break
        time.sleep(1)
    assert status.returncode == 0, status.stdout
    assert "restarts 1, last exit: killed by SIGKILL" in status.stdout, status.stdout


@pytest.mark.parametrize("policy", ["adapt", "turns", "share", "cores"])
def test_the_backend_runs_with_the_threads_serving_up_decided(policy, tmp_path):
    from serving.threads import available_cores
    from serving.triton import ServerOptions, TritonProcess

    repo = tmp_path / "repo"
    _place_gather(repo)
    _place_gather_copy(repo, "gather_b")  # two sessions: the share is half the cores each
    opts = ServerOptions.on_free_ports(repo, backend_dir=tmp_path / "backends", ort_threads=policy)
    log = tmp_path / "triton.log"
    with TritonProcess(opts, log_path=log).start() as server:
        server.wait_ready(120)
        expected = max(1, available_cores() // 2) if policy == "share" else available_cores()
        narrow = available_cores() // 2 if policy == "adapt" else 0  # a twin for runs side by side
        spinning = "within a run only" if narrow else "off"
        assert server.share.threads == expected and server.share.describe().endswith(f"spinning {spinning}")
        assert server.share.narrow == narrow
    text = log.read_text(errors="replace")
    threads = f"{expected} alone, {narrow} beside another run" if narrow else f"{expected}"
    assert text.count(f"intra-op threads {threads}, spinning {spinning}") == 2, text[-3000:]
    # "turns": the server's rate limiter is on, and each instance holds the cores while it runs
    assert ("EXEC_COUNT" in text) == (policy == "turns"), text[-3000:]


def test_adapt_runs_beside_another_on_a_narrow_twin_built_when_first_needed(tmp_path):
    """The default policy, "adapt", on the real server: a run that finds another computing (here
    the test holds the gate as a narrow run would) is answered at once by the wide session while
    the narrow twin is built in the background, and by the twin afterwards, every answer right."""
    import fcntl
    import os

    from cnn_deploy_core.cores import BUSY
    from serving.threads import available_cores
    from serving.triton import ServerOptions, TritonProcess, gate_dir

    if available_cores() < 2:
        pytest.skip("one core: no narrow twin to build")
    repo = tmp_path / "repo"
    _place_gather(repo)
    _place_gather_copy(repo, "gather_b")
    opts = ServerOptions.on_free_ports(repo, backend_dir=tmp_path / "backends")
    log = tmp_path / "triton.log"
    x = np.array([[3, 1, 2, 0]], dtype=np.float32)
    with TritonProcess(opts, log_path=log).start() as server, TritonClient(opts.grpc_url) as client:
        server.wait_ready(120)
        np.testing.assert_array_equal(client.infer(GATHER_MODEL, x), _expected(x))  # alone: wide
        assert "narrow twin ready" not in log.read_text(errors="replace")  # not built unasked
        busy = os.open(gate_dir(opts) / BUSY, os.O_RDWR)
        fcntl.flock(busy, fcntl.LOCK_SH)  # another model's narrow run computes
        try:
            deadline = time.monotonic() + 30
            while "gather: narrow twin ready" not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                np.testing.assert_array_equal(client.infer(GATHER_MODEL, x), _expected(x))
                time.sleep(0.2)
            np.testing.assert_array_equal(client.infer(GATHER_MODEL, x), _expected(x))  # the twin
        finally:
            os.close(busy)
        assert "gather_b: narrow twin" not in log.read_text(errors="replace")  # it never ran beside
    assert not gate_dir(opts).exists()  # stopped: its lock files go with it


def test_a_pinned_server_keeps_to_its_cpus_and_a_killed_one_leaves_no_shared_memory(tmp_path):
    """Pinning: what the drills do to keep the load generator off the server's cores. Killing:
    the Python backend's shared-memory regions (RAM, in /dev/shm) go with the server."""
    import os

    from serving.triton import ServerOptions, TritonProcess, children, shm_prefix

    cpu = min(os.sched_getaffinity(0))
    repo = tmp_path / "repo"
    _place_gather(repo)
    _place_gather_copy(repo, "gather_b")
    opts = ServerOptions.on_free_ports(repo, backend_dir=tmp_path / "backends", cpus=(cpu,))
    log = tmp_path / "triton.log"
    with TritonProcess(opts, log_path=log).start() as server:
        server.wait_ready(120)
        pids = [server.process.pid, *children(server.process.pid)]
        assert len(pids) >= 3  # the server and a backend process per model
        assert all(os.sched_getaffinity(pid) == {cpu} for pid in pids)
        assert server.share.cores == 1 and server.share.threads == 1  # its own core, not ours
        regions = lambda: list(Path("/dev/shm").glob(f"{shm_prefix(opts.grpc_port)}*"))  # noqa: E731
        assert regions()
        server.kill()
        assert not regions()
        deadline = time.monotonic() + 10  # SIGKILLed: gone (or a zombie) within moments
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(pid) for pid in pids)
    assert log.read_text(errors="replace").count("intra-op threads 1, spinning off") == 2
    with pytest.raises(ServingError, match="distinct and >= 0"):
        ServerOptions(repository=repo, cpus=(0, 0))


def _running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _place_gather_copy(repository: Path, name: str) -> None:
    import shutil

    shutil.copytree(repository / GATHER_MODEL, repository / name)
    for cfg in [repository / name / "config.pbtxt", *(repository / name / "configs").glob("*.pbtxt")]:
        cfg.write_text(cfg.read_text().replace(f'name: "{GATHER_MODEL}"', f'name: "{name}"'))
