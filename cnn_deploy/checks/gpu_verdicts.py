"""gpu-check's judges: small pure functions over what a check measured, each with a unit test that
makes it say no (tests/test_gpu.py). A verdict returns None for a pass, or the one-line reason."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cnn_deploy_core.metrics import Comparison

OK, FAIL, SKIPPED = "OK", "FAIL", "SKIPPED"
PASSED_EXIT, FAILED_EXIT, NOTHING_CHECKED_EXIT = 0, 1, 2
TRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
# ONNX Runtime runs what TensorRT declines on CUDA, silently; a few shape ops may land there, a real
# share below this means TensorRT did not take the network.
MIN_PROVIDER_SHARE = 0.9
# Our backend's line per model (serving/triton_side/onnxruntime/model.py): the providers its session
# really has, and the engine cache it used. Read per model, never by grepping the whole log for a
# provider name: ORT's fallback warning names TensorRT too.
_BACKEND_LINE = re.compile(
    r"(?P<model>[\w.-]+): ONNX Runtime \S+ on (?P<providers>\[[^\]]*\])"
    r"(?:[^\n]*?TensorRT engine cache (?P<cache>[^\s,\"']+))?",
    re.MULTILINE,
)


@dataclass
class Check:
    name: str
    model: str
    status: str  # OK | FAIL | SKIPPED
    detail: str
    seconds: float = 0.0
    data: dict = field(default_factory=dict)


def status_of(problems: list[str]) -> str:
    return FAIL if problems else OK


def providers_that_ran(profile: Path) -> dict[str, float]:
    """Microseconds of node execution per execution provider, from ORT's profile JSON."""
    per_provider: dict[str, float] = {}
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            provider = event.get("args", {}).get("provider", "?")
            per_provider[provider] = per_provider.get(provider, 0.0) + float(event.get("dur", 0))
    return per_provider


def share_verdict(
    node_time: dict[str, float], provider: str, minimum: float = MIN_PROVIDER_SHARE
) -> str | None:
    """Most of the node time must be on `provider`: not "some node ran there"."""
    total = sum(node_time.values())
    share = node_time.get(provider, 0.0) / total if total else 0.0
    if share < minimum:
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(node_time.items())) if total else "none"
        return f"{share:.0%} of node time on {provider}, need >= {minimum:.0%} (node time: {shares})"
    return None


def registered_verdict(registered: list[str], wanted: str) -> str | None:
    if wanted not in registered:
        return f"{wanted} was not registered (ONNX Runtime fell back to {registered})"
    return None


def golden_verdict(result: Comparison, label: str) -> str | None:
    if result.passed:
        return None
    why = "top-5 labels differ" if result.within_tolerance else f"max rel err {result.max_rel_err:.2e}"
    return f"answers beyond the {label} tolerance (rtol {result.rtol:.2e}): {why}"


def agreement_verdict(mode: str, max_rel_err: float, rtol: float) -> str | None:
    """A PyTorch CUDA mode's answers against eager FP32 on the same inputs, relative to the logit scale."""
    if not max_rel_err <= rtol:  # NaN fails too
        return f"{mode} answers differ from eager fp32 by {max_rel_err:.2e} (logit scale) > rtol {rtol:.0e}"
    return None


def memory_verdict(out_of_memory: list[int], max_batch_size: int) -> str | None:
    """Running out of GPU memory above the GPU config's batch range is information; within it, a failure."""
    within = [b for b in out_of_memory if b <= max_batch_size]
    if within:
        return f"out of GPU memory at batch {within[0]} (the GPU config serves up to {max_batch_size})"
    return None


def backend_lines(log_text: str) -> dict[str, dict]:
    """Per model, the providers and engine cache from our backend's own line (the last one wins)."""
    found: dict[str, dict] = {}
    for m in _BACKEND_LINE.finditer(log_text):
        try:
            providers = [str(p) for p in ast.literal_eval(m["providers"])]
        except (ValueError, SyntaxError):
            continue
        found[m["model"]] = {"providers": providers, "engine_cache": m["cache"]}
    return found


def served_providers_verdict(model: str, lines: dict[str, dict]) -> str | None:
    entry = lines.get(model)
    if entry is None:
        return f"{model}: the backend logged no 'ONNX Runtime ... on [...]' line (not loaded?)"
    if not entry["providers"] or entry["providers"][0] != TRT_PROVIDER:
        return f"{model}: served on {entry['providers']}, not TensorRT first"
    if not entry.get("engine_cache"):
        return f"{model}: the backend used no TensorRT engine cache"
    return None


def engine_cache_verdict(model: str, cache: str, engines: dict[str, float]) -> str | None:
    """After the first start the cache the backend used must hold engines: no exemption for a
    volume that merely exists."""
    if not engines:
        return f"{model}: no TensorRT engine in {cache}: TensorRT did not build this model"
    return None


def restart_verdict(model: str, first: dict[str, float], second: dict[str, float]) -> str | None:
    """A restart must load the cached engines: no engine file created or rewritten."""
    if not first:
        return f"{model}: no engine after the first start, nothing to reuse"
    rebuilt = sorted(p for p, mtime in second.items() if first.get(p) != mtime)
    if rebuilt:
        return f"{model}: the restart rebuilt {len(rebuilt)} engine file(s), e.g. {rebuilt[0]}"
    return None


def overall(checks: list[Check]) -> tuple[int, str]:
    """Exit code and summary: 1 when a check failed or was skipped (SKIPPED is never a pass),
    2 when nothing at all could be checked, 0 only when every check passed."""
    counts = {s: sum(c.status == s for c in checks) for s in (OK, FAIL, SKIPPED)}
    summary = f"{counts[OK]} passed, {counts[FAIL]} failed, {counts[SKIPPED]} skipped"
    if not checks or counts[OK] == counts[FAIL] == 0:
        return NOTHING_CHECKED_EXIT, f"nothing could be checked ({summary})"
    if counts[FAIL] or counts[SKIPPED]:
        return FAILED_EXIT, f"gpu-check did not pass: {summary} (a skipped check is not a pass)"
    return PASSED_EXIT, f"gpu-check passed: {summary}"
