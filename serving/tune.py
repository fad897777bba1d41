"""`python -m serving tune MODEL --p99-ms X`: the fastest serving setup under a latency SLO, with
every answer checked.

Like NVIDIA's Model Analyzer it searches the serving configuration on the real server (precision,
instances x intra-op threads, max batch size, preferred batch sizes, queue delay, and the client
concurrency that gives the best throughput); unlike it, every answer of every candidate is
verified against that precision's golden set, and a candidate is rejected whatever its speed
unless every answer of the whole step (warm-up included) was verified and right and no request
failed; a candidate whose server or load test fails is rejected too, and the search goes on.

A quick search, not the grid: it starts from the model's current configuration and changes one
dimension at a time, keeping what helps; concurrency doubles until throughput stops growing (by
5 %) or p99 leaves the SLO; it stops at the time budget. Each candidate runs in a scratch
repository on its own server, measured by our load test (`python -m clients loadtest`, whose JSON
report it reads as cnn_deploy_core's typed LoadTestReport: the serving stage does not import the
clients).

It tunes the machine it writes for: every server it starts has every core this process may use, as
`serving up` would give it, and the thread policy `serving up` runs. The load generator is not
given cores of its own (that would tune the config for fewer cores than it is served on); its cost
is kept small instead (tensors through shared memory) and reported per request. The plans it tries
are instance counts whose threads the server's policy sets (serving/threads.py): a config tuned on
2 cores does not cap a 32-core machine at 2 threads.

The winner is written only if it beats the current config of the model it serves (the cpu config
of `<name>`, or of `<name>_int8` for an INT8 winner: the config it would replace) in an A/B:
AB_ROUNDS rounds, each on fresh servers of the same setup, the two in alternating order, at the
winner's concurrency and at AB_LIGHT_CONCURRENCY below it, every run judged sound
(tune_judge.ab_verdict).
The user's repository is written once, at the end, atomically: Ctrl-C at any point leaves it as it
was.

`--device gpu` tunes the gpu config instead (configs/gpu.pbtxt: TensorRT through ONNX Runtime, on
KIND_GPU instances), over gpu_space: the registry's GPU sizing and around it. Its winner is
written beside the report, not into the repository: nothing of it has run on a GPU yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnn_deploy_core import registry
from cnn_deploy_core.fsutil import atomic_write_bytes, atomic_write_text
from cnn_deploy_core.golden import TOLERANCE_PARAM
from cnn_deploy_core.layout import INT8_FILE, INT8_S8S8_FILE, INT8_SUFFIX, MODEL_FILE, PARAM_PREFIX
from cnn_deploy_core.registry import Architecture, GpuSizing
from cnn_deploy_core.secrets import write_private
from serving import ServingError
from serving.repository.configs import (
    candidate_config,
    gpu_config,
    int8_gpu_config,
    tensorrt_accelerator,
)
from serving.repository.placement import write_configs
from serving.repository.state import ModelState
from serving.repository.versions import served_versions
from serving.threads import available_cores
from serving.triton import ServerOptions, serve
from serving.tune_judge import (
    AB_LIGHT_CONCURRENCY,
    AB_ROUNDS,
    GPU_PRECISIONS,
    LOADTEST_TIMEOUT_S,
    AbRound,
    CandidateFailed,
    ab_ratio,
    ab_verdict,
    light_ratio,
    point_of,
    read_loadtest,
    run_verdict,
    saturated,
)

TUNED = "tuned"
GPU_DELAYS = (0, 500, 2000)  # us; the gpu config's own is 2000 (the registry's gpu_queue_delay_us)


@dataclass(frozen=True)
class Candidate:
    precision: str = "fp32"
    instances: int = 1
    threads: int = 0  # 0: the server's thread policy sets them for the machine it runs on
    max_batch_size: int = 32
    preferred: tuple[int, ...] = ()
    queue_delay_us: int = 0

    def label(self) -> str:
        pref = ",".join(map(str, self.preferred)) or "-"
        return (
            f"{self.precision} {self.instances}x{self.threads or 'auto'} max{self.max_batch_size} "
            f"pref {pref} delay {self.queue_delay_us}us"
        )


@dataclass
class Measured:
    candidate: Candidate
    points: list[dict] = field(default_factory=list)  # per concurrency: infer/s, p50, p99, verified
    best: dict | None = None  # the fastest point within the SLO
    rejected: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "candidate": {**asdict(self.candidate), "label": self.candidate.label()}}


@dataclass(frozen=True)
class Space:
    precisions: tuple[str, ...]
    plans: tuple[tuple[int, int], ...]
    max_batch_sizes: tuple[int, ...]
    preferred: tuple[tuple[int, ...], ...]
    delays: tuple[int, ...]
    concurrency: tuple[int, ...]


def default_space(max_batch: int, cores: int, has_int8: bool) -> Space:
    # Instance counts only: their threads are the policy's (0), relative to the machine that serves
    # them, so the config carries no core count of the machine it was tuned on.
    plans = {(n, 0) for n in (1, 2, cores) if n <= max(cores, 1)}
    return Space(
        precisions=("fp32", "int8") if has_int8 else ("fp32",),
        plans=tuple(sorted(plans)),
        max_batch_sizes=tuple(sorted({max_batch, max(2, max_batch // 4)}, reverse=True)),
        preferred=((), (4, 8)),
        delays=(0, 500, 2000, 8000),
        concurrency=(1, 2, 4, 8, 16, 32),
    )


def gpu_space(arch: Architecture, has_s8s8: bool) -> Space:
    """The GPU search around the registry's sizing for one large GPU (`arch.gpu`, reasoning in
    docs/deploy-gpu.md): batches up to its max_batch_size (and a half and a quarter of it, for a
    smaller GPU or a tighter p99), 1 to one more than its instance count, its preferred batches or
    none, queue delays up to the gpu config's 2 ms; TensorRT FP16 (the gpu config's), FP32, and
    INT8 when the S8S8 file TensorRT builds is exported. Client concurrency doubles up to two of the
    largest batches: enough requests waiting to fill one instance's batch while another runs."""
    sizing = arch.gpu
    top = sizing.max_batch_size
    concurrency, c = [], 1
    while c <= 2 * top:
        concurrency.append(c)
        c *= 2
    return Space(
        precisions=GPU_PRECISIONS if has_s8s8 else GPU_PRECISIONS[:2],
        plans=tuple((n, 0) for n in range(1, sizing.instances + 2)),
        max_batch_sizes=tuple(sorted({top, max(2, top // 2), max(2, top // 4)}, reverse=True)),
        preferred=(sizing.preferred_batch_sizes, ()),
        delays=GPU_DELAYS,
        concurrency=tuple(concurrency),
    )


def current_candidate(arch: Architecture, state: ModelState, device: str) -> Candidate:
    """What `serving up` serves now: the search's starting point and the A/B's `current`."""
    if device == "gpu":
        return Candidate(
            precision="fp16",
            instances=arch.gpu.instances,
            max_batch_size=arch.gpu.max_batch_size,
            preferred=arch.gpu.preferred_batch_sizes,
            queue_delay_us=arch.gpu_queue_delay_us,
        )
    return Candidate(
        precision="fp32",
        instances=state.cpu.instances,
        threads=state.cpu.threads,  # 0 (the default): the policy's, as `serving up` serves it
        max_batch_size=arch.max_batch_size,
        queue_delay_us=arch.cpu_queue_delay_us,
    )


def gpu_candidate_config(arch: Architecture, served, candidate: Candidate):
    """The gpu config with a candidate's settings. fp16 is the gpu config's own (TensorRT FP16 on the
    FP16 file), int8 the `<name>_int8` gpu config (the S8S8 file), fp32 TensorRT FP32 on the fp32
    file, held to the FP16 tolerance: TensorRT may run FP32 convolutions in TF32, which keeps FP16's
    10 mantissa bits."""
    top = candidate.max_batch_size
    preferred = tuple(b for b in candidate.preferred if b <= top)
    # TensorRT's profile is tuned for the smallest preferred batch; without any, for the largest
    sizing = GpuSizing(top, candidate.instances, preferred or (top,))
    sized = dataclasses.replace(arch, gpu=sizing, gpu_queue_delay_us=candidate.queue_delay_us)
    if candidate.precision == "int8":
        config = int8_gpu_config(sized, served)
    else:
        config = gpu_config(sized, served)
        if candidate.precision == "fp32":
            config = dataclasses.replace(
                config,
                default_model_filename=MODEL_FILE,
                accelerator=tensorrt_accelerator(sized, "FP32", arch.name),
                parameters={**config.parameters, PARAM_PREFIX + "precision": "fp32", TOLERANCE_PARAM: "fp16"},
            )
    return dataclasses.replace(config, preferred_batch_sizes=preferred)


def _config(name: str, candidate: Candidate, model_dir: Path, device: str = "cpu"):
    state = ModelState.load(model_dir)
    served = served_versions(model_dir, state.pinned)
    if candidate.precision == "int8":
        wanted = INT8_S8S8_FILE if device == "gpu" else INT8_FILE
        served = [v for v in served if wanted in v.files]
    if device == "gpu":
        return gpu_candidate_config(registry.get(name), served, candidate)
    return candidate_config(registry.get(name), served, asdict(candidate))


def current_config(repository: Path, name: str, device: str = "cpu") -> str:
    """The model's current config, as `serving up` reads it: configs/cpu.pbtxt, else config.pbtxt
    (configs/gpu.pbtxt for the GPU)."""
    model_dir = repository / name
    paths = [model_dir / "configs" / f"{device}.pbtxt"] + (
        [model_dir / "config.pbtxt"] if device == "cpu" else []
    )
    for path in paths:
        if path.is_file():
            return path.read_text()
    raise ServingError(f"{name} has no {device} config in {repository}: python -m serving repo {name}")


@contextlib.contextmanager
def _scratch_server(repository: Path, model: str, config_text: str, device: str = "cpu"):
    """A server of `model` alone, `config_text` its config for `device` (cpu or gpu), started as
    `serving up` starts one: every core this process may use, the default thread policy. Yields
    (options, scratch folder); ServingError if it does not start."""
    with tempfile.TemporaryDirectory(prefix="tune-") as tmp:
        scratch = Path(tmp)
        # Only the model under test: the scratch server spends the cores on nothing else.
        shutil.copytree(
            repository / model, scratch / "repo" / model, ignore=shutil.ignore_patterns("configs")
        )
        atomic_write_text(scratch / "repo" / model / "configs" / f"{device}.pbtxt", config_text)
        opts = ServerOptions.on_free_ports(
            scratch / "repo", backend_dir=scratch / "backends", config_name=device
        )
        write_private(scratch / "admin.key", opts.admin_key)  # the load test's shared memory needs it
        # keyed and strictly ready, as every server is (serving.triton.serve)
        with serve(opts, scratch / "triton.log", 300):
            yield opts, scratch


def _loadtest(url: str, model: str, c: int, scratch: Path, window_s: float, slo_ms: float):
    """One concurrency level through our load test: its report, why it disqualifies the candidate
    (or None), and whether it met the p99 objective (run_verdict). Tensors go through shared memory:
    the generator shares the server's cores, and that halves what it takes from them."""
    cmd = [
        sys.executable, "-m", "clients", "loadtest", "--url", url, "--model", model,
        "--concurrency", str(c), "--warmup-s", str(window_s), "--window-s", str(window_s),
        "--max-windows", "6", "--min-samples", "50", "--repository", str(scratch / "repo"),
        "--output", str(scratch / "reports"), "--json", "--verify-fraction", "1",
        "--max-error-rate", "0", "--max-wrong", "0",
        "--shared-memory", "system", "--admin-key-file", str(scratch / "admin.key"),
    ]  # fmt: skip
    where = f"on {model} at c={c}"
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=LOADTEST_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise CandidateFailed(f"the load test timed out {where} after {LOADTEST_TIMEOUT_S}s") from e
    report = read_loadtest(result.returncode, result.stdout, result.stderr, where)
    return report, *run_verdict(report, slo_ms)


def measure(
    name: str,
    candidate: Candidate,
    repository: Path,
    space: Space,
    slo_ms: float,
    window_s: float,
    progress,
    device: str = "cpu",
) -> Measured:
    started = time.monotonic()
    measured = Measured(candidate)
    model = name + (INT8_SUFFIX if candidate.precision == "int8" else "")
    config = _config(name, candidate, repository / name, device).to_pbtxt()
    try:
        with _scratch_server(repository, model, config, device) as (opts, scratch):
            _climb(measured, opts.grpc_url, model, scratch, space, slo_ms, window_s, progress)
    except ServingError as e:  # the server's start: _climb records its load tests' own
        measured.rejected = f"the server did not start: {e}"
    if measured.rejected:
        measured.best = None  # one bad step disqualifies the candidate, however fast the others
    elif measured.best is None:
        measured.rejected = f"p99 above {slo_ms:g} ms at every concurrency"
    measured.seconds = time.monotonic() - started
    return measured


def _climb(measured: Measured, url: str, model: str, scratch: Path, space: Space, slo_ms, window_s, progress):
    """Concurrency doubles until throughput stops growing or p99 leaves the objective."""
    previous = 0.0
    for c in space.concurrency:
        try:
            report, problem, within = _loadtest(url, model, c, scratch, window_s, slo_ms)
        except CandidateFailed as e:
            measured.rejected = str(e)
            return
        point = point_of(report, c)
        if point:
            measured.points.append(point)
            progress(f"  c={c}: {point['infer_per_s']:.1f} infer/s, p99 {point['p99_ms']:.1f} ms")
        if problem or point is None:
            measured.rejected = f"{problem or 'no answer'} at c={c}"
            return
        if within and (measured.best is None or point["infer_per_s"] > measured.best["infer_per_s"]):
            measured.best = point
        if not within or saturated(point, previous):
            return  # more concurrency only adds latency now
        previous = point["infer_per_s"]


def _score(m: Measured) -> float:
    return m.best["infer_per_s"] if m.best and not m.rejected else -1.0


def search(
    name: str,
    repository: Path,
    *,
    slo_ms: float,
    budget_s: float,
    space: Space,
    window_s: float,
    progress=lambda message: None,
    device: str = "cpu",
) -> list[Measured]:
    """Coordinate descent from the current configuration (of `device`), within the budget."""
    deadline = time.monotonic() + budget_s
    current = current_candidate(registry.get(name), ModelState.load(repository / name), device)
    results: dict[Candidate, Measured] = {}
    dimensions = (
        ("precision", [(p,) for p in space.precisions], ("precision",)),
        ("plan", list(space.plans), ("instances", "threads")),
        ("queue delay", [(d,) for d in space.delays], ("queue_delay_us",)),
        ("max batch", [(b,) for b in space.max_batch_sizes], ("max_batch_size",)),
        ("preferred batch", [(p,) for p in space.preferred], ("preferred",)),
    )

    def run(candidate: Candidate) -> Measured:
        if candidate not in results:
            progress(f"candidate {len(results) + 1}: {candidate.label()}")
            results[candidate] = measure(
                name, candidate, repository, space, slo_ms, window_s, progress, device
            )
            m = results[candidate]
            verdict = m.rejected or f"best {m.best['infer_per_s']:.1f} infer/s at c={m.best['concurrency']}"
            progress(f"  -> {verdict}")
        return results[candidate]

    best = run(current)
    for label, values, fields in dimensions:
        for value in values:
            if time.monotonic() > deadline:
                progress(f"budget of {budget_s:.0f}s spent: stopping at {label}")
                return list(results.values())
            candidate = dataclasses.replace(best.candidate, **dict(zip(fields, value, strict=True)))
            measured = run(candidate)
            if _score(measured) > _score(best):
                best = measured
    return list(results.values())


def winner(results: list[Measured]) -> Measured | None:
    ranked = [m for m in results if _score(m) > 0]
    return max(ranked, key=_score) if ranked else None


@dataclass
class AbResult:
    """The winner against the current config, alternately, at the winner's concurrency (and at
    AB_LIGHT_CONCURRENCY)."""

    concurrency: int
    current_model: str = ""  # whose current config the winner is measured against
    light: int | None = None  # AB_LIGHT_CONCURRENCY, when below the winner's concurrency
    runs: list[dict] = field(default_factory=list)  # round, config, model, figures, problems
    rounds: list[AbRound] = field(default_factory=list)
    ahead: bool = False
    why: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "current_model": self.current_model,
            "runs": self.runs,
            "rounds": [asdict(r) for r in self.rounds],
            "winner_vs_current": ab_ratio(self.rounds),  # median of the rounds' ratios
            "light_concurrency": self.light,
            "light_winner_vs_current": light_ratio(self.rounds),
            "ahead": self.ahead,
            "why": self.why,
            "seconds": self.seconds,
        }


def _ab_run(
    repository: Path,
    model: str,
    config: str,
    concurrencies: tuple[int, ...],
    window_s: float,
    slo_ms: float,
    device: str = "cpu",
) -> dict:
    """One A/B run: a fresh server of `config`, one load test at each of `concurrencies` (the last is
    the one the A/B decides on); the figures of each and what the judge found unsound in any (a
    server that did not start, a load test without a report, included)."""
    points, within, problems = {}, False, []
    try:
        with _scratch_server(repository, model, config, device) as (opts, scratch):
            for c in concurrencies:
                report, problem, within = _loadtest(opts.grpc_url, model, c, scratch, window_s, slo_ms)
                points[c] = point_of(report, c)
                problems += [problem] if problem else [] if points[c] else [f"no answer at c={c}"]
    except CandidateFailed as e:
        problems.append(str(e))
    except ServingError as e:
        problems.append(f"the server did not start: {e}")
    return {"points": points, "point": points.get(concurrencies[-1]), "within": within, "problems": problems}


def ab_test(
    name: str,
    repository: Path,
    winner: Measured,
    *,
    slo_ms: float,
    window_s: float,
    rounds: int = AB_ROUNDS,
    progress=lambda message: None,
    device: str = "cpu",
) -> AbResult:
    """The winner and the current config of the model it serves (`<name>_int8`'s for an INT8 winner:
    the config its file would replace), each on fresh servers of the same setup, alternately
    (current first in odd rounds, the winner first in even ones, so that a drift of the machine
    favours neither), at AB_LIGHT_CONCURRENCY and at the concurrency the winner was best at;
    judged by tune_judge.ab_verdict. Stops at the first unsound run: it rejects the winner."""
    started = time.monotonic()
    c = winner.best["concurrency"]
    # the everyday load, where it is lighter than the winner's own (a winner best at c=2 under a
    # tight objective is not held to c=4, past its objective)
    light = AB_LIGHT_CONCURRENCY if c > AB_LIGHT_CONCURRENCY else None
    concurrencies = (light, c) if light else (c,)
    model = name + (INT8_SUFFIX if winner.candidate.precision == "int8" else "")
    configs = {
        "current": (model, current_config(repository, model, device)),
        "winner": (model, _config(name, winner.candidate, repository / name, device).to_pbtxt()),
    }
    result = AbResult(concurrency=c, current_model=model, light=light)
    for number in range(1, rounds + 1):
        order = ("current", "winner") if number % 2 else ("winner", "current")
        runs = {}
        for which in order:
            run = _ab_run(repository, *configs[which], concurrencies, window_s, slo_ms, device)
            runs[which] = run
            result.runs.append({"round": number, "config": which, "model": configs[which][0], **run})
            figures = (
                ", ".join(
                    f"c={k} {p['infer_per_s']:.1f} infer/s, p99 {p['p99_ms']:.1f} ms" if p else f"c={k} -"
                    for k, p in run["points"].items()
                )
                or "-"
            )
            progress(f"  A/B round {number}, {which}: {figures}{'; ' if run['problems'] else ''}"
                     + "; ".join(run["problems"]))  # fmt: skip
        light_figure = {
            w: (run["points"].get(light) or {}).get("infer_per_s", 0.0) if light else None
            for w, run in runs.items()
        }
        result.rounds.append(
            AbRound(
                current_infer_per_s=(runs["current"]["point"] or {}).get("infer_per_s", 0.0),
                winner_infer_per_s=(runs["winner"]["point"] or {}).get("infer_per_s", 0.0),
                current_within=runs["current"]["within"],
                winner_within=runs["winner"]["within"],
                problems=tuple(f"{w}: {p}" for w in order for p in runs[w]["problems"]),
                light_current_infer_per_s=light_figure["current"],
                light_winner_infer_per_s=light_figure["winner"],
            )
        )
        if result.rounds[-1].problems:
            break
    result.ahead, result.why = ab_verdict(result.rounds)
    result.seconds = time.monotonic() - started
    return result


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(p99, throughput) points no other point beats on both."""
    front, best = [], -1.0
    for p99, tput in sorted(points, key=lambda p: (p[0], -p[1])):
        if tput > best:
            front.append((p99, tput))
            best = tput
    return front


def plot(results: list[Measured], slo_ms: float, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    every = []
    for m in results:
        xs = [p["p99_ms"] for p in m.points]
        ys = [p["infer_per_s"] for p in m.points]
        every += list(zip(xs, ys, strict=True))
        ax.plot(xs, ys, "o-", alpha=0.5 if m.rejected else 0.9, label=m.candidate.label()[:48])
    front = pareto(every)
    if front:
        ax.plot(*zip(*front, strict=True), "k--", linewidth=2, label="Pareto front")
    ax.axvline(slo_ms, color="red", linestyle=":", label=f"SLO p99 {slo_ms:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("inferences / s (every answer verified)")
    ax.set_title("serving configurations: throughput vs p99")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def write_tuned(
    name: str, repository: Path, best: Candidate, config_name: str = TUNED, force: bool = False
) -> Path:
    """The winner as `configs/<config_name>.pbtxt` (models without one fall back to their
    config.pbtxt, the cpu config), recorded in serving.json so that every later placement
    regenerates it for the versions then served."""
    if config_name in ("cpu", "gpu") and not force:
        raise ServingError(f"--config-name {config_name} would overwrite a generated config; add --force")
    model_dir = repository / name
    state = ModelState.load(model_dir)
    state.tuned = {**asdict(best), "config_name": config_name}
    write_configs(registry.get(name), model_dir, state)
    state.save(model_dir)
    model = name + (INT8_SUFFIX if best.precision == "int8" else "")
    return repository / model / "configs" / f"{config_name}.pbtxt"


def write_gpu_winner(name: str, repository: Path, best: Candidate, path: Path) -> Path:
    """The GPU winner's config at `path` (beside the tuner's report), for the versions served now."""
    config = _config(name, best, repository / name, "gpu")
    atomic_write_text(path, config.to_pbtxt())
    return path


def has_int8(repository: Path, name: str, filename: str = INT8_FILE) -> bool:
    """Whether `<name>_int8` has a version holding `filename` (the CPU's UINT8 file; the GPU's is
    INT8_S8S8_FILE)."""
    int8_dir = repository / (name + INT8_SUFFIX)
    return (
        any((p / filename).is_file() for p in int8_dir.iterdir() if p.is_dir())
        if int8_dir.is_dir()
        else False
    )


def cores() -> int:
    """The cores a scratch server gets: every one this process may use, as `serving up`'s server."""
    return available_cores()
