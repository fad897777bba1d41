import numpy as np
import pytest

from cnn_deploy_core.metrics import compare, topk


def test_topk_orders_largest_first():
    logits = np.array([[0.1, 0.9, 0.3, 0.7, 0.2, 0.8]])
    assert topk(logits, 3).tolist() == [[1, 5, 3]]


def test_identical_logits_pass_with_zero_error():
    x = np.random.default_rng(0).standard_normal((4, 1000)).astype(np.float32)
    c = compare(x, x.copy(), atol=0, rtol=0)
    assert c.passed and c.max_abs_err == 0 and c.top5_agreement == 1.0


def test_error_beyond_tolerance_fails_and_reports_the_size():
    ref = np.random.default_rng(0).standard_normal((2, 1000))
    got = ref.copy()
    got[1, 7] += 0.5
    c = compare(ref, got, atol=1e-3, rtol=1e-3)
    assert not c.within_tolerance and not c.passed
    assert c.max_abs_err == pytest.approx(0.5)


def test_relative_error_is_against_the_row_logit_scale():
    ref = np.array([[10.0, 0.0, 1.0, 2.0, 3.0, 4.0]])
    got = ref + np.array([[0.0, 0.01, 0.0, 0.0, 0.0, 0.0]])  # tiny vs the scale of 10
    c = compare(ref, got, atol=0, rtol=1e-2)
    assert c.max_rel_err == pytest.approx(1e-3)
    assert c.passed


def test_swapped_near_ties_at_the_fifth_place_still_agree():
    ref = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 5.0 - 1e-7, 0.0]])
    got = ref.copy()
    got[0, 5] = 5.0 + 1e-7  # rank 5 and 6 swap within tolerance
    c = compare(ref, got, atol=1e-5, rtol=0)
    assert c.top5_agreement == pytest.approx(0.8)
    assert c.top5_consistent and c.passed


def test_a_genuinely_different_label_breaks_top5_consistency():
    ref = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 1.0]])
    got = ref.copy()
    got[0, 5] = 10.0
    c = compare(ref, got, atol=1e-3, rtol=0)
    assert not c.top5_consistent and not c.passed
    assert c.top5_agreement == pytest.approx(0.8)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        compare(np.zeros((1, 10)), np.zeros((2, 10)), atol=0, rtol=0)
