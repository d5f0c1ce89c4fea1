"""The dose path of a sensitivity study: [base] validation, one case end to end, common random numbers.

Independent expectation for the body offset: 10 mm more soft tissue around the trunk
attenuates the primary beam reaching a deep organ by at most exp(−μ · 1 cm) for every
projection; scatter from the added tissue only partly makes up for it, so the organ dose
falls by more than 0 and less than 1 − exp(−μ_water(70 keV) · 1 cm) ≈ 0.17 (μ from
xraydb, the NIST/Elam tables; 70 keV is above the mean energy of the 120 kVp beam behind
6 mm Al and a bowtie, so the bound is loose at the low-μ side).
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from workflows.study.dose_cases import (DEFAULT_ORGANS, DOSE_PARAMETERS, DoseCaseError, parse_dose_base,
                                  prepare_dose_base, run_dose_case)


class _Err(ValueError):
    pass


TINY = {"age": "5y", "voxel_mm": 5.0, "histories": 200_000, "ctdi_histories": 100_000, "batches": 10, "seed": 7,
        "organs": ["liver", "lungs", "stomach_wall", "kidneys"], "perturbed_organs": ["liver", "stomach_wall"],
        "z_start_mm": 100.0, "z_end_mm": 300.0}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("dose_study")
    base = parse_dose_base(dict(TINY), work, _Err)
    prepared = prepare_dose_base(base, work / "prepared")
    return base, prepared, work


def test_parse_defaults_and_organ_lists(tmp_path):
    b = parse_dose_base({}, tmp_path, _Err)
    assert b["organs"] == list(DEFAULT_ORGANS) and b["z_start_mm"] is None and b["z_end_mm"] is None
    assert "red_marrow" in b["organs"] and "red_marrow" not in b["perturbed_organs"]  # the skeleton does not move
    assert set(b["perturbed_organs"]) == set(b["organs"]) - {"red_marrow"}
    assert Path(b["protocol"]).is_file() and b["histories"] % b["batches"] == 0
    assert set(DOSE_PARAMETERS) >= {"organ_offset_mm", "body_offset_mm", "voxel_mm"}
    assert all(d["unit"] == "mm" and d["description"] for d in DOSE_PARAMETERS.values())
    f = parse_dose_base({"sex": "female", "organs": ["uterus", "breast"]}, tmp_path, _Err)
    assert f["perturbed_organs"] == ["uterus", "breast"]


@pytest.mark.parametrize("table, words", [
    ({"bogus": 1}, ["[base]", "'bogus'", "valid keys", "perturbed_organs"]),
    ({"age": "3y"}, ["[base] age", "newborn", "adult"]),
    ({"sex": "x"}, ["[base] sex", "male", "female"]),
    ({"voxel_mm": 0.5}, ["[base] voxel_mm", "[1, 10]"]),
    ({"protocol": "nope.toml"}, ["[base] protocol", "does not exist"]),
    ({"organs": ["liverr"]}, ["[base] organs", "'liverr'", "liver", "lungs"]),
    ({"organs": ["testes"], "sex": "female"}, ["[base] organs", "'testes'", "ovaries"]),
    ({"perturbed_organs": ["red_marrow"]}, ["[base] perturbed_organs", "'red_marrow'", "liver"]),
    ({"organs": []}, ["[base] organs", "non-empty"]),
    ({"histories": 1001}, ["[base] histories", "multiple of batches"]),
    ({"seed": -1}, ["[base] seed"]),
    ({"threads": 0}, ["[base] threads"]),
    ({"z_start_mm": 10.0, "z_end_mm": 5.0}, ["[base] z_end_mm", "z_start_mm"]),
])
def test_parse_errors_name_the_key(tmp_path, table, words):
    with pytest.raises(_Err) as e:
        parse_dose_base(table, tmp_path, _Err)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_bad_protocol_file_is_reported_under_base(tmp_path):
    (tmp_path / "p.toml").write_text("[tube]\nkvp = 500\n[scan]\ncollimation_mm = 40\npitch = 1\n"
                                     "z_start_mm = 0\nz_end_mm = 10\n")
    with pytest.raises(_Err, match=r"\[base\] protocol.*kvp"):
        parse_dose_base({"protocol": "p.toml"}, tmp_path, _Err)
    (tmp_path / "p.toml").write_text((tmp_path / "p.toml").read_text().replace("500", "120"))
    with pytest.raises(_Err, match=r"\[base\] protocol p.toml.*mAs_per_rotation"):
        parse_dose_base({"protocol": "p.toml"}, tmp_path, _Err)


def test_prepare_is_cached(study):
    base, prepared, work = study
    path = work / "prepared" / "prepared.json"
    mtime = path.stat().st_mtime_ns
    again = prepare_dose_base(base, work / "prepared")
    assert again == json.loads(path.read_text()) and path.stat().st_mtime_ns == mtime
    assert prepared["scan"]["z_start_mm"] == 100.0 and prepared["scan"]["source"] == "base"
    n = prepared["normalisation"]
    assert n["ctdivol_mGy"] > 0 and n["photons_in_scan"] > 0 and 0 < n["relative_sigma"] < 0.2


def _case(study, params, name, **kw):
    base, prepared, work = study
    return run_dose_case(base, params, work / name, prepared=prepared, **kw)


def test_nominal_case_results_schema_and_reproducibility(study):
    base, prepared, work = study
    r = _case(study, {}, "nominal", figures=True)
    keys = {f"organ_dose_mGy.{o}" for o in base["organs"]} | {"effective_dose_mSv", "ctdivol_mGy"}
    assert set(r["qoi"]) == keys and set(r["qoi_sigma"]) == keys
    assert all(v > 0 for v in r["qoi"].values()) and all(s > 0 for s in r["qoi_sigma"].values())
    assert r["qoi"]["ctdivol_mGy"] == prepared["normalisation"]["ctdivol_mGy"]
    assert r["phantom"]["age"] == "5y" and r["phantom"]["voxel_mm"] == 5.0
    assert r["phantom"]["organ_masses_g"]["liver"] == pytest.approx(prepared["nominal_phantom"]["organ_masses_g"]
                                                                    ["liver"])
    assert {"organ_offset_mm", "body_offset_mm", "voxel_mm", "summary"} <= set(r["perturbation"])
    assert r["perturbation"]["summary"]["organs"]["liver"]["mass_change_percent"] == 0.0
    assert abs(r["energy_balance_relative_error"]) < 1e-9
    case = work / "nominal"
    assert (case / "dose_map.png").is_file() and (case / "labels.nii.gz").is_file()
    assert not (case / "prepared").exists()  # the CTDI run is not repeated per case
    # no ctdi run in the case: the study's cached normalisation was used
    assert json.loads((case / "results.json").read_text()) == r
    # the padded grid keeps the world frame: the liver's centroid is where the phantom builder put it
    from phantoms.stylized import build_reference_phantom
    from pipeline.image import read_image

    ph = build_reference_phantom("5y", "male", 5.0)
    vol = read_image(case / "labels.nii.gz")
    lid = ph.organ("liver").label

    def centroid_mm(v):
        k = np.argwhere(np.asarray(v.array) == lid).mean(axis=0)[::-1]  # (x, y, z) index
        return np.asarray(v.origin_xyz_mm) + k * np.asarray(v.spacing_mm)[::-1]

    assert np.allclose(centroid_mm(vol), centroid_mm(ph.labels), atol=1e-6)
    # rerun into the same folder: returned as is, not recomputed
    mtime = (case / "results.json").stat().st_mtime_ns
    assert _case(study, {"organ_offset_mm": 0.0}, "nominal", figures=True) == r
    assert (case / "results.json").stat().st_mtime_ns == mtime
    # same params and seed in a fresh folder: the same numbers exactly
    r2 = _case(study, {"body_offset_mm": 0.0}, "nominal_again", figures=True)
    assert r2["qoi"] == r["qoi"] and r2["qoi_sigma"] == r["qoi_sigma"]
    # without the dose map the organs are tallied per label in the threads: the same photons, the
    # same doses up to the order of the sums
    r3 = _case(study, {"body_offset_mm": 0.0}, "nominal_labels")
    assert r3["qoi"] == pytest.approx(r["qoi"], rel=1e-12) and r3["qoi_sigma"] == pytest.approx(r["qoi_sigma"], rel=1e-9)


def test_body_offset_lowers_deep_organ_dose_within_the_attenuation_bound(study):
    import xraydb

    nom = _case(study, {}, "nominal")
    thick = _case(study, {"body_offset_mm": 10.0}, "body_plus_10")
    mu_cm = xraydb.material_mu("H2O", 70e3, density=1.0)  # 1/cm
    bound = 1.0 - math.exp(-mu_cm * 1.0)
    assert 0.15 < bound < 0.2
    k = "organ_dose_mGy.liver"
    d0, d1 = nom["qoi"][k], thick["qoi"][k]
    s = math.hypot(nom["qoi_sigma"][k] / d0, thick["qoi_sigma"][k] / d1)  # ignores the (positive) CRN correlation
    drop = 1.0 - d1 / d0
    assert 0.0 < drop < bound + 3 * s, (drop, bound, s)
    rep = thick["perturbation"]["body_offset_mm"]
    assert rep["delta_mm"] == 10.0 and rep["volume_change_mm3"] > 0
    assert thick["perturbation"]["summary"]["body_mass_change_percent"] > 0
    assert thick["perturbation"]["summary"]["organs"]["liver"]["mass_change_percent"] == 0.0  # organs untouched


def test_organ_offset_changes_only_the_perturbed_organs(study):
    r = _case(study, {"organ_offset_mm": 5.0}, "organs_plus_5")
    summ = r["perturbation"]["summary"]["organs"]
    assert summ["liver"]["mass_change_percent"] > 5 and summ["stomach_wall"]["mass_change_percent"] > 5
    assert summ["lungs"]["mass_change_percent"] == 0.0 and summ["kidneys"]["mass_change_percent"] == 0.0
    rep = r["perturbation"]["organ_offset_mm"]["organs"]
    assert set(rep) == {"liver", "stomach_wall"} and "soft_tissue" not in rep["liver"]["blocked_by"]


def test_body_shrink_removes_only_skin_and_soft_tissue(study):
    """A 10 mm narrower outline takes subcutaneous tissue, not the breast, gonads or bones
    that lie within 10 mm of the 5-year-old's skin: every tissue and organ mass stays."""
    nom = _case(study, {}, "nominal")
    r = _case(study, {"body_offset_mm": -10.0}, "body_minus_10")
    assert nom["warnings"] == [] and r["warnings"] == []
    assert r["effective_dose_weight_covered"] == pytest.approx(1.0)
    rep = r["perturbation"]["body_offset_mm"]
    assert rep["volume_change_mm3"] < 0 and rep["protected_voxels"] > 0
    assert set(rep["label_voxel_change"]) <= {"soft_tissue", "skin"}, rep["label_voxel_change"]


@pytest.mark.parametrize("params, words", [
    ({"radius_mm": 1.0}, ["unknown dose parameter", "'radius_mm'", "organ_offset_mm", "voxel_mm"]),
    ({"voxel_mm": 0.2}, ["voxel_mm", "[1, 10]"]),
    ({"body_offset_mm": "x"}, ["body_offset_mm", "number"]),
    ({"organ_offset_mm": -40.0}, ["organ_offset_mm", "completely", "smaller"]),
])
def test_bad_params_name_the_parameter(study, params, words):
    with pytest.raises(DoseCaseError) as e:
        _case(study, params, "bad")
    assert isinstance(e.value, ValueError) and all(w in str(e.value) for w in words), str(e.value)
    assert not (study[2] / "bad" / "results.json").exists()
