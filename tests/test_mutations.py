"""Verification can fail: subtle damage to an exported graph is caught by the export's verification
and by `clients verify` against a server serving the damaged model (a few architectures here;
every architecture in tests/test_export_all.py, under `slow`) — at each precision's own tolerance
as the golden set records it: FP32, FP16 (derived from the model's clean FP16 error) and INT8."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import onnx
import pytest

from cnn_deploy_core.golden import INT8_CROSS_RUNTIME, GoldenSet
from cnn_deploy_core.layout import FP16_FILE, GOLDEN_FILE, INPUT_NAME, INT8_FILE, INT8_GOLDEN_FILE
from cnn_deploy_core.metrics import compare
from cnn_deploy_core.registry import Tolerance, get
from export.models import load_model
from export.verify import FP16_FLOOR_RTOL, FP16_MARGIN, failures, reference_cases, session, verify
from serving.config import parse_pbtxt
from serving.triton import ServerOptions, TritonProcess
from tests.conftest import INT8_ARCH, run_cli
from tests.mutations import MUTATIONS

MUTATED = ("resnet18", "googlenet")  # googlenet: vacuous verification unless export.random_init works


@functools.cache
def _cases(name: str):
    arch = get(name)
    loaded = load_model(arch, "random")  # the same seed and init as the export: the same reference
    return reference_cases(loaded.model, arch, loaded.preprocessing)


def _damaged(models_dir: Path, name: str, mutation: str, target: Path) -> Path:
    onnx.save(MUTATIONS[mutation](onnx.load(str(models_dir / name / "model.onnx"))), str(target))
    return target


def test_the_undamaged_export_passes_its_own_verification(models_dir):
    for name in MUTATED:
        assert failures(verify(models_dir / name / "model.onnx", _cases(name), get(name).fp32)) == []


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("name", MUTATED)
def test_export_verification_catches_a_damaged_graph(models_dir, name, mutation, tmp_path):
    damaged = _damaged(models_dir, name, mutation, tmp_path / "model.onnx")
    problems = failures(verify(damaged, _cases(name), get(name).fp32))
    assert problems, f"{mutation} on {name} went unnoticed"


def _golden_errors(model: onnx.ModelProto, golden: GoldenSet, key: str) -> tuple[bool, float]:
    """(passes the golden set at its `key` tolerance, max error relative to the logit scale)."""
    got = session(model.SerializeToString()).run(None, {INPUT_NAME: golden.inputs})[0]
    atol, rtol = golden.tolerance(key)
    result = compare(golden.outputs, got, atol=atol, rtol=rtol)
    return result.passed, result.max_rel_err


@pytest.mark.parametrize("name", MUTATED)
def test_the_fp16_tolerance_is_the_models_own_clean_error_times_the_margin(models_dir, name):
    tol = GoldenSet.load(models_dir / name / GOLDEN_FILE).tolerances["fp16"]
    ceiling = get(name).fp16.rtol  # the registry's bound, which the export's FP16 verification enforces
    expected = max(min(FP16_MARGIN * tol["measured_rel_err"], ceiling), FP16_FLOOR_RTOL)
    assert tol["margin"] == FP16_MARGIN and tol["measured_rel_err"] > 0 and tol["rtol"] == expected
    clean = onnx.load(str(models_dir / name / FP16_FILE))
    passed, _ = _golden_errors(clean, GoldenSet.load(models_dir / name / GOLDEN_FILE), "fp16")
    assert passed


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("name", MUTATED)
def test_fp16_verification_catches_a_damaged_fp16_graph(models_dir, name, mutation):
    """The damage done to the FP16 file itself, judged as the GPU configs are: at the FP16 tolerance,
    by the export's verification cases and against the golden set."""
    golden = GoldenSet.load(models_dir / name / GOLDEN_FILE)
    damaged = MUTATIONS[mutation](onnx.load(str(models_dir / name / FP16_FILE)))
    passed, err = _golden_errors(damaged, golden, "fp16")
    assert not passed, (
        f"{mutation} on {name} FP16 went unnoticed (err {err:.2e}, tol {golden.tolerances['fp16']})"
    )
    atol, rtol = golden.tolerance("fp16")
    assert failures(verify(damaged.SerializeToString(), _cases(name)[-1:], Tolerance(atol, rtol)))


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_int8_verification_catches_a_damaged_int8_graph(models_dir, mutation):
    golden = GoldenSet.load(models_dir / INT8_ARCH / INT8_GOLDEN_FILE)
    damaged = MUTATIONS[mutation](onnx.load(str(models_dir / INT8_ARCH / INT8_FILE)))
    passed, err = _golden_errors(damaged, golden, "int8")
    assert not passed, f"{mutation} on the INT8 graph went unnoticed (err {err:.2e})"


def test_the_cross_runtime_int8_tolerance_still_catches_gross_damage(models_dir):
    """Another INT8 implementation (TensorRT) is held to a looser tolerance, derived from how much two
    correct executions differ; it can miss a one-conv damage (a documented limit), not these."""
    golden = GoldenSet.load(models_dir / INT8_ARCH / INT8_GOLDEN_FILE)
    assert golden.tolerances[INT8_CROSS_RUNTIME]["measured_rel_err"] > 0
    clean = onnx.load(str(models_dir / INT8_ARCH / INT8_FILE))
    unfused = session(models_dir / INT8_ARCH / INT8_FILE, fuse=False).run(None, {INPUT_NAME: golden.inputs})[
        0
    ]
    atol, rtol = golden.tolerance(INT8_CROSS_RUNTIME)
    assert compare(golden.outputs, unfused, atol=atol, rtol=rtol).passed
    for mutation in ("drop-bias", "rgb-to-bgr"):
        passed, err = _golden_errors(MUTATIONS[mutation](clean), golden, INT8_CROSS_RUNTIME)
        assert not passed, f"{mutation} passed the cross-runtime INT8 tolerance (err {err:.2e})"


def _model_name(base: str, mutation: str) -> str:
    return f"{base}_{mutation.replace('-', '_').replace('.', '')}"


def _copy_renamed(source: Path, target: Path, old: str, new: str) -> None:
    shutil.copytree(source, target)
    for cfg in (target / "configs").glob("*.pbtxt"):
        cfg.write_text(cfg.read_text().replace(f'name: "{old}"', f'name: "{new}"', 1))


def _serve_fp16_on_cpu(model_dir: Path) -> None:
    """The cpu config, pointed at the FP16 file: the GPU configs' model and tolerance, on a CPU."""
    cfg = model_dir / "configs" / "cpu.pbtxt"
    config = parse_pbtxt(cfg.read_text())
    config.default_model_filename = FP16_FILE
    config.parameters["cnn_deploy.precision"].string_value = "fp16"
    from google.protobuf import text_format

    cfg.write_text(text_format.MessageToString(config))


def mutated_repository(repository: Path, models_dir: Path, target: Path, names=MUTATED) -> list[str]:
    """A repository with one model per (architecture, mutation): the damaged graph beside the
    original golden set and config. Returns the model names."""
    created = []
    for name in names:
        for mutation in MUTATIONS:
            model = _model_name(name, mutation)
            _copy_renamed(repository / name, target / model, name, model)
            _damaged(models_dir, name, mutation, target / model / "1" / "model.onnx")
            created.append(model)
    return created


def mutated_low_precision(repository: Path, target: Path) -> list[str]:
    """INT8_ARCH's INT8 model and its FP16 model (served from the cpu config), each damaged every way,
    beside their own golden sets: verified at the INT8 and FP16 tolerances. Returns the model names."""
    created = []
    int8 = f"{INT8_ARCH}_int8"
    for mutation in MUTATIONS:
        for base, filename in ((int8, INT8_FILE), (INT8_ARCH, FP16_FILE)):
            model = _model_name(f"{base}_fp16" if filename == FP16_FILE else base, mutation)
            _copy_renamed(repository / base, target / model, base, model)
            path = target / model / "1" / filename
            onnx.save(MUTATIONS[mutation](onnx.load(str(path))), str(path))
            if filename == FP16_FILE:
                _serve_fp16_on_cpu(target / model)
            created.append(model)
    return created


def _served_verdicts(repo: Path, models: list[str], tmp_path: Path) -> tuple[dict, str]:
    opts = ServerOptions.on_free_ports(repo, backend_dir=tmp_path / "backends")
    with TritonProcess(opts, log_path=tmp_path / "triton.log").start() as server:
        server.wait_ready(300)
        args = [a for m in models for a in ("--model", m)]
        result = run_cli(
            "clients", "verify", "--url", opts.grpc_url, "--repository", str(repo), "--json", *args
        )
    assert result.returncode == 1, result.stderr
    assert "verification failed for" in result.stderr
    return {r["model"]: r for r in json.loads(result.stdout)}, result.stderr


def _assert_all_caught(verdicts: dict, mutated: list[str]) -> None:
    caught = {m for m in mutated if not verdicts[m]["passed"] and verdicts[m]["error"] is None}
    assert caught == set(mutated), {m: verdicts[m] for m in set(mutated) - caught}


@pytest.mark.integration
def test_clients_verify_fails_on_every_damaged_model_a_server_serves(repository, models_dir, tmp_path):
    repo = tmp_path / "repo"
    mutated = mutated_repository(repository, models_dir, repo)
    shutil.copytree(repository / "resnet18", repo / "resnet18")  # the control: undamaged
    verdicts, _ = _served_verdicts(repo, [*mutated, "resnet18"], tmp_path)
    assert verdicts["resnet18"]["passed"], verdicts["resnet18"]
    _assert_all_caught(verdicts, mutated)


@pytest.mark.integration
def test_clients_verify_fails_on_every_damaged_fp16_and_int8_model(repository, tmp_path):
    """At the tolerances the GPU configs are held to: FP16 (the model's own, from the golden set)
    and INT8 (the same-runtime tolerance: this server runs the ONNX Runtime kernels that made the
    INT8 golden outputs). A server of its own, so the two tests' models never load at once."""
    repo = tmp_path / "repo"
    mutated = mutated_low_precision(repository, repo)
    _copy_renamed(repository / "resnet18", repo / "resnet18_fp16", "resnet18", "resnet18_fp16")
    _serve_fp16_on_cpu(repo / "resnet18_fp16")  # the FP16 control
    verdicts, _ = _served_verdicts(repo, [*mutated, "resnet18_fp16"], tmp_path)
    assert verdicts["resnet18_fp16"]["passed"] and verdicts["resnet18_fp16"]["precision"] == "fp16"
    assert {verdicts[m]["precision"] for m in mutated if "_int8_" in m} == {"int8"}
    _assert_all_caught(verdicts, mutated)
