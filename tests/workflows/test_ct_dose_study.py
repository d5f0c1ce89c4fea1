"""Dose studies on a real patient's CT: the segmentation method (``organ_labels``) and contour offsets.

Data: the shared abdominal CT with its TotalSegmentator map (``../shared/reference/real/abdomen_ct/``,
the map placed on slices 82-111 of the full CT as in ``test_real_ct_dose.py``). The fast test
runs on every second voxel of both (6 mm); the study on the 30 slices the map labels
(``example_ct_sm.nii.gz``, 3 mm) is in ``make validate`` and prints the README's numbers.

Checked: the study file's CT base and its categorical parameter are validated (each error
names its key); every case's per-tissue Dice and mass against the nominal labels follow what
the case did (the nominal against itself Dice 1; a contour grown by 3 mm gains mass and a
shrunk one loses it, with Dice below 1; other tissues untouched); the categorical analysis is
recounted from the case files; red marrow is the dose to marrow in the spongiosa labels
(μen conversion, ``tests/physics/test_dose_to_medium.py``), below the spongiosa's own dose;
the report has the segmentation section.
"""

import json

import numpy as np
import pytest

from workflows.study.runner import StudyError, parse_study, run_study

TS_SLICES = slice(82, 112)


def _ct_and_map(folder, out, step: int = 1):
    """The full CT and its TotalSegmentator map on that grid, every ``step``-th voxel."""
    import SimpleITK as sitk

    ct = sitk.ReadImage(str(folder / "example_ct.nii.gz"))
    seg = np.zeros(ct.GetSize()[::-1], np.uint8)
    seg[TS_SLICES] = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg.nii.gz")))
    lab = sitk.GetImageFromArray(seg)
    lab.CopyInformation(ct)
    if step > 1:
        ct, lab = ct[::step, ::step, ::step], lab[::step, ::step, ::step]
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct, str(out / "ct.nii.gz"))
    sitk.WriteImage(lab, str(out / "seg.nii.gz"))
    return out / "ct.nii.gz", out / "seg.nii.gz"


def _study(tmp_path, body_ct_protocol, ct, seg, *, histories: int, choices, offsets=(-3.0, 3.0), extra="") -> dict:
    (tmp_path / "abdomen.toml").write_text(body_ct_protocol(96.0, 425.0))
    text = f"""
[study]
name = "segmentation method, real CT"
path = "dose"
[base]
ct = "{ct}"
labels = "{seg}"
label_map = "totalsegmentator"
age = "adult"
protocol = "abdomen.toml"
histories = {histories}
ctdi_histories = 200000
batches = 10
organs = ["liver", "kidneys", "spleen", "red_marrow"]
{extra}
[parameters.organ_labels]
values = {json.dumps(list(choices))}
origin = "TotalSegmentator against atlas registration"
[parameters.organ_offset_mm]
values = {json.dumps(list(offsets))}
origin = "contouring error"
[design]
type = "oat"
"""
    (tmp_path / "study.toml").write_text(text)
    import tomllib

    return parse_study(tomllib.loads(text), tmp_path)


def test_ct_base_and_categorical_parameter_errors(shared_reference, tmp_path, body_ct_protocol):
    import tomllib

    folder = shared_reference("real", "abdomen_ct")
    ct, seg = folder / "example_ct.nii.gz", tmp_path / "seg.nii.gz"
    _ct_and_map(folder, tmp_path)
    study = _study(tmp_path, body_ct_protocol, ct, seg, histories=100000, choices=["atlas"])
    assert study["base"]["kind"] == "ct" and study["base"]["nominal_labels"] == "given"
    cat = next(p for p in study["parameters"] if p["name"] == "organ_labels")
    assert cat["categorical"] and cat["nominal"] == "given" and cat["values"] == ["atlas"]
    good = (tmp_path / "study.toml").read_text()

    def err(old, new, match):
        with pytest.raises(StudyError, match=match):
            parse_study(tomllib.loads(good.replace(old, new)), tmp_path)

    err('values = ["atlas"]', 'values = ["atlas", "manual"]', "'manual' is not a choice of organ_labels")
    err('type = "oat"', 'type = "sobol"\nn = 4', "only a one-at-a-time design")
    err('label_map = "totalsegmentator"\n', "", "labels and label_map go together")
    err('organs = ["liver"', 'organs = ["thyroid", "liver"', "the labels hold no thyroid")
    err('organs = ["liver"', 'organs = ["liverr"', "not an ICRP 103 tissue")
    err('age = "adult"', 'age = "adult"\nvoxel_mm = 4.0', "voxel_mm")
    err('[parameters.organ_offset_mm]', '[parameters.body_offset_mm]', "unknown parameter 'body_offset_mm'")
    err(f'ct = "{ct}"', 'ct = "nowhere.nii.gz"', r"\[base\] ct .* does not exist")
    # a stylised base has no segmentation method to vary
    stylised = ('[study]\npath = "dose"\n[base]\nage = "5y"\n[parameters.organ_labels]\nvalues = ["atlas"]\n'
                '[design]\ntype = "oat"\n')
    with pytest.raises(StudyError, match="unknown parameter 'organ_labels'"):
        parse_study(tomllib.loads(stylised), tmp_path)


def _cases(out):
    plan = json.loads((out / "plan.json").read_text())["cases"]
    return {c["id"]: {**c, "res": json.loads((out / "cases" / c["id"] / "results.json").read_text())} for c in plan}


def test_segmentation_method_and_contour_offsets_on_a_real_ct(shared_reference, tmp_path, body_ct_protocol):
    folder = shared_reference("real", "abdomen_ct")
    ct, seg = _ct_and_map(folder, tmp_path / "half", step=2)
    study = _study(tmp_path, body_ct_protocol, ct, seg, histories=200000, choices=["atlas"])
    out = tmp_path / "out"
    summary = run_study(study, out, quiet=True)
    cases = _cases(out)
    by = {(c["varied"], c["params"][c["varied"]] if c["varied"] else None): c for c in cases.values()}
    nom = by[(None, None)]["res"]
    atlas = by[("organ_labels", "atlas")]["res"]
    grown, shrunk = by[("organ_offset_mm", 3.0)]["res"], by[("organ_offset_mm", -3.0)]["res"]
    tis = {k: r["perturbation"]["organ_labels"]["tissues"] for k, r in
           (("nominal", nom), ("atlas", atlas), ("grown", grown), ("shrunk", shrunk))}
    for t in ("liver", "kidneys", "spleen", "red_marrow"):
        assert tis["nominal"][t]["dice_vs_nominal"] == pytest.approx(1.0)
        assert tis["nominal"][t]["mass_change_percent"] == pytest.approx(0.0)
    for t in ("liver", "kidneys", "spleen"):  # the perturbed (solid) organs
        assert tis["grown"][t]["mass_change_percent"] > 5 and tis["shrunk"][t]["mass_change_percent"] < -5, t
        assert 0.5 < tis["grown"][t]["dice_vs_nominal"] < 1 and 0.3 < tis["shrunk"][t]["dice_vs_nominal"] < 1, t
    assert tis["grown"]["red_marrow"]["dice_vs_nominal"] == pytest.approx(1.0)  # not perturbed
    assert tis["atlas"]["liver"]["dice_vs_nominal"] > 0.3  # the atlas finds the liver, roughly
    assert atlas["perturbation"]["organ_labels"]["atlas"]["atlases"][0]["atlas"] == "adult:male"
    print("\n[CT study, 6 mm] atlas vs TotalSegmentator: " + ", ".join(
        f"{t} Dice {tis['atlas'][t]['dice_vs_nominal'] or 0:.2f}" for t in ("liver", "kidneys", "spleen")))
    # red marrow: the dose to marrow in the spongiosa labels, below the spongiosa's own dose
    rows = [o for o in nom["organs"] if o.get("dose_to") == "red_marrow"]
    assert rows and all(o["organ"].startswith("spongiosa_") for o in rows)
    assert all(o["medium_dose_mGy"] < 0.8 * o["dose_mGy"] for o in rows)
    m = sum(o["mass_g"] for o in rows)
    assert nom["qoi"]["organ_dose_mGy.red_marrow"] == pytest.approx(
        sum(o["medium_dose_mGy"] * o["mass_g"] for o in rows) / m, rel=1e-9)
    # the categorical analysis, recounted from the case files
    for q in ("organ_dose_mGy.liver", "organ_dose_mGy.kidneys", "effective_dose_mSv"):
        (row,) = summary["analysis"][q]["categories"]["organ_labels"]
        assert row["value"] == "atlas" and row["q"] == atlas["qoi"][q]
        assert row["change_percent"] == pytest.approx(100 * (atlas["qoi"][q] / nom["qoi"][q] - 1))
        assert {r["parameter"] for r in summary["analysis"][q]["tornado"]} == {"organ_offset_mm"}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "organ_labels: each choice against the nominal (given)" in html and "Dice vs nominal" in html
    # a rerun skips every finished case
    again = run_study(study, out, quiet=True)
    assert again["cases"][1]["outputs"] == summary["cases"][1]["outputs"]


@pytest.mark.slow
def test_segmentation_method_study_on_the_real_ct(shared_reference, tmp_path, body_ct_protocol):
    """README numbers: the 30 slices TotalSegmentator labelled (``example_ct_sm.nii.gz`` with its map,
    3 mm, a 9 cm scan), TotalSegmentator (nominal) against the atlas and three fused atlases, and
    ±3 mm contour offsets, 10⁶ photons per case."""
    folder = shared_reference("real", "abdomen_ct")
    study = _study(tmp_path, body_ct_protocol, folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz",
                   histories=1000000, choices=["atlas", "atlas-multi"])
    summary = run_study(study, tmp_path / "out", quiet=True)
    cases = _cases(tmp_path / "out")
    print()
    for c in cases.values():
        r = c["res"]
        tis = r["perturbation"]["organ_labels"]["tissues"]
        what = f"{c['varied']} = {c['params'][c['varied']]}" if c["varied"] else "nominal (TotalSegmentator)"
        print(f"[CT study] {what}: " + "; ".join(
            f"{t} {r['qoi'][f'organ_dose_mGy.{t}']:.2f} mGy (Dice {tis[t]['dice_vs_nominal'] or 0:.2f}, "
            f"mass {tis[t]['mass_change_percent'] or 0:+.0f} %)" for t in ("liver", "kidneys", "spleen", "red_marrow")
            if r["qoi"].get(f"organ_dose_mGy.{t}") is not None) + f"; E {r['qoi']['effective_dose_mSv']:.2f} mSv")
    for q in ("organ_dose_mGy.liver", "organ_dose_mGy.kidneys", "organ_dose_mGy.spleen"):
        for row in summary["analysis"][q]["categories"]["organ_labels"]:
            print(f"[CT study] {q} {row['value']}: {row['change_percent']:+.1f} ± {2 * row['sigma_percent']:.1f} % (2σ)")
            assert abs(row["change_percent"]) > 2 * row["sigma_percent"]  # resolved beyond Monte Carlo noise
        for t in summary["analysis"][q]["tornado"]:
            print(f"[CT study] {q} organ_offset_mm -3/+3: {t['change_low_percent']:+.1f} / {t['change_high_percent']:+.1f} %")
            # a contour moved by 3 mm changes little where the dose varies slowly over the organ
            assert max(abs(t["change_low_percent"]), abs(t["change_high_percent"])) < 5
