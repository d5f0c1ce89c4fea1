"""Designs and their analysis against closed-form truth: the Ishigami function's Sobol
indices (Ishigami & Homma 1990; Sobol' & Levitan 1999), Morris μ* of a linear model,
and flip probabilities against a known binomial proportion."""

import math

import numpy as np
import pytest

from workflows.study.analysis import (
    distribution,
    flip_probability,
    morris_indices,
    sample_design,
    sobol_indices,
    tornado,
    wilson_interval,
)

PI = math.pi
ISHIGAMI = [{"name": f"x{i}", "low": -PI, "high": PI} for i in (1, 2, 3)]


def ishigami(x, a=7.0, b=0.1):
    return np.sin(x[:, 0]) + a * np.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * np.sin(x[:, 0])


def ishigami_truth(a=7.0, b=0.1):
    v1 = 0.5 * (1 + b * PI ** 4 / 5) ** 2
    v2 = a ** 2 / 8
    v13 = b ** 2 * PI ** 8 * (1 / 18 - 1 / 50)
    v = v1 + v2 + v13
    return np.array([v1, v2, 0.0]) / v, np.array([v1 + v13, v2, v13]) / v


def test_sobol_indices_of_ishigami_function():
    x = sample_design("sobol", ISHIGAMI, 1024, seed=3)
    assert x.shape == (1024 * 5, 3)
    assert np.all(np.abs(x) <= PI)
    r = sobol_indices(ISHIGAMI, ishigami(x), n_bootstrap=100, seed=1)
    s1, st = ishigami_truth()
    for k in range(3):
        assert abs(r["S1"][k] - s1[k]) < max(0.05, 2 * r["S1_conf"][k]), (k, r)
        assert abs(r["ST"][k] - st[k]) < max(0.05, 2 * r["ST_conf"][k]), (k, r)
    assert 0 < r["S1_conf"][0] < 0.2
    # reproducible from the seed; a different seed gives a different sample
    assert np.array_equal(x, sample_design("sobol", ISHIGAMI, 1024, seed=3))
    assert not np.array_equal(x, sample_design("sobol", ISHIGAMI, 1024, seed=4))


def test_sobol_with_normal_input_and_linear_model():
    """Y = 2 x1 + x2 with x1 ~ U(0, 1) (var 1/12) and x2 ~ N(0, 0.5): S1 = 4/12 / (4/12 + 0.25)."""
    pars = [{"name": "a", "low": 0.0, "high": 1.0}, {"name": "b", "distribution": "normal", "mean": 0.0, "sd": 0.5}]
    x = sample_design("sobol", pars, 512, seed=0)
    r = sobol_indices(pars, 2 * x[:, 0] + x[:, 1], n_bootstrap=50)
    s_a = (4 / 12) / (4 / 12 + 0.25)
    assert r["S1"][0] == pytest.approx(s_a, abs=0.05)
    assert r["ST"][1] == pytest.approx(1 - s_a, abs=0.05)
    with pytest.raises(ValueError, match="power of 2"):
        sample_design("sobol", pars, 10, seed=0)


def test_morris_mu_star_of_linear_model():
    """Elementary effects of Y = 3 x1 − x2 + 0 x3 on [0, 1]³ are exactly 3, −1, 0 (μ* = |coef|,
    σ = 0)."""
    pars = [{"name": f"x{i}", "low": 0.0, "high": 1.0} for i in range(3)]
    x = sample_design("morris", pars, 10, seed=2, levels=4)
    assert x.shape == (10 * 4, 3)
    y = 3 * x[:, 0] - x[:, 1]
    r = morris_indices(pars, x, y, levels=4)
    assert r["mu_star"] == pytest.approx([3, 1, 0], abs=1e-9)
    assert r["sigma"] == pytest.approx([0, 0, 0], abs=1e-9)


def test_montecarlo_design_and_flip_probability_match_the_binomial_truth():
    pars = [{"name": "u", "low": 0.0, "high": 1.0}, {"name": "g", "distribution": "normal", "mean": 1.0, "sd": 2.0}]
    x = sample_design("montecarlo", pars, 4000, seed=5)
    assert x[:, 0].min() >= 0 and x[:, 0].max() <= 1
    assert x[:, 1].mean() == pytest.approx(1.0, abs=0.1) and x[:, 1].std() == pytest.approx(2.0, rel=0.05)
    # decision "u < 0.8" with nominal 0.9 (not significant): flips for u < 0.8, P = 0.8
    f = flip_probability(x[:, 0], 0.9, below=0.8)
    assert f["ci_low"] < 0.8 < f["ci_high"] and f["nominal_decision"] is False
    # change decision: |q/qn - 1| > 10 % for q = 1 + 0.2 (u - 0.5): flips when |u - 0.5| > 0.5 -> never;
    # for q = 1 + 0.4 (u - 0.5): |u - .5| > .25, P = 0.5
    assert flip_probability(1 + 0.2 * (x[:, 0] - 0.5), 1.0, rel_change=0.1)["n_flipped"] == 0
    f2 = flip_probability(1 + 0.4 * (x[:, 0] - 0.5), 1.0, rel_change=0.1, sigma=np.full(4000, 0.01))
    assert f2["ci_low"] < 0.5 < f2["ci_high"]
    assert f2["n_beyond_noise"] < f2["n_flipped"]
    with pytest.raises(ValueError, match="exactly one"):
        flip_probability([1.0], 1.0)


def test_wilson_interval_and_distribution():
    # Wilson (1927) 95 % interval for 0/10 is [0, 0.2775]; for 5/10 [0.2366, 0.7634]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    d = distribution(np.random.default_rng(0).normal(10, 2, 20000))
    assert d["p2_5"] == pytest.approx(10 - 1.96 * 2, abs=0.1)
    assert d["p97_5"] == pytest.approx(10 + 1.96 * 2, abs=0.1)
    assert d["sd"] == pytest.approx(2, rel=0.03)


def test_tornado_orders_by_swing():
    rows = tornado(10.0, {"a": [(-1, 9.5), (0, 10.0), (1, 10.4)], "b": [(2, 14.0), (-2, 7.0)]})
    assert [r["parameter"] for r in rows] == ["b", "a"]
    assert rows[0]["low"] == -2 and rows[0]["q_low"] == 7.0 and rows[0]["swing"] == pytest.approx(7.0)
    assert rows[1]["change_high_percent"] == pytest.approx(4.0)


Z95 = 1.959963984540054  # standard normal 97.5 % quantile


def _wilson_by_hand(k, n, z=Z95):
    """Wilson (1927) score interval of k successes in n trials, written out:
    centre (p + z²/2n) / (1 + z²/n), half-width z √(p(1 − p)/n + z²/4n²) / (1 + z²/n)."""
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def test_flip_probability_and_distribution_count_failed_cases():
    """12 cases, 2 of them failed (None, NaN): the nominal FFR-like 0.85 is 'not significant', 3 of the
    10 finished cases are below 0.80 (flips). Hand count: n = 10, k = 3, n_failed = 2, n_total = 12,
    probability 3/10, bounds [3/12, 5/12]; ci_low the Wilson lower limit of 3/12 (failed cases as
    not flipped), ci_high the Wilson upper limit of 5/12 (failed cases as flips). The Wilson limits
    are the formula written out here and scipy's independent ``binomtest(...).proportion_ci('wilson')``."""
    from scipy.stats import binomtest

    values = [0.75, 0.79, 0.81, 0.83, 0.85, 0.86, 0.88, 0.90, None, 0.78, float("nan"), 0.95]
    f = flip_probability(values, 0.85, below=0.80)
    assert (f["n"], f["n_flipped"], f["n_failed"], f["n_total"]) == (10, 3, 2, 12)
    assert f["probability"] == pytest.approx(0.3, abs=1e-15)
    assert f["probability_bounds"] == pytest.approx([3 / 12, 5 / 12], abs=1e-15)
    lo, hi = _wilson_by_hand(3, 12)[0], _wilson_by_hand(5, 12)[1]
    assert f["ci_low"] == pytest.approx(lo, abs=1e-12) and f["ci_high"] == pytest.approx(hi, abs=1e-12)
    assert lo == pytest.approx(binomtest(3, 12).proportion_ci(method="wilson").low, abs=1e-12)
    assert hi == pytest.approx(binomtest(5, 12).proportion_ci(method="wilson").high, abs=1e-12)
    # without failed cases the interval is the plain Wilson interval of k/n
    g = flip_probability([v for v in values if v is not None and v == v], 0.85, below=0.80)
    assert g["n_failed"] == 0 and (g["ci_low"], g["ci_high"]) == pytest.approx(_wilson_by_hand(3, 10), abs=1e-12)
    # relative-change rule with noise: |q/q0 − 1| > 10 %, beyond noise when the margin exceeds 2σ
    q = [1.0, 1.05, 1.12, 0.85, None, 1.30, 0.89]  # changes 0, 5, 12, 15, -, 30, 11 %
    s = [0.01, 0.01, 0.02, 0.01, 0.01, 0.01, 0.01]  # flips' margins 2, 5, 20, 1 % vs 2σ = 4, 2, 2, 2 %
    r = flip_probability(q, 1.0, rel_change=0.10, sigma=s)
    assert (r["n"], r["n_flipped"], r["n_failed"], r["n_total"]) == (6, 4, 1, 7)
    assert r["n_beyond_noise"] == 2  # 15 % and 30 %; 12 % (margin 2 % < 2σ = 4 %) and 11 % do not
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((_wilson_by_hand(4, 7)[0], _wilson_by_hand(5, 7)[1]),
                                                        abs=1e-12)
    # distribution: failed cases counted, statistics over the finished ones
    d = distribution(values)
    finite = np.array([v for v in values if v is not None and v == v])
    assert d["n"] == 10 and d["n_failed"] == 2
    assert d["mean"] == pytest.approx(finite.mean(), abs=1e-15)
    assert d["sd"] == pytest.approx(finite.std(ddof=1), abs=1e-15)
    assert (d["min"], d["max"]) == (0.75, 0.95)
