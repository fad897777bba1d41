"""The load test's exit code: what cnn_deploy_core.judge found in the report, as a number.

Exit codes (`python -m clients loadtest --help` shows them):
  0   every objective held (see EXIT_CODES_HELP)
  1   the run failed, or the test could not run (bad settings, server unreachable, unknown model)
  2   bad command-line usage (argparse)
  99  the run was sound but missed a latency objective (--p99-ms), as k6 exits 99 for a missed threshold
  130 interrupted
"""

from __future__ import annotations

from cnn_deploy_core.judge import Problem, only_latency

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SLO_MISSED = 99
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0    every objective held: no failed request (warm-up included), no wrong answer, every answer
       verified, no dropped request, every replica answered with none failed over away from it,
       something measured; p99 within --p99-ms (--max-error-rate, --max-wrong, --max-dropped,
       --tolerate-replica-loss and --no-verify relax them)
  1    the run failed: one of those did not hold (the report lists each problem in one line), or
       the test could not run
  2    bad command-line usage
  99   the run was sound but missed the latency objective (--p99-ms), like k6's missed threshold
  130  interrupted"""


def exit_code(found: list[Problem]) -> int:
    """0: no problem; 99: only a latency objective was missed; 1: anything else."""
    if not found:
        return EXIT_OK
    return EXIT_SLO_MISSED if only_latency(found) else EXIT_FAILED
