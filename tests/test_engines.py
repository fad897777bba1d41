"""serving/triton_side/engines.py: which plans it builds, the trtexec call it makes, atomic publishing,
errors.

trtexec needs a GPU and the Triton image, so these tests put a fake `trtexec` *script* on PATH:
a test double for the external binary that records its arguments and writes (or fails to write)
the engine file it is asked for.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn_deploy_core.golden import INT8_CROSS_RUNTIME, GoldenSet
from cnn_deploy_core.registry import get
from serving.repository.variants import trt_engine_source
from serving.repository.versions import Version
from serving.triton_side import engines

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "serving" / "triton_side" / "engines.py"

FAKE_TRTEXEC = """#!/bin/sh
# Fake trtexec: logs its arguments, then behaves as FAKE_TRTEXEC_MODE says.
echo "$*" >> "$FAKE_TRTEXEC_CALLS"
for a in "$@"; do case "$a" in
  --saveEngine=*) out="${a#--saveEngine=}";;
  --exportOutput=*) got="${a#--exportOutput=}";;
esac; done
# Running a plan (--loadEngine): its outputs are the JSON file FAKE_TRTEXEC_OUTPUT names.
if [ -n "$got" ]; then cp "$FAKE_TRTEXEC_OUTPUT" "$got"; echo "&&&& PASSED TensorRT.trtexec"; exit 0; fi
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec $*"
case "${FAKE_TRTEXEC_MODE:-ok}" in
  ok) printf 'PLAN:%s' "$*" > "$out"; echo "&&&& PASSED TensorRT.trtexec";;
  fail) printf 'half a plan' > "$out"
        echo "[E] [TRT] ModelImporter.cpp:949: ERROR: input: unsupported dynamic shape"
        echo "&&&& FAILED TensorRT.trtexec"; exit 1;;
  silent) echo "&&&& PASSED TensorRT.trtexec";;
esac
"""


def _engine(**overrides) -> dict:
    spec = {
        "source": "../resnet50/1/model.onnx",
        "version": 1,
        "input": "input",
        "input_dims": [3, 224, 224],
        "max_batch_size": 32,
        "opt_batch_size": 8,
        "precision": "fp16",
    }
    spec.update(overrides)
    return spec


def _add_model(repo: Path, name: str = "resnet50", version: int = 1, **overrides) -> Path:
    onnx = repo / name / str(version) / "model.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    onnx.write_bytes(b"onnx")
    trt = repo / f"{name}_trt"
    (trt / "configs").mkdir(parents=True, exist_ok=True)
    (trt / "configs" / "gpu.pbtxt").write_text(f'name: "{name}_trt"\nplatform: "tensorrt_plan"\n')
    spec = _engine(source=f"../{name}/{version}/model.onnx", version=version, **overrides)
    (trt / "engine.json").write_text(json.dumps(spec))
    return trt


@pytest.fixture
def fake_trtexec(tmp_path, monkeypatch) -> Path:
    """A fake trtexec first on PATH; returns the file its calls are logged to."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "trtexec"
    tool.write_text(FAKE_TRTEXEC)
    tool.chmod(0o755)
    calls = tmp_path / "trtexec-calls.txt"
    calls.touch()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_TRTEXEC_CALLS", str(calls))
    monkeypatch.delenv("FAKE_TRTEXEC_MODE", raising=False)
    return calls


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def _leftovers(repo: Path) -> list[Path]:
    return [p for p in repo.rglob("*") if p.name.endswith(".tmp")]


def test_discover_finds_only_the_trt_models(tmp_path):
    _add_model(tmp_path, "vgg16")
    _add_model(tmp_path, "alexnet")
    (tmp_path / "resnet18").mkdir()
    (tmp_path / "resnet18" / "engine.json").write_text("{}")  # not a *_trt model: ignored

    assert [p.parent.name for p in engines.discover(tmp_path)] == ["alexnet_trt", "vgg16_trt"]


def test_engine_spec_resolves_the_source_relative_to_its_directory(tmp_path):
    trt = _add_model(tmp_path, "resnet50", version=3)
    spec = engines.EngineSpec.load(trt / "engine.json")

    assert spec.name == "resnet50_trt"
    assert spec.source == (tmp_path / "resnet50" / "3" / "model.onnx").resolve()
    assert spec.plan == trt.resolve() / "3" / "model.plan"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", 0, "'version' must be a positive integer"),
        ("opt_batch_size", 64, "'opt_batch_size' must be an integer from 1 to max_batch_size (32)"),
        ("precision", "int4", "'precision' must be one of fp32, fp16"),
        ("input_dims", [3, "224", 224], "'input_dims' must be a list of positive integers"),
        ("max_batch_size", True, "'max_batch_size' must be a positive integer"),
    ],
)
def test_engine_spec_rejects_bad_fields_naming_file_and_field(tmp_path, field, value, message):
    trt = _add_model(tmp_path, **{field: value})
    with pytest.raises(engines.EngineError) as e:
        engines.EngineSpec.load(trt / "engine.json")
    assert str(trt / "engine.json") in str(e.value)
    assert message in str(e.value)


def test_trtexec_command_has_one_profile_over_batch_one_to_max(tmp_path):
    spec = engines.EngineSpec.load(_add_model(tmp_path) / "engine.json")
    out = tmp_path / "out.plan"

    assert engines.trtexec_command(spec, "/usr/src/tensorrt/bin/trtexec", out) == [
        "/usr/src/tensorrt/bin/trtexec",
        f"--onnx={spec.source}",
        f"--saveEngine={out}",
        "--minShapes=input:1x3x224x224",
        "--optShapes=input:8x3x224x224",
        "--maxShapes=input:32x3x224x224",
        "--fp16",
        "--skipInference",
    ]


def test_fp32_engines_get_no_precision_flag(tmp_path):
    spec = engines.EngineSpec.load(_add_model(tmp_path, precision="fp32") / "engine.json")
    assert "--fp16" not in engines.trtexec_command(spec, "trtexec", tmp_path / "x")


def test_builds_each_plan_once_then_keeps_it(tmp_path, fake_trtexec, capsys):
    repo = tmp_path / "repo"
    _add_model(repo, "resnet50")
    _add_model(repo, "alexnet")

    assert engines.main(["--repository", str(repo)]) == 0
    for name in ("alexnet", "resnet50"):
        plan = repo / f"{name}_trt" / "1" / "model.plan"
        assert plan.read_text().startswith("PLAN:--onnx=")
        assert json.loads((plan.parent / "model.plan.json").read_text())["max_batch_size"] == 32
    assert len(_calls(fake_trtexec)) == 2
    assert "built" in capsys.readouterr().out
    assert _leftovers(repo) == []

    assert engines.main(["--repository", str(repo)]) == 0
    assert len(_calls(fake_trtexec)) == 2, "an up-to-date plan was rebuilt"
    assert "current" in capsys.readouterr().out


def test_rebuilds_when_the_source_is_newer_or_the_settings_changed(tmp_path, fake_trtexec):
    repo = tmp_path / "repo"
    trt = _add_model(repo)
    assert engines.main(["--repository", str(repo)]) == 0
    plan = trt / "1" / "model.plan"

    source = repo / "resnet50" / "1" / "model.onnx"
    later = plan.stat().st_mtime + 10
    os.utime(source, (later, later))
    assert engines.main(["--repository", str(repo)]) == 0
    assert len(_calls(fake_trtexec)) == 2

    (trt / "engine.json").write_text(json.dumps(_engine(max_batch_size=16, opt_batch_size=4)))
    assert engines.main(["--repository", str(repo)]) == 0
    assert "--maxShapes=input:16x3x224x224" in _calls(fake_trtexec)[-1]


def test_force_rebuilds_an_up_to_date_plan(tmp_path, fake_trtexec):
    repo = tmp_path / "repo"
    _add_model(repo)
    assert engines.main(["--repository", str(repo)]) == 0
    assert engines.main(["--repository", str(repo), "--force"]) == 0
    assert len(_calls(fake_trtexec)) == 2


def test_a_failed_build_keeps_the_old_plan_and_leaves_no_temp_file(
    tmp_path, fake_trtexec, monkeypatch, capsys
):
    repo = tmp_path / "repo"
    trt = _add_model(repo)
    plan = trt / "1" / "model.plan"
    plan.parent.mkdir()
    plan.write_text("the old plan")

    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "fail")
    assert engines.main(["--repository", str(repo), "--force"]) == 1

    assert plan.read_text() == "the old plan"
    assert _leftovers(repo) == []
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(errors) == 1
    assert errors[0].startswith("engines: error: resnet50_trt: trtexec exited with 1: ")
    assert "unsupported dynamic shape" in errors[0]
    assert str(trt.resolve() / "1" / "model.plan.log") in errors[0]


def test_a_trtexec_that_writes_nothing_is_a_failure(tmp_path, fake_trtexec, monkeypatch, capsys):
    repo = tmp_path / "repo"
    _add_model(repo)
    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "silent")

    assert engines.main(["--repository", str(repo)]) == 1
    assert "trtexec exited 0 but wrote no plan" in capsys.readouterr().err
    assert not (repo / "resnet50_trt" / "1" / "model.plan").exists()


def test_one_broken_model_does_not_stop_the_others(tmp_path, fake_trtexec, capsys):
    repo = tmp_path / "repo"
    _add_model(repo, "alexnet")
    _add_model(repo, "resnet50")
    (repo / "resnet50" / "1" / "model.onnx").unlink()

    assert engines.main(["--repository", str(repo)]) == 1
    assert (repo / "alexnet_trt" / "1" / "model.plan").is_file()
    err = capsys.readouterr().err
    assert "engines: error: resnet50_trt: ONNX source" in err and "does not exist" in err


def test_missing_trtexec_is_one_clear_error(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    _add_model(repo)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(engines, "DEFAULT_TRTEXEC", str(tmp_path / "no" / "trtexec"))

    assert engines.main(["--repository", str(repo)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("engines: error: trtexec not found")
    assert "--trtexec" in err[0]


def test_explicit_trtexec_must_exist(tmp_path, capsys):
    repo = tmp_path / "repo"
    _add_model(repo)
    assert engines.main(["--repository", str(repo), "--trtexec", str(tmp_path / "nope")]) == 1
    assert f"trtexec not found (tried {tmp_path / 'nope'})" in capsys.readouterr().err


def test_a_repository_without_trt_models_has_nothing_to_build(tmp_path, capsys):
    (tmp_path / "resnet50" / "1").mkdir(parents=True)
    assert engines.main(["--repository", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "nothing to build" in err and "python -m serving repo NAME --tensorrt" in err


def test_a_missing_repository_is_an_error(tmp_path, capsys):
    assert engines.main(["--repository", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_cache_dir_is_handed_to_the_server_user(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    cache = tmp_path / "trt-cache"
    args = ["--repository", str(repo), "--cache-dir", str(cache), "--cache-owner", "1234:4321"]
    assert engines.main(args) == 0
    assert (cache.stat().st_uid, cache.stat().st_gid) == (1234, 4321)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_plans_built_as_root_belong_to_the_model_directory_owner(tmp_path, fake_trtexec):
    repo = tmp_path / "repo"
    trt = _add_model(repo)
    os.chown(trt, 1234, 4321)
    assert engines.main(["--repository", str(repo)]) == 0
    for path in (trt / "1", trt / "1" / "model.plan", trt / "1" / "model.plan.json"):
        assert (path.stat().st_uid, path.stat().st_gid) == (1234, 4321), path


def test_script_uses_only_the_standard_library_and_python38_syntax():
    source = SCRIPT.read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == set()


def test_script_runs_without_site_packages(tmp_path):
    """As in the Triton image: `python3 engines.py` with none of our dependencies importable."""
    repo = tmp_path / "repo"
    _add_model(repo)
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            str(SCRIPT),
            "--repository",
            str(repo),
            "--dry-run",
            "--trtexec",
            "/opt/trtexec",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("/opt/trtexec --onnx=")
    assert "--maxShapes=input:32x3x224x224" in proc.stdout
    assert not (repo / "resnet50_trt" / "1").exists(), "--dry-run wrote something"


# --- INT8 plans: explicit quantization from the S8S8 graph, checked against its golden set ---


def _golden(path: Path, *, rtol: float = 0.05) -> GoldenSet:
    rng = np.random.default_rng(0)
    golden = GoldenSet(
        architecture="resnet50",
        inputs=rng.standard_normal((3, 3, 4, 4), dtype=np.float32),
        outputs=rng.standard_normal((3, 10), dtype=np.float32),
        case_names=["a", "b", "c"],
        tolerances={"int8": {"atol": 0.0, "rtol": 0.01}, INT8_CROSS_RUNTIME: {"atol": 1e-3, "rtol": rtol}},
    )
    golden.save(path)
    return golden


def _int8_model(repo: Path) -> Path:
    trt = _add_model(repo)
    version = repo / "resnet50" / "1"
    (version / "model.int8.s8s8.onnx").write_bytes(b"qdq onnx")
    spec = _engine(
        source="../resnet50/1/model.int8.s8s8.onnx",
        precision="int8",
        input_dims=[3, 4, 4],
        check={"golden": "../resnet50/1/golden.int8.s8s8.npz", "tolerance": INT8_CROSS_RUNTIME},
    )
    (trt / "engine.json").write_text(json.dumps(spec))
    return trt


def _trtexec_answers(tmp_path: Path, monkeypatch, outputs: np.ndarray) -> None:
    answer = tmp_path / "answer.json"
    dims = "x".join(map(str, outputs.shape))
    answer.write_text(
        json.dumps([{"name": "logits", "dimensions": dims, "values": outputs.ravel().tolist()}])
    )
    monkeypatch.setenv("FAKE_TRTEXEC_OUTPUT", str(answer))


def test_an_int8_plan_is_built_by_explicit_quantization_from_the_s8s8_graph(tmp_path):
    spec = engines.EngineSpec.load(_int8_model(tmp_path) / "engine.json")
    cmd = engines.trtexec_command(spec, "trtexec", spec.plan)
    assert f"--onnx={tmp_path / 'resnet50' / '1' / 'model.int8.s8s8.onnx'}" in cmd
    assert "--int8" in cmd and "--fp16" in cmd  # FP16 where the graph has no Q/DQ nodes
    assert not any(a.startswith("--calib") for a in cmd)  # the QDQ graph carries its scales
    assert spec.golden == tmp_path / "resnet50" / "1" / "golden.int8.s8s8.npz"
    assert spec.tolerance == INT8_CROSS_RUNTIME


def test_the_repository_asks_for_an_int8_plan_only_when_the_export_has_tensorrts_graph(tmp_path):
    arch = get("resnet50")
    with_s8s8 = Version(1, tmp_path, {}, ("model.onnx", "model.int8.s8s8.onnx", "golden.int8.s8s8.npz"))
    recipe = trt_engine_source(arch, with_s8s8)
    assert recipe == {
        "source": "../resnet50/1/model.int8.s8s8.onnx",
        "precision": "int8",
        "check": {"golden": "../resnet50/1/golden.int8.s8s8.npz", "tolerance": INT8_CROSS_RUNTIME},
    }
    fp16 = trt_engine_source(arch, Version(1, tmp_path, {}, ("model.onnx", "golden.npz")))
    assert fp16["precision"] == "fp16" and fp16["check"] == {
        "golden": "../resnet50/1/golden.npz",
        "tolerance": "fp16",
    }


def test_the_golden_set_is_read_with_the_standard_library(tmp_path):
    golden = _golden(tmp_path / "g.npz")
    read = engines.read_golden(tmp_path / "g.npz")
    assert read["input_shape"] == (3, 3, 4, 4) and read["input_bytes"] == golden.inputs.tobytes()
    assert np.array_equal(np.array(read["outputs"], dtype=np.float32), golden.outputs)
    assert read["tolerances"][INT8_CROSS_RUNTIME]["rtol"] == 0.05


def test_the_plan_judge_says_no_beyond_the_tolerance():
    ref = [[1.0, -2.0, 0.5]]
    assert engines.judge_outputs(ref, [[1.01, -2.0, 0.5]], 0.0, 0.01) == (pytest.approx(0.005), True)
    worst, ok = engines.judge_outputs(ref, [[1.2, -2.0, 0.5]], 0.0, 0.05)
    assert worst == pytest.approx(0.1) and not ok
    assert not engines.judge_outputs(ref, [], 0.0, 1.0)[1]  # a missing row never passes


def test_an_int8_plan_within_its_tolerance_is_kept(tmp_path, fake_trtexec, monkeypatch):
    repo = tmp_path / "repo"
    trt = _int8_model(repo)
    golden = _golden(repo / "resnet50" / "1" / "golden.int8.s8s8.npz")
    _trtexec_answers(tmp_path, monkeypatch, golden.outputs * 1.01)
    (result,) = engines.run(repo)
    assert result.status == "built" and (trt / "1" / "model.plan").is_file()
    assert result.detail.startswith("checked on 3 golden inputs: max rel err")
    build, check = _calls(fake_trtexec)
    assert "--int8" in build and "--loadEngine=" in check and "--shapes=input:3x3x4x4" in check


def test_an_int8_plan_beyond_its_tolerance_is_removed(tmp_path, fake_trtexec, monkeypatch):
    repo = tmp_path / "repo"
    trt = _int8_model(repo)
    golden = _golden(repo / "resnet50" / "1" / "golden.int8.s8s8.npz")
    _trtexec_answers(tmp_path, monkeypatch, golden.outputs + 1.0)
    (result,) = engines.run(repo)
    assert result.status == "failed" and "beyond the tolerance" in result.detail
    assert INT8_CROSS_RUNTIME in result.detail
    assert not (trt / "1" / "model.plan").exists() and not (trt / "1" / "model.plan.json").exists()
    assert not [p for p in (trt / "1").iterdir() if p.name.startswith(".check")]
