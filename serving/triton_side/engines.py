#!/usr/bin/env python3
"""Build the TensorRT plans of a Triton model repository's `<name>_trt` models.

    python3 serving/triton_side/engines.py --repository /models [--trtexec PATH] [--force]
        [--dry-run] [--json]

For every `<name>_trt/engine.json` (written by `python -m serving repo NAME --tensorrt`) this
runs `trtexec` on the ONNX source with one optimization profile over batch 1..max_batch_size and
publishes `<name>_trt/<version>/model.plan` atomically (a temp file, then a rename). INT8 plans are
built by explicit quantization from the export's S8S8 QDQ graph (no calibration table). When the
engine.json names a `check` (a golden set and the tolerance in it), trtexec then runs the golden
inputs through the new plan, and a plan whose answers fall outside that tolerance is removed. A plan is
kept when it is newer than its ONNX source and was built with the same settings in the same
image, unless --force.

It must run inside the very Triton image that serves the plans: a TensorRT plan only loads in
the TensorRT version that built it (and on the GPU model it was built for). That image's own
`python3` has none of our packages, so this file uses the standard library only and keeps to
Python 3.8 syntax. docker-compose.yml runs it as the `engines` service.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path

ENGINE_FILE = "engine.json"
PLAN_FILE = "model.plan"
RECORD_FILE = "model.plan.json"  # the settings a plan was built with; Triton ignores it
LOG_FILE = "model.plan.log"  # trtexec's output for the last build
TRT_SUFFIX = "_trt"
# Where NVIDIA's images (Triton's included) install TensorRT's command-line tool.
DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
# int8: INT8 where the QDQ graph's nodes say so (explicit quantization), FP16 elsewhere.
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}
# Set by the Triton image (its build.py), so a plan records which release built it.
IMAGE_ENV = ("NVIDIA_TRITON_SERVER_VERSION", "TRITON_SERVER_VERSION", "TRT_VERSION")


class EngineError(Exception):
    """A user-facing failure; main() prints it as one line and exits non-zero."""


class TrtexecNotFound(EngineError):
    """No trtexec here: nothing can be built, so the run stops."""


@dataclass(frozen=True)
class EngineSpec:
    """One engine.json: what to build, from which ONNX file, with which shapes."""

    name: str  # the Triton model, e.g. resnet50_trt
    trt_dir: Path
    source: Path
    version: int
    input: str
    input_dims: tuple
    max_batch_size: int
    opt_batch_size: int
    precision: str
    golden: Path | None = None  # the golden set the built plan is checked against
    tolerance: str | None = None  # its entry that the plan is held to

    @classmethod
    def load(cls, path: Path) -> EngineSpec:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise EngineError(f"{path} is unreadable: {e}") from e
        if not isinstance(data, dict):
            raise EngineError(f"{path}: expected a JSON object")

        def field(key, kind, check=None, expected=""):
            value = data.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or (check and not check(value)):
                raise EngineError(f"{path}: '{key}' must be {expected}, got {value!r}")
            return value

        positive = "a positive integer"
        source = field("source", str, bool, "a path relative to the engine.json directory")
        version = field("version", int, lambda v: v >= 1, positive)
        name = field("input", str, bool, "the ONNX input name")
        dims = field(
            "input_dims",
            list,
            lambda v: v and all(type(d) is int and d > 0 for d in v),
            "a list of positive integers (the shape without the batch dimension)",
        )
        max_batch = field("max_batch_size", int, lambda v: v >= 1, positive)
        opt_batch = field(
            "opt_batch_size",
            int,
            lambda v: 1 <= v <= max_batch,
            f"an integer from 1 to max_batch_size ({max_batch})",
        )
        precision = field(
            "precision", str, lambda v: v in PRECISION_FLAGS, "one of " + ", ".join(PRECISION_FLAGS)
        )
        trt_dir = path.parent.resolve()
        check = data.get("check")
        if check is not None and not (
            isinstance(check, dict)
            and all(isinstance(check.get(k), str) and check[k] for k in ("golden", "tolerance"))
        ):
            raise EngineError(
                f'{path}: \'check\' must be {{"golden": PATH, "tolerance": NAME}}, got {check!r}'
            )
        return cls(
            name=trt_dir.name,
            trt_dir=trt_dir,
            source=(trt_dir / source).resolve(),
            version=version,
            input=name,
            input_dims=tuple(dims),
            max_batch_size=max_batch,
            opt_batch_size=opt_batch,
            precision=precision,
            golden=(trt_dir / check["golden"]).resolve() if check else None,
            tolerance=check["tolerance"] if check else None,
        )

    @property
    def version_dir(self) -> Path:
        return self.trt_dir / str(self.version)

    @property
    def plan(self) -> Path:
        return self.version_dir / PLAN_FILE

    def shape(self, batch: int) -> str:
        return f"{self.input}:" + "x".join(str(d) for d in (batch, *self.input_dims))

    def settings(self) -> dict:
        """What a plan depends on besides its source file: compared with the plan's record."""
        image = {k: os.environ[k] for k in IMAGE_ENV if k in os.environ}
        return {
            "source": os.path.relpath(self.source, self.trt_dir),
            "input": self.input,
            "input_dims": list(self.input_dims),
            "max_batch_size": self.max_batch_size,
            "opt_batch_size": self.opt_batch_size,
            "precision": self.precision,
            "image": image,
        }


@dataclass
class Result:
    model: str
    version: int | None
    status: str  # built | current | planned | failed
    seconds: float = 0.0
    plan: str = ""
    detail: str = ""


def discover(repository: Path) -> list[Path]:
    """Every `<name>_trt/engine.json` in the repository, by model name."""
    if not repository.is_dir():
        raise EngineError(f"model repository {repository} does not exist (mount it, or export first)")
    return sorted(p for p in repository.glob(f"*{TRT_SUFFIX}/{ENGINE_FILE}") if p.is_file())


def find_trtexec(explicit: str | None = None) -> str:
    """--trtexec, else `trtexec` on PATH, else TensorRT's install location in NVIDIA's images."""
    candidates = [explicit] if explicit else [shutil.which("trtexec"), DEFAULT_TRTEXEC]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    tried = explicit if explicit else f"PATH and {DEFAULT_TRTEXEC}"
    raise TrtexecNotFound(
        f"trtexec not found (tried {tried}); run this inside the Triton image that "
        "serves the plans (`docker compose run --rm --no-deps engines`) "
        "or pass --trtexec PATH"
    )


def trtexec_command(spec: EngineSpec, trtexec: str, output: Path) -> list[str]:
    """The trtexec call: the ONNX source, one profile over batch 1..max, the precision flags."""
    return [
        trtexec,
        f"--onnx={spec.source}",
        f"--saveEngine={output}",
        f"--minShapes={spec.shape(1)}",
        f"--optShapes={spec.shape(spec.opt_batch_size)}",
        f"--maxShapes={spec.shape(spec.max_batch_size)}",
        *PRECISION_FLAGS[spec.precision],
        "--skipInference",  # build and save; no benchmark run
    ]


def is_current(spec: EngineSpec) -> bool:
    """The plan exists, is newer than its source, and was built with the same settings."""
    try:
        if spec.plan.stat().st_mtime < spec.source.stat().st_mtime:
            return False
        record = json.loads((spec.version_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return False
    return record == spec.settings()


def _owned_like(path: Path, like: Path) -> None:
    """Running as root (the engines service), give new files the owner of their directory."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        st = like.stat()
        os.chown(path, st.st_uid, st.st_gid)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _failure_line(log: Path) -> str:
    """The most telling line of a trtexec log: its last error, else its last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "[E]" in ln or "error" in ln.lower()]
    return (errors or lines or [""])[-1][:300]


def build(spec: EngineSpec, trtexec: str) -> Result:
    """Run trtexec into a temp file beside the plan, then rename it into place."""
    new_dir = not spec.version_dir.exists()
    spec.version_dir.mkdir(parents=True, exist_ok=True)
    if new_dir:
        _owned_like(spec.version_dir, spec.trt_dir)
    tmp = spec.version_dir / f".{PLAN_FILE}.{os.getpid()}.tmp"
    log = spec.version_dir / LOG_FILE
    cmd = trtexec_command(spec, trtexec, tmp)
    start = time.monotonic()
    try:
        with open(log, "w") as out:
            out.write(" ".join(cmd) + "\n")
            out.flush()
            code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
        _owned_like(log, spec.trt_dir)
        if code != 0:
            raise EngineError(f"trtexec exited with {code}: {_failure_line(log)} (full log: {log})")
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise EngineError(f"trtexec exited 0 but wrote no plan (full log: {log})")
        _owned_like(tmp, spec.trt_dir)
        os.replace(tmp, spec.plan)
    finally:
        if tmp.exists():
            tmp.unlink()
    record = spec.version_dir / RECORD_FILE
    _write_atomic(record, json.dumps(spec.settings(), indent=2) + "\n")
    _owned_like(record, spec.trt_dir)
    return Result(spec.name, spec.version, "built", time.monotonic() - start, str(spec.plan))


def _npy(data: bytes, name: str) -> tuple[str, tuple, bytes]:
    """(dtype, shape, raw C-order bytes) of one .npy file (numpy's format 1.0 to 3.0)."""
    if data[:6] != b"\x93NUMPY":
        raise EngineError(f"{name} is not a .npy array")
    if data[6] == 1:
        size, start = struct.unpack("<H", data[8:10])[0], 10
    else:
        size, start = struct.unpack("<I", data[8:12])[0], 12
    header = ast.literal_eval(data[start : start + size].decode("latin1"))
    if header.get("fortran_order"):
        raise EngineError(f"{name}: Fortran-ordered arrays are not read here")
    return header["descr"], tuple(header["shape"]), data[start + size :]


def read_golden(path: Path) -> dict:
    """A golden set (cnn_deploy_core/golden.py's .npz) with the standard library only: inputs as raw
    float32 bytes and their shape, outputs as rows of floats, and the tolerances."""
    try:
        with zipfile.ZipFile(path) as z:
            arrays = {
                n: _npy(z.read(n + ".npy"), f"{path.name}:{n}") for n in ("inputs", "outputs", "header")
            }
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise EngineError(f"golden set {path} is unreadable: {e}") from e
    for n in ("inputs", "outputs"):
        if arrays[n][0] != "<f4":
            raise EngineError(f"golden set {path}: {n} are {arrays[n][0]}, expected float32 (<f4)")
    values = array("f")
    values.frombytes(arrays["outputs"][2])
    rows, classes = arrays["outputs"][1]
    return {
        "input_shape": arrays["inputs"][1],
        "input_bytes": arrays["inputs"][2],
        "outputs": [values[i * classes : (i + 1) * classes].tolist() for i in range(rows)],
        "tolerances": json.loads(arrays["header"][2].decode())["tolerances"],
    }


def check_command(spec: EngineSpec, trtexec: str, batch: int, inputs: Path, outputs: Path) -> list[str]:
    """trtexec running the golden inputs once through the built plan, its outputs written as JSON."""
    return [
        trtexec,
        f"--loadEngine={spec.plan}",
        f"--shapes={spec.shape(batch)}",
        f"--loadInputs={spec.input}:{inputs}",
        f"--exportOutput={outputs}",
        "--iterations=1",
        "--warmUp=0",
        "--duration=0",
    ]


def judge_outputs(reference: list, got: list, atol: float, rtol: float) -> tuple[float, bool]:
    """(max error relative to each row's logit scale, every element within atol + rtol * scale):
    the rule of cnn_deploy_core.metrics.compare, in the standard library."""
    worst, ok = 0.0, len(reference) == len(got)
    for ref, out in zip(reference, got):  # noqa: B905 - Python 3.8 has no strict=
        scale = max(max(abs(v) for v in ref), 1e-30)
        same = len(ref) == len(out)
        diff = max(abs(a - b) for a, b in zip(ref, out)) if same else float("inf")  # noqa: B905
        worst = max(worst, diff / scale)
        ok = ok and diff <= atol + rtol * scale
    return worst, ok


def check_plan(spec: EngineSpec, trtexec: str) -> str:
    """Run the golden inputs through the new plan; EngineError when its answers are out of tolerance."""
    golden = read_golden(spec.golden)
    tol = golden["tolerances"].get(spec.tolerance)
    if tol is None:
        raise EngineError(f"{spec.golden.name} has no {spec.tolerance!r} tolerance (re-run the export)")
    shape = golden["input_shape"]
    batch = min(shape[0], spec.max_batch_size)
    per_row = len(golden["input_bytes"]) // shape[0]
    inputs, outputs = spec.version_dir / ".check-inputs.bin", spec.version_dir / ".check-outputs.json"
    try:
        inputs.write_bytes(golden["input_bytes"][: batch * per_row])
        log = subprocess.run(
            check_command(spec, trtexec, batch, inputs, outputs), capture_output=True, text=True
        )
        if log.returncode != 0:
            tail = (log.stdout + log.stderr).strip()[-300:]
            raise EngineError(f"trtexec could not run the plan on the golden inputs: {tail}")
        (first,) = json.loads(outputs.read_text())[:1]
        values = [float(v) for v in first["values"]]
    finally:
        for path in (inputs, outputs):
            if path.exists():
                path.unlink()
    classes = len(values) // batch
    got = [values[i * classes : (i + 1) * classes] for i in range(batch)]
    worst, ok = judge_outputs(golden["outputs"][:batch], got, float(tol["atol"]), float(tol["rtol"]))
    rtol = float(tol["rtol"])
    verdict = f"max rel err {worst:.2e} vs rtol {rtol:.2e} ({spec.golden.name}, {spec.tolerance})"
    if not ok:
        raise EngineError(f"the plan's answers are beyond the tolerance: {verdict}")
    return f"checked on {batch} golden inputs: {verdict}"


def prepare_cache(cache_dir: Path, owner: str) -> None:
    """Make the ONNX Runtime TensorRT engine cache writable for the (non-root) server user."""
    try:
        uid, gid = (int(x) for x in owner.split(":"))
    except ValueError:
        raise EngineError(f"--cache-owner must be UID:GID, got {owner!r}") from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    st = cache_dir.stat()
    if (st.st_uid, st.st_gid) == (uid, gid):
        return
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        raise EngineError(
            f"{cache_dir} is owned by {st.st_uid}:{st.st_gid}, not {owner}; run as root to fix it"
        )
    os.chown(cache_dir, uid, gid)


def run(
    repository: Path, *, trtexec: str | None = None, force: bool = False, dry_run: bool = False, progress=None
) -> list[Result]:
    """Plan and build every engine; a failed model is reported and the others still build."""
    progress = progress or (lambda msg: None)
    results, tool = [], None
    for path in discover(repository):
        name, version = path.parent.name, None
        try:
            spec = EngineSpec.load(path)
            version = spec.version
            if not spec.source.is_file():
                raise EngineError(f"ONNX source {spec.source} does not exist (re-run the export)")
            if not force and is_current(spec):
                results.append(Result(name, spec.version, "current", plan=str(spec.plan)))
                continue
            if tool is None and dry_run:
                tool = trtexec or shutil.which("trtexec") or DEFAULT_TRTEXEC
            elif tool is None:
                tool = find_trtexec(trtexec)
            if dry_run:
                cmd = trtexec_command(spec, tool, spec.version_dir / f".{PLAN_FILE}.tmp")
                results.append(
                    Result(name, spec.version, "planned", plan=str(spec.plan), detail=" ".join(cmd))
                )
                continue
            progress(
                f"building {name} v{spec.version} ({spec.precision}, batch 1..{spec.max_batch_size}, "
                f"opt {spec.opt_batch_size}) from {spec.source}"
            )
            result = build(spec, tool)
            if spec.golden is not None:
                try:
                    result.detail = check_plan(spec, tool)
                except EngineError:
                    # never served, and rebuilt on the next run
                    for path in (spec.plan, spec.version_dir / RECORD_FILE):
                        if path.exists():
                            path.unlink()
                    raise
            results.append(result)
        except TrtexecNotFound:
            raise
        except EngineError as e:
            results.append(Result(name, version, "failed", detail=str(e)))
    return results


def summary(results: list[Result]) -> str:
    rows = [("model", "version", "result", "seconds", "plan")]
    rows += [
        (
            r.model,
            str(r.version or "-"),
            r.status,
            f"{r.seconds:.0f}" if r.status == "built" else "-",
            r.plan or "-",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(row[i].ljust(widths[i]) for i in range(len(row))).rstrip() for row in rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engines.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, required=True, help="the Triton model repository")
    p.add_argument(
        "--trtexec", default=None, help=f"trtexec to use (default: on PATH, else {DEFAULT_TRTEXEC})"
    )
    p.add_argument("--force", action="store_true", help="rebuild plans that are up to date")
    p.add_argument("--dry-run", action="store_true", help="print the trtexec commands, build nothing")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="also create this ONNX Runtime TensorRT cache directory, owned by --cache-owner",
    )
    p.add_argument(
        "--cache-owner",
        default="1000:1000",
        help="UID:GID of the server user (default 1000:1000, the Triton image's triton-server)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def progress(msg: str) -> None:
        print(f"engines: {msg}", file=sys.stderr, flush=True)

    try:
        if args.cache_dir is not None:
            prepare_cache(args.cache_dir, args.cache_owner)
        results = run(
            args.repository, trtexec=args.trtexec, force=args.force, dry_run=args.dry_run, progress=progress
        )
    except EngineError as e:
        print(f"engines: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("engines: interrupted", file=sys.stderr)
        return 130
    if not results:
        progress(
            f"no *{TRT_SUFFIX}/{ENGINE_FILE} in {args.repository}: nothing to build "
            "(`python -m serving repo NAME --tensorrt` adds TensorRT models)"
        )
    for r in results:
        if r.status == "failed":
            print(f"engines: error: {r.model}: {r.detail}", file=sys.stderr)
        elif r.status == "planned":
            print(r.detail)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    elif results:
        print(summary(results), file=sys.stderr if args.dry_run else sys.stdout)
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
