"""`make gpu-check` (`python -m cnn_deploy gpu-check`): every GPU check in one bounded run.

Written for the first hour on a GPU host, which may have no network: it uses what is installed,
runs each check under a deadline, says which parts it skipped and why, and writes one JSON report.
On a machine without a GPU it says so in one line and exits 2.

Checks, per model with an export in the repository (`<repo>/<name>/<v>/model.fp16.onnx`):
- `ort-tensorrt`: the FP16 model through ONNX Runtime's TensorRT execution provider, in process.
  ONNX Runtime falls back to CUDA (or CPU) silently when TensorRT cannot run a graph, so the
  check reads ORT's profile and requires the nodes to have run on `TensorrtExecutionProvider`.
  Answers are compared with the golden set at the FP16 tolerance.
- `ort-cuda`: the same through the CUDA provider alone, same tolerance.
- `served-gpu-config`: the local Triton serving `configs/gpu.pbtxt` (our backend on
  onnxruntime-gpu), verified against the golden sets; the TensorRT engine cache must fill up
  (TensorRT, not a fallback, built engines for the served model).
- `tensorrt-plan`: the `<name>_trt` plan (TensorRT's own engine, built from the same ONNX file
  with the TensorRT Python API when `tensorrt` is installed) run on the golden inputs.
  The local tritonserver has no TensorRT backend, so the plan is run by TensorRT itself here;
  in the Triton image the `engines` service builds it and Triton serves it.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnn_deploy_core import CnnDeployError, paths
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.golden import GoldenSet
from cnn_deploy_core.layout import FP16_FILE, GOLDEN_FILE, INPUT_NAME, OUTPUT_NAME, TRT_SUFFIX
from cnn_deploy_core.metrics import compare

NO_GPU_EXIT = 2
BUDGET_S = 8 * 60
TRT_PROVIDER = "TensorrtExecutionProvider"


class NoGpu(CnnDeployError):
    """No NVIDIA GPU (or no GPU build of ONNX Runtime) on this machine."""


@dataclass
class Check:
    name: str
    model: str
    status: str  # OK | FAIL | SKIPPED
    detail: str
    seconds: float = 0.0
    data: dict = field(default_factory=dict)


def gpu_inventory() -> dict:
    """nvidia-smi's view, and whether ONNX Runtime can use the GPU; NoGpu when either is missing."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise NoGpu("no NVIDIA GPU here (nvidia-smi not found): nothing to check")
    query = subprocess.run(
        [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    gpus = [line.strip() for line in query.stdout.splitlines() if line.strip()]
    if query.returncode != 0 or not gpus:
        raise NoGpu(f"no NVIDIA GPU here (nvidia-smi: {query.stderr.strip() or 'no GPU listed'})")
    try:
        import onnxruntime as ort
    except ImportError:
        raise NoGpu("GPU found but onnxruntime is not installed: pip install 'cnn-deploy[gpu]'") from None
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise NoGpu(
            f"GPU found but ONNX Runtime {ort.__version__} has no CUDA provider ({providers}): "
            "pip install 'cnn-deploy[gpu]' (the CPU package must not be installed beside it)"
        )
    return {"gpus": gpus, "onnxruntime": ort.__version__, "providers": providers}


def exported_models(repository: Path, wanted: list[str] | None) -> list[tuple[str, Path]]:
    """(model, newest version dir) for every model with an FP16 file and a golden set."""
    found = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()) if repository.is_dir() else []:
        if wanted and model_dir.name not in wanted:
            continue
        numbered = sorted((int(p.name), p) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if numbered and (numbered[-1][1] / FP16_FILE).is_file() and (numbered[-1][1] / GOLDEN_FILE).is_file():
            found.append((model_dir.name, numbered[-1][1]))
    return found


def _fp16_tolerance(golden: GoldenSet) -> dict:
    return golden.tolerances["fp16"]


def _session(path: Path, providers: list, profile_dir: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_dir / "ort")
    return ort.InferenceSession(str(path), opts, providers=providers)


def providers_that_ran(profile: Path) -> dict[str, float]:
    """Microseconds of node execution per execution provider, from ORT's profile JSON."""
    events = json.loads(profile.read_text())
    per_provider: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            provider = event.get("args", {}).get("provider", "?")
            per_provider[provider] = per_provider.get(provider, 0.0) + float(event.get("dur", 0))
    return per_provider


def check_ort(model: str, version_dir: Path, provider: str, work: Path) -> Check:
    golden = GoldenSet.load(version_dir / GOLDEN_FILE)
    tol = _fp16_tolerance(golden)
    if provider == TRT_PROVIDER:
        cache = work / f"trt-cache-{model}"
        cache.mkdir(parents=True, exist_ok=True)
        options = {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
        }
        providers = [(TRT_PROVIDER, options), "CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    profile_dir = work / f"profile-{model}-{provider}"
    profile_dir.mkdir(parents=True, exist_ok=True)
    session = _session(version_dir / FP16_FILE, providers, profile_dir)
    registered = session.get_providers()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: golden.inputs})[0]
    ran = providers_that_ran(Path(session.end_profiling()))
    result = compare(golden.outputs, got, atol=tol["atol"], rtol=tol["rtol"])
    total = sum(ran.values()) or 1.0
    data = {
        "registered_providers": registered,
        "node_time_share": {k: v / total for k, v in ran.items()},
        "comparison": result.to_dict(),
    }
    problems = []
    if provider not in registered:
        problems.append(f"{provider} was not registered (ONNX Runtime fell back to {registered})")
    elif ran.get(provider, 0.0) == 0.0:
        problems.append(f"no node ran on {provider} (ran on: {sorted(ran)})")
    if not result.passed:
        problems.append(f"answers beyond the FP16 tolerance (max rel err {result.max_rel_err:.2e})")
    if problems:
        return Check(f"ort-{_short(provider)}", model, "FAIL", "; ".join(problems), data=data)
    share = data["node_time_share"].get(provider, 0.0)
    detail = f"{share:.0%} of node time on {provider}, max rel err {result.max_rel_err:.2e}"
    return Check(f"ort-{_short(provider)}", model, "OK", detail, data=data)


def _short(provider: str) -> str:
    return {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda"}[provider]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []


def check_served(repository: Path, models: list[str], work: Path) -> Check:
    from clients.client import TritonClient
    from clients.verify import verify
    from serving.triton import ServerOptions, TritonProcess

    opts = ServerOptions.on_free_ports(repository, config_name="gpu", backend_dir=work / "backends")
    log = work / "triton-gpu.log"
    cache_root = Path(tempfile.gettempdir()) / "cnn-deploy-trt-cache"  # where our backend falls back to
    before = set(_files(cache_root))
    with TritonProcess(opts, log_path=log).start() as server:
        server.wait_ready(BUDGET_S / 2)
        with TritonClient(opts.grpc_url, timeout=300) as client:
            results = verify(client, models, repository)
    text = log.read_text(errors="replace")
    engines = [p for p in _files(cache_root) if p not in before]
    data = {"verify": [r.to_dict() for r in results], "new_engine_files": [str(p) for p in engines]}
    problems = [f"{r.model} v{r.version}: {r.error or 'beyond tolerance'}" for r in results if not r.passed]
    if TRT_PROVIDER not in text:
        problems.append("the backend did not log TensorrtExecutionProvider among its providers")
    if not engines and not Path("/trt-cache").is_dir():
        problems.append(f"no TensorRT engine appeared in {cache_root}: TensorRT did not build the models")
    status = "FAIL" if problems else "OK"
    detail = (
        "; ".join(problems) or f"{len(results)} served version(s) within FP16 tolerance, TRT engines built"
    )
    return Check("served-gpu-config", ",".join(models), status, detail, data=data)


def check_plan(model: str, version_dir: Path, repository: Path) -> Check:
    """Build the `<name>_trt` plan with the TensorRT Python API and run the golden inputs through it."""
    try:
        import tensorrt as trt
        import torch
    except ImportError as e:
        return Check("tensorrt-plan", model, "SKIPPED", f"{e.name} is not installed here")
    if not torch.cuda.is_available():
        return Check(
            "tensorrt-plan", model, "SKIPPED", "torch has no CUDA here (it holds the plan's buffers)"
        )
    engine_json = repository / (model + TRT_SUFFIX) / "engine.json"
    max_batch = json.loads(engine_json.read_text())["max_batch_size"] if engine_json.is_file() else 8
    golden = GoldenSet.load(version_dir / GOLDEN_FILE)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse((version_dir / "model.onnx").read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return Check("tensorrt-plan", model, "FAIL", f"TensorRT cannot parse the ONNX file: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    dims = tuple(golden.inputs.shape[1:])
    profile.set_shape(INPUT_NAME, (1, *dims), (max(1, max_batch // 4), *dims), (max_batch, *dims))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        return Check("tensorrt-plan", model, "FAIL", "TensorRT failed to build the plan")
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    x = torch.from_numpy(golden.inputs).cuda().contiguous()
    context.set_input_shape(INPUT_NAME, tuple(x.shape))
    y = torch.empty((len(x), golden.outputs.shape[1]), dtype=torch.float32, device="cuda")
    context.set_tensor_address(INPUT_NAME, x.data_ptr())
    context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        return Check("tensorrt-plan", model, "FAIL", "TensorRT execution failed")
    stream.synchronize()
    tol = _fp16_tolerance(golden)
    result = compare(golden.outputs, y.cpu().numpy(), atol=tol["atol"], rtol=tol["rtol"])
    status = "OK" if result.passed else "FAIL"
    detail = f"TensorRT {trt.__version__} FP16 plan, max rel err {result.max_rel_err:.2e}"
    return Check("tensorrt-plan", model, status, detail, data={"comparison": result.to_dict()})


def run_gpu_check(*, repository: Path, models: list[str] | None, output: Path) -> int:
    inventory = gpu_inventory()  # NoGpu: the caller prints one line and exits 2
    found = exported_models(repository, models)
    if not found:
        raise CnnDeployError(
            f"no model with an FP16 export in {repository}: export one first "
            "(python -m export build resnet18 && python -m serving repo resnet18; "
            "--weights random needs no network)"
        )
    deadline = time.monotonic() + BUDGET_S
    checks: list[Check] = []

    def timed(fn: Callable[[], Check], name: str, model: str) -> None:
        if time.monotonic() > deadline:
            checks.append(Check(name, model, "SKIPPED", f"the {BUDGET_S // 60}-minute budget ran out"))
            return
        start = time.monotonic()
        stderr.print(f"gpu-check: {name} {model} ...", highlight=False)
        try:
            check = fn()
        except Exception as e:  # one broken check must not hide the others
            check = Check(name, model, "FAIL", f"{e.__class__.__name__}: {e}")
        check.seconds = time.monotonic() - start
        checks.append(check)
        stderr.print(f"  {check.status}: {check.detail}", highlight=False, markup=False)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for model, version_dir in found:
            for provider in (TRT_PROVIDER, "CUDAExecutionProvider"):
                timed(
                    lambda m=model, v=version_dir, p=provider: check_ort(m, v, p, work),
                    f"ort-{_short(provider)}",
                    model,
                )
        names = [m for m, _ in found]
        timed(lambda: check_served(repository, names, work), "served-gpu-config", ",".join(names))
        for model, version_dir in found:
            timed(lambda m=model, v=version_dir: check_plan(m, v, repository), "tensorrt-plan", model)
    report = {
        "command": "python -m cnn_deploy gpu-check",
        "machine": {"platform": platform.platform(), **inventory},
        "repository": str(repository),
        "checks": [asdict(c) for c in checks],
        "passed": all(c.status != "FAIL" for c in checks),
        "skipped": [f"{c.name} {c.model}: {c.detail}" for c in checks if c.status == "SKIPPED"],
    }
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    for c in checks:
        stdout.print(f"{c.status:8s} {c.name:18s} {c.model:20s} {c.detail}", highlight=False, markup=False)
    stdout.print(f"report: {output}", highlight=False)
    return 0 if report["passed"] else 1


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
