"""Tests for phantoms.tissues: data integrity, ICRP reference values, CSV round trip, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from phantoms import tissues as T
from phantoms.tissues import AGES, Tissue, TissueError


@pytest.fixture
def tg195_materials(shared_reference) -> Path:
    """TG-195 Case 5 material table (shared reference data; the test skips when it is absent)."""
    return shared_reference("tg195", "case5_materials.csv")


REQUIRED = ("soft_tissue", "muscle", "adipose", "skin", "blood", "brain", "heart", "liver", "kidney",
            "spleen", "pancreas", "gi_tract_wall", "gi_tract_contents", "thyroid", "breast",
            "lung_inflated", "cortical_bone", "spongiosa", "red_marrow", "cartilage", "eye_lens",
            "water", "air", "pmma")


# ------------------------------------------------------------------ compositions
def test_library_has_every_required_tissue():
    assert set(REQUIRED) <= set(T.tissue_names())


@pytest.mark.parametrize("age", AGES)
def test_every_tissue_resolves_at_every_age_with_valid_fractions(age):
    for name in T.tissue_names():
        t = T.tissue(name, age)
        assert t.name == name and t.age == age and t.source
        assert all(w >= 0 for w in t.mass_fractions.values())
        assert sum(t.mass_fractions.values()) == pytest.approx(1.0, abs=1e-4)
        assert 1e-3 < t.density_g_cm3 < 2.0


@pytest.mark.parametrize("age", [a for a in AGES if a != "adult"])
def test_non_adult_ages_fall_back_visibly(age):
    # no age-specific data is in the tables: every body tissue must say the adult value is used
    for name in T.tissue_names():
        t = T.tissue(name, age)
        adult = T.tissue(name)
        assert t.density_g_cm3 == adult.density_g_cm3 and t.mass_fractions == adult.mass_fractions
        assert t.note, f"{name} at {age} reuses the adult value without saying so"
        assert ("adult value used" in t.note) or ("not a body tissue" in t.note)


@pytest.mark.parametrize("name, lo, hi", [
    ("lung_inflated", 0.26, 0.40), ("cortical_bone", 1.85, 1.92), ("adipose", 0.92, 0.97),
    ("water", 0.998, 1.0), ("pmma", 1.18, 1.19), ("air", 1.18e-3, 1.23e-3), ("soft_tissue", 1.02, 1.06)])
def test_densities_in_physical_range(name, lo, hi):
    assert lo <= T.tissue(name).density_g_cm3 <= hi


def test_water_is_h2o_stoichiometry():
    # independent truth: w_H = 2 A_H / (2 A_H + A_O) with IUPAC atomic weights
    w_h = 2 * 1.00794 / (2 * 1.00794 + 15.9994)
    fr = T.tissue("water").mass_fractions
    assert set(fr) == {"H", "O"}
    assert fr["H"] == pytest.approx(w_h, abs=2e-5)


def test_pmma_is_c5h8o2_stoichiometry():
    a = {"H": 1.00794, "C": 12.0107, "O": 15.9994}
    m = 5 * a["C"] + 8 * a["H"] + 2 * a["O"]
    fr = T.tissue("pmma").mass_fractions
    for s, n in (("C", 5), ("H", 8), ("O", 2)):
        assert fr[s] == pytest.approx(n * a[s] / m, abs=2e-4)


def test_compositions_match_tg195_icru46_table(tg195_materials):
    # independent copy of the ICRU-46 values (AAPM TG-195 Case 5 via XRayMClib)
    with tg195_materials.open(newline="") as fh:
        tg = {r["tissue_name"]: r for r in csv.DictReader(fh)}
    pairs = {"soft_tissue": "Soft tissue", "lung_inflated": "Lung", "liver": "Liver", "spleen": "Spleen",
             "skin": "Skin", "thyroid": "Thyroid", "cortical_bone": "Cortical Bone",
             "gi_tract_wall": "Stomach", "pancreas": "Pancreas"}
    for ours, theirs in pairs.items():
        t = T.tissue(ours)
        assert t.density_g_cm3 == pytest.approx(float(tg[theirs]["density_g_cm3"]))
        for s in ("H", "C", "N", "O", "Na", "Mg", "P", "S", "Cl", "K", "Ca", "I"):
            assert t.mass_fractions.get(s, 0.0) == pytest.approx(float(tg[theirs][s]), abs=1e-9), (ours, s)


def test_thyroid_contains_iodine_and_bone_contains_calcium():
    assert T.tissue("thyroid").mass_fractions["I"] == pytest.approx(0.001)
    assert T.tissue("cortical_bone").mass_fractions["Ca"] == pytest.approx(0.225)


# ------------------------------------------------------------------ iodinated blood
@pytest.mark.parametrize("c", [0.0, 5.0, 10.0, 350.0])
def test_iodinated_blood_mixing_rule(c):
    blood = T.tissue("blood")
    t = T.iodinated_blood(c)
    rho = blood.density_g_cm3 + c / 1000.0
    assert t.density_g_cm3 == pytest.approx(rho)
    # iodine mass per volume must equal the requested concentration (mg/ml = 1e-3 g/cm3)
    assert t.mass_fractions.get("I", 0.0) * t.density_g_cm3 * 1000.0 == pytest.approx(c, abs=1e-9)
    assert sum(t.mass_fractions.values()) == pytest.approx(1.0, abs=1e-12)
    # the blood elements keep their ratios: mass per volume of every other element unchanged
    for s, w in blood.mass_fractions.items():
        assert t.mass_fractions[s] * t.density_g_cm3 == pytest.approx(w * blood.density_g_cm3, rel=1e-12)


def test_iodinated_blood_10mg_ml_value():
    # hand value: 0.010 / (1.06 + 0.010) = 0.0093458
    assert T.iodinated_blood(10.0).mass_fractions["I"] == pytest.approx(0.0093458, abs=1e-7)


@pytest.mark.parametrize("bad", [-1.0, 401.0, float("nan"), float("inf"), "ten", None])
def test_iodinated_blood_bad_concentration(bad):
    with pytest.raises(TissueError, match="mg_iodine_per_ml"):
        T.iodinated_blood(bad)


# ------------------------------------------------------------------ organ masses
@pytest.mark.parametrize("sex", T.SEXES)
@pytest.mark.parametrize("age", AGES)
def test_organ_masses_exist_for_every_age_and_sex(age, sex):
    m = T.organ_masses(age, sex)
    for organ in ("liver", "lungs", "kidneys", "spleen", "thyroid", "skin", "stomach_wall", "total_body"):
        assert m[organ] > 0
    src = T.organ_mass_sources(age, sex)
    assert set(src) == set(m) and all("ICRP" in s for s in src.values())


@pytest.mark.parametrize("sex", T.SEXES)
@pytest.mark.parametrize("organ", ["liver", "lungs", "kidneys", "spleen", "skin", "total_body",
                                   "skeletal_muscle", "stomach_wall"])
def test_organ_masses_increase_from_newborn_to_adult(organ, sex):
    masses = [T.organ_masses(a, sex)[organ] for a in AGES]
    assert all(b >= a for a, b in zip(masses, masses[1:])), masses
    assert masses[-1] > 5 * masses[0]


def test_adult_reference_values_icrp89():
    m = T.organ_masses("adult", "male")
    f = T.organ_masses("adult", "female")
    assert m["liver"] == 1800 and m["brain"] == 1450 and m["lungs"] == 1200 and m["total_body"] == 73000
    assert f["liver"] == 1400 and f["brain"] == 1300 and f["breast"] == 500 and f["total_body"] == 60000
    assert T.organ_masses("newborn")["liver"] == 130 and T.organ_masses("newborn")["total_body"] == 3500


def test_sex_specific_organs():
    for age in AGES:
        assert "testes" in T.organ_masses(age, "male") and "testes" not in T.organ_masses(age, "female")
        assert "ovaries" in T.organ_masses(age, "female") and "uterus" not in T.organ_masses(age, "male")


def test_organ_masses_bad_input():
    with pytest.raises(TissueError, match=r"age must be one of .*newborn"):
        T.organ_masses("2y")
    with pytest.raises(TissueError, match=r"sex must be one of .*female"):
        T.organ_masses("adult", "m")


# ------------------------------------------------------------------ weighting factors
def test_tissue_weighting_factors_icrp103():
    w = T.tissue_weighting_factors()
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)
    assert len(w) == 15
    assert [k for k, v in w.items() if v == 0.12] == ["red_marrow", "colon", "lung", "stomach", "breast",
                                                     "remainder"]
    assert w["gonads"] == 0.08
    assert {k for k, v in w.items() if v == 0.04} == {"bladder", "oesophagus", "liver", "thyroid"}
    assert {k for k, v in w.items() if v == 0.01} == {"bone_surface", "brain", "salivary_glands", "skin"}


def test_remainder_tissues():
    male, female = T.remainder_tissues("male"), T.remainder_tissues("female")
    assert len(male) == len(female) == 13
    assert "prostate" in male and "prostate" not in female and "uterus_cervix" in female
    with pytest.raises(TissueError, match="sex"):
        T.remainder_tissues("x")


# ------------------------------------------------------------------ materials CSV
def test_materials_csv_round_trip(tmp_path):
    rows = [(0, T.tissue("air")), (3, T.tissue("soft_tissue", "5y")), (5, T.tissue("lung_inflated", "newborn")),
            (19, T.tissue("cortical_bone")), (30, T.iodinated_blood(12.5))]
    p = T.write_materials_csv(rows, tmp_path / "sub" / "materials.csv")
    back = T.read_materials_csv(p)
    assert back == sorted(rows, key=lambda r: r[0])
    assert not list(p.parent.glob("*.tmp"))


def test_materials_csv_readable_by_engine_format(tmp_path):
    # the engine reads label_id, tissue_name, density_g_cm3 then element columns; check the layout
    p = T.write_materials_csv([(1, T.tissue("thyroid")), (2, T.tissue("water"))], tmp_path / "m.csv")
    with p.open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header[:3] == ["label_id", "tissue_name", "density_g_cm3"]
    assert header[3:-3] == ["H", "C", "N", "O", "Na", "P", "S", "Cl", "K", "I"]
    assert header[-3:] == ["age", "source", "note"]


def test_read_tg195_materials_file(tg195_materials):
    rows = dict(T.read_materials_csv(tg195_materials))
    assert rows[5].name == "Lung" and rows[5].density_g_cm3 == 0.26
    assert rows[3].mass_fractions == T.tissue("soft_tissue").mass_fractions


def test_materials_csv_bad_input(tmp_path):
    with pytest.raises(TissueError, match="at least one"):
        T.write_materials_csv([], tmp_path / "a.csv")
    with pytest.raises(TissueError, match="label_id must be an integer"):
        T.write_materials_csv([(-1, T.tissue("water"))], tmp_path / "a.csv")
    with pytest.raises(TissueError, match="more than once"):
        T.write_materials_csv([(1, T.tissue("water")), (1, T.tissue("air"))], tmp_path / "a.csv")
    with pytest.raises(TissueError, match="expected a Tissue"):
        T.write_materials_csv([(1, "water")], tmp_path / "a.csv")
    with pytest.raises(TissueError, match="does not exist"):
        T.read_materials_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("label_id,tissue_name,density_g_cm3,H,O\n1,w,1.0,0.5,0.2\n")
    with pytest.raises(TissueError, match="line 2.*sum"):
        T.read_materials_csv(bad)
    bad.write_text("label_id,name,H\n1,w,1\n")
    with pytest.raises(TissueError, match="missing column 'tissue_name'"):
        T.read_materials_csv(bad)


# ------------------------------------------------------------------ bad input
def test_unknown_tissue_lists_valid_names():
    with pytest.raises(TissueError, match=r"unknown tissue name 'bone'.*cortical_bone"):
        T.tissue("bone")


def test_unknown_age_lists_ages():
    with pytest.raises(TissueError, match=r"age must be one of \['newborn', '1y', '5y', '10y', '15y', 'adult'\]"):
        T.tissue("liver", "3y")
    with pytest.raises(TissueError, match="age must be one of"):
        T.iodinated_blood(5.0, age="old")


@pytest.mark.parametrize("kwargs, msg", [
    (dict(density_g_cm3=0.0), "density_g_cm3"),
    (dict(density_g_cm3=float("nan")), "density_g_cm3"),
    (dict(mass_fractions={"H": 0.5, "O": 0.4}), "sum to"),
    (dict(mass_fractions={"H": -0.1, "O": 1.1}), ">= 0"),
    (dict(mass_fractions={"Xx": 1.0}), "not a chemical symbol"),
    (dict(mass_fractions={}), "non-empty dict"),
    (dict(age="child"), "age must be one of"),
    (dict(name=""), "name"),
])
def test_tissue_validation(kwargs, msg):
    base = dict(name="w", density_g_cm3=1.0, mass_fractions={"H": 0.111894, "O": 0.888106}, age="adult", source="x")
    base.update(kwargs)
    with pytest.raises(TissueError, match=msg):
        Tissue(**base)


def test_tissue_error_is_value_error():
    assert issubclass(TissueError, ValueError)


def test_data_table_is_reproducible_from_spekpy(tg195_materials):
    spekpy = pytest.importorskip("spekpy")  # noqa: F841 - provenance check only when installed
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_tc", T.DATA_DIR / "build_tissue_compositions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.TG195 = tg195_materials  # the shared copy relative to this checkout, not the script's default path
    assert mod.build() == (T.DATA_DIR / "tissue_compositions.csv").read_text()
