"""What a load test sends and how it checks each answer: golden rows (or seeded random ones).

Tensor models get the golden set's preprocessed rows; image ensembles (`<name>_image`) get its
photos as encoded files, and must answer what the tensor model answers for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients import LoadTestError
from clients.model_info import ModelInfo
from cnn_deploy_core import CnnDeployError, paths
from cnn_deploy_core.dtypes import kserve_to_numpy
from cnn_deploy_core.golden import TOLERANCE_PARAM, GoldenSet, golden_path
from cnn_deploy_core.images import all_photos
from cnn_deploy_core.layout import IDENTITY_MODEL, IMAGE_SUFFIX, PARAM_PREFIX, TRT_SUFFIX
from cnn_deploy_core.metrics import compare

_SENDABLE = ("FP32", "FP16", "UINT8")  # what a workload of image tensors can be sent as
_POOL_BYTES = 64 << 20  # distinct batches kept ready to send; rows are cycled through them
_RANDOM_ROWS = 8


@dataclass
class Workload:
    """The batches sent (golden rows, or seeded random ones, cycled) and how each answer is checked."""

    inputs: np.ndarray  # rows, in the model's input dtype
    expected: np.ndarray | None  # golden reference rows, for check == "golden"
    batch_size: int
    check: str  # "golden" | "identity" | "none"
    source: str | None = None
    precision: str | None = None
    atol: float | None = None
    rtol: float | None = None
    reason: str | None = None  # why verification is disabled

    def __post_init__(self) -> None:
        n, b = len(self.inputs), self.batch_size
        if n == 0:
            raise LoadTestError("the golden set has no rows")
        # Batch k holds rows (k*b + j) mod n; the cycle repeats after n / gcd(n, b) batches. Keep
        # at most _POOL_BYTES of them ready so large batches don't hold gigabytes.
        count = max(1, min(n // math.gcd(n, b), _POOL_BYTES // (self.inputs[0].nbytes * b)))
        self._rows = [[(k * b + j) % n for j in range(b)] for k in range(count)]
        self._batches = [np.ascontiguousarray(self.inputs[r]) for r in self._rows]
        if self.check == "golden":
            self._expected = [self.expected[r] for r in self._rows]
        elif self.check == "identity":
            self._expected = [x.reshape(b, -1) for x in self._batches]

    @property
    def enabled(self) -> bool:
        return self.check != "none"

    def rows(self, index: int) -> list[int]:
        return self._rows[index % len(self._rows)]

    def batch(self, index: int) -> np.ndarray:
        return self._batches[index % len(self._batches)]

    @property
    def batches(self) -> list[np.ndarray]:
        """The distinct batches, in the order `batch(index)` cycles through them."""
        return self._batches

    def verify(self, index: int, output: np.ndarray) -> tuple[bool, float]:
        """(correct, max |error|) of one answer."""
        want = self._expected[index % len(self._expected)]
        got = np.asarray(output)
        if self.check == "identity":  # exact: the model copies the first values of the input
            want = want[:, : got.shape[-1]] if got.ndim == 2 else want
        if got.shape != want.shape:
            return False, math.inf
        if self.check == "identity":
            return bool(np.array_equal(got, want)), float(np.max(np.abs(got.astype(np.float64) - want)))
        result = compare(want, got, atol=self.atol, rtol=self.rtol)
        return result.passed, result.max_abs_err

    def describe(self, fraction: float) -> dict:
        if self.check == "golden":
            summary = (
                f"golden set {self.source} ({self.precision}: atol={self.atol:g}, "
                f"rtol={self.rtol:g}), {fraction:.0%} of answers"
            )
        elif self.check == "identity":
            summary = f"identity (output == first 1000 input values), {fraction:.0%} of answers"
        else:
            summary = f"not verified: {self.reason or 'no golden set'}"
        return {
            "enabled": self.enabled,
            "method": self.check,
            "summary": summary,
            "fraction": fraction,
            "source": self.source,
            "precision": self.precision,
            "atol": self.atol,
            "rtol": self.rtol,
            "reason": self.reason,
        }


def _is_identity(info: ModelInfo) -> bool:
    return IDENTITY_MODEL in (info.name, info.parameters.get(PARAM_PREFIX + "architecture"))


def _encoded_rows(blobs: list[bytes]) -> np.ndarray:
    rows = np.empty((len(blobs), 1), dtype=np.object_)
    rows[:, 0] = blobs
    return rows


def _image_workload(
    info: ModelInfo,
    tensor: ModelInfo | None,
    *,
    batch_size: int,
    golden: Path | None,
    repository: Path | None,
) -> Workload:
    """Encoded photos for `<name>_image`, checked against the tensor model's golden outputs."""
    if tensor is None:
        raise LoadTestError(f"{info.name} takes encoded images but its tensor model is not known")
    repository = repository or paths.repository()
    try:
        version = str(tensor.latest_version)
        path = Path(golden or golden_path(repository, tensor.name, version, tensor.parameters))
    except CnnDeployError as e:
        raise LoadTestError(str(e)) from None
    if golden is None and not path.is_file():
        photos = [p.read_bytes() for p in all_photos()]
        return Workload(_encoded_rows(photos), None, batch_size, "none", reason=f"no golden set at {path}")
    try:
        golden_set = GoldenSet.load(path)
    except CnnDeployError as e:
        raise LoadTestError(str(e)) from None
    if not golden_set.encoded:
        raise LoadTestError(f"golden set {path} has no encoded photos (exported before images were served)")
    tolerance = _tolerance(golden_set, tensor, path)
    return Workload(
        _encoded_rows(golden_set.encoded),
        golden_set.outputs[golden_set.encoded_rows],
        batch_size,
        "golden",
        source=str(path),
        precision=tensor.precision,
        atol=float(tolerance["atol"]),
        rtol=float(tolerance["rtol"]),
    )


def _tolerance(golden_set: GoldenSet, info, path: Path) -> dict:
    """The precision's tolerance, or the one the model's config names (TOLERANCE_PARAM: e.g. a
    TensorRT INT8 config, held to the cross-runtime INT8 tolerance), as `clients verify` does."""
    key = info.parameters.get(TOLERANCE_PARAM) or info.precision
    tolerance = golden_set.tolerances.get(key)
    if tolerance is None:
        raise LoadTestError(
            f"golden set {path} has no tolerance {key!r} "
            f"(it has: {', '.join(golden_set.tolerances) or 'none'})"
        )
    return tolerance


def image_model(model: str) -> str:
    return model if model.endswith(IMAGE_SUFFIX) else model + IMAGE_SUFFIX


def build_workload(
    info: ModelInfo,
    *,
    batch_size: int,
    seed: int,
    golden: Path | None,
    repository: Path | None,
    tensor: ModelInfo | None = None,
) -> Workload:
    """Golden rows and their check, or seeded random rows when the model has no golden set.
    `tensor`: for an image ensemble, the tensor model whose golden set and precision apply."""
    if info.input_datatype == "BYTES":
        return _image_workload(info, tensor, batch_size=batch_size, golden=golden, repository=repository)
    if info.input_datatype not in _SENDABLE:
        raise LoadTestError(
            f"{info.name}: input datatype {info.input_datatype} is not supported "
            f"(supported: {', '.join(_SENDABLE)})"
        )
    dtype = kserve_to_numpy(info.input_datatype).type
    rng = np.random.default_rng(seed)
    shape = (_RANDOM_ROWS, *info.input_dims)
    random_rows = (
        rng.integers(0, 256, shape).astype(dtype)
        if dtype is np.uint8
        else rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    )
    if _is_identity(info) and golden is None:
        return Workload(random_rows, None, batch_size, "identity")
    # A <name>_trt model serves the ONNX model's export: same golden set.
    exported = info.name.removesuffix(TRT_SUFFIX)
    repository = repository or paths.repository()
    # The golden set the served config names (an INT8 config answers to its own file's outputs).
    params = info.parameters if exported == info.name else {}
    try:
        path = Path(golden or golden_path(repository, exported, str(info.latest_version), params))
    except CnnDeployError as e:
        raise LoadTestError(str(e)) from None
    if golden is None and not path.is_file():
        return Workload(random_rows, None, batch_size, "none", reason=f"no golden set at {path}")
    try:
        golden_set = GoldenSet.load(path)
    except CnnDeployError as e:
        raise LoadTestError(str(e)) from None
    has, wants = (
        (golden_set.inputs.shape[1:], golden_set.outputs.shape[1:]),
        (info.input_dims, info.output_dims),
    )
    if tuple(map(tuple, has)) != wants:
        raise LoadTestError(
            f"golden set {path} maps {list(has[0])} -> {list(has[1])} but {info.name} takes "
            f"{list(wants[0])} -> {list(wants[1])}: is it another model's golden set?"
        )
    if dtype is np.uint8:
        raise LoadTestError(f"golden set {path} holds float inputs but {info.name} takes UINT8")
    tolerance = _tolerance(golden_set, info, path)
    return Workload(
        golden_set.inputs.astype(dtype),
        golden_set.outputs,
        batch_size,
        "golden",
        source=str(path),
        precision=info.precision,
        atol=float(tolerance["atol"]),
        rtol=float(tolerance["rtol"]),
    )
