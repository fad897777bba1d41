"""A pipeline of small named steps, each ending OK / FAIL / SKIPPED (model_navigator's shape).

A required step's failure stops the run; later steps are marked SKIPPED. torch-free.
"""

from __future__ import annotations

import enum
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cnn_deploy_core import CnnDeployError

Ctx = TypeVar("Ctx")


class Status(enum.StrEnum):
    OK = "OK"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class Step(Generic[Ctx]):
    name: str
    run: Callable[[Ctx], str]  # returns a one-line detail for the summary
    required: bool = True


@dataclass
class StepResult:
    name: str
    status: Status
    detail: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "step": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def run_steps(
    steps: list[Step[Ctx]],
    ctx: Ctx,
    *,
    on_start: Callable[[Step[Ctx]], None] = lambda step: None,
    on_finish: Callable[[StepResult], None] = lambda result: None,
    user_errors: tuple[type[BaseException], ...] = (CnnDeployError,),
    debug: bool = False,
) -> list[StepResult]:
    """Run steps in order; user errors become FAIL with their message, not a traceback."""
    results: list[StepResult] = []
    stopped = False
    for step in steps:
        if stopped:
            results.append(StepResult(step.name, Status.SKIPPED, "an earlier required step failed"))
            on_finish(results[-1])
            continue
        on_start(step)
        start = time.perf_counter()
        try:
            detail = step.run(ctx)
            status = Status.OK
        except SkipStep as e:
            detail, status = str(e), Status.SKIPPED
        except user_errors as e:  # the message is written for the user: show it as is
            detail, status = str(e), Status.FAIL
        except Exception as e:  # an unexpected bug: still one line, the trace only on --debug
            detail, status = f"{e.__class__.__name__}: {e}", Status.FAIL
            if debug:
                traceback.print_exc()
        results.append(StepResult(step.name, status, detail or "", time.perf_counter() - start))
        on_finish(results[-1])
        if status is Status.FAIL and step.required:
            stopped = True
    return results


def succeeded(results: list[StepResult]) -> bool:
    return all(r.status is not Status.FAIL for r in results)


class SkipStep(Exception):
    """Raised by a step that does not apply to this run (e.g. FP16 turned off)."""
