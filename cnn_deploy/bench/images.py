"""`python -m cnn_deploy bench-images [--model resnet50]`: images in vs tensors in, one server, one run.

The same model served two ways: `<model>` taking preprocessed float tensors (the client decodes
and resizes), and `<model>_image` taking the encoded photo files (the server does). At each
concurrency the two alternate against the same server; every answer is verified. Reported: the
payload per request, img/s and p50/p99 end to end, and where the server's time goes, from Triton's
per-model statistics (the preprocessing model: decode + resize + normalize; the model itself),
with the preprocessing split into decode and resize measured in process on the same photos.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from cnn_deploy.harness import place, step_config, temporary_server, the_step, verified_step
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.images import all_photos
from cnn_deploy_core.layout import IMAGE_SUFFIX
from cnn_deploy_core.machine import cpu_flags
from cnn_deploy_core.preprocess import Preprocessing, decode, preprocess


def decode_vs_resize(spec: Preprocessing, rounds: int = 20) -> dict:
    """ms per photo for decoding alone and for resize + crop + normalize (in process)."""
    blobs = [p.read_bytes() for p in all_photos()]
    start = time.perf_counter()
    for _ in range(rounds):
        images = [decode(b) for b in blobs]
    decode_ms = (time.perf_counter() - start) / (rounds * len(blobs)) * 1e3
    start = time.perf_counter()
    for _ in range(rounds):
        for img in images:
            preprocess(img, spec)
    resize_ms = (time.perf_counter() - start) / (rounds * len(blobs)) * 1e3
    return {"decode_ms": decode_ms, "resize_normalize_ms": resize_ms, "photos": len(blobs)}


def _server_ms(before: dict, after: dict) -> float | None:
    """Mean compute (input + infer + output) per request between two statistics snapshots."""
    from clients.loadtest.report import ServerBreakdown, flatten_statistics

    b = ServerBreakdown.between(flatten_statistics(before), flatten_statistics(after))
    parts = [b.compute_input_ms, b.compute_infer_ms, b.compute_output_ms]
    return sum(p for p in parts if p) if b.requests else None


def run(model: str, *, models_dir: Path, concurrency: list[int], window_s: float, output: Path) -> int:
    from clients.client import TritonClient
    from cnn_deploy_core import registry
    from serving.repository import CpuPlan, preprocess_model_name

    arch = registry.get(model)
    if not (models_dir / model / "model.onnx").is_file():
        raise CnnDeployError(f"no export of {model} in {models_dir}: python -m export build {model}")
    report_json = json.loads((models_dir / model / "export.json").read_text())
    spec = Preprocessing.from_dict(report_json["preprocessing"])
    preprocess_model = preprocess_model_name(report_json["preprocessing"])
    points = []
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        plan = CpuPlan(1, os.cpu_count() or 1)
        repo = place([arch], models_dir=models_dir, scratch=Path(tmp), plan=plan)
        with temporary_server(repo, Path(tmp)) as server, TritonClient(server.opts.grpc_url) as client:
            for c in concurrency:
                for kind in ("tensor", "image"):
                    before = {m: client.statistics(m) for m in (model, preprocess_model)}
                    config = step_config(
                        server.opts.grpc_url, model, repo, level=c, window_s=window_s, input=kind,
                        min_samples=60,
                    )  # fmt: skip
                    report = verified_step(config, f"{kind} input at c={c}")
                    after = {m: client.statistics(m) for m in (model, preprocess_model)}
                    step = the_step(report)
                    point = {
                        "input": kind,
                        "model": model + (IMAGE_SUFFIX if kind == "image" else ""),
                        "concurrency": c,
                        "img_s": step.inferences_per_s,
                        "p50_ms": step.latency_ms.p50,
                        "p99_ms": step.latency_ms.p99,
                        "samples": step.samples,
                        "request_kb": report.generator["request_bytes"] / 1024,
                        "verified": step.verified,
                        "server_model_ms": _server_ms(before[model], after[model]),
                        "server_preprocess_ms": _server_ms(before[preprocess_model], after[preprocess_model])
                        if kind == "image"
                        else None,
                    }
                    points.append(point)
                    stderr.print(
                        f"c={c} {kind}: {point['img_s']:.1f} img/s, p50 {point['p50_ms']:.1f} ms, "
                        f"p99 {point['p99_ms']:.1f} ms, {point['request_kb']:.0f} KB/request",
                        highlight=False,
                    )
    ratios = {
        c: next(p["img_s"] for p in points if p["concurrency"] == c and p["input"] == "image")
        / next(p["img_s"] for p in points if p["concurrency"] == c and p["input"] == "tensor")
        for c in concurrency
    }
    result = {
        "command": f"python -m cnn_deploy bench-images --model {model}",
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "points": points,
        "image_over_tensor": ratios,
        "preprocessing_in_process": decode_vs_resize(spec),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    from rich.table import Table

    table = Table(title=f"{model}: encoded images in (server preprocesses) vs tensors in (client does)")
    columns = (
        "c",
        "input",
        "KB/request",
        "img/s",
        "p50 ms",
        "p99 ms",
        "server: preprocess ms",
        "server: model ms",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for p in points:
        pre, mod = p["server_preprocess_ms"], p["server_model_ms"]
        table.add_row(
            str(p["concurrency"]),
            p["input"],
            f"{p['request_kb']:.0f}",
            f"{p['img_s']:.1f}",
            f"{p['p50_ms']:.1f}",
            f"{p['p99_ms']:.1f}",
            "-" if pre is None else f"{pre:.1f}",
            "-" if mod is None else f"{mod:.1f}",
        )
    stdout.print(table)
    pre = result["preprocessing_in_process"]
    ratio_text = ", ".join(f"c={c} {r:.2f}" for c, r in ratios.items())
    split = f"decode {pre['decode_ms']:.1f} ms, resize+normalize {pre['resize_normalize_ms']:.1f} ms"
    stdout.print(f"image ÷ tensor throughput: {ratio_text}; in process per photo: {split}", highlight=False)
    stdout.print(f"JSON: {output}", highlight=False)
    return 0
