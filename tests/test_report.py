"""`python -m cnn_deploy report`: per-layer times mapped onto the lecture's table, figures that
agree with an independent measurement, and an HTML page that really renders in a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import numpy as np
import onnxruntime as ort
import pytest

from cnn_deploy.report.build import in_process, profile_layers
from cnn_deploy_core.registry import get
from export.analysis import analyze
from tests.conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.parametrize("name", ["resnet18", "alexnet"])
def test_per_layer_time_covers_every_row_that_has_flops(models_dir, name):
    analysis = analyze(get(name))
    layers, unmapped = profile_layers(models_dir / name / "model.onnx", analysis, threads=2)
    assert [la.name for la in layers] == [la.name for la in analysis.layers]
    missing = [la.name for la in layers if la.macs and la.ms <= 0]
    assert not missing, f"rows with FLOPs but no measured time: {missing}"
    assert unmapped < 0.05
    assert all(la.gflops > 0 for la in layers if la.macs)


def test_in_process_figures_match_a_separate_measurement(models_dir):
    path = models_dir / "resnet18" / "model.onnx"
    reported = in_process(models_dir / "resnet18", threads=2, seconds=1.5)["fp32"][8]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.zeros((8, 3, 224, 224), dtype=np.float32)
    session.run(None, {"input": x})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.5:
        session.run(None, {"input": x})
        n += 1
    separate = 8 * n / (time.perf_counter() - start)
    assert 0.6 < reported / separate < 1.6, (reported, separate)  # a shared 2-core machine: noise


@pytest.mark.integration
def test_the_html_report_renders_every_table_and_chart_in_a_browser(models_dir, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium) to render the report in")
    output = tmp_path / "report"
    result = run_cli(
        "cnn_deploy", "report", "resnet18", "--models", str(models_dir), "--seconds", "0.6",
        "--window-s", "0.5", "--output", str(output), home=tmp_path, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.with_suffix(".json").read_text())
    (arch,) = report["architectures"]
    assert arch["served"]["wrong"] == 0 and arch["served"]["verified"] > 0
    page = output.with_suffix(".html").resolve()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    charts = re.search(r'data-charts-rendered="(\d+)"', dom)
    tables = re.search(r'data-tables-rendered="(\d+)"', dom)
    assert charts and int(charts.group(1)) == 3  # accuracy, roofline, resnet18's layers: all decoded
    assert tables and int(tables.group(1)) == 3  # machine, headline, resnet18's layers
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1400,3000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
