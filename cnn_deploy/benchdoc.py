"""`python -m cnn_deploy benchmarks-doc [--add REPORT ...]`: docs/benchmarks.md, and the figures
block of README.md, generated from the JSON reports kept in docs/benchmarks/.

A figure in the docs is only as good as what it was measured on, so every report kept there must
carry its provenance (cnn_deploy_core.machine.provenance: machine, date, command, versions) and the
page is never edited by hand: a test regenerates it and compares.

Each kind of report has a small renderer (its headline figures as rows); a kind without one shows
its top-level numbers. The kind is the report's "kind"/"benchmark" field, else its file name."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnn_deploy_core import CnnDeployError, paths
from cnn_deploy_core.fsutil import atomic_write_text

FIGURES_BEGIN = "<!-- figures -->"
FIGURES_END = "<!-- /figures -->"

Rows = list[tuple[str, str]]


@dataclass(frozen=True)
class Report:
    name: str  # the file name in docs/benchmarks/
    kind: str
    data: dict

    @property
    def provenance(self) -> dict:
        return self.data["provenance"]


# ---- reading ----------------------------------------------------------------------------------


def provenance_problem(data: object) -> str | None:
    """Why a report cannot be a source of published figures; None when it can."""
    if not isinstance(data, dict):
        return "not a JSON object"
    prov = data.get("provenance")
    if not isinstance(prov, dict):
        return "no provenance (machine, date, command): rerun the benchmark with this version to write one"
    missing = [k for k in ("machine", "date", "command") if not prov.get(k)]
    if missing:
        return f"its provenance lacks {', '.join(missing)}"
    if not isinstance(prov["machine"], dict) or not prov["machine"].get("cpu_model"):
        return "its provenance names no CPU model"
    return None


def load(path: Path) -> Report:
    """A report with provenance, or CnnDeployError saying in one line why not."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise CnnDeployError(f"{path}: cannot read it: {e.strerror}") from None
    except ValueError as e:
        raise CnnDeployError(f"{path}: not valid JSON: {e}") from None
    problem = provenance_problem(data)
    if problem:
        raise CnnDeployError(f"{path}: {problem}")
    return Report(path.name, kind_of(data, path.name), data)


# The default file names the benchmarks write (reports/...), longest prefix first.
NAME_KINDS = (
    ("export-benchmark-cuda", "export-benchmark"),
    ("export-benchmark", "export-benchmark"),
    ("serving-benchmark", "bench-serving"),
    ("bench-loadgen", "bench-loadgen"),
    ("bench-threads", "bench-threads"),
    ("bench-images", "bench-images"),
    ("bench-int8", "bench-int8"),
    ("compose-test", "compose-test"),
    ("lecture-report", "report"),
    ("gpu-check", "gpu-check"),
    ("loadtest", "loadtest"),
    ("drills", "drills"),
    ("tune", "tune"),
)


def kind_of(data: dict, name: str) -> str:
    for key in ("kind", "benchmark"):
        if isinstance(data.get(key), str):
            return data[key]
    for prefix, kind in NAME_KINDS:
        if name.startswith(prefix):
            return kind
    if "schema_version" in data and "steps" in data and "totals" in data:
        return "loadtest"
    return "other"


# ---- figures ----------------------------------------------------------------------------------


def num(value: object, digits: int = 1, unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return text + unit


def _loadtest(d: dict) -> Rows:
    rows = [("model", f"{d.get('model')} ({d.get('protocol')}, batch {d.get('batch_size')})")]
    for s in d.get("steps", []):
        lat = s.get("latency_ms") or {}
        rows.append(
            (
                s.get("label", "?"),
                f"{num(s.get('inferences_per_s'))} infer/s, p50 {num(lat.get('p50'))} ms, "
                f"p99 {num(lat.get('p99'))} ms",
            )
        )
    t = d.get("totals") or {}
    rows.append(("answers", f"{num(t.get('verified'))} verified, {num(t.get('wrong'))} wrong"))
    cap = d.get("generator_capacity") or {}
    if cap.get("inferences_per_s"):
        rows.append(("generator capacity", f"{num(cap['inferences_per_s'])} infer/s ({cap.get('at')})"))
    return rows


def _drills(d: dict) -> Rows:
    rows = [("model", f"{d.get('model')}{' (short)' if d.get('short') else ''}")]
    for drill in d.get("drills", []):
        measured = "; ".join(c.get("measured", "") for c in drill.get("checks", []))
        rows.append((drill.get("name", "?"), f"{'passed' if drill.get('passed') else 'FAILED'}: {measured}"))
    rows.append(("took", num(d.get("took_s"), 0, " s")))
    return rows


def _compose(d: dict) -> Rows:
    rows = [(name, size) for name, size in (d.get("image_sizes") or {}).items()]
    for point in (d.get("measured") or {}).get("loadtest", []):
        rows.append(
            (
                f"load test {point.get('load')}",
                f"{num(point.get('infer_per_s'))} infer/s, p99 {num(point.get('p99_ms'))} ms, "
                f"{num(point.get('verified'))} verified, {num(point.get('wrong'))} wrong",
            )
        )
    steps = d.get("steps", [])
    failed = [s.get("step") for s in steps if s.get("status") not in ("OK", "SKIPPED")]
    rows.append(("steps", f"{len(steps)} steps, " + (f"not OK: {', '.join(failed)}" if failed else "all OK")))
    return rows


def _ratio_rows(section: dict, label: str) -> Rows:
    return [
        (
            f"{label}, batch {bs}",
            f"int8 / fp32 {num(r.get('ratio'), 2, 'x')} "
            f"({num(r.get('int8_img_s'))} vs {num(r.get('fp32_img_s'))} img/s)",
        )
        for bs, r in (section or {}).items()
        if isinstance(r, dict)
    ]


def _int8(d: dict) -> Rows:
    return _ratio_rows(d.get("in_process"), "in process") + _ratio_rows(d.get("served"), "served")


def _images(d: dict) -> Rows:
    rows = [
        (
            f"{p.get('input')} in, c={p.get('concurrency')}",
            f"{num(p.get('img_s'))} img/s, p99 {num(p.get('p99_ms'))} ms, "
            f"{num(p.get('request_kb'), 0)} KB/request",
        )
        for p in d.get("points", [])
    ]
    ratios = d.get("image_over_tensor") or {}
    rows += [(f"image / tensor, c={c}", num(r, 2, "x")) for c, r in ratios.items()]
    return rows


def _serving(d: dict) -> Rows:
    ort = d.get("ort_in_process") or {}
    best = d.get("best_served") or {}
    return [
        ("model", str(d.get("model"))),
        ("in process (ONNX Runtime)", f"{num(ort.get('best_images_per_s'))} img/s, b{ort.get('best_batch')}"),
        ("served (Triton)", f"{num(best.get('images_per_s'))} img/s at c={best.get('concurrency')}"),
        ("served / in process", num(d.get("ratio_best_served_to_ort"), 2)),
    ]


def _loadgen(d: dict) -> Rows:
    again = {(p.get("model"), p.get("concurrency")) for p in d.get("points", []) if p.get("measured_again")}
    return [
        (
            f"{r.get('model')} c={r.get('concurrency')}",
            f"ours / perf_analyzer: throughput {num(r.get('throughput_ratio'), 2)}, "
            f"p50 {num(r.get('p50_ratio'), 2)}, CPU per request {num(r.get('cpu_ratio'), 2)}"
            + (
                "; perf_analyzer's first run unstable, measured again"
                if (r.get("model"), r.get("concurrency")) in again
                else ""
            ),
        )
        for r in d.get("ratios", [])
    ]


def _threads(d: dict) -> Rows:
    over, cores = d.get("over_ort_default") or {}, d.get("over_cores") or {}
    rows = []
    for name, total in (d.get("sum_img_s") or {}).items():
        both = " / ".join(f"{sc} {num(v)}" for sc, v in total.items())
        rel = ", ".join(f"{sc} {num(v, 2, 'x')}" for sc, v in (over.get(name) or {}).items())
        rel_cores = ", ".join(f"{sc} {num(v, 2, 'x')}" for sc, v in (cores.get(name) or {}).items())
        rows.append((name, f"img/s {both}; ÷ ORT default: {rel}; ÷ cores: {rel_cores}"))
    return rows


def _export_bench(d: dict) -> Rows:
    return [
        (
            f"{r.get('architecture')} {r.get('runtime')} b{r.get('batch_size')}",
            f"{num(r.get('images_per_s'))} img/s, {num(r.get('gflops_per_s'), 0)} GFLOP/s",
        )
        for r in d.get("results", [])
    ]


def _tune(d: dict) -> Rows:
    winner, base = d.get("winner") or {}, d.get("baseline") or {}
    rows = [("model", f"{d.get('model')}, p99 objective {num(d.get('slo_p99_ms'), 0, ' ms')}")]
    for label, m in (("search start (the cpu config)", base), ("best candidate", winner)):
        best = m.get("best") or {}
        cand = (m.get("candidate") or {}).get("label", "")
        figure = f"{num(best.get('infer_per_s'))} infer/s, p99 {num(best.get('p99_ms'))} ms"
        rows.append((label, f"{cand}: {figure}"))
    ab = d.get("ab") or {}
    if ab:
        # the A/B's "current" is the config the winner would replace (an INT8 winner: `<name>_int8`'s)
        current = ab.get("current_model") or next((r.get("model") for r in ab.get("runs", [])), "?")
        at = f"c={ab.get('concurrency')}"
        rows.append(
            (f"best / {current}'s current config, alternated, {at}", num(ab.get("winner_vs_current"), 2, "x"))
        )
        if ab.get("light_concurrency"):
            light = f"c={ab['light_concurrency']}"
            rows.append(
                (
                    f"best / {current}'s current config, alternated, {light}",
                    num(ab.get("light_winner_vs_current"), 2, "x"),
                )
            )
    rows.append(("verdict", str(d.get("verdict"))))
    return rows


def _lecture(d: dict) -> Rows:
    rows = []
    for a in d.get("architectures", []):
        served = a.get("served") or {}
        peak = a.get("peak_share_b8")
        rows.append(
            (
                a.get("architecture", "?"),
                f"{num(a.get('gmacs'), 2)} GMACs, {num(a.get('ms_b1'))} ms at batch 1, "
                f"{num(a.get('gflops_b8'), 0)} GFLOP/s at batch 8"
                + (f" ({peak:.0%} of the GEMM peak)" if isinstance(peak, float) else "")
                + (f", served p99 c=1 {num(served.get('p99_ms_c1'))} ms" if served.get("p99_ms_c1") else ""),
            )
        )
    return rows


def _gpu(d: dict) -> Rows:
    rows = [
        (f"{c.get('name')} {c.get('model') or ''}".strip(), f"{c.get('status')}: {c.get('detail')}")
        for c in d.get("checks", [])
    ]
    rows.append(("summary", str(d.get("summary"))))
    return rows


def _generic(d: dict) -> Rows:
    return [(k, num(v, 3)) for k, v in d.items() if isinstance(v, int | float | str) and k != "command"]


RENDERERS: dict[str, Callable[[dict], Rows]] = {
    "loadtest": _loadtest,
    "drills": _drills,
    "compose-test": _compose,
    "bench-int8": _int8,
    "bench-images": _images,
    "bench-serving": _serving,
    "bench-loadgen": _loadgen,
    "bench-threads": _threads,
    "export-benchmark": _export_bench,
    "tune": _tune,
    "report": _lecture,
    "gpu-check": _gpu,
}


def _best_step(d: dict) -> str:
    steps = [s for s in d.get("steps", []) if s.get("inferences_per_s")]
    if not steps:
        return "—"
    s = max(steps, key=lambda s: s["inferences_per_s"])
    p99 = (s.get("latency_ms") or {}).get("p99")
    return f"{num(s['inferences_per_s'])} infer/s at {s.get('label')}, p99 {num(p99)} ms"


def _drills_passed(d: dict) -> str:
    drills = d.get("drills", [])
    return f"{sum(bool(x.get('passed')) for x in drills)} of {len(drills)} passed"


def _int8_b8(d: dict) -> str:
    return num(((d.get("in_process") or {}).get("8") or {}).get("ratio"), 2, "x")


def _image_ratios(d: dict) -> str:
    return ", ".join(f"c={c} {num(r, 2, 'x')}" for c, r in (d.get("image_over_tensor") or {}).items())


# One line per kind for README.md's headline table: (what it is, its headline figure).
HEADLINES: dict[str, Callable[[dict], tuple[str, str]]] = {
    "loadtest": lambda d: (f"{d.get('model')} served, every answer verified", _best_step(d)),
    "drills": lambda d: ("failure drills", _drills_passed(d)),
    "compose-test": lambda d: ("CPU compose deployment", _rows_value(_compose(d), "steps")),
    "bench-int8": lambda d: ("INT8 / fp32, in process, batch 8", _int8_b8(d)),
    "bench-serving": lambda d: ("served / in-process ORT", num(d.get("ratio_best_served_to_ort"), 2)),
    "bench-images": lambda d: ("image in / tensor in", _image_ratios(d)),
}


def _rows_value(rows: Rows, key: str) -> str:
    return next((v for k, v in rows if k == key), "—")


# ---- writing ----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def machine_line(prov: dict) -> str:
    m = prov.get("machine") or {}
    flags = ", ".join(m.get("instruction_sets") or []) or "no AVX2/AVX-512"
    memory = f", {m['memory_gib']} GiB" if m.get("memory_gib") else ""
    return f"{m.get('cpu_model', 'unknown CPU')} ({flags}), {m.get('cores', '?')} cores{memory}"


def section(report: Report) -> str:
    prov = report.provenance
    rows = RENDERERS.get(report.kind, _generic)(report.data)
    versions = ", ".join(f"{k} {v}" for k, v in (prov.get("packages") or {}).items())
    lines = [
        f"## {report.kind}: [{report.name}](benchmarks/{report.name})",
        "",
        f"- machine: {machine_line(prov)}",
        f"- date: {prov['date']}",
        f"- command: `{prov['command']}`",
        f"- Python {prov.get('python', '?')}" + (f"; {versions}" if versions else ""),
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows),
        "",
    ]
    return "\n".join(lines)


def render_doc(reports: list[Report]) -> str:
    head = [
        "# Benchmarks",
        "",
        "<!-- generated from docs/benchmarks/*.json by python -m cnn_deploy benchmarks-doc: do not edit -->",
        "",
        "Every figure here comes from a JSON report in [docs/benchmarks/](benchmarks/), written by the",
        "command shown with it on the machine shown with it. Figures from another machine, another",
        "day or another command are different figures. To add one, run the benchmark, then",
        "`python -m cnn_deploy benchmarks-doc --add reports/NAME.json`.",
        "",
    ]
    if not reports:
        head += ["No reports yet: this page lists none.", ""]
    else:
        head += ["Built from: " + ", ".join(f"`{r.name}`" for r in reports) + ".", ""]
    return "\n".join(head + [section(r) for r in reports]).rstrip("\n") + "\n"


def render_figures(reports: list[Report]) -> str:
    """README.md's headline table (between the figures markers)."""
    rows = []
    for r in reports:
        headline = HEADLINES.get(r.kind)
        if headline is None:
            continue
        what, figure = headline(r.data)
        m = r.provenance.get("machine") or {}
        where = f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, {str(r.provenance['date'])[:10]}"
        rows.append(f"| {_cell(what)} | {_cell(figure)} | {_cell(where)} | [{r.name}](docs/benchmarks.md) |")
    if not rows:
        return "No measured figures are published yet: see [docs/benchmarks.md](docs/benchmarks.md).\n"
    return "\n".join(["| what | figure | measured on | report |", "|---|---|---|---|", *rows]) + "\n"


def replace_block(text: str, block: str) -> str:
    """`text` with the part between the figures markers replaced by `block`."""
    start, end = text.find(FIGURES_BEGIN), text.find(FIGURES_END)
    if start < 0 or end < start:
        raise CnnDeployError(f"README.md has no {FIGURES_BEGIN} ... {FIGURES_END} block for the figures")
    return text[: start + len(FIGURES_BEGIN)] + "\n" + block + text[end:]


@dataclass(frozen=True)
class DocPaths:
    reports: Path  # docs/benchmarks/
    doc: Path  # docs/benchmarks.md
    readme: Path

    @classmethod
    def of(cls, root: Path) -> DocPaths:
        return cls(root / "docs" / "benchmarks", root / "docs" / "benchmarks.md", root / "README.md")


def collect(folder: Path) -> list[Report]:
    return [load(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def generate(where: DocPaths) -> tuple[str, str | None]:
    """The benchmarks page and the README (None where it has no figures block), from the reports."""
    reports = collect(where.reports)
    readme = where.readme.read_text() if where.readme.is_file() else None
    if readme is not None and FIGURES_BEGIN in readme:
        readme = replace_block(readme, render_figures(reports))
    else:
        readme = None
    return render_doc(reports), readme


def run(add: list[Path], root: Path | None = None) -> int:
    root = root or paths.project_root()
    if root is None:
        raise CnnDeployError("benchmarks-doc writes the docs of a source checkout: run it inside one")
    where = DocPaths.of(root)
    for path in add:
        load(path)  # refuses a report without provenance before anything is copied
    where.reports.mkdir(parents=True, exist_ok=True)
    for path in add:
        target = where.reports / path.name
        if not (target.exists() and target.samefile(path)):  # already published: regenerate only
            shutil.copyfile(path, target)
    doc, readme = generate(where)
    atomic_write_text(where.doc, doc)
    if readme is not None:
        atomic_write_text(where.readme, readme)
    print(f"{where.doc}: {len(collect(where.reports))} report(s)" + (", README.md figures" if readme else ""))
    return 0
