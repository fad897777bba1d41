"""`python -m export build|analyze|compare|benchmark`: thin commands over public functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.table import Table

from cnn_deploy_core import paths, registry
from cnn_deploy_core.console import dispatch, error, stderr, stdout
from cnn_deploy_core.fsutil import ensure_writable_dir
from export import ExportError


def _archs_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("architectures", nargs="*", metavar="ARCH", help=f"one of: {', '.join(registry.names())}")
    p.add_argument("--all", action="store_true", help="every registered architecture")
    return p


def _json_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build", parents=[_archs_parent(), _json_parent()], help="export, optimize and verify ONNX models"
    )
    b.add_argument(
        "--weights",
        default="random",
        help="'imagenet' (torchvision's published weights; needs network or the torch hub cache), "
        "'random' (seeded; default) or a path to a state_dict checkpoint",
    )
    b.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    b.add_argument(
        "--output", type=Path, default=None, help="output directory (default build/models in the project)"
    )
    b.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip the FP16 variant")
    b.add_argument("--keep-raw", action="store_true", help="also keep the unoptimized graph (model.raw.onnx)")
    b.add_argument(
        "--int8",
        action="store_true",
        help="also an INT8 model (static QDQ quantization), kept only if it passes the accuracy guard",
    )
    b.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --int8: more calibration images (JPEG/PNG/WebP/BMP), beside the seeded sample photos",
    )

    a = sub.add_parser("analyze", parents=[_json_parent()], help="the lecture's per-layer table")
    a.add_argument("architecture", metavar="ARCH")
    a.add_argument(
        "--input-size",
        type=int,
        default=224,
        help="square input side; the lecture's AlexNet uses 227 (default 224, torchvision's)",
    )

    c = sub.add_parser(
        "compare", parents=[_json_parent()], help="params, GFLOPs, memory and accuracy side by side"
    )
    c.add_argument(
        "--plot", type=Path, default=None, metavar="FILE.png", help="write the cost/accuracy chart"
    )
    c.add_argument(
        "--models", type=Path, default=None, help="export directory, for ONNX sizes (default build/models)"
    )

    sens = sub.add_parser(
        "sensitivity",
        parents=[_archs_parent(), _json_parent()],
        help="can verification fail? how much the outputs depend on the golden inputs",
    )
    sens.add_argument("--weights", default="random", help="random (default), imagenet or a checkpoint path")
    sens.add_argument("--seed", type=int, default=0, help="seed for --weights random")

    bench = sub.add_parser(
        "benchmark",
        parents=[_archs_parent(), _json_parent()],
        help="PyTorch eager vs ONNX Runtime (unoptimized and optimized graph)",
    )
    bench.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: PyTorch eager vs ONNX Runtime; cuda: every GPU backend installed here, side by side "
        "(PyTorch eager, ONNX Runtime CUDA and TensorRT FP16/INT8, a TensorRT plan; exit 2 without a GPU)",
    )
    bench.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    bench.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="intra-op threads for both runtimes"
    )
    bench.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="measuring time per configuration, split over 3 interleaved rounds",
    )
    bench.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON report path (default reports/export-benchmark.json in the project)",
    )
    return parser


def cmd_build(args: argparse.Namespace) -> int:
    from export.build import build_all

    archs = registry.resolve(args.architectures, all_=args.all)
    jobs = build_all(
        archs,
        weights=args.weights,
        seed=args.seed,
        output=args.output or paths.models_dir(),
        fp16=args.fp16,
        keep_raw=args.keep_raw,
        int8=args.int8,
        calibration=args.calibration,
        console=stderr,
        debug=args.debug,
    )
    ok = all(j.succeeded for j in jobs)
    if args.json:
        print(json.dumps([j.to_dict() for j in jobs], indent=2))
    else:
        stdout.print(_summary_table(jobs))
    if not ok:
        for j in jobs:
            if not j.succeeded:
                error(f"{j.arch.name}: {j.error}")
    return 0 if ok else 1


def _summary_table(jobs) -> Table:
    from cnn_deploy_core.steps import Status

    table = Table(
        title="export summary",
        caption="rel err: max |ONNX Runtime - PyTorch| / logit scale, "
        "over random batches of 1, 2 and max and the sample photos; top5: label agreement",
    )
    int8 = any(j.int8 for j in jobs)
    columns = ["model", "result", "graph (nodes, size)", "fp32 vs PyTorch", "fp16 vs PyTorch"]
    for col in (*columns, *(["int8 vs PyTorch (held out)"] if int8 else []), "time"):
        table.add_column(col)
    for j in jobs:
        result = "[green]OK[/]" if j.succeeded else f"[bold red]FAIL[/] at {j.error.split(':')[0]}"
        graph = fp32 = fp16 = ""
        if j.optimized_stats:
            graph = (
                f"{j.raw_stats.nodes}->{j.optimized_stats.nodes}, {j.optimized_stats.size_bytes / 1e6:.0f} MB"
            )
        for precision, cell in (("fp32", 0), ("fp16", 1)):
            rs = j.verification.get(precision)
            if rs:
                worst = max(r.comparison.max_rel_err for r in rs)
                top5 = min(r.comparison.top5_agreement for r in rs)
                ok = all(r.comparison.passed for r in rs)
                text = f"{'[green]pass[/]' if ok else '[red]fail[/]'} rel err {worst:.1e} top5 {top5:.0%}"
                if cell == 0:
                    fp32 = text
                else:
                    fp16 = text
        if j.status_of("fp16") is Status.SKIPPED and j.succeeded:
            fp16 = "skipped"
        seconds = sum(r.seconds for r in j.results)
        cells = [j.arch.name, result, graph, fp32, fp16]
        if int8:
            acc = j.int8_accuracy
            text = "" if acc is None else f"top-1 {acc.top1_agreement:.0%} cos {acc.min_cosine:.3f}"
            ok = j.status_of("int8") is Status.OK
            cells.append(
                f"{'[green]pass[/]' if ok else '[red]fail[/]'} {text}"
                if acc
                else str(j.status_of("int8") or "")
            )
        table.add_row(*cells, f"{seconds:.0f}s")
    return table


def cmd_analyze(args: argparse.Namespace) -> int:
    from export.analysis import analyze, render_table

    result = analyze(registry.get(args.architecture), input_size=args.input_size)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        stdout.print(render_table(result))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from export.comparison import compare_architectures, plot, render_table

    if args.plot is not None:  # fail before minutes of analysis, not after
        ensure_writable_dir(args.plot.parent)
    models = args.models or paths.models_dir()
    rows = compare_architectures(list(registry.ARCHITECTURES.values()), models_dir=models)
    if args.plot is not None:
        plot(rows, args.plot)
        stderr.print(f"chart written to {args.plot}")
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        stdout.print(render_table(rows))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from export.benchmark import run_benchmark

    archs = registry.resolve(args.architectures, all_=args.all)
    try:
        sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        raise ExportError(
            f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}"
        ) from None
    output = args.output or paths.reports_dir() / (
        "export-benchmark-cuda.json" if args.device == "cuda" else "export-benchmark.json"
    )
    if args.device == "cuda":
        from export.benchmark_gpu import NO_DEVICE_EXIT, NoCudaDevice, run_benchmark_cuda

        try:
            run_benchmark_cuda(
                archs, batch_sizes=sizes, seconds=args.seconds, output=output, as_json=args.json,
                out=stdout, console=stderr,
            )  # fmt: skip
        except NoCudaDevice as e:
            error(str(e))
            return NO_DEVICE_EXIT
        return 0
    run_benchmark(
        archs,
        batch_sizes=sizes,
        threads=args.threads,
        seconds=args.seconds,
        output=output,
        as_json=args.json,
        console=stderr,
        out=stdout,
    )
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from export.verify import measure_sensitivity

    rows = []
    for arch in registry.resolve(args.architectures, all_=args.all):
        inits = (False, True) if args.weights == "random" else (True,)
        for calibrate in inits:
            result = measure_sensitivity(arch, args.weights, seed=args.seed, calibrate=calibrate)
            init = (
                ("data-dependent" if calibrate else "torchvision")
                if args.weights == "random"
                else "as loaded"
            )
            rows.append(
                {"architecture": arch.name, "weights": args.weights, "init": init, **result.to_dict()}
            )
            stderr.print(f"{arch.name} ({init}): {result.describe()}", highlight=False)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"can verification fail? outputs on the golden inputs ({args.weights} weights)")
        for col in ("model", "init", "inputs", "distinct top-1", "variation", "logit scale", "guard"):
            table.add_column(col, justify="left" if col in ("model", "init", "guard") else "right")
        for r in rows:
            table.add_row(
                r["architecture"],
                r["init"],
                str(r["inputs"]),
                str(r["distinct_top1"]),
                f"{r['variation']:.2g}",
                f"{r['logit_scale']:.3g}",
                "[green]pass[/]" if r["passed"] else "[red]fail[/]",
            )
        table.caption = (
            "variation: per-class std across inputs ÷ per-input std across classes; "
            "the guard needs >= 4 distinct top-1 and variation >= 0.1"
        )
        stdout.print(table)
    return 0


COMMANDS = {
    "sensitivity": cmd_sensitivity,
    "build": cmd_build,
    "analyze": cmd_analyze,
    "compare": cmd_compare,
    "benchmark": cmd_benchmark,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch(COMMANDS, args)


if __name__ == "__main__":
    sys.exit(main())
