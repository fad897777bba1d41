"""`python -m cnn_deploy report [ARCH...|--all]`: the lecture's costs beside what serving really costs.

For each architecture, measured in one run on this machine:
- in-process ONNX Runtime throughput at batch 1 and 8 (fp32, and fp16/int8 where exported), the
  achieved GFLOP/s, and that as a share of this machine's compute roof, measured in the same run
  (the best of several GEMMs, see roof.py; and its memory bandwidth, for the roofline);
- served through the real Triton: p50/p99 at concurrency 1 with their sample count, the peak of a
  short concurrency sweep (through the harness: a wrong, unverified or failed answer fails the
  report), and the memory the loaded model takes (the PSS of the backend processes that hold its
  ONNX Runtime session);
- per layer, with ONNX Runtime's profiler: the time of each row of the lecture's table (`export
  analyze`), profiler nodes mapped back through the module paths the exporter records (a
  convolution with its folded BatchNorm, ReLU and residual Add is one row), so each row gains ms
  and achieved GFLOP/s beside its FLOPs and parameters.

Charts (PNG, embedded in one self-contained HTML file, and JSON beside it): the lecture's chart
next to top-1 against measured latency and served throughput per core; a roofline per
architecture; per-layer FLOP share against time share.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from cnn_deploy.report.roof import measure_machine, rate
from cnn_deploy.report.roof import session as ort_session
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.layout import FP16_FILE, INPUT_NAME, INT8_FILE, MODEL_FILE
from cnn_deploy_core.machine import children, invoked_command, provenance, pss_mb
from cnn_deploy_core.registry import Architecture

PROFILE_RUNS = 10


@dataclass
class LayerTime:
    name: str
    type: str
    macs: int
    params: int
    activation_kb: float
    ms: float  # per image, batch 1
    gflops: float | None  # achieved, counting 2 FLOPs per multiply-add


@dataclass
class ArchReport:
    architecture: str
    family: str
    params: int
    gmacs: float
    top1: float
    activation_mb: float
    in_process: dict = field(default_factory=dict)  # precision -> {batch: img/s}
    ms_b1: float | None = None
    gflops_b8: float | None = None
    peak_share_b8: float | None = None
    intensity_b8: float | None = None  # FLOPs per byte moved (weights + activations), batch 8
    served: dict | None = None
    layers: list[LayerTime] = field(default_factory=list)
    unmapped_share: float = 0.0


def in_process(export_dir: Path, threads: int, seconds: float) -> dict[str, dict[int, float]]:
    """img/s at batch 1 and 8 for each precision exported (fp32, fp16, int8)."""
    files = {"fp32": MODEL_FILE, "fp16": FP16_FILE, "int8": INT8_FILE}
    sessions = {
        p: ort_session(export_dir / f, threads) for p, f in files.items() if (export_dir / f).is_file()
    }
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for bs in (1, 8):
        x = np.random.default_rng(bs).standard_normal((bs, 3, 224, 224), dtype=np.float32)
        for precision, session in sessions.items():
            out[precision][bs] = rate(lambda s=session, x=x: s.run(None, {INPUT_NAME: x}), bs, seconds)
    return dict(out)


# --- per layer -----------------------------------------------------------------------------------


def _scope(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [s for s in json.loads(prop.value.replace("'", '"')) if s]
            except ValueError:
                return []
    return []


def node_rows(model: onnx.ModelProto, rows: list) -> dict[str, str]:
    """Graph node (by its name and by each output's name) -> the analyze row its time belongs to.

    A node inside a lecture layer's module is that row; a BatchNorm folded into the convolution
    before it is the convolution's row; what the lecture does not list (ReLU, residual Add,
    flatten) runs right after a listed layer in the graph and joins it."""
    names = [r.name for r in rows]
    index = {name: i for i, name in enumerate(names)}
    types = {r.name: r.type for r in rows}
    mapping: dict[str, str] = {}
    current: str | None = None
    for node in model.graph.node:
        row = next((s for s in reversed(_scope(node)) if s in index), None)
        if row is not None and types[row].startswith("BatchNorm") and index[row] > 0:
            before = names[index[row] - 1]
            row = before if types[before] == "Conv2d" else row
        current = row or current
        if current is not None:
            for key in (node.name, *node.output):
                mapping[key] = current
    return mapping


def profile_layers(model_path: Path, analysis, threads: int) -> tuple[list[LayerTime], float]:
    """ms per analyze row at batch 1 (mean of PROFILE_RUNS), and the share of time left unmapped."""
    model = onnx.load(str(model_path), load_external_data=False)
    mapping = node_rows(model, analysis.layers)
    warmup = 2
    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(model_path, threads, profile_prefix=str(Path(tmp) / "profile"))
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
        for _ in range(warmup + PROFILE_RUNS):
            session.run(None, {INPUT_NAME: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    measured_from = runs[warmup] if len(runs) > warmup else 0  # the first runs allocate: left out
    per_row: dict[str, float] = defaultdict(float)
    unmapped = total = 0.0
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if event.get("ts", 0) < measured_from:
            continue
        # ORT renames what it rewrites: "<output>_nchwc" (NCHWc layout), "fused <node>" (fusions).
        name = event["name"].removesuffix("_kernel_time").removeprefix("fused ")
        key = name.removesuffix("_nchwc")
        row = mapping.get(name) or mapping.get(key)
        duration = float(event.get("dur", 0)) / 1e3 / PROFILE_RUNS  # ms per run
        total += duration
        if row is None:
            unmapped += duration
        else:
            per_row[row] += duration
    layers = []
    for r in analysis.layers:
        ms = per_row.get(r.name, 0.0)
        gflops = r.macs * 2 / (ms / 1e3) / 1e9 if ms > 0 and r.macs else None
        layers.append(LayerTime(r.name, r.type, r.macs, r.params, r.activation_kb, ms, gflops))
    return layers, (unmapped / total if total else 0.0)


# --- served --------------------------------------------------------------------------------------


def _stub_pss_mb(server_pid: int, model_dir: Path) -> float | None:
    """PSS of the backend processes serving one model (Triton's Python stubs, one per instance):
    the same measure as the drills' (cnn_deploy_core.machine), shared pages counted once."""
    total, found = 0.0, False
    for pid in children(server_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pss = pss_mb(pid)
        if pss is not None and f"{model_dir}/" in cmdline and "stub" in cmdline:
            total, found = total + pss, True
    return total if found else None


def served(arch: Architecture, models_dir: Path, window_s: float, url: str | None = None) -> dict:
    """p50/p99 at c=1 and the peak of a short sweep through the harness (a wrong, unverified or
    failed answer raises UnverifiedStep: no figure of a wrong model is reported); its memory."""
    from cnn_deploy.harness import place, step_config, temporary_server, verified_step
    from serving.repository import CpuPlan

    def sweep(target_url: str, repository: Path | None) -> dict:
        config = step_config(
            target_url, arch.name, repository, level=1, window_s=window_s, levels=(1, 2, 4), max_windows=5
        )
        report = verified_step(config, f"{arch.name} served")
        steps, totals = report.steps, report.totals
        best = max(steps, key=lambda s: s.inferences_per_s)
        return {
            "p50_ms_c1": steps[0].latency_ms.p50,
            "p99_ms_c1": steps[0].latency_ms.p99,
            "samples_c1": steps[0].samples,  # the answers those percentiles rest on
            "peak_img_s": best.inferences_per_s,
            "peak_at": best.label,
            "answered": totals.responses,  # the whole run, warm-up included
            "verified": totals.verified,
            "wrong": totals.wrong,
            # cnn_deploy_core.judge's verdict on the run, as the load test recorded it: the page's
            # "every answer verified" is this, not a rule of its own
            "judge": {"passed": report.slo.passed, "problems": report.slo.violations},
        }

    if url:
        return {**sweep(url, None), "memory_mb": None, "url": url}
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        plan = CpuPlan(1, os.cpu_count() or 1)
        repo = place([arch], models_dir=models_dir, scratch=Path(tmp), plan=plan)
        with temporary_server(repo, Path(tmp)) as server:
            memory = _stub_pss_mb(server.process.pid, repo / arch.name)
            result = sweep(server.opts.grpc_url, repo)
    return {**result, "memory_mb": memory, "url": "local, 1 instance x every core"}


# --- the run -------------------------------------------------------------------------------------


def build_report(
    archs: list[Architecture],
    *,
    models_dir: Path,
    seconds: float,
    window_s: float,
    url: str | None,
    progress,
) -> dict:
    from export.analysis import analyze
    from export.models import weights_enum

    threads = os.cpu_count() or 1
    progress("machine: compute roof (best of several GEMMs) and memory bandwidth")
    machine = measure_machine(threads, seconds)
    reports = []
    for arch in archs:
        export_dir = models_dir / arch.name
        if not (export_dir / MODEL_FILE).is_file():
            raise CnnDeployError(
                f"no export of {arch.name} in {models_dir}: python -m export build {arch.name}"
            )
        meta = weights_enum(arch).meta
        analysis = analyze(arch)
        r = ArchReport(
            architecture=arch.name,
            family=arch.family,
            params=analysis.total_params,
            gmacs=analysis.gflops,
            top1=float(meta["_metrics"]["ImageNet-1K"]["acc@1"]),
            activation_mb=analysis.total_activation_kb / 1024,
        )
        progress(f"{arch.name}: in-process ONNX Runtime at batch 1 and 8")
        r.in_process = in_process(export_dir, threads, seconds)
        fp32 = r.in_process["fp32"]
        r.ms_b1 = 1e3 / fp32[1]
        r.gflops_b8 = fp32[8] * r.gmacs * 2
        r.peak_share_b8 = r.gflops_b8 / machine.gemm_gflops
        # Bytes a batch of 8 moves at least once: the weights, and every layer's output.
        moved = r.params * 4 + 8 * analysis.total_activation_kb * 1024
        r.intensity_b8 = 8 * r.gmacs * 2e9 / moved
        progress(f"{arch.name}: per-layer profile")
        r.layers, r.unmapped_share = profile_layers(export_dir / MODEL_FILE, analysis, threads)
        progress(f"{arch.name}: served by Triton, c=1 and a short sweep")
        r.served = served(arch, models_dir, window_s, url)
        reports.append(r)
    return {
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": asdict(machine),
        "architectures": [asdict(r) for r in reports],
        "findings": findings([asdict(r) for r in reports]),
        "provenance": provenance(),
    }


def findings(rows: list[dict]) -> list[str]:
    """One line per architecture: its FLOPs as a multiple of the cheapest's, against its measured
    latency as a multiple (where the cost the lecture counts and the cost you pay part ways)."""
    if len(rows) < 2:
        return []
    base = next((r for r in rows if r["architecture"] == "resnet18"), min(rows, key=lambda r: r["gmacs"]))
    out = []
    for r in rows:
        if r is base:
            continue
        flops, latency = r["gmacs"] / base["gmacs"], r["ms_b1"] / base["ms_b1"]
        share = r["peak_share_b8"] or 0.0
        out.append(
            f"{r['architecture']}: {flops:.2f}x {base['architecture']}'s FLOPs, {latency:.2f}x its latency "
            f"at batch 1 ({r['ms_b1']:.1f} vs {base['ms_b1']:.1f} ms); {share:.0%} of the compute roof at b8"
        )
    return out
