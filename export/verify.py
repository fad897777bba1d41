"""Verify an ONNX file against PyTorch: several batch sizes, random inputs and real photos.

Before any comparison, the reference must be able to tell inputs apart (see
cnn_deploy_core.metrics.sensitivity): otherwise a wrong export would pass too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from cnn_deploy_core.images import all_photos
from cnn_deploy_core.layout import INPUT_NAME
from cnn_deploy_core.metrics import Comparison, Sensitivity, compare, sensitivity
from cnn_deploy_core.preprocess import Preprocessing, preprocess_files
from cnn_deploy_core.registry import Architecture, Tolerance
from export import ExportError

INPUT_SEED = 1234
GOLDEN_SEEDED_ROWS = 5  # seeded random inputs kept in the golden set, beside every photo

# The tolerances a golden set records are derived from the model's own clean error.
# FP16: 3× the largest error over every verification case. One zeroed channel of a middle conv, or
# a conv scaled by 1.05, errs about ten times the clean error (ONNX Runtime CPU, random weights),
# and a registry-wide bound loose enough for every model lets such damage through on some; 3× still
# leaves headroom below the damage, and room for a GPU runtime that rounds differently.
FP16_MARGIN = 3.0
FP16_FLOOR_RTOL = 1e-3  # never tighter than this: a GPU's FP16 kernels accumulate differently
# INT8 across runtimes: 2× the difference between two correct executions of the same QDQ graph
# (ONNX Runtime's fused integer kernels vs the same graph unfused, in float). That difference is
# as large as a one-conv damage, so this tolerance (for TensorRT INT8) catches only gross damage;
# the same-runtime "int8" entry catches it all.
INT8_CROSS_RUNTIME_MARGIN = 2.0


@dataclass
class Case:
    name: str  # "random/batch=1", "photos/batch=4"
    inputs: np.ndarray
    reference: np.ndarray  # PyTorch eager output
    row_names: list[str]


@dataclass
class CaseResult:
    case: str
    batch: int
    comparison: Comparison

    def to_dict(self) -> dict:
        return {"case": self.case, "batch": self.batch, **self.comparison.to_dict()}


def batch_sizes(arch: Architecture) -> list[int]:
    return sorted({1, 2, arch.max_batch_size})


def reference_cases(
    model: torch.nn.Module, arch: Architecture, preprocessing: Preprocessing, *, seed: int = INPUT_SEED
) -> list[Case]:
    """Seeded random inputs at batch 1, 2 and max, plus every sample photo as one batch."""
    rng = np.random.default_rng(seed)
    cases = []
    with torch.no_grad():
        for bs in batch_sizes(arch):
            x = rng.standard_normal((bs, *arch.input_shape), dtype=np.float32)
            y = model(torch.from_numpy(x)).numpy()
            cases.append(Case(f"random/batch={bs}", x, y, [f"random-{i}" for i in range(bs)]))
        photos = all_photos()
        x = preprocess_files(photos, preprocessing)
        y = model(torch.from_numpy(x)).numpy()
        cases.append(Case(f"photos/batch={len(photos)}", x, y, [f"photo:{p.name}" for p in photos]))
    return cases


def golden_rows(cases: list[Case]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(inputs, reference outputs, row names) of the golden set: every photo, and the first
    seeded rows of the largest random batch."""
    photos = next(c for c in cases if c.name.startswith("photos/"))
    largest = max((c for c in cases if c.name.startswith("random/")), key=lambda c: len(c.inputs))
    n = min(GOLDEN_SEEDED_ROWS, len(largest.inputs))
    return (
        np.concatenate([photos.inputs, largest.inputs[:n]]),
        np.concatenate([photos.reference, largest.reference[:n]]),
        photos.row_names + largest.row_names[:n],
    )


def check_sensitivity(cases: list[Case]) -> Sensitivity:
    """The guard: the golden inputs' reference outputs must differ enough to catch a wrong model."""
    _, outputs, _ = golden_rows(cases)
    result = sensitivity(outputs)
    if not result.passed:
        raise ExportError(f"verification cannot detect errors for this model: {result.describe()}")
    return result


def session(path: str | Path | bytes, *, threads: int = 0, fuse: bool = True) -> ort.InferenceSession:
    """A CPU session on a file (or a serialized model); `fuse=False` runs the graph as written (a QDQ
    graph in float, unfused)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if not fuse:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def verify(path: str | Path | bytes, cases: list[Case], tolerance: Tolerance) -> list[CaseResult]:
    """Run every case through ONNX Runtime; report all of them, pass or fail."""
    sess = session(path)
    results = []
    for case in cases:
        got = sess.run(None, {INPUT_NAME: case.inputs})[0]
        cmp = compare(case.reference, got, atol=tolerance.atol, rtol=tolerance.rtol)
        results.append(CaseResult(case.name, len(case.inputs), cmp))
    return results


def summarize(results: list[CaseResult]) -> str:
    worst_abs = max(r.comparison.max_abs_err for r in results)
    worst_rel = max(r.comparison.max_rel_err for r in results)
    top5 = min(r.comparison.top5_agreement for r in results)
    return f"max abs {worst_abs:.2e}, max rel {worst_rel:.2e}, top-5 agreement {top5:.0%}"


def failures(results: list[CaseResult]) -> list[str]:
    out = []
    for r in results:
        c = r.comparison
        if not c.within_tolerance:
            out.append(
                f"{r.case}: max abs err {c.max_abs_err:.2e}, rel {c.max_rel_err:.2e} "
                f"> atol {c.atol:g} + rtol {c.rtol:g}×logit scale"
            )
        if not c.top5_consistent:
            out.append(f"{r.case}: top-5 labels differ ({c.top5_agreement:.0%} agreement)")
    return out


def measure_sensitivity(
    arch: Architecture, weights: str, *, seed: int = 0, calibrate: bool = True
) -> Sensitivity:
    """The guard's figures for one architecture and weights, on the golden inputs (no export)."""
    from export.models import load_model

    loaded = load_model(arch, weights, seed=seed, calibrate=calibrate)
    _, outputs, _ = golden_rows(reference_cases(loaded.model, arch, loaded.preprocessing))
    return sensitivity(outputs)
