"""The documentation stays true: README.md is short and its commands are the real ones, every
relative link resolves, no page tells the history of the work, and docs/benchmarks.md is exactly
what its generator makes from the JSON reports in docs/benchmarks/ (so it cannot be hand-edited)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest

from cnn_deploy import benchdoc
from cnn_deploy_core import CnnDeployError
from cnn_deploy_core.machine import provenance

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
CLIS = {
    "export": "export.cli",
    "serving": "serving.cli",
    "clients": "clients.cli",
    "cnn_deploy": "cnn_deploy.cli",
}

# Words that tell the story of the work rather than how to use it ("round-robin" is a technique).
HISTORY = re.compile(
    r"\b(this|last|previous|next|earlier|that|every|one|a) round\b|\bround('s|s? \d)|\brounds? ago"
    r"|\b(this|last|previous|next|earlier) (session|time)\b|\bsession \d|tried and dropped"
    r"|\bthis issue\b|\bmeasured this\b",
    re.IGNORECASE,
)


def test_readme_is_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def history_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if HISTORY.search(line)]


def test_history_pattern_says_no_to_history_and_yes_to_round_robin():
    assert history_lines("measured this round on an AMD EPYC\nTried and dropped, with figures")
    assert history_lines("as last time") and history_lines("in round 1's code")
    assert not history_lines("calls go round-robin; 3 alternated rounds; an ONNX Runtime session")
    assert not history_lines("TensorRT may round differently")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_tells_no_history(page):
    assert history_lines(page.read_text()) == [], f"{page.name}: say what is, not how it came to be"


def relative_links(text: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:|#", t) and t.split("#", 1)[0]]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    missing = [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]
    assert missing == [], f"{page.name} links to files that do not exist"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(package, arguments) of every `python -m PKG ...` in the bash blocks, shell variables aside."""
    found = []
    for block in bash_blocks(text):
        for line in block.splitlines():
            if "python -m" not in line:
                continue
            tokens = shlex.split(line, comments=True)
            segment: list[str] = []
            for token in [*tokens, "&&"]:
                if token not in ("&&", "||", ";", "|"):
                    segment.append(token)
                    continue
                if len(segment) >= 3 and segment[0].endswith("python") and segment[1] == "-m":
                    if segment[2] in CLIS and not any("$" in t for t in segment):
                        found.append((segment[2], segment[3:]))
                segment = []
    return found


def test_readme_shows_commands_of_every_stage():
    assert {pkg for pkg, _ in commands(README.read_text())} == set(CLIS)


@pytest.mark.parametrize(
    "package, args", commands(README.read_text()), ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_readme_command_parses_with_the_real_cli(package, args, capsys):
    parser = importlib.import_module(CLIS[package]).build_parser()
    try:
        parser.parse_args(args)
    except SystemExit as e:
        pytest.fail(f"python -m {package} {shlex.join(args)}: {capsys.readouterr().err.strip()} ({e})")


def test_a_wrong_readme_command_would_fail():
    parser = importlib.import_module(CLIS["serving"]).build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--no-such-option"])


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", README.read_text()))
    assert named and named <= targets, f"not in the Makefile: {sorted(named - targets)}"


# ---- docs/benchmarks.md ---------------------------------------------------------------------------


def test_benchmarks_doc_is_exactly_what_the_reports_generate():
    where = benchdoc.DocPaths.of(ROOT)
    doc, readme = benchdoc.generate(where)
    regenerate = "regenerate with `python -m cnn_deploy benchmarks-doc`"
    assert where.doc.read_text() == doc, f"docs/benchmarks.md was edited by hand: {regenerate}"
    assert readme is not None, "README.md has no <!-- figures --> block"
    assert README.read_text() == readme, f"README.md's figures block was edited by hand: {regenerate}"


def with_provenance(data: dict, command: str = "make bench-int8") -> dict:
    return {**data, "provenance": provenance(command)}


def test_provenance_names_machine_date_and_command():
    prov = provenance("make drills")
    assert prov["command"] == "make drills" and prov["date"].endswith("+00:00")
    assert set(prov["machine"]) == {"cpu_model", "instruction_sets", "cores", "memory_gib"}
    assert prov["machine"]["cores"] >= 1 and prov["python"].count(".") == 2
    assert benchdoc.provenance_problem(prov | {}) is not None  # a provenance is not a report
    assert benchdoc.provenance_problem({"provenance": prov}) is None


def test_provenance_records_the_command_line_as_run_with_every_option(monkeypatch):
    argv = ["/srv/.venv/bin/python", "-m", "cnn_deploy", "bench-images", "--window-s", "3"]
    argv += ["--output", "a b.json"]
    monkeypatch.setattr("sys.orig_argv", argv)
    command = provenance()["command"]
    assert command == "python -m cnn_deploy bench-images --window-s 3 --output 'a b.json'"
    assert shlex.split(command)[1:] == argv[1:]  # reruns as it ran, whatever the venv's path
    redacted = "python -m clients loadtest --inference-key-file REDACTED"
    assert provenance(redacted)["command"] == redacted  # a caller's own (redacted) command stands
    secret = ["python", "-m", "clients", "loadtest", "--admin-key", "s3cret", "--url", "grpc://u:pw@h:1"]
    monkeypatch.setattr("sys.orig_argv", secret)
    command = provenance()["command"]  # no report carries a secret, whatever command made it
    assert "s3cret" not in command and "pw@" not in command and "--url 'grpc://u:***@h:1'" in command


def test_report_without_provenance_is_refused_in_one_line(tmp_path, capsys):
    from cnn_deploy.cli import main

    bad = tmp_path / "bench-int8-resnet50.json"
    bad.write_text(json.dumps({"command": "python -m cnn_deploy bench-int8", "in_process": {}}))
    with pytest.raises(CnnDeployError, match="no provenance"):
        benchdoc.load(bad)
    assert main(["benchmarks-doc", "--add", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert "no provenance" in err and len(err.splitlines()) == 1
    for broken in ({"provenance": {"date": "x", "command": "y"}}, ["not", "an", "object"]):
        bad.write_text(json.dumps(broken))
        with pytest.raises(CnnDeployError):
            benchdoc.load(bad)


# Small reports shaped like the real ones (see each benchmark's writer), and a figure each must show.
FIXTURES = {
    "loadtest-resnet50.json": (
        {
            "schema_version": 2, "model": "resnet50", "protocol": "grpc", "batch_size": 1,
            "steps": [{"label": "c=4", "inferences_per_s": 50.12, "latency_ms": {"p50": 79.4, "p99": 102.9}}],
            "totals": {"verified": 1119, "wrong": 0}, "generator_capacity": None,
        },
        "50.1 infer/s",
    ),
    "drills.json": (
        {"model": "resnet18", "short": False, "took_s": 832.6, "drills": [
            {"name": "kill", "passed": True, "checks": [{"measured": "ready again 6.8 s after the kill"}]}]},
        "ready again 6.8 s after the kill",
    ),
    "compose-test.json": (
        {"steps": [{"step": "engine", "status": "OK"}], "image_sizes": {"cnn-deploy-client:local": "606 MB"},
         "measured": {"loadtest": [
             {"load": "c=1", "infer_per_s": 76.6, "p99_ms": 35.0, "verified": 756, "wrong": 0}]}},
        "76.6 infer/s",
    ),
    "bench-int8-resnet50.json": (
        {"in_process": {"8": {"fp32_img_s": 40.0, "int8_img_s": 130.0, "ratio": 3.25}},
         "served": {"1": {"fp32_img_s": 20.0, "int8_img_s": 50.0, "ratio": 2.5}}},
        "3.25x",
    ),
    "bench-images-resnet50.json": (
        {"points": [{"concurrency": 2, "input": "image", "img_s": 21.0, "p50_ms": 90.0, "p99_ms": 120.0,
                     "request_kb": 110.0}], "image_over_tensor": {"2": 0.97}},
        "0.97x",
    ),
    "serving-benchmark.json": (
        {"model": "resnet50", "ort_in_process": {"best_batch": 16, "best_images_per_s": 23.9},
         "best_served": {"images_per_s": 23.0, "concurrency": 8}, "ratio_best_served_to_ort": 0.962},
        "0.96",
    ),
    "bench-loadgen.json": (
        {"ratios": [{"model": "resnet18", "concurrency": 4, "throughput_ratio": 1.01, "p50_ratio": 0.99,
                     "cpu_ratio": 1.7}]},
        "throughput 1.01",
    ),
    "bench-threads.json": (
        {"sum_img_s": {"adapt": {"both": 58.3}}, "over_ort_default": {"adapt": {"both": 1.51}},
         "over_cores": {"adapt": {"alone": 1.12}}},
        "1.51x",
    ),
    "export-benchmark.json": (
        {"results": [{"architecture": "resnet50", "runtime": "onnxruntime", "batch_size": 8,
                      "images_per_s": 40.6, "gflops_per_s": 332.0}]},
        "40.6 img/s",
    ),
    "tune-resnet50.json": (
        {"model": "resnet50", "slo_p99_ms": 300, "verdict": "the current config is best here",
         "baseline": {"candidate": {"label": "fp32 1xauto"}, "best": {"infer_per_s": 22.0, "p99_ms": 150.0}},
         "winner": None, "ab": None},
        "the current config is best here",
    ),
    "lecture-report.json": (
        {"architectures": [{"architecture": "vgg16", "gmacs": 15.47, "ms_b1": 105.9, "gflops_b8": 343.0,
                            "peak_share_b8": 1.0, "served": {"p99_ms_c1": 116.3}}]},
        "105.9 ms",
    ),
    "gpu-check.json": (
        {"checks": [{"name": "ort-tensorrt-fp16", "model": "resnet50", "status": "PASS", "detail": "ok"}],
         "summary": "1 passed"},
        "ort-tensorrt-fp16 resnet50",
    ),
    "something-new.json": ({"speedup": 1.234, "note": "text"}, "1.234"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_each_kind_of_report_renders_its_figures_with_its_machine(tmp_path, name):
    data, figure = FIXTURES[name]
    path = tmp_path / name
    path.write_text(json.dumps(with_provenance(data)))
    report = benchdoc.load(path)
    section = benchdoc.section(report)
    assert figure in section
    assert "make bench-int8" in section and report.provenance["machine"]["cpu_model"] in section
    assert report.kind != "other" or name == "something-new.json"


def test_add_copies_reports_and_rewrites_the_page_and_the_readme_block(tmp_path):
    (tmp_path / "README.md").write_text("intro\n<!-- figures -->\nstale\n<!-- /figures -->\nend\n")
    source = tmp_path / "drills.json"
    source.write_text(json.dumps(with_provenance(FIXTURES["drills.json"][0], "make drills")))
    assert benchdoc.run([source], root=tmp_path) == 0
    assert (tmp_path / "docs" / "benchmarks" / "drills.json").is_file()
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "Built from: `drills.json`" in page and "`make drills`" in page
    readme = (tmp_path / "README.md").read_text()
    assert "stale" not in readme and "1 of 1 passed" in readme and readme.endswith("<!-- /figures -->\nend\n")
