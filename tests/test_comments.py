"""Comments say why, not history: no comment or docstring in the code tells the story of the work.

Figures and how they moved belong in docs/benchmarks.md, generated from the JSON reports; a comment
keeps the reason and, where useful, a pointer to the figure. This scans every comment and docstring
of the Python sources (and the `#` comments of the deployment files) for the words of a work log.
No server, no imports of the code under scan: a few seconds.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("export", "serving", "clients", "cnn_deploy", "cnn_deploy_core", "tests")
# `#` comments of the files that build and deploy the product
DEPLOY_FILES = ("Makefile", "Dockerfile", "docker-compose.yml", "deploy")
SKIP = {".venv", "build", "__pycache__", "model_repository", "reports"}

# A work log's words. "session" only as the work's own (after this/previous/earlier/our): pytest's
# session fixtures, ONNX Runtime's InferenceSession and an HTTP or TLS session are legitimate.
HISTORY = re.compile(
    r"\bthis round\b"
    r"|\bround[- ]\d+\b"  # "round" and a number; not "round-robin"
    r"|\bin round\b(?!-)"
    r"|\blast (?:time|round|session)\b"
    r"|\b(?:this|previous|earlier|our) session\b"
    r"|\bissue \d+\b"  # the project's own tracker: the reason belongs in the comment itself
    r"|\btried and dropped\b",
    re.IGNORECASE,
)


def comment_lines(source: str) -> list[tuple[int, str]]:
    """(line number, text) of every comment and every docstring line of a Python source."""
    found = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for stmt in body:  # docstrings, and strings standing alone as comments (attribute docs)
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                if isinstance(stmt.value.value, str):
                    first, last = stmt.lineno, stmt.end_lineno or stmt.lineno
                    found += [(n, lines[n - 1]) for n in range(first, last + 1)]
    return sorted(set(found))


def history_lines(source: str) -> list[tuple[int, str]]:
    """The comment and docstring lines of a Python source that tell history, as (line, text)."""
    return [(n, text.strip()) for n, text in comment_lines(source) if HISTORY.search(text)]


def history_in_hash_comments(text: str) -> list[tuple[int, str]]:
    """The same for a file whose comments are `#` lines (Makefile, Dockerfile, YAML)."""
    return [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if "#" in line and HISTORY.search(line[line.index("#") :])
    ]


def _files(names: tuple[str, ...], pattern: str) -> list[Path]:
    out = []
    for name in names:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob(pattern)) if path.is_dir() else []
        out += [p for p in candidates if not SKIP & set(p.relative_to(ROOT).parts)]
    return out


def test_history_lines_says_no_to_a_work_log():
    planted = (
        '"""Serving.\n\nmeasured this round: 3.4x faster than round 2."""\n'
        "x = 1  # tried and dropped last time\n"
        "# (issue 21) kept from the previous session\n"
    )
    assert [n for n, _ in history_lines(planted)] == [3, 4, 5]


def test_history_lines_says_yes_to_reasons():
    legit = (
        '"""One ONNX Runtime InferenceSession per model; rounds alternate the runtimes."""\n'
        "# round-robin over the replicas; the ORT session of this model is built once\n"
        "# one real Triton server per pytest session; an aiohttp session per transport\n"
        "# the median of AB_ROUNDS rounds: a drift of the machine favours neither\n"
        'label = "this round"  # a string the code uses, not a comment\n'
    )
    assert history_lines(legit) == []


def test_history_in_hash_comments_reads_only_comments():
    assert history_in_hash_comments('echo "round 2"\n# fine\nrun: x  # see issue 7\n') == [
        (3, "run: x  # see issue 7")
    ]


def test_no_comment_or_docstring_tells_history():
    found = [
        f"{path.relative_to(ROOT)}:{n}: {text}"
        for path in _files(PACKAGES, "*.py")
        for n, text in history_lines(path.read_text())
    ]
    found += [
        f"{path.relative_to(ROOT)}:{n}: {text}"
        for path in _files(DEPLOY_FILES, "*.y*ml")
        for n, text in history_in_hash_comments(path.read_text())
    ]
    assert not found, "comments say why, not history (figures: docs/benchmarks.md):\n" + "\n".join(found)
