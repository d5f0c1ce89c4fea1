"""Agreement statistics (pipeline.agreement) against published worked examples and analytic truth.

* ICC: Shrout & Fleiss (1979), Psychol. Bull. 86:420-428, Table 2 data (6 targets x 4 judges):
  their Table 3 mean squares and Table 4 ICCs; the confidence limits as printed by R's psych
  package (Revelle, ``psych::ICC``) for the same data, and for the 10 x 2 example of McGraw &
  Wong (1996) Table 6 as printed by ``psych::ICC``.
* Bland-Altman: Bland & Altman (1986), Lancet 327:307-310, Table 1 PEFR data (Wright vs mini
  Wright peak flow meter, first readings, 17 subjects) and the numbers printed in its text.
* Lin's CCC: closed forms (y = x, y = x + c, y = a x) and the coverage of its interval in
  simulation; the Bland-Altman and ICC(3,1) intervals' coverage in simulation as well.
"""

import numpy as np
import pytest

from pipeline.agreement import (
    ICC_FORMS,
    AgreementError,
    bland_altman,
    concordance_correlation,
    intraclass_correlation,
    read_table,
    two_way_anova,
)

# Shrout & Fleiss (1979) Table 2: 6 targets (rows) rated by 4 judges (columns).
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])

# Bland & Altman (1986) Table 1: PEFR (l/min), first reading with each meter.
WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI_WRIGHT = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]

# McGraw & Wong (1996) Table 6: 10 subjects x 2 measurements.
MCGRAW_WONG = np.array([[103, 119], [82, 65], [116, 106], [102, 102], [99, 105], [98, 100], [104, 107],
                        [62, 85], [97, 101], [107, 110]])


# --------------------------------------------------------------------------- ICC
def test_shrout_fleiss_mean_squares_table_3():
    """Shrout & Fleiss Table 3: BMS 11.24, WMS 6.26, JMS 32.49, EMS 1.02."""
    a = two_way_anova(SHROUT_FLEISS)
    assert round(a["ms_rows"], 2) == 11.24
    assert round(a["ms_within"], 2) == 6.26
    assert round(a["ms_cols"], 2) == 32.49
    assert round(a["ms_error"], 2) == 1.02
    assert (a["df_rows"], a["df_cols"], a["df_error"], a["df_within"]) == (5, 3, 15, 18)


# form: (Shrout & Fleiss Table 4 value, psych::ICC lower, upper, F, df2)
SF_PUBLISHED = {
    "1,1": (0.17, -0.133, 0.72, 1.79, 18),
    "2,1": (0.29, 0.019, 0.76, 11.03, 15),
    "3,1": (0.71, 0.342, 0.95, 11.03, 15),
    "1,k": (0.44, -0.884, 0.91, 1.79, 18),
    "2,k": (0.62, 0.071, 0.93, 11.03, 15),
    "3,k": (0.91, 0.676, 0.99, 11.03, 15),
}


@pytest.mark.parametrize("form", ICC_FORMS)
def test_shrout_fleiss_iccs_and_intervals(form):
    value, lo, hi, f, df2 = SF_PUBLISHED[form]
    r = intraclass_correlation(SHROUT_FLEISS, form)
    print(f"ICC({form}) = {r.value:.3f} [{r.ci_lower:.3f}, {r.ci_upper:.3f}]; published {value} [{lo}, {hi}]")
    assert round(r.value, 2) == value
    ndig = len(str(lo).split(".")[1])
    assert round(r.ci_lower, ndig) == lo
    assert round(r.ci_upper, len(str(hi).split(".")[1])) == hi
    assert round(r.f_value, 2) == f and r.df1 == 5 and r.df2 == df2
    assert r.n_subjects == 6 and r.k_raters == 4


def test_shrout_fleiss_p_value_as_printed_by_desctools():
    """DescTools::ICC on the Table 2 data: F = 11.03 on 5 and 15 d.f., p = 0.000135."""
    r = intraclass_correlation(SHROUT_FLEISS, "ICC(2,1)")
    assert r.p_value == pytest.approx(0.000135, abs=5e-7)
    assert r.to_dict()["form"] == "ICC(2,1)"


@pytest.mark.parametrize("form, value, lo, hi", [
    ("1,1", 0.722, 0.241, 0.922), ("2,1", 0.720, 0.228, 0.922), ("3,1", 0.714, 0.197, 0.920),
    ("1,k", 0.838, 0.389, 0.959), ("2,k", 0.837, 0.371, 0.959), ("3,k", 0.833, 0.329, 0.959),
])
def test_mcgraw_wong_example_against_psych(form, value, lo, hi):
    r = intraclass_correlation(MCGRAW_WONG, form)
    assert (round(r.value, 3), round(r.ci_lower, 3), round(r.ci_upper, 3)) == (value, lo, hi)


def test_icc3_interval_covers_the_truth_95_percent_of_the_time():
    """Two-way model y = mu + s_i + r_j + e_ij; ICC(3,1) = var(s)/(var(s) + var(e)). Its F-based
    interval is exact under the model: coverage 0.95 within 3 binomial SEs (1000 data sets)."""
    rng = np.random.default_rng(3)
    n, k, reps = 15, 3, 1000
    truth = 4.0 / (4.0 + 1.0)
    hits = 0
    for _ in range(reps):
        y = rng.normal(0, 2, (n, 1)) + rng.normal(0, 1, (1, k)) + rng.normal(0, 1, (n, k))
        r = intraclass_correlation(y, "3,1")
        hits += r.ci_lower <= truth <= r.ci_upper
    assert abs(hits / reps - 0.95) <= 3 * np.sqrt(0.95 * 0.05 / reps)


def test_icc_of_identical_raters_is_one():
    x = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
    for form in ("2,1", "3,1"):
        assert intraclass_correlation(np.column_stack([x, x, x]), form).value == pytest.approx(1.0)
    # a constant offset between raters: consistency stays 1, absolute agreement drops
    t = np.column_stack([x, x + 3.0])
    assert intraclass_correlation(t, "3,1").value == pytest.approx(1.0)
    assert intraclass_correlation(t, "2,1").value < 1.0


@pytest.mark.parametrize("table, form, match", [
    (np.ones((5, 1)), "2,1", "at least 2 raters"),
    (np.ones((1, 3)), "2,1", "at least 2 subjects"),
    (np.array([[1.0, np.nan], [2, 3], [3, 4]]), "2,1", "missing or non-finite"),
    (np.ones(4), "2,1", "2-D"),
    (SHROUT_FLEISS, "4,1", "form must be one of"),
    ([["a", "b"], ["c", "d"]], "2,1", "numbers"),
])
def test_icc_bad_input(table, form, match):
    with pytest.raises(AgreementError, match=match):
        intraclass_correlation(table, form)


def test_confidence_level_is_checked():
    with pytest.raises(AgreementError, match="confidence"):
        intraclass_correlation(SHROUT_FLEISS, "2,1", confidence=95)


# --------------------------------------------------------------------------- Bland-Altman
def test_bland_altman_1986_pefr_worked_example():
    """Bland & Altman 1986, section 5 and Figure 2: mean difference -2.1 l/min, SD 38.8 l/min;
    limits of agreement (2 SD) -79.7 to 75.5 l/min; SE of the bias 9.4, t(16) = 2.12, 95 % CI
    of the bias -22.0 to 17.8; SE of a limit sqrt(3 s^2 / n) = 16.3, CIs -114.3 to -45.1 and
    40.9 to 110.1 l/min. The paper computed from its rounded mean and SD (hence +-0.2)."""
    r = bland_altman(WRIGHT, MINI_WRIGHT, multiplier=2.0)
    print(f"PEFR: bias {r.bias:.2f}, SD {r.sd:.2f}, limits {r.lower_limit:.1f} to {r.upper_limit:.1f}, "
          f"CIs bias {r.bias_ci[0]:.1f}..{r.bias_ci[1]:.1f}, "
          f"lower {r.lower_limit_ci[0]:.1f}..{r.lower_limit_ci[1]:.1f}, upper {r.upper_limit_ci[0]:.1f}..{r.upper_limit_ci[1]:.1f}")
    assert r.n == 17
    assert round(r.bias, 1) == -2.1 and round(r.sd, 1) == 38.8
    assert r.lower_limit == pytest.approx(-79.7, abs=0.2) and r.upper_limit == pytest.approx(75.5, abs=0.2)
    assert round(r.se_bias, 1) == 9.4 and round(r.se_limit, 1) == 16.3 and round(r.t_quantile, 2) == 2.12
    assert r.bias_ci == pytest.approx((-22.0, 17.8), abs=0.1)
    assert r.lower_limit_ci == pytest.approx((-114.3, -45.1), abs=0.2)
    assert r.upper_limit_ci == pytest.approx((40.9, 110.1), abs=0.2)
    # "-80 to 76" are the paper's 2-SD limits rounded; with the default 1.96 SD: -78.1 to 73.9
    default = bland_altman(WRIGHT, MINI_WRIGHT)
    assert round(default.lower_limit) == -78 and round(default.upper_limit) == 74
    assert default.lower_limit == pytest.approx(default.bias - 1.959964 * default.sd)


def test_bland_altman_percent_differences_of_a_proportional_bias():
    """b = 1.1 a: every percentage difference is 100 (a - 1.1 a) / (1.05 a) = -9.5238 %, SD 0."""
    a = np.array([10.0, 20.0, 35.0, 50.0, 80.0])
    r = bland_altman(a, 1.1 * a, percent=True)
    assert r.bias == pytest.approx(-100 * 0.1 / 1.05)
    assert r.sd == pytest.approx(0.0, abs=1e-12)
    assert r.to_dict()["difference"].startswith("100")


def test_bland_altman_intervals_cover_the_truth():
    """Differences ~ N(2, 5²): the bias CI (exact t) and the approximate limit CIs
    (sqrt(3 s²/n)) cover the true bias and 2 -+ 1.96 x 5 about 95 % of the time (n = 25)."""
    rng = np.random.default_rng(1)
    n, reps = 25, 1000
    truth = (2.0, 2.0 - 1.959964 * 5, 2.0 + 1.959964 * 5)
    hits = np.zeros(3)
    for _ in range(reps):
        a = rng.normal(100, 10, n)
        r = bland_altman(a + rng.normal(2, 5, n), a)
        for i, ci in enumerate((r.bias_ci, r.lower_limit_ci, r.upper_limit_ci)):
            hits[i] += ci[0] <= truth[i] <= ci[1]
    print("Bland-Altman CI coverage (bias, lower, upper):", hits / reps)
    assert np.all(np.abs(hits / reps - 0.95) <= 0.025)


@pytest.mark.parametrize("a, b, kw, match", [
    ([1, 2, 3], [1, 2], {}, "one pair per subject"),
    ([1], [2], {}, "at least 2"),
    ([1, np.nan, 3], [1, 2, 3], {}, "non-finite"),
    ([[1, 2], [3, 4]], [1, 2], {}, "1-D"),
    ([1, -1, 3], [-1, 1, 2], {"percent": True}, "non-zero"),
    ([1, 2, 3], [1, 2, 4], {"multiplier": -1}, "multiplier"),
    ([1, 2, 3], [1, 2, 4], {"confidence": 1.5}, "confidence"),
])
def test_bland_altman_bad_input(a, b, kw, match):
    with pytest.raises(AgreementError, match=match):
        bland_altman(a, b, **kw)


# --------------------------------------------------------------------------- Lin's CCC
def test_ccc_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 3, 40)
    var = x.var()  # population moments, as in Lin (1989)
    same = concordance_correlation(x, x)
    assert same.value == pytest.approx(1.0) and (same.ci_lower, same.ci_upper) == (1.0, 1.0)
    c = 2.5
    shifted = concordance_correlation(x, x + c)
    assert shifted.value == pytest.approx(2 * var / (2 * var + c * c))
    assert shifted.pearson_r == pytest.approx(1.0)
    assert shifted.location_shift == pytest.approx(-c / np.sqrt(var))
    a = 1.5
    scaled = concordance_correlation(x, a * x)
    assert scaled.value == pytest.approx(2 * a * var / (var + a * a * var + ((1 - a) * x.mean()) ** 2))
    assert scaled.scale_shift == pytest.approx(1 / a)
    neg = concordance_correlation(x, -x + 2 * x.mean())  # a mirror image: perfect disagreement
    assert neg.value == pytest.approx(-1.0)


def test_ccc_is_precision_times_accuracy():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 30)
    y = 0.8 * x + rng.normal(0.3, 0.5, 30)
    r = concordance_correlation(x, y)
    assert r.value == pytest.approx(r.pearson_r * r.bias_correction)
    v, u = r.scale_shift, r.location_shift
    assert r.bias_correction == pytest.approx(2 / (v + 1 / v + u * u))  # Lin (1989) eq. for C_b
    assert r.ci_lower < r.value < r.ci_upper


def test_ccc_interval_covers_the_truth():
    """Bivariate normal with known ρc = 2 ρ σx σy / (σx² + σy² + (μx - μy)²): the Fisher-z
    interval covers it about 95 % of the time (n = 40, 1000 data sets)."""
    rng = np.random.default_rng(2)
    mx, my, sx, sy, rho, n, reps = 10.0, 11.0, 2.0, 2.5, 0.8, 40, 1000
    truth = 2 * rho * sx * sy / (sx ** 2 + sy ** 2 + (mx - my) ** 2)
    cov = [[sx ** 2, rho * sx * sy], [rho * sx * sy, sy ** 2]]
    hits = 0
    for _ in range(reps):
        xy = rng.multivariate_normal([mx, my], cov, n)
        r = concordance_correlation(xy[:, 0], xy[:, 1])
        hits += r.ci_lower <= truth <= r.ci_upper
    print(f"CCC CI coverage {hits / reps:.3f} (rho_c = {truth:.3f})")
    assert abs(hits / reps - 0.95) <= 0.025


def test_ccc_bad_input():
    with pytest.raises(AgreementError, match="all equal"):
        concordance_correlation([1, 1, 1, 1], [1, 2, 3, 4])
    with pytest.raises(AgreementError, match="at least 3"):
        concordance_correlation([1, 2], [1, 2])
    with pytest.raises(AgreementError, match="non-finite"):
        concordance_correlation([1, 2, np.inf], [1, 2, 3])


# --------------------------------------------------------------------------- CSV
def test_read_table_with_header_names_and_numbers(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("# PEFR, l/min\nsubject,wright,mini\n" + "".join(
        f"S{i},{w},{m}\n" for i, (w, m) in enumerate(zip(WRIGHT, MINI_WRIGHT))) + "\n")
    names, values = read_table(f, ["wright", "mini"])
    assert names == ["wright", "mini"] and values.shape == (17, 2)
    assert values[:, 0].tolist() == WRIGHT
    names, values = read_table(f, ["3", "2"])
    assert names == ["mini", "wright"] and values[:, 1].tolist() == WRIGHT


def test_read_table_without_header_and_semicolons(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("\n".join(";".join(str(v) for v in row) for row in SHROUT_FLEISS) + "\n")
    names, values = read_table(f)
    assert names == ["1", "2", "3", "4"]
    np.testing.assert_array_equal(values, SHROUT_FLEISS)


@pytest.mark.parametrize("text, columns, match", [
    ("a\n1\n2\n3\n", None, "at least 2 columns"),
    ("a,b\n1,2\n3,x\n5,6\n", None, "line 3, column 'b': 'x', not a finite number"),
    ("a,b\n1,2\n3,\n5,6\n", None, "an empty cell"),
    ("a,b\n1,2\n3,4,5\n5,6\n", None, "line 3 has 3 cells"),
    ("a,b\n1,2\n3,4\n", None, "at least 3"),
    ("a,b\n1,2\n3,4\n5,6\n", ["a", "c"], "column 'c' is not in"),
    ("a,b\n1,2\n3,4\n5,6\n", ["a"], "at least 2 columns"),
    ("a,b\n1,2\n3,nan\n5,6\n", None, "not a finite number"),
    ("\n\n", None, "empty"),
])
def test_read_table_bad_input(tmp_path, text, columns, match):
    f = tmp_path / "t.csv"
    f.write_text(text)
    with pytest.raises(AgreementError, match=match):
        read_table(f, columns)


def test_read_table_missing_file(tmp_path):
    with pytest.raises(AgreementError, match="table not found"):
        read_table(tmp_path / "nope.csv")
