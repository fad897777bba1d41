"""The export pipeline for one architecture: weights -> ONNX -> optimize -> verify -> FP16 ->
golden set -> publish. Each step reports a status; see :mod:`cnn_deploy_core.steps`."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from cnn_deploy_core.fsutil import atomic_write_text, discard, make_staging_dir, publish_dir
from cnn_deploy_core.golden import INT8_CROSS_RUNTIME, GoldenSet
from cnn_deploy_core.images import all_photos
from cnn_deploy_core.layout import (
    FP16_FILE,
    GOLDEN_FILE,
    INPUT_NAME,
    INT8_GOLDEN_FILE,
    INT8_S8S8_GOLDEN_FILE,
    LABELS_FILE,
    MODEL_FILE,
    RAW_FILE,
    REPORT_FILE,
)
from cnn_deploy_core.metrics import Sensitivity, compare, derived_tolerance
from cnn_deploy_core.registry import Architecture
from cnn_deploy_core.steps import SkipStep, Status, Step, StepResult, run_steps, succeeded
from export import ExportError, __version__
from export.convert import GraphStats, optimize, stamp_metadata, to_fp16, to_onnx
from export.int8 import Int8Accuracy, Int8Scheme
from export.models import LoadedModel, load_model
from export.verify import (
    FP16_FLOOR_RTOL,
    FP16_MARGIN,
    INT8_CROSS_RUNTIME_MARGIN,
    Case,
    CaseResult,
    check_sensitivity,
    failures,
    golden_rows,
    reference_cases,
    session,
    summarize,
    verify,
)


@dataclass(frozen=True)
class Int8Result:
    """One INT8 file that passed the guard, and its answers on the golden inputs."""

    scheme: Int8Scheme
    accuracy: Int8Accuracy
    outputs: np.ndarray  # ONNX Runtime's fused CPU kernels: the golden outputs
    unfused: np.ndarray  # the same graph run as plain float ops: another correct INT8 execution


@dataclass
class ExportJob:
    arch: Architecture
    output_dir: Path
    weights: str = "random"
    seed: int = 0
    fp16: bool = True
    keep_raw: bool = False
    int8: bool = False
    calibration: Path | None = None  # extra calibration images for --int8
    # filled in by the steps
    staging: Path | None = None
    loaded: LoadedModel | None = None
    raw: onnx.ModelProto | None = None
    raw_stats: GraphStats | None = None
    optimized_stats: GraphStats | None = None
    cases: list[Case] = field(default_factory=list)
    sensitivity: Sensitivity | None = None
    int8_results: dict[str, Int8Result] = field(default_factory=dict)  # by scheme (export.int8.SCHEMES)
    int8_calibration: dict | None = None
    fp16_error: float | None = None  # the clean FP16 graph's largest error, over every case
    verification: dict[str, list[CaseResult]] = field(default_factory=dict)
    results: list[StepResult] = field(default_factory=list)

    @property
    def final_dir(self) -> Path:
        return self.output_dir / self.arch.name

    @property
    def succeeded(self) -> bool:
        return bool(self.results) and succeeded(self.results)

    @property
    def int8_accuracy(self) -> Int8Accuracy | None:
        """The CPU's INT8 file's accuracy (both files pass the same guard)."""
        first = self.int8_results.get("u8s8")
        return first.accuracy if first else None

    @property
    def published(self) -> bool:
        return self.status_of("publish") is Status.OK

    @property
    def error(self) -> str | None:
        failed = [r for r in self.results if r.status is Status.FAIL]
        return f"{failed[0].name}: {failed[0].detail}" if failed else None

    def status_of(self, step: str) -> Status | None:
        return next((r.status for r in self.results if r.name == step), None)

    def to_dict(self) -> dict:
        """The export report (as in export.json) plus the outcome: what `build --json` prints."""
        outcome = {
            "succeeded": self.succeeded,
            "error": self.error,
            "output": str(self.final_dir) if self.published else None,
        }
        return {**report(self, self.results), **outcome}

    def metadata(self, precision: str) -> dict[str, object]:
        assert self.loaded is not None
        return {
            "weights_source": self.loaded.weights_source,
            "weights_random": str(self.loaded.is_random).lower(),
            "precision": precision,
            "preprocessing": self.loaded.preprocessing.to_dict(),
            **self.loaded.meta,
        }


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def step_weights(job: ExportJob) -> str:
    job.loaded = load_model(job.arch, job.weights, seed=job.seed)
    job.staging = make_staging_dir(job.output_dir, job.arch.name)
    note = " (RANDOM weights: for testing, not for real predictions)" if job.loaded.is_random else ""
    return job.loaded.weights_source + note


def step_export(job: ExportJob) -> str:
    job.raw = to_onnx(job.loaded.model, job.arch)
    job.raw_stats = GraphStats.of(job.raw)
    if job.keep_raw:
        onnx.save(job.raw, job.staging / RAW_FILE)
    opset = job.raw.opset_import[0].version
    return f"opset {opset}, {job.raw_stats.nodes} nodes, {_mb(job.raw_stats.size_bytes)}"


def step_optimize(job: ExportJob) -> str:
    optimized = optimize(job.raw)
    stamp_metadata(optimized, job.arch, job.metadata("fp32"))
    job.optimized_stats = GraphStats.of(optimized)
    onnx.save(optimized, job.staging / MODEL_FILE)
    job.raw = None  # free the memory before verification (VGG: 0.5 GB)
    return (
        f"{job.raw_stats.nodes} -> {job.optimized_stats.nodes} nodes, "
        f"{_mb(job.raw_stats.size_bytes)} -> {_mb(job.optimized_stats.size_bytes)}"
    )


def _verify(job: ExportJob, filename: str, precision: str) -> str:
    if not job.cases:
        job.cases = reference_cases(job.loaded.model, job.arch, job.loaded.preprocessing)
        job.sensitivity = check_sensitivity(job.cases)  # before any comparison
    tolerance = job.arch.fp32 if precision == "fp32" else job.arch.fp16
    results = verify(job.staging / filename, job.cases, tolerance)
    job.verification[precision] = results
    bad = failures(results)
    if bad:
        raise ExportError(f"{precision} verification failed: " + "; ".join(bad))
    return summarize(results)


def step_verify(job: ExportJob) -> str:
    detail = _verify(job, MODEL_FILE, "fp32")
    s = job.sensitivity
    return (
        f"{detail}; inputs told apart: {s.distinct_top1} top-1 over {s.inputs}, variation {s.variation:.2f}"
    )


def step_fp16(job: ExportJob) -> str:
    if not job.fp16:
        raise SkipStep("--no-fp16")
    half = to_fp16(onnx.load(str(job.staging / MODEL_FILE)))
    stamp_metadata(half, job.arch, job.metadata("fp16"))
    onnx.save(half, job.staging / FP16_FILE)
    detail = _verify(job, FP16_FILE, "fp16")
    job.fp16_error = max(r.comparison.max_rel_err for r in job.verification["fp16"])
    return f"{_mb(half.ByteSize())}; {detail}"


def step_int8(job: ExportJob) -> str:
    """Static INT8 quantization in each scheme (the CPU's and TensorRT's), kept only if every file
    passes the architecture's accuracy guard and the TensorRT-bound one follows TensorRT's rules."""
    if not job.int8:
        raise SkipStep("not asked for (--int8)")
    from export.int8 import (
        SCHEMES,
        accuracy,
        calibration_set,
        check_tensorrt,
        held_out_inputs,
        quantize,
        reference_outputs,
    )

    targets = [job.staging / s.filename for s in SCHEMES.values()]
    try:
        calibration = calibration_set(job.loaded.preprocessing, folder=job.calibration)
        job.int8_calibration = calibration.described
        held_out, _ = held_out_inputs(job.loaded.preprocessing)
        reference = reference_outputs(job.loaded.model, held_out)
        inputs, _, _ = golden_rows(job.cases)
        for scheme in SCHEMES.values():
            target = job.staging / scheme.filename
            quantize(job.staging / MODEL_FILE, target, calibration, scheme)
            quantized = onnx.load(str(target))
            if scheme.signed_activations:
                check_tensorrt(quantized, scheme.filename)
            sess = session(target)
            result = accuracy(reference, sess.run(None, {INPUT_NAME: held_out})[0])
            problems = result.failures(job.arch.int8_guard)
            if problems:
                below = "; ".join(problems)
                raise ExportError(
                    f"INT8 ({scheme.name}) below the accuracy guard: {below} ({result.describe()})"
                )
            unfused = session(target, fuse=False).run(None, {INPUT_NAME: inputs})[0]
            job.int8_results[scheme.name] = Int8Result(
                scheme, result, sess.run(None, {INPUT_NAME: inputs})[0], unfused
            )
            meta = {**job.metadata("int8"), **scheme.describe(), "int8_calibration": calibration.described}
            stamp_metadata(quantized, job.arch, meta)
            onnx.save(quantized, str(target))
    except BaseException:
        job.int8_results.clear()
        for target in targets:  # nothing INT8 is left behind; fp32 and fp16 still publish
            target.unlink(missing_ok=True)
        raise
    sizes = ", ".join(
        f"{r.scheme.name} {(job.staging / r.scheme.filename).stat().st_size / 1e6:.1f} MB"
        for r in job.int8_results.values()
    )
    cpu = job.int8_results["u8s8"].accuracy
    return f"{sizes}, {calibration.inputs.shape[0]} calibration images; {cpu.describe()}"


def fp16_tolerance(job: ExportJob) -> dict[str, float]:
    """The model's own FP16 tolerance (see export.verify.FP16_MARGIN); the registry's bound,
    which the export's FP16 verification enforces, is its ceiling."""
    bound = job.arch.fp16
    if job.fp16_error is None:  # --no-fp16: nothing measured, the registry's bound
        return {"atol": bound.atol, "rtol": bound.rtol}
    return derived_tolerance(
        job.fp16_error,
        margin=FP16_MARGIN,
        atol=bound.atol,
        floor_rtol=FP16_FLOOR_RTOL,
        ceiling_rtol=bound.rtol,
    )


def int8_tolerances(job: ExportJob, scheme: str) -> dict[str, dict[str, float]]:
    """ "int8": the runtime that made the golden outputs (ONNX Runtime's fused CPU kernels, clean
    error 0 there); "int8_cross_runtime": another INT8 execution that must still match them.

    Each file's set: the same graph run another way (unfused). Every config names the set of the
    file it serves (`cnn_deploy.golden`), so `clients verify` and the load test hold the gpu
    `<name>_int8` config (TensorRT on the S8S8 file) to the S8S8 set, never to the U8S8 one."""
    tol = job.arch.int8
    same = {"atol": tol.atol, "rtol": tol.rtol}
    own = job.int8_results[scheme]
    error = compare(own.outputs, own.unfused, atol=0, rtol=0).max_rel_err
    other = derived_tolerance(error, margin=INT8_CROSS_RUNTIME_MARGIN, atol=tol.atol, floor_rtol=tol.rtol)
    return {"int8": same, INT8_CROSS_RUNTIME: other}


def tensorrt_int8_tolerance(job: ExportJob, reference: np.ndarray) -> dict[str, dict[str, float]]:
    """For the fp32 golden set: how far an INT8 execution of TensorRT's S8S8 graph (the `<name>_trt`
    INT8 plan) may land from PyTorch, `margin` x what ONNX Runtime's two executions of it measured."""
    gpu = [r for r in job.int8_results.values() if r.scheme.signed_activations]
    if not gpu:
        return {}
    tol = job.arch.int8
    error = max(
        compare(reference, x, atol=0, rtol=0).max_rel_err for r in gpu for x in (r.outputs, r.unfused)
    )
    other = derived_tolerance(error, margin=INT8_CROSS_RUNTIME_MARGIN, atol=tol.atol, floor_rtol=tol.rtol)
    return {INT8_CROSS_RUNTIME: other}


def golden_set(job: ExportJob) -> GoldenSet:
    """Every photo and a few seeded inputs: real and synthetic, and enough to tell models apart."""
    inputs, outputs, names = golden_rows(job.cases)
    photos = {p.name: p for p in all_photos()}
    rows = [i for i, n in enumerate(names) if n.startswith("photo:")]
    return GoldenSet(
        architecture=job.arch.name,
        inputs=inputs,
        outputs=outputs,
        case_names=names,
        encoded=[photos[names[i].removeprefix("photo:")].read_bytes() for i in rows],
        encoded_rows=rows,
        tolerances={
            "fp32": {"atol": job.arch.fp32.atol, "rtol": job.arch.fp32.rtol},
            "fp16": fp16_tolerance(job),
            **tensorrt_int8_tolerance(job, outputs),
        },
        meta={
            "weights_source": job.loaded.weights_source,
            "reference": f"torch=={torch.__version__} eager CPU",
        },
    )


def step_golden(job: ExportJob) -> str:
    golden = golden_set(job)
    golden.save(job.staging / GOLDEN_FILE)
    golden_files = {"u8s8": INT8_GOLDEN_FILE, "s8s8": INT8_S8S8_GOLDEN_FILE}
    for name, result in job.int8_results.items():  # each INT8 graph's own answers and tolerances
        meta = {**golden.meta, **result.scheme.describe()}
        own = replace(golden, outputs=result.outputs, tolerances=int8_tolerances(job, name), meta=meta)
        own.save(job.staging / golden_files[name])
    atomic_write_text(job.staging / LABELS_FILE, "\n".join(job.loaded.categories) + "\n")
    photos = sum(n.startswith("photo:") for n in golden.case_names)
    return f"{len(golden.inputs)} samples ({photos} photos, {len(golden.inputs) - photos} random)"


def report(job: ExportJob, results: list[StepResult]) -> dict:
    return {
        "architecture": job.arch.name,
        "cnn_deploy_version": __version__,
        "weights_source": job.loaded.weights_source if job.loaded else None,
        "weights_random": job.loaded.is_random if job.loaded else None,
        "preprocessing": job.loaded.preprocessing.to_dict() if job.loaded else None,
        "metadata": job.loaded.meta if job.loaded else {},
        "max_batch_size": job.arch.max_batch_size,
        "input_shape": list(job.arch.input_shape),
        "graph": {
            "before": job.raw_stats.__dict__ if job.raw_stats else None,
            "after": job.optimized_stats.__dict__ if job.optimized_stats else None,
        },
        "verification": {p: [r.to_dict() for r in rs] for p, rs in job.verification.items()},
        "sensitivity": job.sensitivity.to_dict() if job.sensitivity else None,
        "int8": {
            "accuracy": job.int8_accuracy.to_dict(),  # the CPU's file
            "schemes": {
                name: {**r.scheme.describe(), "accuracy": r.accuracy.to_dict()}
                for name, r in job.int8_results.items()
            },
            "guard": asdict(job.arch.int8_guard),
            "calibration": job.int8_calibration,
        }
        if job.int8_accuracy
        else None,
        "steps": [r.to_dict() for r in results],
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }


def step_publish(job: ExportJob) -> str:
    atomic_write_text(job.staging / REPORT_FILE, json.dumps(report(job, job.results), indent=2))
    publish_dir(job.staging, job.final_dir)
    job.staging = None
    return str(job.final_dir)


EXPORT_STEPS: list[Step[ExportJob]] = [
    Step("weights", step_weights),
    Step("export", step_export),
    Step("optimize", step_optimize),
    Step("verify", step_verify),
    Step("fp16", step_fp16),
    Step("int8", step_int8, required=False),  # a failed guard drops INT8, not the export
    Step("golden", step_golden),
    Step("publish", step_publish),
]


def run_export(
    job: ExportJob, *, on_start=lambda step: None, debug: bool = False, keep_cases: bool = False
) -> list[StepResult]:
    """Run the pipeline; on any failure nothing is left in the output directory for this model.

    `keep_cases` keeps the verification inputs and PyTorch's outputs on the job (tests reuse them).
    """
    try:
        return run_steps(EXPORT_STEPS, job, on_start=on_start, on_finish=job.results.append, debug=debug)
    finally:
        discard(job.staging)
        job.staging = None
        # `build --all` keeps every job for the summary: keep the numbers, not the weights.
        if job.loaded is not None:
            job.loaded.model = None
        job.raw = None
        if not keep_cases:
            job.cases = []
