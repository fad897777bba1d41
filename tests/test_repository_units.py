"""A model and its variants as one unit for versions (serving/repository/units.py, serving/live.py),
without a server: which versions a config asks for, the READY verdict, the served-vs-disk check,
the snapshot a failed reload restores, and pruning that never deletes what a server serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnn_deploy_core.registry import get
from serving import ServingError
from serving.config import parse_pbtxt
from serving.live import _order, servable, version_rows
from serving.repository import place_models, rollback, versions
from serving.repository.placement import prune_unit
from serving.repository.units import Snapshot, intended_versions, ready_verdict, unit_models
from tests.test_serving_config import REPORT

ARCH = get("resnet50")


def _export(models: Path, payload: bytes, *, int8: bool = True, **report) -> None:
    """An export directory as `export build --int8` leaves it (file contents don't matter here)."""
    d = models / "resnet50"
    d.mkdir(parents=True, exist_ok=True)
    for name, data in {"model.onnx": payload, "model.fp16.onnx": payload[::-1], "golden.npz": b"g"}.items():
        (d / name).write_bytes(data)
    for name in ("model.int8.onnx", "golden.int8.npz"):
        (d / name).unlink(missing_ok=True)
        if int8:
            (d / name).write_bytes(payload + b" int8")
    (d / "labels.txt").write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    (d / "export.json").write_text(json.dumps({**REPORT, **report}))


def _place(models: Path, repo: Path, **kwargs):
    (placed,) = place_models([ARCH], models_dir=models, repository=repo, identity=False, **kwargs)
    return placed


def _two_versions(tmp_path: Path) -> Path:
    models, repo = tmp_path / "models", tmp_path / "repo"
    _export(models, b"v1")
    _place(models, repo)
    _export(models, b"v2")
    _place(models, repo)
    return repo


# ---- the READY verdict and the served-vs-disk check: pure, each made to say no ----


def _index(name: str, **states: str) -> list[dict]:
    return [{"name": name, "version": v, "state": s, "reason": ""} for v, s in states.items()]


def test_ready_verdict_wants_exactly_the_intended_versions():
    assert ready_verdict("m", (1, 2), _index("m", **{"1": "READY", "2": "READY"})) is None
    missing = ready_verdict("m", (1, 2), _index("m", **{"1": "READY", "2": "UNAVAILABLE"}))
    assert missing == "m: READY versions 1, expected 1, 2"
    extra = ready_verdict("m", (1,), _index("m", **{"1": "READY", "2": "READY"}))
    assert extra and "READY versions 1, 2, expected 1" in extra  # a rollback that did not take
    assert "expected 1" in ready_verdict("m", (1,), [])  # not loaded at all


def test_ready_verdict_says_why_a_version_failed():
    index = [{"name": "m", "version": "3", "state": "UNAVAILABLE", "reason": "INVALID_PROTOBUF"}]
    assert "version 3: UNAVAILABLE INVALID_PROTOBUF" in ready_verdict("m", (3,), index)


def test_status_flags_a_model_whose_served_versions_differ_from_its_files():
    index = [
        *_index("a", **{"1": "READY", "2": "UNAVAILABLE"}),
        *_index("b", **{"2": "READY"}),
        {"name": "c", "version": "3", "state": "UNAVAILABLE", "reason": "boom"},
        *_index("c", **{"2": "READY"}),
        {"name": "t", "version": "", "state": "UNAVAILABLE", "reason": "no config"},
    ]
    rows = {r["model"]: r for r in version_rows(index, {"a": (1, 2), "b": (2,), "c": (2,), "t": None})}
    assert not rows["a"]["agrees"] and rows["a"]["served"] == [1] and rows["a"]["on_disk"] == [1, 2]
    assert rows["b"]["agrees"]
    assert rows["c"]["agrees"] and rows["c"]["reason"] == ""  # version 3's old failure is history
    assert rows["t"]["agrees"] and rows["t"]["on_disk"] is None and rows["t"]["reason"] == "no config"


# ---- which versions a config asks for ----


def test_intended_versions_follow_the_config_the_server_reads(tmp_path):
    repo = _two_versions(tmp_path)
    assert intended_versions(repo / "resnet50", "cpu") == (1, 2)
    assert intended_versions(repo / "resnet50", "tuned") == (1, 2)  # falls back to config.pbtxt
    assert intended_versions(repo / "resnet50_int8", "cpu") == (1, 2)
    assert intended_versions(repo / "resnet50_image", "cpu") == (1,)  # the ensemble's own
    (repo / "m" / "3").mkdir(parents=True)
    (repo / "m" / "4").mkdir()
    (repo / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    assert intended_versions(repo / "m", "cpu") == (4,)  # Triton's default policy: the latest
    with pytest.raises(ServingError, match="cannot read"):
        intended_versions(repo / "nothing", "cpu")


def test_a_trt_model_is_not_servable_by_a_cpu_server(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _export(models, b"v1")
    _place(models, repo, tensorrt=True)
    assert not servable(repo / "resnet50_trt", "cpu") and servable(repo / "resnet50_trt", "gpu")
    trt = parse_pbtxt((repo / "resnet50_trt" / "configs" / "gpu.pbtxt").read_text())
    assert list(trt.version_policy.specific.versions) == [1]  # pinned, not "latest"
    order = _order([ARCH], repo, ["resnet50", "resnet50_int8", "resnet50_trt"], "cpu")
    assert order == ["resnet50", "resnet50_int8", "resnet50_image"]  # the ensemble follows its parts


def test_the_unit_lists_every_variant_in_load_order(tmp_path):
    repo = _two_versions(tmp_path)
    assert unit_models(ARCH, repo) == [
        "preprocess_232_224_bilinear",
        "resnet50",
        "resnet50_int8",
        "resnet50_image",
    ]


# ---- rollback and pruning move the unit, and never delete what a server serves ----


def test_rollback_pins_every_variant_and_keeps_their_version_directories(tmp_path):
    repo = _two_versions(tmp_path)
    rollback(ARCH, repo, to=1)
    for model in ("resnet50", "resnet50_int8"):
        cfg = parse_pbtxt((repo / model / "configs" / "cpu.pbtxt").read_text())
        assert list(cfg.version_policy.specific.versions) == [1], model
        assert versions(repo / model) == [1, 2], f"{model}/2 deleted from under a running server"


def test_pruning_spares_a_version_a_running_server_still_serves(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    for i in range(3):
        _export(models, f"v{i}".encode())
        _place(models, repo, keep=None)
    # served by the configs: 3 and 2; a server that was not reloaded still serves 1
    assert prune_unit(ARCH, repo, 1, {"resnet50_int8": {1}}) == []
    assert versions(repo / "resnet50") == [1, 2, 3] and versions(repo / "resnet50_int8") == [1, 2, 3]
    assert prune_unit(ARCH, repo, 1, {}) == [1]
    assert versions(repo / "resnet50") == [2, 3] and versions(repo / "resnet50_int8") == [2, 3]


def test_an_int8_model_goes_only_once_no_server_serves_it(tmp_path):
    models, repo = tmp_path / "models", tmp_path / "repo"
    _export(models, b"v1")
    _place(models, repo)
    other = {**REPORT["preprocessing"], "resize": 256}  # not compatible with v1: served alone
    _export(models, b"v2", int8=False, preprocessing=other)
    _place(models, repo, defer_prune=True)  # v2 has no INT8 file
    assert (repo / "resnet50_int8" / "1").is_dir()
    prune_unit(ARCH, repo, None, {"resnet50_int8": {1}})
    assert (repo / "resnet50_int8" / "1").is_dir(), "still served: it stays"
    prune_unit(ARCH, repo, None, {})
    assert not (repo / "resnet50_int8").exists()


# ---- the snapshot a failed reload restores ----


def test_a_snapshot_restores_configs_and_removes_what_the_change_added(tmp_path):
    repo = _two_versions(tmp_path)
    names = [*unit_models(ARCH, repo), "resnet50_trt"]
    cpu = repo / "resnet50" / "configs" / "cpu.pbtxt"
    before = cpu.read_text()
    snap = Snapshot.take(repo, names)
    models = tmp_path / "models"
    _export(models, b"v3")
    _place(models, repo, tensorrt=True, defer_prune=True)  # version 3, and a new _trt model
    assert snap.changed(unit_models(ARCH, repo)) == ["resnet50", "resnet50_int8", "resnet50_trt"]
    snap.restore(unit_models(ARCH, repo))
    assert cpu.read_text() == before
    assert versions(repo / "resnet50") == [1, 2] and versions(repo / "resnet50_int8") == [1, 2]
    assert not (repo / "resnet50_trt").exists()
    assert snap.changed(unit_models(ARCH, repo)) == []
