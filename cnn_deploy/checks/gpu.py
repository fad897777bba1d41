"""`make gpu-check` (`python -m cnn_deploy gpu-check`): every GPU check in one bounded run.

Written for the first hour on a GPU host, which may have no network: it uses what is installed,
runs the checks within an 8-minute budget with progress on stderr, and writes one JSON report
(reports/gpu-check.json) and one table. Exit 0 only when every check passed; 1 when one failed or
could not be made (a skipped check is never a pass: no onnxruntime-gpu, no TensorRT, no exported
model each give SKIPPED rows); 2 when there is no GPU at all, said in one line. The judges are
pure functions in cnn_deploy.checks.gpu_verdicts.

Wherever PyTorch sees a CUDA device (cnn_deploy.checks.gpu_torch):
- `torch-cuda-<mode>`: each lecture architecture in eager FP32, TF32, FP16 and a CUDA graph of the
  FP16 model, batch 1 to 256, each row saying what ran it; answers held to eager FP32.

Per exported model in the repository (`<name>` with model.fp16.onnx, `<name>_int8` with
model.int8.s8s8.onnx, TensorRT's INT8 form, each with its own golden set), with onnxruntime-gpu
(`onnxruntime.preload_dlls()` runs first, so pip's CUDA libraries are the ones loaded):
- `ort-tensorrt-<precision>`: the file through ONNX Runtime's TensorRT provider in process; ORT's
  profile must put >= 90% of the node time on TensorRT (it falls back to CUDA silently), and the
  answers must match the golden set (FP16: the model's own derived tolerance; INT8: the
  cross-runtime one, the strict same-runtime error reported beside it).
- `ort-cuda-fp16`: the FP16 file through the CUDA provider alone, same judges.
- `served-gpu-config` / `served-restart`: the local Triton on the gpu configs (our backend on
  onnxruntime-gpu). Per model, the backend's own "on [providers]" line must put TensorRT first and
  name the engine cache it used; that cache must hold engines; `clients verify` must pass; after a
  restart the model must be READY again with no engine rebuilt.
- `trtexec-plan`: serving/triton_side/engines.py builds the `<name>_trt` plan with `trtexec` (the compose
  `engines` service's path), and TensorRT's Python runtime runs the golden inputs through it.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cnn_deploy.checks.gpu_torch import LECTURE_ARCHS, measure_arch, throughput_table, torch_inventory
from cnn_deploy.checks.gpu_verdicts import (
    CUDA_PROVIDER,
    FAIL,
    SKIPPED,
    TRT_PROVIDER,
    Check,
    backend_lines,
    engine_cache_verdict,
    golden_verdict,
    overall,
    providers_that_ran,
    registered_verdict,
    restart_verdict,
    served_providers_verdict,
    share_verdict,
    status_of,
)
from cnn_deploy_core import CnnDeployError, paths
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.golden import INT8_CROSS_RUNTIME, GoldenSet
from cnn_deploy_core.layout import (
    FP16_FILE,
    GOLDEN_FILE,
    INPUT_NAME,
    INT8_S8S8_FILE,
    INT8_S8S8_GOLDEN_FILE,
    INT8_SUFFIX,
    MODEL_FILE,
    OUTPUT_NAME,
    TRT_SUFFIX,
)
from cnn_deploy_core.machine import invoked_command, provenance
from cnn_deploy_core.metrics import compare
from cnn_deploy_core.registry import get

__all__ = ["NO_GPU_EXIT", "NoGpu", "main_args", "providers_that_ran", "run_gpu_check"]

NO_GPU_EXIT = 2
BUDGET_S = 8 * 60


class NoGpu(CnnDeployError):
    """No NVIDIA GPU on this machine: neither the driver nor PyTorch sees one."""


@dataclass(frozen=True)
class Target:
    """One served model and the file, golden set and tolerance gpu-check holds it to."""

    model: str
    version_dir: Path
    filename: str
    precision: str  # fp16 | int8
    tolerance: str  # the golden set's entry: fp16, or int8_cross_runtime for another INT8 runtime
    golden_file: str = GOLDEN_FILE  # the INT8 file TensorRT runs has its own

    @property
    def golden(self) -> GoldenSet:
        return GoldenSet.load(self.version_dir / self.golden_file)


def onnxruntime_gpu():
    """onnxruntime with pip's NVIDIA libraries preloaded (`preload_dlls`, before any session), or
    None with the reason when this onnxruntime cannot use the GPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime is not installed: pip install 'cnn-deploy[gpu]'"
    from cnn_deploy_core.cuda import preload_cuda_libraries

    why = preload_cuda_libraries(ort)
    if why:  # a missing library shows below as a missing provider
        stderr.print(f"gpu-check: {why}", highlight=False, markup=False)
    providers = ort.get_available_providers()
    if CUDA_PROVIDER not in providers:
        return None, (
            f"ONNX Runtime {ort.__version__} has no CUDA provider ({', '.join(providers)}): "
            "pip install 'cnn-deploy[gpu]' (`make gpu-check` builds a venv with it)"
        )
    return ort, ""


def gpu_inventory() -> dict:
    """The GPU as nvidia-smi and PyTorch see it, and what ONNX Runtime can use; NoGpu when neither
    sees a GPU."""
    from serving.gpus import nvidia_gpus

    gpus, why = nvidia_gpus()
    # PyTorch before onnxruntime: torch loads the CUDA and cuDNN libraries of the nvidia-* wheels,
    # and preload_dlls (in onnxruntime_gpu) then finds the same files loaded (docs/deploy-gpu.md).
    torch_cuda = torch_inventory()
    if not gpus and torch_cuda is None:
        raise NoGpu(f"no GPU here ({why}; PyTorch sees no CUDA device): nothing to check")
    ort, ort_missing = onnxruntime_gpu()
    return {
        "gpus": gpus or [torch_cuda["device"]],
        "torch_cuda": torch_cuda,
        "onnxruntime": ort.__version__ if ort else None,
        "providers": ort.get_available_providers() if ort else [],
        "onnxruntime_missing": ort_missing,
    }


def targets(repository: Path, wanted: list[str] | None) -> list[Target]:
    """The newest version of every `<name>` with an FP16 file and `<name>_int8` with an INT8 file;
    `--model resnet18` takes resnet18_int8 too."""
    found = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()) if repository.is_dir() else []:
        name = model_dir.name
        if wanted and name not in wanted and name.removesuffix(INT8_SUFFIX) not in wanted:
            continue
        numbered = sorted((int(p.name), p) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not numbered or not (numbered[-1][1] / GOLDEN_FILE).is_file():
            continue
        vdir = numbered[-1][1]
        if name.endswith(INT8_SUFFIX) and (vdir / INT8_S8S8_FILE).is_file():
            int8 = Target(name, vdir, INT8_S8S8_FILE, "int8", INT8_CROSS_RUNTIME, INT8_S8S8_GOLDEN_FILE)
            found.append(int8)
        elif not name.endswith((INT8_SUFFIX, TRT_SUFFIX)) and (vdir / FP16_FILE).is_file():
            found.append(Target(name, vdir, FP16_FILE, "fp16", "fp16"))
    return found


def _judge_golden(target: Target, golden: GoldenSet, got) -> tuple[list[str], dict]:
    atol, rtol = golden.tolerance(target.tolerance)
    result = compare(golden.outputs, got, atol=atol, rtol=rtol)
    data = {"comparison": result.to_dict(), "tolerance": golden.tolerances.get(target.tolerance)}
    if target.precision == "int8":  # how far from the ONNX Runtime kernels that made the golden set
        strict_atol, strict_rtol = golden.tolerance("int8")
        data["same_runtime_int8"] = compare(golden.outputs, got, atol=strict_atol, rtol=strict_rtol).to_dict()
    problem = golden_verdict(result, target.tolerance)
    return ([problem] if problem else []), data


def check_ort(target: Target, provider: str, work: Path) -> Check:
    ort, missing = onnxruntime_gpu()
    name = f"ort-{'tensorrt' if provider == TRT_PROVIDER else 'cuda'}-{target.precision}"
    if ort is None or provider not in ort.get_available_providers():
        return Check(name, target.model, SKIPPED, missing or f"ONNX Runtime has no {provider} here")
    golden = target.golden
    providers: list = [CUDA_PROVIDER, "CPUExecutionProvider"]
    if provider == TRT_PROVIDER:
        cache = work / f"trt-cache-{target.model}"
        cache.mkdir(parents=True, exist_ok=True)
        shape = "x".join(str(d) for d in golden.inputs.shape)
        options = {
            "trt_fp16_enable": True,
            "trt_int8_enable": target.precision == "int8",  # explicit quantization: the QDQ graph
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            **{f"trt_profile_{k}_shapes": f"{INPUT_NAME}:{shape}" for k in ("min", "opt", "max")},
        }
        providers.insert(0, (TRT_PROVIDER, options))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(work / f"profile-{target.model}-{name}")
    session = ort.InferenceSession(str(target.version_dir / target.filename), opts, providers=providers)
    registered = session.get_providers()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: golden.inputs})[0]
    ran = providers_that_ran(Path(session.end_profiling()))
    problems, data = _judge_golden(target, golden, got)
    total = sum(ran.values()) or 1.0
    data.update(registered_providers=registered, node_time_share={k: v / total for k, v in ran.items()})
    problems = [
        p for p in (registered_verdict(registered, provider), share_verdict(ran, provider)) if p
    ] + problems
    share = data["node_time_share"].get(provider, 0.0)
    detail = "; ".join(problems) or (
        f"{share:.0%} of node time on {provider}, max rel err {data['comparison']['max_rel_err']:.2e}"
    )
    return Check(name, target.model, status_of(problems), detail, data=data)


def _engines(cache: str | None) -> dict[str, float]:
    root = Path(cache) if cache else None
    if root is None or not root.is_dir():
        return {}
    return {str(p): p.stat().st_mtime for p in root.rglob("*.engine") if p.is_file()}


def _serve_once(repo: Path, work: Path, label: str, models: list[str], verify_now: bool):
    from clients.sync import TritonClient
    from clients.verify import verify
    from serving.triton import ServerOptions, serve

    opts = ServerOptions.on_free_ports(repo, config_name="gpu", backend_dir=work / "backends")
    log = work / f"triton-gpu-{label}.log"
    start = time.monotonic()
    results = []
    # A model that failed to load is reported per model below (its verification fails).
    with serve(opts, log, BUDGET_S / 2, failed_ok=True):
        ready_s = time.monotonic() - start
        if verify_now:
            with TritonClient(opts.grpc_url, timeout=300) as client:
                results = verify(client, models, repo)
    return backend_lines(log.read_text(errors="replace")), ready_s, {r.model: r for r in results}


def check_served(repository: Path, chosen: list[Target], work: Path) -> list[Check]:
    """The local Triton on the gpu configs of these models only (a repository of links to them)."""
    ort, missing = onnxruntime_gpu()
    if ort is None:  # our backend runs the gpu configs on onnxruntime-gpu
        names = ("served-gpu-config", "served-restart")
        return [Check(n, t.model, SKIPPED, missing) for t in chosen for n in names]
    repo = work / "served-repo"
    repo.mkdir(exist_ok=True)
    for t in chosen:
        (repo / t.model).symlink_to((repository / t.model).resolve(), target_is_directory=True)
    models = [t.model for t in chosen]
    lines, ready_s, verdicts = _serve_once(repo, work, "first", models, verify_now=True)
    checks, first = [], {}
    for m in models:
        entry = lines.get(m, {})
        first[m] = _engines(entry.get("engine_cache"))
        result = verdicts.get(m)
        problems = [
            p
            for p in (
                served_providers_verdict(m, lines),
                engine_cache_verdict(m, str(entry.get("engine_cache")), first[m]),
                None
                if result and result.passed
                else f"{m}: clients verify: {result and (result.error or 'beyond tolerance')}",
            )
            if p
        ]
        data = {"backend": entry, "engines": sorted(first[m]), "ready_s": ready_s}
        data["verify"] = result.to_dict() if result else None
        detail = (
            "; ".join(problems) or f"TensorRT first, {len(first[m])} engine(s), golden set within tolerance"
        )
        checks.append(Check("served-gpu-config", m, status_of(problems), detail, data=data))
    lines2, ready2_s, _ = _serve_once(repo, work, "restart", models, verify_now=False)
    for m in models:
        second = _engines(lines2.get(m, {}).get("engine_cache"))
        problem = restart_verdict(m, first[m], second) or served_providers_verdict(m, lines2)
        detail = problem or f"READY in {ready2_s:.0f} s (first start {ready_s:.0f} s), engines reused"
        data = {"ready_s": ready2_s, "first_ready_s": ready_s}
        checks.append(Check("served-restart", m, status_of([problem] if problem else []), detail, data=data))
    return checks


def _engine_json(repository: Path, target: Target, golden: GoldenSet) -> dict:
    """The repository's `<name>_trt/engine.json` when `serving repo --tensorrt` wrote one, else the
    same settings for the newest export."""
    existing = repository / (target.model + TRT_SUFFIX) / "engine.json"
    if existing.is_file():
        spec = json.loads(existing.read_text())
        spec["source"] = str((existing.parent / spec["source"]).resolve())
        if "check" in spec:  # engines.py checks the plan against this golden set itself
            spec["check"]["golden"] = str((existing.parent / spec["check"]["golden"]).resolve())
        return spec
    sizing = get(golden.architecture).gpu
    max_batch = max(sizing.max_batch_size, len(golden.inputs))
    return {
        "source": str((target.version_dir / MODEL_FILE).resolve()),
        "version": 1,
        "input": INPUT_NAME,
        "input_dims": list(golden.inputs.shape[1:]),
        "max_batch_size": max_batch,
        "opt_batch_size": min(sizing.opt_batch_size, max_batch),
        "precision": "fp16",
    }


def check_trtexec(target: Target, repository: Path, work: Path) -> Check:
    """serving/triton_side/engines.py builds the plan with trtexec; TensorRT's runtime runs the golden
    inputs."""
    from serving.triton_side import engines

    golden = target.golden
    trt_dir = work / "plans" / (target.model + TRT_SUFFIX)
    trt_dir.mkdir(parents=True, exist_ok=True)
    spec = _engine_json(repository, target, golden)
    if spec.get("precision") == "int8":  # an INT8 plan from the S8S8 graph: the fp32 set's INT8 bound
        target = replace(target, precision="int8", tolerance=INT8_CROSS_RUNTIME)
    atomic_write_text(trt_dir / "engine.json", json.dumps(spec))
    try:
        (result,) = engines.run(trt_dir.parent)
    except engines.TrtexecNotFound as e:
        return Check("trtexec-plan", target.model, SKIPPED, f"{e} (the Triton image has it)")
    if result.status != "built":
        return Check("trtexec-plan", target.model, FAIL, f"trtexec: {result.detail}", data=asdict(result))
    try:
        import tensorrt as trt
        import torch
    except ImportError as e:
        return Check("trtexec-plan", target.model, SKIPPED, f"plan built; cannot run it: {e.name} missing")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        Path(result.plan).read_bytes()
    )
    context = engine.create_execution_context()
    x = torch.from_numpy(golden.inputs).cuda().contiguous()
    context.set_input_shape(INPUT_NAME, tuple(x.shape))
    y = torch.empty((len(x), golden.outputs.shape[1]), dtype=torch.float32, device="cuda")
    context.set_tensor_address(INPUT_NAME, x.data_ptr())
    context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        return Check("trtexec-plan", target.model, FAIL, "TensorRT execution failed")
    stream.synchronize()
    problems, data = _judge_golden(target, golden, y.cpu().numpy())
    detail = "; ".join(problems) or (
        f"trtexec plan, TensorRT {trt.__version__}, max rel err {data['comparison']['max_rel_err']:.2e}"
    )
    return Check("trtexec-plan", target.model, status_of(problems), detail, data=data)


def run_gpu_check(*, repository: Path, models: list[str] | None, output: Path) -> int:
    inventory = gpu_inventory()  # NoGpu: the caller prints one line and exits 2
    chosen = targets(repository, models)
    plan: list[tuple[str, str, Callable[[Path], Check | list[Check]]]] = []
    torch_cuda = inventory["torch_cuda"]
    for arch in LECTURE_ARCHS:
        if torch_cuda is None:
            why = "PyTorch sees no CUDA device (or is not installed)"
            plan.append(("torch-cuda", arch, lambda w, a=arch, why=why: Check("torch-cuda", a, SKIPPED, why)))
        else:
            plan.append(("torch-cuda", arch, lambda w, a=arch: measure_arch(a, torch_cuda)))
    if not chosen:
        why = (
            f"no model with an FP16 or INT8 export in {repository}: export one first "
            "(python -m export build resnet18 --int8 && python -m serving repo resnet18; "
            "--weights random needs no network)"
        )
        plan.append(("onnx-models", str(repository), lambda w: Check("onnx-models", "-", SKIPPED, why)))
    for t in chosen:
        plan.append((f"ort-tensorrt-{t.precision}", t.model, lambda w, t=t: check_ort(t, TRT_PROVIDER, w)))
        if t.precision == "fp16":
            plan.append(("ort-cuda-fp16", t.model, lambda w, t=t: check_ort(t, CUDA_PROVIDER, w)))
    names = ",".join(t.model for t in chosen)
    if chosen:
        plan.append(("served-gpu-config", names, lambda w: check_served(repository, chosen, w)))
    for t in (t for t in chosen if t.precision == "fp16"):
        plan.append(("trtexec-plan", t.model, lambda w, t=t: check_trtexec(t, repository, w)))

    started = time.monotonic()
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for i, (name, model, fn) in enumerate(plan, 1):
            elapsed = time.monotonic() - started
            if elapsed > BUDGET_S:
                checks.append(Check(name, model, SKIPPED, f"the {BUDGET_S // 60}-minute budget ran out"))
                continue
            stderr.print(
                f"gpu-check [{i}/{len(plan)}, {elapsed:.0f}/{BUDGET_S} s] {name} {model} ...", highlight=False
            )
            t0 = time.monotonic()
            try:
                done = fn(Path(tmp))
            except Exception as e:  # one broken check must not hide the others
                done = Check(name, model, FAIL, f"{e.__class__.__name__}: {e}")
            for c in done if isinstance(done, list) else [done]:
                c.seconds = time.monotonic() - t0
                checks.append(c)
                stderr.print(f"  {c.status}: {c.model}: {c.detail}", highlight=False, markup=False)
    code, summary = overall(checks)
    report = {
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), **inventory},
        "repository": str(repository),
        "budget_s": BUDGET_S,
        "seconds": round(time.monotonic() - started, 1),
        "checks": [asdict(c) for c in checks],
        "exit_code": code,
        "summary": summary,
        "passed": code == 0,
        "skipped": [f"{c.name} {c.model}: {c.detail}" for c in checks if c.status == SKIPPED],
    }
    report["provenance"] = provenance()
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    for c in checks:
        stdout.print(f"{c.status:8s} {c.name:24s} {c.model:20s} {c.detail}", highlight=False, markup=False)
    table = throughput_table(checks)
    if table:
        stdout.print(f"\nimages per second, PyTorch on CUDA:\n{table}\n", highlight=False, markup=False)
    stdout.print(f"{summary}; report: {output}", highlight=False)
    return code


def main_args(repository: Path | None, models: list[str] | None, output: Path | None) -> int:
    try:
        return run_gpu_check(
            repository=repository or paths.repository(),
            models=models or None,
            output=output or paths.reports_dir() / "gpu-check.json",
        )
    except NoGpu as e:
        stderr.print(str(e), highlight=False, markup=False)
        return NO_GPU_EXIT
