"""How two sets of logits are compared: shared by export verification and the clients.

numpy only (no torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TOP_K = 5


@dataclass(frozen=True)
class Comparison:
    """Result of comparing candidate logits with reference logits (rows = samples)."""

    samples: int
    max_abs_err: float
    max_rel_err: float
    top5_agreement: float  # mean |top5(got) ∩ top5(ref)| / 5
    top1_agreement: float
    within_tolerance: bool  # every element: |got - ref| <= atol + rtol * scale(row)
    top5_consistent: bool  # every label in top5(got) is a top-5 label of ref, up to the tolerance
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.within_tolerance and self.top5_consistent

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def topk(logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Indices of the k largest logits per row, largest first."""
    idx = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def compare(reference: np.ndarray, candidate: np.ndarray, *, atol: float, rtol: float) -> Comparison:
    """Compare logits element-wise and by top-5 labels; reports, never raises on mismatch."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape}, candidate {got.shape}")
    diff = np.abs(got - ref)
    # Relative to the row's logit scale (its largest |logit|), not element-wise: logits near
    # zero make element-wise relative error meaningless, and the scale differs by orders of
    # magnitude between trained and random weights.
    scale = np.maximum(np.abs(ref).max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    allowed = atol + rtol * scale
    k = min(TOP_K, ref.shape[1])
    ref_top, got_top = topk(ref, k), topk(got, k)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(ref_top, got_top, strict=False)]
    # A label outside the reference's top-5 still agrees when it ties with the 5th within the
    # tolerance (random-weight models produce near-ties that rounding may reorder).
    kth = np.take_along_axis(ref, ref_top[:, -1:], axis=1)
    got_ref_values = np.take_along_axis(ref, got_top, axis=1)
    return Comparison(
        samples=int(ref.shape[0]),
        max_abs_err=float(diff.max()),
        max_rel_err=float((diff / scale).max()),
        top5_agreement=float(np.mean(overlap)),
        top1_agreement=float(np.mean(ref_top[:, 0] == got_top[:, 0])),
        within_tolerance=bool(np.all(diff <= allowed)),
        top5_consistent=bool(np.all(got_ref_values >= kth - allowed)),
        atol=atol,
        rtol=rtol,
    )


# A verification is only as good as its reference's ability to tell inputs apart: a model whose
# output ignores its input (GoogLeNet with torchvision's init) passes any comparison. These bounds
# reject that; trained weights and our data-dependent random init clear them easily.
MIN_DISTINCT_TOP1 = 4
MIN_VARIATION = 0.1


@dataclass(frozen=True)
class Sensitivity:
    """Can these reference outputs (rows = inputs) tell inputs apart?"""

    inputs: int
    distinct_top1: int  # how many different top-1 classes the inputs get
    variation: float  # per-class std across inputs ÷ per-input std across classes (means)
    logit_scale: float  # mean over inputs of the largest |logit|
    min_distinct_top1: int = MIN_DISTINCT_TOP1
    min_variation: float = MIN_VARIATION

    @property
    def passed(self) -> bool:
        return self.distinct_top1 >= self.min_distinct_top1 and self.variation >= self.min_variation

    def describe(self) -> str:
        return (
            f"{self.distinct_top1} distinct top-1 over {self.inputs} inputs (need {self.min_distinct_top1}), "
            f"across-input variation {self.variation:.2g} of the within-output spread "
            f"(need {self.min_variation:g}), logit scale {self.logit_scale:.3g}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def sensitivity(outputs: np.ndarray) -> Sensitivity:
    """How much the outputs depend on the inputs; see :class:`Sensitivity`."""
    y = np.asarray(outputs, dtype=np.float64)
    if y.ndim != 2 or len(y) < 2:
        raise ValueError(f"need a batch of at least 2 outputs, got shape {list(y.shape)}")
    within = float(y.std(axis=1).mean())
    across = float(y.std(axis=0).mean())
    return Sensitivity(
        inputs=len(y),
        distinct_top1=len(set(y.argmax(axis=1).tolist())),
        variation=across / within if within > 0 else 0.0,
        logit_scale=float(np.abs(y).max(axis=1).mean()),
    )


def derived_tolerance(
    measured_rel_err: float,
    *,
    margin: float,
    atol: float,
    floor_rtol: float,
    ceiling_rtol: float | None = None,
) -> dict[str, float]:
    """A model's own tolerance: `margin` × its measured clean error (relative to the logit scale),
    kept within [floor_rtol, ceiling_rtol]. A tolerance far above the clean error lets damage
    through (a zeroed channel errs by ~10× the clean FP16 error); one at the clean error fails a
    correct runtime that merely rounds differently. Recorded in the golden set as it was derived."""
    if measured_rel_err < 0 or margin < 1:
        raise ValueError("the measured error must be >= 0 and the margin >= 1")
    rtol = max(margin * measured_rel_err, floor_rtol)
    if ceiling_rtol is not None:
        rtol = min(rtol, max(ceiling_rtol, floor_rtol))
    return {"atol": atol, "rtol": rtol, "measured_rel_err": measured_rel_err, "margin": margin}
