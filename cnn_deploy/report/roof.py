"""This machine's roofline: the fp32 compute roof and the memory bandwidth, measured in the report's
run. The compute roof is the best of several GEMMs (ONNX Runtime's MatMul at a few sizes, numpy's
BLAS at a few sizes): one runtime at one size is no roof, since a model's own layers can beat it
(ResNet-18 beats ORT's prepacked 1024² MatMul)."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from cnn_deploy_core import __version__
from cnn_deploy_core.machine import cpu_flags, cpu_model

ROUNDS = 3
ORT_SIZES = (512, 1024, 2048)
NUMPY_SIZES = (1024, 2048)
BANDWIDTH_FLOATS = 16 << 20  # 64 MB per operand: far beyond the caches


@dataclass
class Gemm:
    how: str  # e.g. "onnxruntime MatMul 1024x1024x1024, B constant (prepacked)"
    gflops: float


@dataclass
class Machine:
    cpu: str
    flags: list[str]
    cores: int
    threads: int
    gemm_gflops: float  # the compute roof: the best of `gemms`
    gemm_best: str  # which one it was
    gemms: list[Gemm]
    bandwidth_gbs: float  # an element-wise Add over 3 x 64 MB, ONNX Runtime
    versions: dict[str, str]


def session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def rate(run, work: float, seconds: float, best: bool = False) -> float:
    """Units of `work` per second: the median of ROUNDS rounds (`best`: the fastest round, for a
    peak, which a neighbour's load can only lower)."""
    run()
    rates = []
    for _ in range(ROUNDS):
        n, start = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - start < seconds / ROUNDS:
            run()
            n += 1
        rates.append(work * n / (time.perf_counter() - start))
    return float(max(rates) if best else np.median(rates))


def best_gemm(gemms: list[Gemm]) -> Gemm:
    """The roof: the fastest GEMM measured (any one of them is a floor of what the CPU can do)."""
    return max(gemms, key=lambda g: g.gflops)


def _tiny_model(op: str, shapes: list[tuple[int, ...]]):
    """One op on two float tensors; for MatMul the second is a constant, which ORT prepacks as it
    does a model's weights (a GEMM whose B changes every call is slower)."""
    from onnx import TensorProto, helper, numpy_helper

    out_shape = (shapes[0][0], shapes[1][1]) if op == "MatMul" else shapes[0]
    inputs = [helper.make_tensor_value_info("x0", TensorProto.FLOAT, list(shapes[0]))]
    initializers = []
    if op == "MatMul":
        rng = np.random.default_rng(1)
        initializers.append(numpy_helper.from_array(rng.standard_normal(shapes[1], dtype=np.float32), "x1"))
    else:
        inputs.append(helper.make_tensor_value_info("x1", TensorProto.FLOAT, list(shapes[1])))
    graph = helper.make_graph(
        [helper.make_node(op, ["x0", "x1"], ["y"])],
        op.lower(),
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _ort_op(op: str, shapes, work: float, threads: int, seconds: float, tmp: Path) -> float:
    path = tmp / f"{op}-{shapes[0][0]}.onnx"
    onnx.save(_tiny_model(op, shapes), str(path))
    s = session(path, threads)
    rng = np.random.default_rng(0)
    names = ["x0"] if op == "MatMul" else ["x0", "x1"]
    feeds = {n: rng.standard_normal(shape, dtype=np.float32) for n, shape in zip(names, shapes, strict=False)}
    return rate(lambda: s.run(None, feeds), work, seconds, best=True)


def measure_gemms(threads: int, seconds: float) -> list[Gemm]:
    """fp32 GFLOP/s of square GEMMs: ONNX Runtime's MatMul (B constant, prepacked) with `threads`,
    and numpy's BLAS (its own thread pool) at each size."""
    gemms = []
    per = seconds / 2  # several of them: keep the whole within a few times `seconds`
    with tempfile.TemporaryDirectory() as tmp:
        for n in ORT_SIZES:
            flops = 2 * n**3 / 1e9
            gflops = _ort_op("MatMul", [(n, n), (n, n)], flops, threads, per, Path(tmp))
            gemms.append(Gemm(f"onnxruntime MatMul {n}x{n}x{n}, B constant (prepacked)", gflops))
    rng = np.random.default_rng(2)
    for n in NUMPY_SIZES:
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        out = np.empty((n, n), dtype=np.float32)
        gflops = rate(lambda a=a, b=b, out=out: np.matmul(a, b, out=out), 2 * n**3 / 1e9, per, best=True)
        gemms.append(Gemm(f"numpy matmul {n}x{n}x{n} ({_blas()})", gflops))
    return gemms


def _blas() -> str:
    try:
        config = np.show_config(mode="dicts")
        return config["Build Dependencies"]["blas"]["name"]
    except Exception:  # numpy builds differ in what they tell: the name is a courtesy
        return "BLAS"


def measure_machine(threads: int, seconds: float) -> Machine:
    """The compute roof (best GEMM) and the memory bandwidth, measured now."""
    import onnxruntime as ort
    import torch

    gemms = measure_gemms(threads, seconds)
    roof = best_gemm(gemms)
    with tempfile.TemporaryDirectory() as tmp:
        shapes = [(BANDWIDTH_FLOATS,), (BANDWIDTH_FLOATS,)]
        bandwidth = _ort_op("Add", shapes, 3 * 4 * BANDWIDTH_FLOATS / 1e9, threads, seconds, Path(tmp))
    return Machine(
        cpu=cpu_model() if cpu_model() != "unknown" else platform.processor() or platform.machine(),
        flags=cpu_flags(),
        cores=os.cpu_count() or 1,
        threads=threads,
        gemm_gflops=roof.gflops,
        gemm_best=roof.how,
        gemms=gemms,
        bandwidth_gbs=bandwidth,
        versions={
            "cnn-deploy": __version__,
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
    )
