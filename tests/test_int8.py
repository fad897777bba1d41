"""INT8: static quantization with an accuracy guard that can fail, served as <name>_int8."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cnn_deploy_core.golden import GOLDEN_PARAM, INT8_CROSS_RUNTIME, GoldenSet
from cnn_deploy_core.preprocess import Preprocessing
from cnn_deploy_core.registry import get
from export import ExportError
from export import int8 as int8_module
from export.int8 import check_tensorrt, tensorrt_violations
from export.pipeline import ExportJob, run_export
from serving.config import parse_pbtxt
from tests.conftest import INT8_ARCH, run_cli


def test_int8_export_passes_its_guard_with_its_own_golden_outputs(models_dir):
    out = models_dir / INT8_ARCH
    report = json.loads((out / "export.json").read_text())
    steps = {s["step"]: s["status"] for s in report["steps"]}
    assert steps["int8"] == "OK"
    accuracy = report["int8"]["accuracy"]
    guard = report["int8"]["guard"]
    assert accuracy["top1_agreement"] >= guard["min_top1"] and accuracy["min_cosine"] >= guard["min_cosine"]
    assert report["int8"]["calibration"]["seeded_tensors"] > 0
    golden = GoldenSet.load(out / "golden.int8.npz")
    assert golden.outputs.shape == GoldenSet.load(out / "golden.npz").outputs.shape
    # "int8": the ONNX Runtime kernels that made these outputs; "int8_cross_runtime" (TensorRT): 2×
    # how much the same QDQ graph differs when ORT runs it unfused, in float
    assert set(golden.tolerances) == {"int8", INT8_CROSS_RUNTIME}
    cross = golden.tolerances[INT8_CROSS_RUNTIME]
    assert cross["measured_rel_err"] > 0 and cross["rtol"] == max(2 * cross["measured_rel_err"], 0.02)


def test_int8_is_served_as_its_own_model_on_the_cpu_and_gpu_configs(repository):
    int8 = repository / f"{INT8_ARCH}_int8"
    cpu = parse_pbtxt((int8 / "configs" / "cpu.pbtxt").read_text())
    gpu = parse_pbtxt((int8 / "configs" / "gpu.pbtxt").read_text())
    # the CPU serves U8S8 (ONNX Runtime's fast form), the GPU the signed file TensorRT builds
    assert cpu.default_model_filename == "model.int8.onnx"
    assert gpu.default_model_filename == "model.int8.s8s8.onnx"
    assert cpu.parameters["cnn_deploy.int8_scheme"].string_value == "u8s8"
    assert gpu.parameters["cnn_deploy.int8_scheme"].string_value == "s8s8"
    assert cpu.parameters["cnn_deploy.precision"].string_value == "int8"
    (accelerator,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["precision_mode"] == "INT8"
    for name in ("model.int8.onnx", "golden.npz", "model.int8.s8s8.onnx", "golden.int8.s8s8.npz"):
        assert (int8 / "1" / name).is_file(), name
    for config in (cpu, gpu):  # each config names the golden set made by the very file it serves
        golden = GoldenSet.load(int8 / "1" / config.parameters[GOLDEN_PARAM].string_value)
        assert golden.meta["file"] == config.default_model_filename
    assert not tensorrt_violations(onnx.load(str(int8 / "1" / gpu.default_model_filename)))
    # what Triton reads for a config name this model lacks (`serving up --config-name tuned` with
    # another model tuned): the cpu config, as for every other model of the repository
    assert (int8 / "config.pbtxt").read_text() == (int8 / "configs" / "cpu.pbtxt").read_text()


def test_each_int8_golden_set_says_which_file_and_config_it_serves(models_dir):
    out = models_dir / INT8_ARCH
    cpu, gpu = GoldenSet.load(out / "golden.int8.npz"), GoldenSet.load(out / "golden.int8.s8s8.npz")
    assert (cpu.meta["int8_scheme"], cpu.meta["serves"], cpu.meta["file"]) == (
        "u8s8",
        "cpu",
        "model.int8.onnx",
    )
    assert (gpu.meta["int8_scheme"], gpu.meta["serves"], gpu.meta["file"]) == (
        "s8s8",
        "gpu",
        "model.int8.s8s8.onnx",
    )
    # each set's cross-runtime bound is its own graph's (run fused and unfused): every config is
    # checked against the set of the file it serves, never against the other scheme's outputs
    for own in (cpu, gpu):
        bound = own.tolerances[INT8_CROSS_RUNTIME]
        assert 0 < bound["measured_rel_err"] and bound["rtol"] >= 2 * bound["measured_rel_err"], bound
    report = json.loads((out / "export.json").read_text())["int8"]
    assert {s["serves"] for s in report["schemes"].values()} == {"cpu", "gpu"}
    # the fp32 set bounds an INT8 `<name>_trt` plan (the S8S8 graph) against PyTorch
    fp32 = GoldenSet.load(out / "golden.npz").tolerances[INT8_CROSS_RUNTIME]
    assert fp32["measured_rel_err"] > 0 and fp32["rtol"] == max(2 * fp32["measured_rel_err"], 0.02)


def test_the_tensorrt_rule_refuses_the_cpu_int8_file_and_passes_the_gpu_one(models_dir):
    out = models_dir / INT8_ARCH
    cpu = tensorrt_violations(onnx.load(str(out / "model.int8.onnx")))
    assert sum("UINT8 zero point" in line for line in cpu) >= 60  # the activations' Q/DQ pairs
    assert any("INT32 zero point" in line for line in cpu)  # a quantized bias
    assert tensorrt_violations(onnx.load(str(out / "model.int8.s8s8.onnx"))) == []
    with pytest.raises(ExportError) as caught:
        check_tensorrt(onnx.load(str(out / "model.int8.onnx")), "model.int8.onnx")
    line = str(caught.value)
    assert "\n" not in line and line.startswith("model.int8.onnx is not TensorRT explicit quantization: ")
    assert "more)" in line and ("QuantizeLinear '" in line or "DequantizeLinear '" in line)


def _qdq_graph(zero_point: np.ndarray, *, weight_scale: np.ndarray) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(w: DQ(int8 weight)) -> y, with the given activation zero point."""
    weight = np.ones((4, 3, 1, 1), dtype=np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s"),
        numpy_helper.from_array(zero_point, "zp"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(weight_scale.astype(np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(weight_scale.shape, dtype=np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xd", "w"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_the_tensorrt_rule_names_each_node_that_breaks_it():
    per_channel = np.full(4, 0.01)
    assert tensorrt_violations(_qdq_graph(np.array(0, dtype=np.int8), weight_scale=per_channel)) == []
    uint8 = tensorrt_violations(_qdq_graph(np.array(128, dtype=np.uint8), weight_scale=per_channel))
    assert uint8 == [
        "QuantizeLinear 'q_x': UINT8 zero point; TensorRT needs INT8 with zero point 0",
        "DequantizeLinear 'dq_x': UINT8 zero point; TensorRT needs INT8 with zero point 0",
    ]
    shifted = tensorrt_violations(_qdq_graph(np.array(3, dtype=np.int8), weight_scale=per_channel))
    assert len(shifted) == 2 and all("non-zero zero point" in line for line in shifted)
    per_tensor = tensorrt_violations(_qdq_graph(np.array(0, dtype=np.int8), weight_scale=np.array([0.01])))
    assert per_tensor == ["DequantizeLinear 'dq_w': weight scale is not per channel (4 channels)"]


@pytest.mark.integration
def test_clients_verify_checks_the_int8_model(triton, repository):
    result = run_cli("clients", "verify", "--url", triton.grpc_url, "--repository", str(repository),
                     "--model", f"{INT8_ARCH}_int8", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (verdict,) = json.loads(result.stdout)
    assert verdict["passed"] and verdict["precision"] == "int8"


def test_a_broken_calibration_fails_the_guard_and_leaves_no_int8_behind(tmp_path, monkeypatch):
    real = int8_module.calibration_set

    def constant(spec: Preprocessing, **kwargs):  # every calibration image the same grey square
        grey = np.asarray(Image.new("RGB", (spec.crop, spec.crop), (128, 128, 128)), dtype=np.float32)
        calibration = real(spec, **kwargs)
        inputs = np.broadcast_to((grey / 255.0).transpose(2, 0, 1)[None], calibration.inputs.shape)
        return int8_module.Calibration(np.ascontiguousarray(inputs, dtype=np.float32), calibration.described)

    monkeypatch.setattr(int8_module, "calibration_set", constant)
    (tmp_path / "out").mkdir()
    job = ExportJob(get("resnet18"), tmp_path / "out", weights="random", fp16=False, int8=True)
    run_export(job)
    assert job.published and not job.succeeded
    assert job.error.startswith("int8: INT8 (u8s8) below the accuracy guard:")
    assert "top-1 agreement" in job.error and "held-out inputs" in job.error
    assert not (tmp_path / "out" / "resnet18" / "model.int8.onnx").exists()
    assert not (tmp_path / "out" / "resnet18" / "golden.int8.npz").exists()
    assert (tmp_path / "out" / "resnet18" / "model.onnx").is_file()


def test_the_export_refuses_a_tensorrt_bound_int8_file_that_tensorrt_cannot_build(tmp_path, monkeypatch):
    real = int8_module.quantize

    def cpu_form_only(model, output, calibration, scheme):  # the GPU file quantized the CPU's way
        real(model, output, calibration, int8_module.SCHEMES["u8s8"])

    monkeypatch.setattr(int8_module, "quantize", cpu_form_only)
    (tmp_path / "out").mkdir()
    job = ExportJob(get("resnet18"), tmp_path / "out", weights="random", fp16=False, int8=True)
    run_export(job)
    assert job.published and not job.succeeded
    assert job.error.startswith("int8: model.int8.s8s8.onnx is not TensorRT explicit quantization: ")
    assert "zero point" in job.error and "\n" not in job.error
    left = {p.name for p in (tmp_path / "out" / "resnet18").iterdir()}
    assert not {"model.int8.onnx", "model.int8.s8s8.onnx", "golden.int8.npz", "golden.int8.s8s8.npz"} & left


def test_a_calibration_folder_adds_its_images(tmp_path):
    spec = Preprocessing()
    base = int8_module.calibration_set(spec)
    for i in range(2):
        Image.new("RGB", (300, 200), (40 * i, 90, 200)).save(tmp_path / f"extra{i}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    more = int8_module.calibration_set(spec, folder=tmp_path)
    assert len(more.inputs) == len(base.inputs) + 2 and more.described["user_images"] == [
        "extra0.jpg",
        "extra1.jpg",
    ]
    with pytest.raises(ExportError, match="holds no image"):
        int8_module.calibration_set(
            spec, folder=tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None
        )


def _ort_optimized_ops(path, tmp_path) -> dict[str, int]:
    """The op types ONNX Runtime's CPU provider runs for this file, after all its graph rewrites."""
    import collections

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return dict(collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node))


def test_the_cpu_int8_file_runs_in_int8_from_the_input_to_the_logits(models_dir, tmp_path):
    ops = _ort_optimized_ops(models_dir / INT8_ARCH / "model.int8.onnx", tmp_path)
    # one quantization of the input, one dequantization of the logits, nothing in float between:
    # the pooling too runs in INT8 (a ReduceMean would be dequantized, averaged, quantized again)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops
    assert ops["QLinearGlobalAveragePool"] == 1 and ops["QGemm"] == 1, ops
    assert not {"Conv", "Gemm", "Add", "ReduceMean", "GlobalAveragePool"} & set(ops), ops


def _reduce_mean(axes: list[int], *, keepdims: int = 1, shape=(2, 3, 4, 5)) -> onnx.ModelProto:
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=keepdims)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_only_a_mean_over_height_and_width_becomes_global_average_pooling():
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5), dtype=np.float32)
    for axes in ([-1, -2], [2, 3]):
        model = _reduce_mean(axes)
        want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        assert int8_module.spatial_means_as_pooling(model) == 1
        assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool"]
        assert not model.graph.initializer  # the axes went with the ReduceMean
        got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    rank3 = _reduce_mean([-1, -2], shape=(3, 4, 5))
    for other in (_reduce_mean([1]), _reduce_mean([2, 3], keepdims=0), rank3):
        assert int8_module.spatial_means_as_pooling(other) == 0
        assert [n.op_type for n in other.graph.node] == ["ReduceMean"]
