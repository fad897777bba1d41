"""The report's charts (PNG) and its one self-contained HTML file (charts embedded as data URIs).

Everything is rendered from the report's JSON, so a saved report can be drawn again.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnn_deploy_core.fsutil import atomic_write_bytes, atomic_write_text

FAMILY_COLOURS = {"alexnet": "#d62728", "vgg": "#1f77b4", "googlenet": "#2ca02c", "resnet": "#ff7f0e"}
TOP_LAYERS = 16  # per-layer bars: the layers with the most FLOPs or time


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def accuracy_chart(report: dict) -> bytes:
    """The lecture's chart (top-1 vs GFLOPs) beside top-1 vs measured latency and vs throughput."""
    rows = report["architectures"]
    cores = report["machine"]["cores"]
    fig = _figure(15, 4.6)
    panels = (
        ("GFLOPs per image (multiply-adds)", lambda r: r["gmacs"], "the lecture: compute"),
        ("measured latency at batch 1 (ms, ONNX Runtime)", lambda r: r["ms_b1"], "measured: latency"),
        (
            f"served img/s per core (Triton, {cores} cores)",
            lambda r: r["served"]["peak_img_s"] / cores,
            "measured: serving",
        ),
    )
    for ax, (label, x, title) in zip(fig.subplots(1, 3), panels, strict=True):
        for r in rows:
            ax.scatter(
                x(r), r["top1"], s=max(20.0, r["params"] / 1e6 * 6), alpha=0.5,
                color=FAMILY_COLOURS.get(r["family"], "grey"), edgecolors="black", linewidths=0.5,
            )  # fmt: skip
            ax.annotate(
                r["architecture"], (x(r), r["top1"]), textcoords="offset points", xytext=(5, 3), fontsize=8
            )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("ImageNet top-1 (%)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def roofline_chart(report: dict) -> bytes:
    """Achieved GFLOP/s (batch 8) against arithmetic intensity, under the measured peak and
    memory-bandwidth lines."""
    machine = report["machine"]
    peak, bandwidth = machine["gemm_gflops"], machine["bandwidth_gbs"]
    fig = _figure(8, 5.2)
    ax = fig.subplots()
    intensities = [*(r["intensity_b8"] for r in report["architectures"]), peak / bandwidth]
    lo, hi = min(intensities) / 4, max(intensities) * 4
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(peak, bandwidth * x) for x in xs], "k-", linewidth=2, label="roof (measured)")
    ax.axhline(peak, color="grey", linestyle=":", label=f"compute roof (best GEMM) {peak:.0f} GFLOP/s")
    ax.plot(
        xs, [bandwidth * x for x in xs], color="grey", linestyle="--", label=f"memory {bandwidth:.1f} GB/s"
    )
    for r in report["architectures"]:
        ax.scatter(
            r["intensity_b8"], r["gflops_b8"], s=60, color=FAMILY_COLOURS.get(r["family"], "grey"), zorder=3
        )
        ax.annotate(r["architecture"], (r["intensity_b8"], r["gflops_b8"]), textcoords="offset points",
                    xytext=(5, -10), fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=peak * 2)
    ax.set_xlabel("arithmetic intensity at batch 8 (FLOPs per byte of weights + activations)")
    ax.set_ylabel("achieved GFLOP/s (ONNX Runtime, batch 8)")
    ax.set_title("roofline, measured on this machine")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def layer_chart(arch: dict) -> bytes:
    """Per layer: share of the FLOPs against share of the time (batch 1)."""
    layers = [layer for layer in arch["layers"] if layer["macs"] or layer["ms"]]
    flops = sum(layer["macs"] for layer in layers) or 1
    ms = sum(layer["ms"] for layer in layers) or 1
    top = sorted(layers, key=lambda la: -max(la["macs"] / flops, la["ms"] / ms))[:TOP_LAYERS]
    top = [la for la in layers if la in top]  # in execution order
    fig = _figure(max(7.0, len(top) * 0.55), 4.2)
    ax = fig.subplots()
    xs = range(len(top))
    ax.bar([x - 0.2 for x in xs], [100 * la["macs"] / flops for la in top], 0.4, label="share of FLOPs")
    ax.bar([x + 0.2 for x in xs], [100 * la["ms"] / ms for la in top], 0.4, label="share of time")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([la["name"] for la in top], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("%")
    ax.set_title(f"{arch['architecture']}: where the FLOPs are vs where the time goes (batch 1)")
    ax.legend(fontsize=8)
    return _png(fig)


def charts(report: dict) -> dict[str, bytes]:
    out = {"accuracy": accuracy_chart(report), "roofline": roofline_chart(report)}
    for arch in report["architectures"]:
        out[f"layers-{arch['architecture']}"] = layer_chart(arch)
    return out


def _fmt(value, spec: str = ".1f", none: str = "—") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _batch(rates: dict, batch: int) -> float | None:
    """img/s at a batch size; the keys are ints in memory and strings once through JSON."""
    return rates.get(batch, rates.get(str(batch)))


LAYER_MFLOPS = "MFLOPs (2 per multiply-add)"


def _with_samples(ms: float | None, samples: int | None) -> str:
    """A percentile with the number of answers it rests on (a p99 of 40 samples is one answer)."""
    return _fmt(ms) if samples is None else f"{_fmt(ms)} (n={samples})"


def _checked(served: dict) -> str:
    if "verified" not in served:
        return "—"
    return f"{served['verified']} / {served['wrong']}"


def verified_claim(report: dict) -> str:
    """What the page may say about the served answers: "every answer verified" only when the judge
    (cnn_deploy_core.judge, whose default objectives want every answer verified and right) passed
    every architecture's served run, as the report recorded it. A report without that verdict is
    drawn as it was, and claims nothing."""
    served = [r["served"] or {} for r in report["architectures"]]
    verdicts = [s.get("judge") or {} for s in served]
    if served and all(v.get("passed") is True for v in verdicts):
        return f"every answer verified: {sum(s.get('verified', 0) for s in served)} answers, none wrong"
    problems = [p for v in verdicts for p in v.get("problems", [])]
    why = "; ".join(problems) if problems else "see the verified / wrong column"
    return f"NOT every answer verified: {why}"


def roof_text(machine: dict) -> str:
    """How the compute roof was measured: the best GEMM, and every one that was tried."""
    runs = "; ".join(f"{g['how']}: {g['gflops']:.0f}" for g in machine.get("gemms", []))
    best = machine.get("gemm_best", "one GEMM")
    return (
        f"{machine['gemm_gflops']:.0f} GFLOP/s fp32, the best of several GEMMs ({best}); all, GFLOP/s: {runs}"
    )


def headline_rows(report: dict) -> list[list[str]]:
    rows = []
    for r in report["architectures"]:
        s = r["served"] or {}
        fp32 = _batch(r["in_process"]["fp32"], 8)
        int8 = _batch(r["in_process"].get("int8", {}), 8)
        rows.append(
            [
                r["architecture"],
                _fmt(r["params"] / 1e6),
                _fmt(r["gmacs"], ".2f"),
                _fmt(r["top1"]),
                _fmt(r["ms_b1"]),
                _fmt(fp32),
                _fmt(s.get("peak_img_s")),
                _with_samples(s.get("p99_ms_c1"), s.get("samples_c1")),
                _fmt(r["gflops_b8"], ".0f"),
                _fmt(100 * r["peak_share_b8"], ".0f") + "%",
                _fmt(s.get("memory_mb"), ".0f"),
                _checked(s),
                (_fmt(int8 / fp32, ".2f") + "x") if int8 and fp32 else "—",
            ]
        )
    return rows


HEADLINE = [
    "model", "params (M)", "GMACs", "top-1 %", "ms, b1", "img/s, b8", "served img/s",
    "served p99 c=1 (ms, n answers)", "GFLOP/s b8", "% of compute roof", "model MB (PSS)",
    "served answers verified / wrong", "int8 / fp32 (b8)",
]  # fmt: skip


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(name: str, data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    src = f"data:image/png;base64,{encoded}"
    return f'<img class="chart" data-chart="{name}" alt="{html.escape(alt)}" src="{src}">'


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1500px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.6em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img.chart { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
.meta td { text-align: left; } details { margin: 0.5em 0 1.5em; }
"""

# Once the page has loaded, record how many tables and how many decoded charts it shows: a
# headless browser's DOM dump then proves every chart rendered, not just that its tag is there.
CHECK = """
<script>
window.addEventListener("load", () => {
  const charts = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.chartsRendered = String(charts);
  document.body.dataset.tablesRendered = String(document.querySelectorAll("table").length);
});
</script>
"""


def render_html(report: dict, images: dict[str, bytes]) -> str:
    m = report["machine"]
    meta = [
        ["CPU", m["cpu"]],
        ["instruction sets", ", ".join(m["flags"]) or "—"],
        ["cores / threads used", f"{m['cores']} / {m['threads']}"],
        ["compute roof (measured)", roof_text(m)],
        ["memory bandwidth (measured)", f"{m['bandwidth_gbs']:.1f} GB/s"],
        ["versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())],
        ["command", report["command"]],
        ["finished", report["finished_at"]],
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cnn-deploy: the lecture, measured</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>The lecture, measured</h1>",
        "<p>The lecture's costs (parameters, multiply-adds, activation memory) beside what serving "
        "costs on this machine: in-process ONNX Runtime, the real Triton server "
        f"({html.escape(verified_claim(report))}), and ONNX Runtime's per-layer profile.</p>",
        _table(["", ""], meta, "meta"),
        "<h2>Headline</h2>",
        _table(HEADLINE, headline_rows(report), "headline"),
        "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in report["findings"]) + "</ul>",
        "<h2>Accuracy against cost: counted and measured</h2>",
        _img("accuracy", images["accuracy"], "top-1 vs GFLOPs, latency and served throughput"),
        "<h2>Roofline</h2>",
        _img("roofline", images["roofline"], "achieved GFLOP/s vs arithmetic intensity"),
        "<h2>Per layer</h2>",
    ]
    for arch in report["architectures"]:
        rows = [
            [
                layer["name"], layer["type"], f"{layer['params']:,}", _fmt(2 * layer["macs"] / 1e6),
                _fmt(layer["activation_kb"], ",.0f"), _fmt(layer["ms"], ".3f"), _fmt(layer["gflops"], ".0f"),
            ]
            for layer in arch["layers"]
        ]  # fmt: skip
        parts += [
            f"<h3>{html.escape(arch['architecture'])}</h3>",
            _img(
                f"layers-{arch['architecture']}",
                images[f"layers-{arch['architecture']}"],
                "FLOP vs time share",
            ),
            f"<p>unmapped profiler time: {100 * arch['unmapped_share']:.1f}%</p>",
            "<details><summary>the lecture's table, with measured time</summary>",
            _table(
                ["layer", "type", "params", LAYER_MFLOPS, "memory KB", "ms (b1)", "GFLOP/s"], rows, "layers"
            ),
            "</details>",
        ]
    parts += [CHECK, "</body></html>"]
    return "\n".join(parts)


def write(report: dict, output: Path) -> dict[str, Path]:
    """JSON, every chart as a PNG, and the HTML with the charts inside; each written atomically."""
    import json

    images = charts(report)
    written = {"json": output.with_suffix(".json"), "html": output.with_suffix(".html")}
    atomic_write_text(written["json"], json.dumps(report, indent=2) + "\n")
    for name, data in images.items():
        path = output.parent / f"{output.stem}-{name}.png"
        atomic_write_bytes(path, data)
        written[name] = path
    atomic_write_text(written["html"], render_html(report, images))
    return written
