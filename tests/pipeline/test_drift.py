"""Drift monitoring statistics (:mod:`pipeline.drift`).

Truth used: hand-computed PSI values; Pearson's X² and p-value of ``scipy.stats.chi2_contingency``
(no continuity correction); the exact conditional p-value of a 2 x 2 table by enumerating the
hypergeometric law; the exact KS p-value of two disjoint samples (2 / C(10, 5)); the Wasserstein
distance of a shifted histogram (the shift); a body mask drawn by hand (disk, separate couch).
Calibration: over repeated draws from one population the tests fire at their nominal rate
(binomial tolerance); power against stated shifts with 50 baseline and 40 new scans.
Headers and per-scan summaries are drawn directly (no DICOM) so that hundreds of draws stay fast;
reading real files is covered by the DICOM tests at the end and by tests/workflows/test_monitor_cli.py.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from pipeline import drift
from pipeline.drift import DriftError, DriftThresholds

EDGES = drift.hu_bin_edges()


def _dicom_series():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "workflows" / "dicom_series.py"
    spec = importlib.util.spec_from_file_location("dicom_series", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- synthetic scan records
def _sample(rng, n, *, p_a=0.9, shift_hu=0.0):
    """``n`` scan records as profile_series makes them, drawn directly: manufacturer A with
    probability ``p_a`` (else B; the model follows the manufacturer); kernel B30f/B45f/B70f at
    60/30/10 %; 100/120 kVp at 30/70 %; slice thickness 1 or 2.5 mm; pixel spacing uniform in
    0.6-0.9 mm. Body HU of a scan ~ N(level, noise²) with level = 40 HU + ``shift_hu`` + a
    scan-to-scan N(0, 15²) and noise 20 ± 3 HU: its percentiles, and its histogram on the default
    edges from the normal CDF."""
    man = np.where(rng.random(n) < p_a, "A", "B")
    kernel = np.array(["B30f", "B45f", "B70f"])[np.searchsorted([0.6, 0.9], rng.random(n), side="right")]
    kvp = np.where(rng.random(n) < 0.3, 100.0, 120.0)
    thick = np.where(rng.random(n) < 0.5, 1.0, 2.5)
    spacing = rng.uniform(0.6, 0.9, n)
    level = 40.0 + shift_hu + rng.normal(0.0, 15.0, n)
    noise = rng.normal(20.0, 3.0, n)
    cdf = special.ndtr((EDGES[None, :] - level[:, None]) / noise[:, None])
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0
    hist = np.round(np.diff(cdf, axis=1) * 20000).astype(np.int64)
    z = {"p05_hu": -1.6449, "p25_hu": -0.6745, "median_hu": 0.0, "p75_hu": 0.6745, "p95_hu": 1.6449}
    out = []
    for i in range(n):
        inten = {k: float(level[i] + v * noise[i]) for k, v in z.items()}
        inten.update(mean_hu=float(level[i]), sd_hu=float(noise[i]), iqr_hu=float(2 * 0.6745 * noise[i]),
                     body_voxels=20000)
        out.append({"header": {"Manufacturer": str(man[i]), "ManufacturerModelName": f"{man[i]} 64",
                               "ConvolutionKernel": str(kernel[i]), "KVP": float(kvp[i]),
                               "SliceThickness": float(thick[i]), "PixelSpacing": [float(spacing[i])] * 2},
                    "intensity": inten, "histogram_counts": hist[i]})
    return out


def _tolerance(p, n):
    """Three binomial standard deviations of a rate ``p`` over ``n`` draws."""
    return 3.0 * math.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------------------- PSI, chi-square, KS, W
def test_psi_against_hand_computed_values():
    # 90/10 -> 50/50: 0.4 ln(0.5/0.9)... = 0.4 ln(9/5) + 0.4 ln 5
    psi = drift.population_stability_index({"A": 90, "B": 10}, {"A": 50, "B": 50})
    assert psi == pytest.approx(0.4 * math.log(9 / 5) + 0.4 * math.log(5), rel=1e-12)
    assert psi == pytest.approx(0.8789, abs=1e-4)
    assert drift.population_stability_index({"A": 3, "B": 1}, {"A": 30, "B": 10}) == 0.0
    # symmetric (symmetrised KL)
    assert drift.population_stability_index({"A": 50, "B": 50}, {"A": 90, "B": 10}) == pytest.approx(psi)
    # a category unseen in the baseline: its proportion is floored at eps
    eps = 1e-4
    got = drift.population_stability_index({"A": 10}, {"A": 9, "C": 1}, eps=eps)
    want = (0.9 - 1.0) * math.log(0.9) + (0.1 - eps) * math.log(0.1 / eps)
    assert got == pytest.approx(want, rel=1e-12)
    assert [drift.psi_band(v) for v in (0.05, 0.1, 0.25, 0.26)] == ["none", "moderate", "moderate", "major"]


def test_chi_square_matches_scipy_contingency():
    b, n = {"A": 30, "B": 12, "C": 8}, {"A": 10, "B": 15, "C": 15}
    r = drift.chi_square_shift(b, n)
    ref = stats.chi2_contingency(np.array([[30, 12, 8], [10, 15, 15]]), correction=False)
    assert r["method"].startswith("asymptotic") and r["min_expected"] >= 5
    assert r["statistic"] == pytest.approx(ref.statistic, rel=1e-12)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert r["dof"] == 2 and r["new_categories"] == []


def test_monte_carlo_p_value_matches_exact_enumeration():
    """2 x 2 with small counts: the conditional law of the new row's count of B is hypergeometric;
    the exact p-value sums its probabilities over tables with X² at least the observed one."""
    b, n = {"A": 18, "B": 2}, {"A": 6, "B": 4}
    r = drift.chi_square_shift(b, n, mc_samples=19999, seed=1)
    assert r["method"].startswith("monte-carlo") and r["min_expected"] < 5
    total_b, n_new, n_base = 6, 10, 20
    law = stats.hypergeom(n_base + n_new, total_b, n_new)

    def x2(k):  # new row holds k of the 6 B scans
        t = np.array([[24 - (n_new - k), total_b - k], [n_new - k, k]], float)
        return stats.chi2_contingency(t, correction=False).statistic

    obs = x2(4)
    exact = sum(law.pmf(k) for k in range(0, total_b + 1) if x2(k) >= obs - 1e-9)
    assert r["p_value"] == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 19999) + 1e-4)
    # same seed, same p-value
    assert drift.chi_square_shift(b, n, mc_samples=19999, seed=1)["p_value"] == r["p_value"]


def test_chi_square_new_categories_and_one_category():
    r = drift.chi_square_shift({"A": 40, "B": 10}, {"A": 20, "B": 5, "C": 3})
    assert r["categories"] == ["A", "B", "C"] and r["baseline_counts"] == [40, 10, 0] and r["new_counts"] == [20, 5, 3]
    assert r["new_categories"] == ["C"] and r["dof"] == 2 and 0 < r["p_value"] <= 1
    one = drift.chi_square_shift({"A": 5}, {"A": 7})
    assert one["method"] == "one category" and one["p_value"] == 1.0


def test_ks_exact_p_value_of_disjoint_samples():
    # D = 1 for n = m = 5: exact two-sided p = 2 / C(10, 5)
    r = drift.ks_shift([1, 2, 3, 4, 5], [6, 7, 8, 9, None, 10.0])
    assert r["statistic"] == 1.0 and r["n_new"] == 5
    assert r["p_value"] == pytest.approx(2 / math.comb(10, 5), rel=1e-9)
    assert drift.ks_shift([0.7, 0.7], [0.7])["method"] == "one value"
    assert math.isnan(drift.ks_shift([], [1.0])["p_value"])


def test_wasserstein_of_a_shifted_histogram_is_the_shift():
    h = np.diff(special.ndtr((EDGES - 40.0) / 20.0))
    shifted = np.roll(h, 3)  # three 10 HU bins
    assert drift.wasserstein_hu(EDGES, h, shifted) == pytest.approx(30.0, abs=1e-6)
    a = np.zeros(EDGES.size - 1)
    b = a.copy()
    a[10], b[15] = 1.0, 1.0
    assert drift.wasserstein_hu(EDGES, a, b) == pytest.approx(50.0)


def test_bad_input_to_the_statistics():
    with pytest.raises(DriftError, match="baseline_counts"):
        drift.chi_square_shift({"A": -1}, {"A": 2})
    with pytest.raises(DriftError, match="new_counts holds no scan"):
        drift.chi_square_shift({"A": 1}, {})
    with pytest.raises(DriftError, match="method"):
        drift.chi_square_shift({"A": 1, "B": 1}, {"A": 1}, method="exact")
    with pytest.raises(DriftError, match="eps"):
        drift.population_stability_index({"A": 1}, {"A": 1}, eps=0)
    with pytest.raises(DriftError, match="histograms need"):
        drift.wasserstein_hu(EDGES, np.ones(3), np.ones(3))
    with pytest.raises(DriftError, match="alpha"):
        DriftThresholds(alpha=1.5)
    with pytest.raises(DriftError, match="wasserstein_hu"):
        DriftThresholds(wasserstein_hu=-1)
    with pytest.raises(DriftError, match="mc_samples"):
        DriftThresholds(mc_samples=10)
    with pytest.raises(DriftError, match="width_hu"):
        drift.hu_bin_edges(-500, 1500, 7)
    with pytest.raises(DriftError, match="upper_hu"):
        drift.hu_bin_edges(100, 0)
    with pytest.raises(DriftError, match="field"):
        drift.category_label("PatientName", "x")
    with pytest.raises(DriftError, match="thresholds"):
        drift.compare(drift.build_profile(_sample(np.random.default_rng(0), 5)), [], thresholds=0.01)


# ----------------------------------------------------------------------------- calibration and power
def test_false_alarm_rate_is_near_the_nominal_level():
    """200 draws of 50 baseline and 40 new scans from one population, at alpha = 0.05.

    Each test alone (p <= 0.05) fires at about 5 % (within three binomial SDs); the whole check
    (Bonferroni over its tests, and an effect size) fires at most at 5 %."""
    n_draws, alpha = 200, 0.05
    th = DriftThresholds(alpha=alpha, mc_samples=1999)
    fired, per_test = 0, {}
    psi_moderate = 0
    for i in range(n_draws):
        rng = np.random.default_rng(i)
        c = drift.compare(drift.build_profile(_sample(rng, 50)), _sample(rng, 40), thresholds=th)
        fired += c["drift"]
        for t in c["tests"]:
            per_test[t["field"]] = per_test.get(t["field"], 0) + (t["p_value"] <= alpha)
        psi_moderate += c["tests"][0]["psi"] >= 0.1
    rates = {k: v / n_draws for k, v in per_test.items()}
    print(f"\nfalse alarms over {n_draws} draws (50 vs 40 scans): whole check {fired / n_draws:.3f} "
          f"(alpha {alpha}); per test at p <= {alpha}: " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items())
          + f"; Manufacturer PSI >= 0.1 in {psi_moderate / n_draws:.2f} of draws")
    tol = _tolerance(alpha, n_draws)
    for k in ("Manufacturer", "ConvolutionKernel", "KVP", "PixelSpacing", "median_hu", "iqr_hu"):
        assert abs(rates[k] - alpha) <= tol, (k, rates[k])
    assert fired / n_draws <= alpha + tol


def test_manufacturer_mix_90_10_to_50_50_alerts():
    """50 baseline scans at 90/10, 40 new ones at 50/50, default thresholds (alpha 0.01): the
    Manufacturer test fires in at least 80 % of 60 draws, with PSI near 0.88 (hand value above)."""
    th = DriftThresholds()
    hits, psis = 0, []
    for i in range(60):
        rng = np.random.default_rng(1000 + i)
        c = drift.compare(drift.build_profile(_sample(rng, 50)), _sample(rng, 40, p_a=0.5), thresholds=th)
        fields = [a["field"] for a in c["alerts"]]
        hits += "Manufacturer" in fields
        psis.append(c["tests"][0]["psi"])
        if i == 0:
            assert "Manufacturer" in fields and "ManufacturerModelName" in fields
            reason = c["alerts"][0]["reason"]
            assert "chi-square" in reason and "PSI" in reason and "'A'" in reason
    print(f"\nmanufacturer 90/10 -> 50/50 (50 vs 40 scans): alert in {hits}/60 draws; median PSI {np.median(psis):.2f}")
    assert hits / 60 >= 0.8
    assert np.median(psis) == pytest.approx(0.879, abs=0.2)


def test_intensity_shift_of_30_hu_alerts_and_3_hu_does_not():
    """Per-scan body level 40 HU with a scan-to-scan SD of 15 HU: +30 HU in the new scans fires the
    median-HU test in every draw, with a Wasserstein distance near 30 HU; +3 HU (a fifth of the
    spread) fires no more often than alpha allows."""
    th = DriftThresholds()
    w30, hit30, hit3 = [], 0, 0
    n = 40
    for i in range(n):
        rng = np.random.default_rng(2000 + i)
        prof = drift.build_profile(_sample(rng, 50))
        c = drift.compare(prof, _sample(rng, 40, shift_hu=30.0), thresholds=th)
        hit30 += any(a["field"] == "median_hu" for a in c["alerts"])
        w30.append(c["intensity"]["wasserstein_hu"])
        c3 = drift.compare(prof, _sample(rng, 40, shift_hu=3.0), thresholds=th)
        hit3 += c3["drift"]
    print(f"\n+30 HU: alert in {hit30}/{n} draws, median Wasserstein {np.median(w30):.1f} HU; "
          f"+3 HU: alert in {hit3}/{n} draws")
    assert hit30 == n
    assert np.median(w30) == pytest.approx(30.0, abs=3.0)
    assert hit3 / n <= 0.01 + _tolerance(0.01, n)


def test_one_scan_from_a_new_scanner_is_a_note_not_an_alert():
    rng = np.random.default_rng(5)
    base = _sample(rng, 50, p_a=1.0)
    new = _sample(rng, 39, p_a=1.0) + _sample(rng, 1, p_a=0.0)
    c = drift.compare(drift.build_profile(base), new)
    man = c["tests"][0]
    assert man["new_categories"] == ["B"] and not man["alert"]
    assert any("'B' is new" in s for s in c["notes"])


def test_large_psi_with_few_scans_is_a_note_not_an_alert():
    rng = np.random.default_rng(6)
    base = _sample(rng, 8, p_a=1.0)[:6] + _sample(rng, 2, p_a=0.0)  # 6 A, 2 B
    new = _sample(rng, 2, p_a=1.0) + _sample(rng, 2, p_a=0.0)  # 2 A, 2 B
    c = drift.compare(drift.build_profile(base), new)
    man = c["tests"][0]
    assert man["psi_band"] == "major" and not man["significant"] and not man["alert"]
    assert any("not significant" in s for s in c["notes"]) and any("only 4 new scans" in s for s in c["notes"])


def test_voxels_are_not_the_unit():
    """Why the tests use one value per scan: KS on the pooled voxels of two scans of one population
    (levels 40 and 52 HU, within the 15 HU scan-to-scan spread) rejects at any usual level."""
    ds = _dicom_series()
    a, ma = ds.phantom_hu((4, 32, 32), body_hu=40.0, seed=1)
    b, mb = ds.phantom_hu((4, 32, 32), body_hu=52.0, seed=2)
    assert stats.ks_2samp(a[ma], b[mb]).pvalue < 1e-10


# ----------------------------------------------------------------------------- images and DICOM
def test_body_mask_keeps_the_body_and_drops_a_separate_couch():
    ds = _dicom_series()
    hu, body = ds.phantom_hu((4, 32, 32), body_hu=40.0, noise_hu=0.0, couch_hu=200.0)
    mask = drift.body_mask(hu)
    assert np.array_equal(mask, body)
    r = drift.body_intensity(hu)
    assert r["body_voxels"] == int(body.sum())
    assert r["median_hu"] == 40.0 and r["iqr_hu"] == 0.0 and r["sd_hu"] == 0.0
    h = r["histogram_counts"]
    assert h.sum() == body.sum() and h[np.searchsorted(EDGES, 40.0, side="right") - 1] == body.sum()
    # above the last edge: counted in the last bin
    r2 = drift.body_intensity(np.full((2, 4, 4), 3000.0))
    assert r2["histogram_counts"][-1] == 32 and r2["median_hu"] == 3000.0
    empty = drift.body_intensity(np.full((2, 4, 4), -1000.0))
    assert empty["body_voxels"] == 0 and math.isnan(empty["median_hu"]) and empty["histogram_counts"].sum() == 0
    with pytest.raises(DriftError, match="hu has shape"):
        drift.body_mask(np.zeros(5))
    with pytest.raises(DriftError, match="bin_edges_hu"):
        drift.body_intensity(hu, bin_edges_hu=[0.0, -1.0])


def test_header_values_and_category_labels():
    h = drift.header_values({"Manufacturer": " SIEMENS ", "KVP": "120", "SliceThickness": "0.625",
                             "ConvolutionKernel": ["Br40d", "3"], "PixelSpacing": ["0.7", "0.75"]})
    assert h == {"Manufacturer": "SIEMENS", "ManufacturerModelName": drift.MISSING, "ConvolutionKernel": "Br40d\\3",
                 "KVP": 120.0, "SliceThickness": 0.625, "PixelSpacing": [0.7, 0.75]}
    assert drift.category_label("KVP", 120.0) == "120"
    assert drift.category_label("SliceThickness", 0.625) == "0.625"
    assert drift.category_label("PixelSpacing", [0.7, 0.75]) == "0.70×0.75"
    assert drift.category_label("KVP", None) == drift.MISSING
    assert drift.in_plane_spacing_mm([0.7, 0.75]) == pytest.approx(0.725)


def test_series_are_grouped_by_uid_and_read_in_hu(tmp_path):
    """Two series in one folder, one nested deeper, an MR series, a text file and a DICOM file without
    SeriesInstanceUID; slope 2 / intercept -2048 and files named in reverse slice order."""
    ds = _dicom_series()
    root = tmp_path / "scans"
    hu_a, _ = ds.write_ct_series(root / "p1", manufacturer="ACME", seed=1, uid_tag="a", prefix="a_",
                                 slope=2.0, intercept=-2048.0)
    ds.write_ct_series(root / "p1", manufacturer="Other", kvp=None, seed=2, uid_tag="b", prefix="b_")
    ds.write_ct_series(root / "p2" / "deep" / "ct", manufacturer="ACME", seed=3, uid_tag="c")
    ds.write_ct_series(root / "p3", modality="MR", seed=4, uid_tag="d")
    (root / "notes.txt").write_text("not dicom")
    import pydicom

    f = next((root / "p2" / "deep" / "ct").glob("*.dcm"))
    d = pydicom.dcmread(f)
    del d.SeriesInstanceUID
    d.save_as(root / "orphan.dcm", enforce_file_format=True)

    series, skipped = drift.find_series(root)
    assert len(series) == 4 and [s["path"] for s in series].count("p1") == 2
    assert {s["path"] for s in series} == {"p1", "p2/deep/ct", "p3"}
    assert skipped == [{"path": "orphan.dcm", "reason": "no SeriesInstanceUID"}]
    s_a = next(s for s in series if s["header"]["Manufacturer"] == "ACME" and s["path"] == "p1")
    assert np.array_equal(drift.read_series_hu(s_a["files"]), hu_a.astype(np.float32))
    other = next(s for s in series if s["header"]["Manufacturer"] == "Other")
    assert other["header"]["KVP"] is None and other["header"]["PixelSpacing"] == [0.7, 0.7]

    records, skipped = drift.profile_series(root)
    assert len(records) == 3 and any("modality MR" in s["reason"] for s in skipped)
    rec_a = next(r for r in records if r["series_instance_uid"] == s_a["series_instance_uid"])
    _, body = ds.phantom_hu((4, 32, 32), seed=1)
    assert rec_a["intensity"]["median_hu"] == pytest.approx(float(np.median(hu_a[body])))
    assert rec_a["intensity"]["body_voxels"] == int(body.sum())

    prof = drift.build_profile(records, source=str(root), skipped=skipped)
    assert prof["categories"]["Manufacturer"] == {"ACME": 2, "Other": 1}
    assert prof["categories"]["KVP"] == {"120": 2, drift.MISSING: 1}
    assert sum(prof["intensity"]["pooled_histogram"]["fraction"]) == pytest.approx(1.0)
    assert prof["settings"]["bin_edges_hu"] == EDGES.tolist()


def test_folder_and_profile_errors(tmp_path):
    with pytest.raises(DriftError, match="DICOM folder not found"):
        drift.find_series(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DriftError, match="is a file"):
        drift.find_series(tmp_path / "a.txt")
    with pytest.raises(DriftError, match="no DICOM files found"):
        drift.profile_series(tmp_path)
    with pytest.raises(DriftError, match="files is empty"):
        drift.read_series_hu([])
    with pytest.raises(DriftError, match="records is empty"):
        drift.build_profile([])

    good = drift.build_profile(_sample(np.random.default_rng(0), 5))
    assert drift.validate_profile(good)["n_series"] == 5
    for bad, msg in (({"kind": "something"}, "not a digipat drift profile"),
                     ({**good, "schema_version": "2.0"}, "schema_version"),
                     ({**good, "n_series": 6}, "n_series"),
                     ({k: v for k, v in good.items() if k != "settings"}, "incomplete"),
                     ([1, 2], "not a digipat drift profile")):
        with pytest.raises(DriftError, match=msg):
            drift.validate_profile(bad)
    p = tmp_path / "p.json"
    p.write_text("{not json")
    with pytest.raises(DriftError, match="not JSON"):
        drift.read_profile(p)
    with pytest.raises(DriftError, match="profile not found"):
        drift.read_profile(tmp_path / "none.json")
    p.write_text(json.dumps(json.loads(json.dumps(drift.build_profile(_sample(np.random.default_rng(0), 5)),
                                                  default=lambda o: o.tolist()))))
    assert drift.read_profile(p)["kind"] == drift.PROFILE_KIND
