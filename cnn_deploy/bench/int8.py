"""`python -m cnn_deploy bench-int8 [--model resnet50]`: INT8 / fp32, in process and served, one run.

In process: ONNX Runtime on the exported `model.onnx`, `model.int8.onnx` (U8S8, the CPU's) and,
when there, `model.int8.s8s8.onnx` (TensorRT's form, no faster than fp32 on a CPU), at batch 1 and 8,
in alternated rounds (the ratio is the median of the rounds' own ratios), with every core.
Served: the local Triton with `<model>` and `<model>_int8`, one client, requests of batch 1 and 8,
every answer verified. The CPU's instruction sets are printed with the figures: INT8's edge
depends on VNNI/AMX.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from cnn_deploy.harness import step_config, temporary_server, the_step, verified_step
from cnn_deploy_core import CnnDeployError, paths
from cnn_deploy_core.console import stderr, stdout
from cnn_deploy_core.fsutil import atomic_write_text
from cnn_deploy_core.layout import INPUT_NAME, INT8_FILE, INT8_S8S8_FILE, INT8_SUFFIX, MODEL_FILE
from cnn_deploy_core.machine import cpu_flags, invoked_command, provenance

ROUNDS = 5


def alternated_round(runs: dict, seconds: float, *, reverse: bool) -> dict[str, tuple[int, float]]:
    """One round: each variant runs back to back for `seconds` (and at least 2 calls), in turn,
    the order reversed every other round; (calls, seconds) per variant. Back to back, as a model
    runs when it serves alone: alternated call by call, each file's weights evict the other's
    from the cache and both measure slower (ResNet-50, batch 8, 2 cores: fp32 15%, INT8 17%)."""
    out = {}
    for name in reversed(runs) if reverse else runs:
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < seconds:
            runs[name]()
            calls += 1
        out[name] = (calls, time.perf_counter() - start)
    return out


def in_process(model_dir: Path, batch_sizes: list[int], seconds: float) -> dict:
    """Images per second of each file, and each INT8 file's ratio to fp32: the median over ROUNDS
    of the ratio within a round (fp32 and INT8 seconds apart: a slow spell on a shared machine
    moves both)."""
    import onnxruntime as ort

    def session(path: Path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    sessions = {"fp32": session(model_dir / MODEL_FILE), "int8": session(model_dir / INT8_FILE)}
    if (model_dir / INT8_S8S8_FILE).is_file():  # TensorRT's form, on the CPU: why the CPU keeps U8S8
        sessions["int8_s8s8"] = session(model_dir / INT8_S8S8_FILE)
    out: dict = {}
    for bs in batch_sizes:
        feed = {INPUT_NAME: np.random.default_rng(0).standard_normal((bs, 3, 224, 224), dtype=np.float32)}
        runs = {k: (lambda s=s, feed=feed: s.run(None, feed)) for k, s in sessions.items()}
        for run_once in runs.values():
            run_once()
        rounds = []
        for i in range(ROUNDS):
            measured = alternated_round(runs, seconds / ROUNDS, reverse=i % 2 == 1)
            rounds.append({k: bs * calls / spent for k, (calls, spent) in measured.items()})
        ips = {k: float(np.median([r[k] for r in rounds])) for k in sessions}
        ratio = {k: float(np.median([r[k] / r["fp32"] for r in rounds])) for k in sessions}
        out[bs] = {
            "fp32_img_s": ips["fp32"],
            "int8_img_s": ips["int8"],
            "ratio": ratio["int8"],
            "rounds": [{f"{k}_img_s": v for k, v in r.items()} for r in rounds],
        }
        s8s8 = ""
        if "int8_s8s8" in ips:
            out[bs].update(int8_s8s8_img_s=ips["int8_s8s8"], s8s8_ratio=ratio["int8_s8s8"])
            s8s8 = f", int8 s8s8 {ips['int8_s8s8']:.1f} img/s"
        per_round = " ".join(f"{r['int8'] / r['fp32']:.2f}" for r in rounds)
        stderr.print(
            f"in process, batch {bs}: fp32 {ips['fp32']:.1f} img/s, int8 {ips['int8']:.1f} img/s{s8s8}; "
            f"int8/fp32 by round {per_round}"
        )
    return out


def served(model: str, repository: Path, batch_sizes: list[int], window_s: float) -> dict:
    """fp32 and INT8 served side by side, requests of each batch size, every answer verified."""
    out: dict = {}
    with temporary_server(repository, name="bench-int8") as server:
        for bs in batch_sizes:
            rates = {}
            for variant in (model, model + INT8_SUFFIX):
                config = step_config(
                    server.opts.grpc_url, variant, repository, level=2, window_s=window_s,
                    batch_size=bs, min_samples=20,
                )  # fmt: skip
                step = the_step(verified_step(config, f"{variant} at batch {bs}"))
                rates[variant] = step.inferences_per_s
            fp32, int8 = rates[model], rates[model + INT8_SUFFIX]
            out[bs] = {"fp32_img_s": fp32, "int8_img_s": int8, "ratio": int8 / fp32}
            stderr.print(f"served, batch {bs} per request: fp32 {fp32:.1f}, int8 {int8:.1f} img/s")
    return out


def run(model: str, *, repository: Path, models_dir: Path, seconds: float, output: Path) -> int:
    model_dir = models_dir / model
    if not (model_dir / INT8_FILE).is_file():
        raise CnnDeployError(
            f"no INT8 export of {model} in {models_dir}: python -m export build {model} --int8"
        )
    if not (repository / (model + INT8_SUFFIX)).is_dir():
        raise CnnDeployError(f"{model}{INT8_SUFFIX} is not in {repository}: python -m serving repo {model}")
    flags = cpu_flags()
    stderr.print(f"CPU instruction sets: {', '.join(flags) or 'none of avx2/avx512/vnni/amx'}")
    report = {
        "command": invoked_command(),  # as run, every option (provenance has it too)
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "in_process": in_process(model_dir, [1, 8], seconds),
        "served": served(model, repository, [1, 8], window_s=2.0),
    }
    report["provenance"] = provenance()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    for where in ("in_process", "served"):
        for bs, r in report[where].items():
            stdout.print(
                f"{where.replace('_', '-'):10s} batch {bs}: int8/fp32 = {r['ratio']:.2f}x "
                f"({r['int8_img_s']:.1f} vs {r['fp32_img_s']:.1f} img/s)",
                highlight=False,
            )
    stdout.print(f"CPU: {', '.join(flags)}; JSON: {output}", highlight=False)
    return 0


def default_output(model: str) -> Path:
    return paths.reports_dir() / f"bench-int8-{model}.json"
