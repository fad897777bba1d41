"""`python -m clients infer|verify|loadtest`: thin commands over the client library."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from rich.table import Table

from clients import ClientError
from clients.aio import PREPROCESS_CHOICES
from clients.endpoints import add_url_argument, url_from_args
from clients.keys import add_admin_key_argument, add_key_argument
from cnn_deploy_core import paths
from cnn_deploy_core.console import dispatch, error, stderr, stdout


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add_url_argument(p)
    add_key_argument(p)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument(
        "--retries", type=int, default=2, help="retries, with backoff, when the server is unreachable"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return p


def build_parser() -> argparse.ArgumentParser:
    from clients.loadtest import cli as loadtest_cli

    parser = argparse.ArgumentParser(prog="python -m clients", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = _common()

    i = sub.add_parser("infer", parents=[common], help="classify image files")
    i.add_argument("--model", required=True)
    i.add_argument("images", nargs="+", metavar="IMAGE", type=Path, help="JPEG/PNG files")
    i.add_argument("--top-k", type=int, default=5)
    i.add_argument("--version", default="", help="model version (default: the server's default, the newest)")
    i.add_argument(
        "--preprocess",
        choices=PREPROCESS_CHOICES,
        default="auto",
        help="server: send the encoded files to MODEL_image; client: preprocess here and send tensors; "
        "auto (default): the server when it serves MODEL_image",
    )

    v = sub.add_parser("verify", parents=[common], help="check the served answers against the golden sets")
    v.add_argument(
        "--model",
        action="extend",
        nargs="+",
        dest="models",
        metavar="NAME",
        help="models to verify (default: every model the server's repository configures, from "
        "Triton's repository index: one that is not READY fails with Triton's reason; needs the admin key)",
    )
    v.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="where the golden sets are: REPO/<model>/<version>/golden.npz, or the file the served "
        "config names (cnn_deploy.golden) (default: model_repository in the project)",
    )
    add_admin_key_argument(v, why="to list every model of the server (Triton's repository index)")
    v.add_argument(
        "--once-per-start",
        type=Path,
        default=None,
        metavar="MARKER",
        help="a health check's mode: verify fully, then record this server start in MARKER; later runs "
        "only check that the server is ready and has not restarted or reloaded a model since (its "
        "inference counts never went down), and verify again when it has",
    )

    loadtest_cli.add_parser(sub)  # its own options: --url, --timeout and --json included
    return parser


def _client(args):
    from clients.endpoints import parse_urls
    from clients.keys import inference_headers
    from clients.sync import TritonClient
    from clients.tls import tls_from_args

    headers = inference_headers(args.key_file, parse_urls(args.url), warn=_warn)
    return TritonClient(
        args.url, timeout=args.timeout, retries=args.retries, tls=tls_from_args(args), headers=headers
    )


def cmd_infer(args) -> int:
    if args.top_k < 1:
        raise ClientError("--top-k must be >= 1")
    with _client(args) as client:
        info = client.model_info(args.model, args.version)
        predictions = client.classify(
            args.model, args.images, top_k=args.top_k, version=args.version, preprocess=args.preprocess
        )
        on_server = args.preprocess != "client" and not args.version and client.image_model(args.model)
    where = f"on the server ({on_server})" if on_server else "here, in the client"
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "image": str(img),
                        "preprocessed": "server" if on_server else "client",
                        "predictions": [p.__dict__ for p in preds],
                    }
                    for img, preds in zip(args.images, predictions, strict=False)
                ],
                indent=2,
            )
        )
    else:
        version = args.version or info.latest_version
        source = info.weights_source(version) or "unknown weights"
        table = Table(title=f"{args.model} v{version} at {args.url} ({source}); preprocessed {where}")
        for col in ("image", "rank", "label", "class", "score"):
            table.add_column(col, justify="right" if col in ("rank", "class", "score") else "left")
        for img, preds in zip(args.images, predictions, strict=False):
            for rank, p in enumerate(preds, 1):
                table.add_row(
                    img.name if rank == 1 else "", str(rank), p.label, str(p.index), f"{p.score:.4f}"
                )
        stdout.print(table)
    if info.weights_random(args.version or None):
        stderr.print(f"[yellow]note:[/] {args.model} serves RANDOM weights: the labels are meaningless")
    return 0


def cmd_verify(args) -> int:
    from clients.endpoints import parse_urls
    from clients.keys import admin_key
    from clients.verify import FAIL, verify, verify_once

    repository = args.repository or paths.repository()
    key = None
    if not args.models:
        key = admin_key(args.admin_key_file, parse_urls(args.url), warn=_warn)
    with _client(args) as client:
        if args.once_per_start:
            results, held = verify_once(client, args.models, repository, args.once_per_start, admin_key=key)
            if held:
                stdout.print(f"ready, and verified since it started ({args.once_per_start})")
                return 0
        else:
            results = verify(client, args.models, repository, admin_key=key)
        ready = client.server_ready() if args.once_per_start else True
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        table = Table(title=f"verify {args.url} against the golden sets in {repository}")
        for col in (
            "model",
            "version",
            "precision",
            "samples",
            "max abs err",
            "max rel err",
            "top-5",
            "result",
        ):
            table.add_column(col)
        for r in results:
            c = r.comparison
            cells = (
                [f"{c.max_abs_err:.2e}", f"{c.max_rel_err:.2e}", f"{c.top5_agreement:.0%}"]
                if c
                else ["", "", ""]
            )
            verdict = {
                "PASS": "[green]PASS[/]",
                "SKIP": f"[yellow]SKIP[/] {r.skipped}",
                "FAIL": f"[bold red]FAIL[/] {r.error or ''}",
            }[r.status]
            table.add_row(r.model, r.version, r.precision, str(r.samples), *cells, verdict)
        stdout.print(table)
    failed = [r.model for r in results if r.status == FAIL]
    if failed:
        error(f"verification failed for {', '.join(dict.fromkeys(failed))}")
        return 1
    if not ready:
        error(f"every model passed, but the server at {args.url} is not ready")
        return 1
    return 0


def _warn(message: str) -> None:
    stderr.print(message, markup=False, highlight=False)


def cmd_loadtest(args) -> int:
    from clients.loadtest import cli as loadtest_cli

    return loadtest_cli.run(args)


COMMANDS = {"infer": cmd_infer, "verify": cmd_verify, "loadtest": cmd_loadtest}


def main(argv: list[str] | None = None) -> int:
    # gRPC core logs a failed TLS handshake at INFO on stderr before we can say it in one line;
    # read when gRPC starts, so set before the first channel (the user's own setting wins).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "clients", *argv])  # recorded in reports

    def run(args) -> int:
        args.url = url_from_args(args.url)  # one comma-separated string; a bad URL is a user error
        return COMMANDS[args.command](args)

    return dispatch({args.command: run}, args)


if __name__ == "__main__":
    sys.exit(main())
