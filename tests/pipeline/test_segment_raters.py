"""Several annotators (issue 12): simulated raters against the geometry they were drawn from,
majority vote and STAPLE against the truth, and the calibration error against closed forms."""

import numpy as np
import pytest

from pipeline.metrics import dice
from pipeline.segment.raters import (expected_calibration_error, majority_vote, simulate_raters, soft_consensus,
                                     staple)

SP = (0.5, 0.5, 0.5)


def _tube(radius_mm=3.0, shape=(20, 40, 40)):
    k, j, i = np.indices(shape, dtype=float)
    return ((j - 19.5) * SP[1]) ** 2 + ((i - 19.5) * SP[2]) ** 2 <= radius_mm ** 2


def test_a_rater_with_only_an_offset_draws_the_wall_that_far_out():
    """No local noise, a boundary offset b: the rater's tube has radius 3 + b (its section's
    equivalent radius within half a voxel, 0.25 mm); no offset reproduces the truth."""
    truth = _tube()
    (exact,) = simulate_raters(truth, SP, 1, bias_mm=0.0, local_mm=0.0)
    assert np.array_equal(exact, truth)
    offsets = (-1.0, -0.5, 0.5, 1.0)
    for b, m in zip(offsets, simulate_raters(truth, SP, 4, local_mm=0.0, offsets_mm=offsets)):
        radius = np.sqrt(m[10].sum() * SP[1] * SP[2] / np.pi)
        assert radius == pytest.approx(3.0 + b, abs=0.5 * SP[1]), b


def test_staple_weighs_good_raters_above_bad_ones():
    """Two careful raters (0.1 mm) and three careless ones (1 mm bias, 0.8 mm local noise):
    STAPLE rates the careful ones higher, and its consensus is at least as close to the truth
    as the majority vote."""
    truth = _tube()
    good = simulate_raters(truth, SP, 2, seed=1, bias_mm=0.1, local_mm=0.1)
    bad = simulate_raters(truth, SP, 3, seed=2, bias_mm=1.0, local_mm=0.8)
    masks = good + bad
    st_mask, st_prob, rates = staple(masks)
    mv = majority_vote(masks)
    sens = np.array(rates["sensitivity"])
    spec = np.array(rates["specificity"])
    quality = sens + spec
    assert quality[:2].min() > quality[2:].min()
    assert dice(st_mask, truth) >= dice(mv, truth) - 0.01
    soft = soft_consensus(masks)
    assert soft.min() >= 0 and soft.max() <= 1
    assert np.array_equal(soft > 0.5, mv)  # five raters: no ties


def test_majority_vote_ties_go_to_background():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 1, 0], bool)
    assert majority_vote([a, b]).tolist() == [True, False, False, False]


def test_expected_calibration_error_closed_forms():
    """p = 0.8 everywhere: ECE = |accuracy - 0.8|, the accuracy being the share of lumen in the
    reference (or its soft mean); p = 0.3 predicts background with confidence 0.7."""
    n = 1000
    ref = np.zeros(n)
    ref[:800] = 1
    assert expected_calibration_error(np.full(n, 0.8), ref) == pytest.approx(0.0, abs=1e-12)
    ref[:200] = 0
    assert expected_calibration_error(np.full(n, 0.8), ref) == pytest.approx(0.2, abs=1e-12)
    assert expected_calibration_error(np.full(n, 0.3), np.full(n, 0.3)) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(np.full(n, 0.3), np.zeros(n)) == pytest.approx(0.3, abs=1e-12)
    # two bins weighted by their share of voxels
    p = np.concatenate([np.full(500, 0.95), np.full(500, 0.65)])
    ref = np.concatenate([np.ones(500), np.r_[np.ones(250), np.zeros(250)]])
    assert expected_calibration_error(p, ref) == pytest.approx(0.5 * 0.05 + 0.5 * 0.15, abs=1e-12)
