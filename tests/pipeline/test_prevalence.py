"""PPV and NPV at a prevalence (pipeline.metrics, Bayes' theorem) against hand computation.

Hand computation, sensitivity 0.9, specificity 0.9, prevalence 1 %: of 10 000 people 100 have
the condition (90 test positive, 10 negative) and 9 900 do not (990 test positive, 8 910
negative): PPV = 90 / 1 080 = 0.0833, NPV = 8 910 / 8 920 = 0.99888.
"""

import numpy as np
import pytest

from pipeline.metrics import (
    MetricError,
    confusion,
    npv_at_prevalence,
    precision,
    precision_at_prevalence,
    predictive_values_curve,
)


def test_hand_computed_example():
    assert precision_at_prevalence(0.9, 0.9, 0.01) == pytest.approx(90 / 1080)
    assert round(precision_at_prevalence(0.9, 0.9, 0.01), 4) == 0.0833
    assert npv_at_prevalence(0.9, 0.9, 0.01) == pytest.approx(8910 / 8920)


def test_more_hand_computed_values():
    # sens 0.8, spec 0.95, prevalence 0.2 of 1000: TP 160, FN 40, FP 40, TN 760
    assert precision_at_prevalence(0.8, 0.95, 0.2) == pytest.approx(160 / 200)
    assert npv_at_prevalence(0.8, 0.95, 0.2) == pytest.approx(760 / 800)
    # at prevalence 1/2: PPV = sens / (sens + 1 - spec), NPV = spec / (spec + 1 - sens)
    assert precision_at_prevalence(0.7, 0.6, 0.5) == pytest.approx(0.7 / 1.1)
    assert npv_at_prevalence(0.7, 0.6, 0.5) == pytest.approx(0.6 / 0.9)


def test_curve_matches_the_pointwise_functions_and_symmetry():
    p = np.array([1e-4, 0.003, 0.05, 0.3, 0.5, 0.9, 0.999])
    c = predictive_values_curve(0.85, 0.97, p)
    np.testing.assert_array_equal(c["prevalence"], p)
    np.testing.assert_allclose(c["ppv"], [precision_at_prevalence(0.85, 0.97, q) for q in p], rtol=1e-12)
    np.testing.assert_allclose(c["npv"], [npv_at_prevalence(0.85, 0.97, q) for q in p], rtol=1e-12)
    # NPV is the PPV of the complementary test: swap sens and spec, p -> 1 - p
    swapped = predictive_values_curve(0.97, 0.85, 1 - p)
    np.testing.assert_allclose(c["npv"], swapped["ppv"], rtol=1e-12)
    assert np.all(np.diff(c["ppv"]) > 0) and np.all(np.diff(c["npv"]) < 0)


def test_at_the_masks_own_prevalence_bayes_gives_the_counted_values():
    """With the empirical sensitivity and specificity of a prediction, PPV and NPV at the truth's
    own prevalence are exactly the counted precision TP/(TP+FP) and TN/(TN+FN)."""
    rng = np.random.default_rng(4)
    truth = rng.random((20, 20, 20)) < 0.07
    pred = np.where(truth, rng.random(truth.shape) < 0.8, rng.random(truth.shape) < 0.03)
    c = confusion(pred, truth)
    sens = c["tp"] / (c["tp"] + c["fn"])
    spec = c["tn"] / (c["tn"] + c["fp"])
    prev = truth.mean()
    assert precision_at_prevalence(sens, spec, prev) == pytest.approx(precision(pred, truth), rel=1e-12)
    assert npv_at_prevalence(sens, spec, prev) == pytest.approx(c["tn"] / (c["tn"] + c["fn"]), rel=1e-12)


def test_no_negative_calls_give_nan():
    assert np.isnan(npv_at_prevalence(1.0, 0.0, 0.3))
    c = predictive_values_curve(0.0, 1.0, [0.2])  # nothing called positive
    assert np.isnan(c["ppv"][0]) and c["npv"][0] == pytest.approx(0.8)


@pytest.mark.parametrize("sens, spec, prev, match", [
    (1.2, 0.9, 0.1, "sens"),
    (0.9, -0.1, 0.1, "spec"),
    (0.9, 0.9, 0.0, "prevalence"),
    (0.9, 0.9, 1.0, "prevalence"),
    (0.9, 0.9, [0.1, 0.2], "one number"),
    ("high", 0.9, 0.1, "sens"),
    (0.9, 0.9, float("nan"), "prevalence"),
])
def test_npv_bad_input(sens, spec, prev, match):
    with pytest.raises(MetricError, match=match):
        npv_at_prevalence(sens, spec, prev)


@pytest.mark.parametrize("prevs", [[], [0.1, 1.5], [[0.1], ["x"]]])
def test_curve_bad_input(prevs):
    with pytest.raises(MetricError, match="prevalence"):
        predictive_values_curve(0.9, 0.9, prevs)
