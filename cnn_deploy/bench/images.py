"""`python -m cnn_deploy bench-images [--model resnet50]`: images in vs tensors in, one server, one run.

The same model served two ways: `<model>` taking preprocessed float tensors (the client decodes
and resizes), and `<model>_image` taking the encoded photo files (the server does). At each
concurrency the two alternate against the same server; every answer is verified. Reported: the
payload per request, img/s and p50/p99 end to end, and where the server's time goes, from Triton's
per-model statistics (the preprocessing model: decode + resize + normalize; the model itself),
with the preprocessing split into decode and resize measured in process on the same photos.
Also per step: the server's CPU time per image (tritonserver and its backend processes, from
/proc), which a busy shared machine disturbs far less than throughput; and at the end each model's
time per image at each batch size it ran (Triton's batch statistics), to show that a batch costs
no more per image than a batch of 1.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from cnn_deploy.harness import place, step_config, temporary_server, the_step, verified_step
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.images import all_photos
from cnn_deploy_core.layout import IMAGE_SUFFIX
from cnn_deploy_core.machine import cpu_flags, invoked_command, provenance
from cnn_deploy_core.preprocess import Preprocessing, decode, preprocess


def decode_vs_resize(spec: Preprocessing, rounds: int = 20) -> dict:
    """ms per photo for decoding (as the server decodes, reduced for large JPEGs) and for
    resize + crop + normalize, in process: the median of `rounds` passes over the photos."""
    blobs = [p.read_bytes() for p in all_photos()]
    decode_s, resize_s = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        images = [decode(b, resize=spec.resize) for b in blobs]
        decode_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for img in images:
            preprocess(img, spec)
        resize_s.append(time.perf_counter() - start)
    per_photo_ms = 1e3 / len(blobs)
    return {
        "decode_ms": statistics.median(decode_s) * per_photo_ms,
        "resize_normalize_ms": statistics.median(resize_s) * per_photo_ms,
        "photos": len(blobs),
    }


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its direct children (Triton's backend stubs)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def ms_per_image_by_batch(stats: dict) -> dict[int, float]:
    """Triton's batch statistics of one model: compute time per image at each batch size it ran."""
    out = {}
    for entry in stats.get("batch_stats", []):
        size, infer = int(entry["batch_size"]), entry.get("compute_infer", {})
        if int(infer.get("count", 0)):
            out[size] = int(infer["ns"]) / int(infer["count"]) / size / 1e6
    return dict(sorted(out.items()))


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
                    cpu_before = process_tree_cpu_s(server.process.pid)
                    config = step_config(
                        server.opts.grpc_url, model, repo, level=c, window_s=window_s, input=kind,
                        min_samples=60,
                    )  # fmt: skip
                    report = verified_step(config, f"{kind} input at c={c}")
                    cpu_s = process_tree_cpu_s(server.process.pid) - cpu_before
                    after = {m: client.statistics(m) for m in (model, preprocess_model)}
                    step = the_step(report)
                    images = int(after[model].get("inference_count", 0)) - int(
                        before[model].get("inference_count", 0)
                    )
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
                        "server_cpu_ms_per_image": cpu_s * 1e3 / images if images else None,
                    }
                    points.append(point)
                    stderr.print(
                        f"c={c} {kind}: {point['img_s']:.1f} img/s, p50 {point['p50_ms']:.1f} ms, "
                        f"p99 {point['p99_ms']:.1f} ms, {point['request_kb']:.0f} KB/request",
                        highlight=False,
                    )
            by_batch = {m: ms_per_image_by_batch(client.statistics(m)) for m in (model, preprocess_model)}
    ratios = {
        c: next(p["img_s"] for p in points if p["concurrency"] == c and p["input"] == "image")
        / next(p["img_s"] for p in points if p["concurrency"] == c and p["input"] == "tensor")
        for c in concurrency
    }
    result = {
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "points": points,
        "image_over_tensor": ratios,
        "preprocessing_in_process": decode_vs_resize(spec),
        "ms_per_image_by_batch": by_batch,
    }
    result["provenance"] = provenance()
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
        "server CPU ms/img",
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
            "-" if p["server_cpu_ms_per_image"] is None else f"{p['server_cpu_ms_per_image']:.1f}",
        )
    stdout.print(table)
    pre = result["preprocessing_in_process"]
    ratio_text = ", ".join(f"c={c} {r:.2f}" for c, r in ratios.items())
    split = f"decode {pre['decode_ms']:.1f} ms, resize+normalize {pre['resize_normalize_ms']:.1f} ms"
    stdout.print(f"image ÷ tensor throughput: {ratio_text}; in process per photo: {split}", highlight=False)
    for m, costs in by_batch.items():
        text = ", ".join(f"batch {b}: {ms:.1f}" for b, ms in costs.items())
        stdout.print(f"{m}: compute ms per image by batch size: {text or '-'}", highlight=False)
    stdout.print(f"JSON: {output}", highlight=False)
    return 0
