"""``digipat monitor baseline | check`` end to end on small synthetic DICOM collections.

Collections (one CT series of 2 x 32 x 32 voxels per patient, nested ``patientNNN/ct/`` folders,
written with pydicom by ``dicom_series.py``; per-scan body level 40 HU + N(0, 10²), noise 20 HU):

* baseline: 40 series, manufacturer A/B = 36/4 (90/10);
* same: 30 new series, 27/3, other seeds: no alert, exit 0;
* mix: 30 new series, 15/15 (50/50): Manufacturer alert, exit 3. By hand: the 2 x 2 table
  [[36, 4], [15, 15]] has Pearson X² = 13.87 (p = 2.0e-4 < 0.01 / 4 tests) and PSI 0.879;
* hot: the 40 baseline scans again (same noise) with every body voxel +30 HU (new UIDs): median-HU
  alert, exit 3, Wasserstein distance of the pooled histograms exactly 30 HU (three 10 HU bins);
* warm: the same with +3 HU, a third of the 10 HU scan-to-scan SD: no alert, exit 0.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from workflows.cli import main


def _dicom_series():
    spec = importlib.util.spec_from_file_location("dicom_series", Path(__file__).with_name("dicom_series.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    ds = _dicom_series()
    root = tmp_path_factory.mktemp("monitor")
    base = ["A"] * 36 + ["B"] * 4
    small = {"shape": (2, 32, 32)}
    ds.write_collection(root / "baseline", base, seed=1, uid_tag="base", **small)
    ds.write_collection(root / "same", ["A"] * 27 + ["B"] * 3, seed=2, uid_tag="same", **small)
    ds.write_collection(root / "mix", ["A"] * 15 + ["B"] * 15, seed=3, uid_tag="mix", **small)
    ds.write_collection(root / "hot", base, seed=1, uid_tag="hot", body_hu=ds.default_levels(40, 1) + 30.0, **small)
    ds.write_collection(root / "warm", base, seed=1, uid_tag="warm", body_hu=ds.default_levels(40, 1) + 3.0, **small)
    profile = root / "profile.json"
    assert main(["monitor", "baseline", str(root / "baseline"), "--out", str(profile)]) == 0
    return root, profile


def test_baseline_writes_the_profile(scans, capsys):
    root, profile = scans
    p = json.loads(profile.read_text())
    assert p["kind"] == "digipat.drift_profile" and p["schema_version"] == "1.0"
    assert p["n_series"] == 40 and len(p["series"]) == 40 and p["skipped"] == []
    assert p["categories"]["Manufacturer"] == {"A": 36, "B": 4}
    assert p["categories"]["KVP"] == {"120": 40} and p["categories"]["PixelSpacing"] == {"0.70×0.70": 40}
    edges = p["settings"]["bin_edges_hu"]
    assert edges[0] == -500 and edges[-1] == 1500 and len(edges) == 201
    assert len(p["intensity"]["pooled_histogram"]["fraction"]) == 200
    assert p["intensity"]["summaries"]["median_hu"]["p50"] == pytest.approx(40.0, abs=5.0)
    assert all(s["files"] == 2 and s["path"].endswith("ct") for s in p["series"])
    assert "versions" in p["provenance"]


def test_same_population_gives_no_alert(scans, capsys):
    root, profile = scans
    capsys.readouterr()
    assert main(["monitor", "check", str(profile), str(root / "same")]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("no drift") and "ALERT" not in out


def test_manufacturer_mix_change_alerts_with_report(scans, tmp_path, capsys):
    root, profile = scans
    report, out_json = tmp_path / "report.html", tmp_path / "check.json"
    capsys.readouterr()
    status = main(["monitor", "check", str(profile), str(root / "mix"), "--report", str(report),
                   "--out", str(out_json)])
    out = capsys.readouterr().out
    print(out)
    assert status == 3
    assert "DRIFT: 2 alerts (Manufacturer, ManufacturerModelName)" in out
    check = json.loads(out_json.read_text())
    man = next(t for t in check["tests"] if t["field"] == "Manufacturer")
    assert man["statistic"] == pytest.approx(13.87, abs=0.01) and man["p_value"] == pytest.approx(1.96e-4, rel=0.02)
    assert man["psi"] == pytest.approx(0.8789, abs=1e-3) and man["alert"]
    html = report.read_text()
    assert "DRIFT: 2 alerts" in html and "<b>Manufacturer</b>" in html and "data:image/png;base64," in html
    assert "90 %" in html and "50 %" in html  # the category table


def test_intensity_shift_alerts_in_json(scans, capsys):
    root, profile = scans
    capsys.readouterr()
    assert main(["monitor", "check", str(profile), str(root / "hot"), "--json"]) == 3
    check = json.loads(capsys.readouterr().out)
    assert check["drift"] is True
    assert [a["field"] for a in check["alerts"]] == ["median_hu"]
    assert check["intensity"]["wasserstein_hu"] == pytest.approx(30.0, abs=1e-9)
    med = next(t for t in check["tests"] if t["field"] == "median_hu")
    assert med["new_median"] - med["baseline_median"] == pytest.approx(30.0)
    print(f"\n+30 HU: {med['reason']}")
    # a 40 HU threshold on the effect size silences it
    assert main(["monitor", "check", str(profile), str(root / "hot"), "--wasserstein-hu", "40", "--quiet"]) == 0


def test_small_intensity_shift_gives_no_alert(scans, capsys):
    root, profile = scans
    capsys.readouterr()
    assert main(["monitor", "check", str(profile), str(root / "warm"), "--json"]) == 0
    check = json.loads(capsys.readouterr().out)
    med = next(t for t in check["tests"] if t["field"] == "median_hu")
    print(f"\n+3 HU: {med['reason']}")
    assert not check["drift"] and med["new_median"] - med["baseline_median"] == pytest.approx(3.0)
    assert check["intensity"]["wasserstein_hu"] == pytest.approx(3.0, abs=0.5)


def test_bad_input_exits_1(scans, tmp_path, capsys):
    root, profile = scans
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no scans here")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "digipat.study", "schema_version": "2.0"}))
    cases = [
        (["monitor", "baseline", str(tmp_path / "missing"), "--out", str(tmp_path / "p.json")],
         "DICOM folder not found"),
        (["monitor", "baseline", str(tmp_path / "empty"), "--out", str(tmp_path / "p.json")], "no DICOM files found"),
        (["monitor", "baseline", str(root / "same"), "--out", str(tmp_path)], "is a folder"),
        (["monitor", "baseline", str(root / "same"), "--out", str(tmp_path / "p.json"), "--bin-width-hu", "0"],
         "width_hu"),
        (["monitor", "check", str(other), str(root / "same")], "not a digipat drift profile"),
        (["monitor", "check", str(tmp_path / "none.json"), str(root / "same")], "profile not found"),
        (["monitor", "check", str(profile), str(tmp_path / "empty")], "no DICOM files found"),
        (["monitor", "check", str(profile), str(root / "same"), "--alpha", "2"], "alpha"),
    ]
    for argv, msg in cases:
        capsys.readouterr()
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("digipat: error:") and msg in err, (argv, err)
    assert not (tmp_path / "p.json").exists()
