"""Tests for phantoms.stylized: organ and body masses against ICRP 89, frame, files, bad input.

Masses are recomputed here from the label map (voxel count × voxel volume × the density the
dose engine gets) and compared with ICRP Publication 89, read here directly from the data
file ``phantoms/data/icrp89_organ_masses.csv`` (sources in ``phantoms/data/SOURCES.md``), not
through the library or its organ table. The organ sizes were fitted to these very values, so
the organ-mass check verifies the fit and its voxelisation, not independent anatomy.
``benchmarks/validate_phantom_masses.py`` prints the whole table.
"""

from __future__ import annotations

import csv
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from phantoms import stylized as S
from phantoms.stylized import EXCLUDED_FROM_MASS_CHECK, LABELS, PhantomError, build_reference_phantom, write_phantom
from phantoms.tissues import AGES, SEXES, read_materials_csv, tissue
from pipeline.image import read_image

CASES = [(a, s) for a in AGES for s in SEXES]
ICRP89_CSV = Path(S.__file__).resolve().parent / "data" / "icrp89_organ_masses.csv"
#: ICRP 89 Table 2.9 reference total body masses (g), restated here independently of the data file.
BODY_MASS_G = {("newborn", "male"): 3500, ("newborn", "female"): 3500, ("1y", "male"): 10000,
               ("1y", "female"): 10000, ("5y", "male"): 19000, ("5y", "female"): 19000, ("10y", "male"): 32000,
               ("10y", "female"): 32000, ("15y", "male"): 56000, ("15y", "female"): 53000,
               ("adult", "male"): 73000, ("adult", "female"): 60000}
#: Every organ with an ICRP 89 value (README: "within 2 %"); measured worst +1.75 %
#: (10 y male small intestine wall).
ORGAN_MASS_TOL = 0.02
#: Body mass against ICRP 89. The fit brings the body within 1 % with the skin at its tissue
#: density, but the one-voxel skin layer is then density-scaled down to its ICRP 89 mass
#: (factor 0.46–0.64 at 1–10 y), which takes the body 1.6–3.0 % below the reference
#: (measured worst −3.02 %, 5 y male). README states 3.5 %.
BODY_MASS_TOL = 0.035

#: Organs every phantom must hold to compute ICRP 103 effective dose (plus sex-specific ones).
REQUIRED = ("red_marrow", "colon_wall", "lungs", "stomach_wall", "breast", "urinary_bladder_wall", "oesophagus",
            "liver", "thyroid", "cortical_bone", "brain", "salivary_glands", "skin", "adrenals", "gallbladder_wall",
            "heart_wall", "kidneys", "soft_tissue", "pancreas", "small_intestine_wall", "spleen", "thymus")
#: Label name → ICRP 89 keys (independent restatement of the reference each label stands for).
ICRP_KEYS = {"cortical_bone": ("bone_cortical", "bone_trabecular"), "red_marrow": ("marrow_active",),
             "yellow_marrow": ("marrow_inactive",), "heart_wall": ("heart_tissue",), "oesophagus": ("oesophagus_wall",)}


@lru_cache(maxsize=None)
def phantom(age: str, sex: str):
    return build_reference_phantom(age, sex)


@lru_cache(maxsize=None)
def icrp89() -> dict[tuple[str, str], dict[str, float]]:
    """ICRP 89 masses (g) by (age, sex), then organ, straight from the data file."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    with ICRP89_CSV.open(newline="") as fh:
        for r in csv.DictReader(line for line in fh if not line.startswith("#")):
            out.setdefault((r["age"], r["sex"]), {})[r["organ"]] = float(r["mass_g"])
    return out


def voxel_masses(ph) -> dict[str, float]:
    """Mass (g) of every label, from the label map and the densities the dose engine gets
    (``ph.materials()``: the library's, except skin, whose one-voxel layer is density-scaled)."""
    counts = np.bincount(ph.labels.array.ravel(), minlength=max(LABELS) + 1)
    v_cm3 = ph.voxel_mm ** 3 / 1000.0
    dens = {k: t.density_g_cm3 for k, t in ph.materials()}
    for k, d in LABELS.items():
        if d.name != "skin" and k in dens:
            assert dens[k] == tissue(d.tissue, ph.age).density_g_cm3
    return {d.name: counts[k] * v_cm3 * dens[k] for k, d in LABELS.items() if k != 0 and counts[k] > 0}


def reference(name: str, age: str, sex: str) -> float | None:
    ref = icrp89()[(age, sex)]
    if name == "heart_contents":
        return ref["heart_with_blood"] - ref["heart_tissue"]
    keys = ICRP_KEYS.get(name, (name,))
    return sum(ref[k] for k in keys) if all(k in ref for k in keys) else None


# ------------------------------------------------------------------ masses vs ICRP 89
@pytest.mark.parametrize("age, sex", CASES)
def test_organ_masses_within_2_percent_of_icrp89(age, sex):
    """Every voxelised organ with an ICRP 89 value is within 2 % of it (skin by construction:
    its density is scaled to the reference mass)."""
    ph = phantom(age, sex)
    masses = voxel_masses(ph)
    checked, dev = [], {}
    for name, m in masses.items():
        ref = reference(name, age, sex)
        if ref is None or name in EXCLUDED_FROM_MASS_CHECK:
            continue
        if ref == 0:
            assert m == 0, (name, m)
            continue
        dev[name] = m / ref - 1
        checked.append(name)
    worst = max(dev, key=lambda n: abs(dev[n]))
    print(f"\n{age} {sex}: {len(dev)} organs, worst {worst} {100 * dev[worst]:+.2f} % (tolerance 2 %)")
    bad = {n: f"{masses[n]:.2f} g vs ICRP 89 {reference(n, age, sex):g} g ({100 * d:+.2f} %)"
           for n, d in dev.items() if abs(d) > ORGAN_MASS_TOL}
    assert not bad, bad
    # every organ with an ICRP 89 value is checked (only the documented exclusions are skipped)
    must = set(REQUIRED) - set(EXCLUDED_FROM_MASS_CHECK) - {"breast"} | ({"testes", "prostate"} if sex == "male"
                                                                           else {"ovaries", "uterus"})
    assert must <= set(checked), must - set(checked)
    if age in ("15y", "adult"):
        assert "breast" in checked  # ICRP 89 gives breast masses from 15 y
    # the table's own numbers agree with the label map
    for e in ph.organs.values():
        assert e.mass_g == pytest.approx(masses.get(e.name, 0.0), rel=1e-9)


@pytest.mark.parametrize("age, sex", CASES)
def test_body_mass_and_height_match_icrp89(age, sex):
    ph = phantom(age, sex)
    total = sum(voxel_masses(ph).values())
    ref = BODY_MASS_G[(age, sex)]
    assert icrp89()[(age, sex)]["total_body"] == ref  # the data file says the same
    print(f"\n{age} {sex}: body {total / 1000:.2f} kg vs ICRP 89 {ref / 1000:g} kg "
          f"({100 * (total / ref - 1):+.2f} %; tolerance {100 * BODY_MASS_TOL:g} %)")
    assert abs(total - ref) <= BODY_MASS_TOL * ref
    assert total == pytest.approx(ph.body["mass_g"], rel=1e-9)
    height = {"newborn": 51, "1y": 76, "5y": 109, "10y": 138, "15y": 167 if sex == "male" else 161,
              "adult": 176 if sex == "male" else 163}[age]
    # extent of the body along z (voxel edges) against the ICRP 89 reference height
    zs = np.flatnonzero(np.any(ph.labels.array != 0, axis=(1, 2)))
    extent_cm = (zs[-1] - zs[0] + 1) * ph.voxel_mm / 10.0
    assert abs(extent_cm - height) <= 0.03 * height


@pytest.mark.parametrize("age, sex", CASES)
def test_every_organ_for_effective_dose_is_present(age, sex):
    assert len([k for k in LABELS if k != 0]) == 35  # README: "35 labels"
    names = set(voxel_masses(phantom(age, sex)))
    gonads = {"testes", "prostate"} if sex == "male" else {"ovaries", "uterus"}
    assert set(REQUIRED) | gonads | {"eyes", "eye_lens", "heart_contents", "stomach_contents"} <= names
    assert not ({"ovaries", "uterus"} if sex == "male" else {"testes", "prostate"}) & names


@pytest.mark.parametrize("sex", SEXES)
def test_trunk_organs_grow_with_age_where_icrp89_does(sex):
    trunk = ("lungs", "liver", "kidneys", "spleen", "pancreas", "stomach_wall", "heart_wall", "small_intestine_wall",
             "colon_wall", "urinary_bladder_wall", "oesophagus", "gallbladder_wall", "red_marrow", "cortical_bone")
    masses = [voxel_masses(phantom(a, sex)) for a in AGES]
    for organ in trunk:
        refs = [reference(organ, a, sex) for a in AGES]
        ms = [m[organ] for m in masses]
        for i in range(len(AGES) - 1):
            if refs[i + 1] > refs[i]:
                assert ms[i + 1] > ms[i], (organ, AGES[i], AGES[i + 1], ms)
        assert ms[-1] > 3 * ms[0], (organ, ms)


def test_red_marrow_retreats_from_the_legs_with_age():
    # newborn: all marrow is red; adult: the legs' marrow (z < 0) is mostly yellow, the trunk's mostly red
    nb = phantom("newborn", "male").labels.array
    assert np.count_nonzero(nb == S.YELLOW) == 0 and np.count_nonzero(nb == S.RED) > 0
    ad = phantom("adult", "male")
    k0 = int(round(-ad.labels.origin_xyz_mm[2] / ad.voxel_mm))  # first slice above z = 0 (voxel centres at ±v/2)
    legs, trunk = ad.labels.array[:k0], ad.labels.array[k0:]
    assert np.count_nonzero(legs == S.YELLOW) > 3 * np.count_nonzero(legs == S.RED)
    assert np.count_nonzero(trunk == S.RED) > np.count_nonzero(trunk == S.YELLOW) / 2


# ------------------------------------------------------------------ frame
@pytest.mark.parametrize("age", ["newborn", "adult"])
def test_frame_is_lps_centred_with_z0_at_trunk_base(age):
    ph = phantom(age, "female")
    vol, v = ph.labels, ph.voxel_mm
    a = vol.array
    nz, ny, nx = a.shape
    assert vol.spacing_mm == (v, v, v) and np.allclose(vol.direction_xyz, np.eye(3))
    assert a.dtype == np.uint8
    ox, oy, oz = vol.origin_xyz_mm
    assert ox == pytest.approx(-(nx - 1) / 2 * v) and oy == pytest.approx(-(ny - 1) / 2 * v)
    k0 = int(round(-oz / v))
    assert vol.index_to_world([k0, 0, 0])[2] == pytest.approx(v / 2)  # voxels above z = 0 start at k0
    at_cm, bt_cm = ph.body["trunk_semi_axes_cm"]
    # just above z = 0 the trunk ellipse: area π AT BT; just below, two legs with a gap on the axis
    area = np.count_nonzero(a[k0 + 1]) * (v / 10.0) ** 2
    assert area == pytest.approx(math.pi * at_cm * bt_cm, rel=0.03)
    assert a[k0 + 1, ny // 2, nx // 2] != 0
    centre_below = a[k0 - int(0.3 * ph.body["leg_length_cm"] * 10 / v), ny // 2, nx // 2 - 1: nx // 2 + 1]
    assert np.all(centre_below == 0)

    def centroid(name):
        k, j, i = np.nonzero(a == ph.organ(name).label)
        return vol.index_to_world(np.stack([k.mean(), j.mean(), i.mean()]))

    liver, spleen, heart, spine_marrow, brain, bladder = (centroid(n) for n in (
        "liver", "spleen", "heart_wall", "red_marrow", "brain", "urinary_bladder_wall"))
    assert liver[0] < 0 < spleen[0]  # liver on the right (-x), spleen on the left (+x)
    kidneys = centroid("kidneys")
    assert heart[1] < kidneys[1]  # heart anterior (-y) of the kidneys
    assert bladder[2] < liver[2] < heart[2] < brain[2]  # superior is +z


def test_build_is_deterministic_and_voxel_size_is_honoured():
    a = build_reference_phantom("5y", "male", 4.0)
    b = build_reference_phantom("5y", "male", 4)
    assert a.voxel_mm == 4.0 and a.labels.spacing_mm == (4.0, 4.0, 4.0)
    assert np.array_equal(a.labels.array, b.labels.array)
    # big organs are still fitted at 4 mm
    m = voxel_masses(a)
    for organ in ("liver", "lungs", "brain", "kidneys"):
        ref = reference(organ, "5y", "male")
        assert abs(m[organ] - ref) <= 0.10 * ref


# ------------------------------------------------------------------ materials and files
@pytest.mark.parametrize("age, sex", [("newborn", "male"), ("10y", "female"), ("adult", "male")])
def test_every_label_has_a_material_and_materials_are_normalised(age, sex):
    ph = phantom(age, sex)
    rows = dict(ph.materials())
    present = set(np.unique(ph.labels.array).tolist())
    assert present <= set(rows) and 0 in present
    assert rows[0].name == "air"
    for label, t in rows.items():
        assert sum(t.mass_fractions.values()) == pytest.approx(1.0, abs=1e-4)
        expected = tissue(LABELS[label].tissue, age)
        assert t.mass_fractions == expected.mass_fractions
        if LABELS[label].name == "skin":  # density-scaled one-voxel layer: the ICRP 89 skin mass
            assert 0.3 * expected.density_g_cm3 < t.density_g_cm3 < 1.5 * expected.density_g_cm3
        else:
            assert t.density_g_cm3 == expected.density_g_cm3


def test_write_phantom_files_read_back(tmp_path):
    ph = phantom("1y", "female")
    paths = write_phantom(ph, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"labels.nii.gz", "materials.csv", "organs.json"}
    back = read_image(paths["labels"])
    assert np.array_equal(back.array, ph.labels.array)
    assert back.spacing_mm == pytest.approx(ph.labels.spacing_mm)
    assert back.origin_xyz_mm == pytest.approx(ph.labels.origin_xyz_mm)
    assert np.allclose(back.direction_xyz, np.eye(3))
    mats = dict(read_materials_csv(paths["materials"]))
    assert set(np.unique(back.array).tolist()) <= set(mats)
    # the dose engine reads the same files into a voxel phantom with air (label 0) as world
    from physics.transport import VoxelPhantom
    from physics.transport import read_materials_csv as engine_materials

    engine = engine_materials(paths["materials"])
    assert set(engine) == set(mats) and engine[0].density_g_cm3 == pytest.approx(mats[0].density_g_cm3)
    VoxelPhantom(material_id=back.array, spacing_mm=back.spacing_mm, origin_xyz_mm=back.origin_xyz_mm,
                 world_material_id=0)
    assert mats[0].name == "air" and mats[ph.organ("liver").label].name == "liver"
    for t in mats.values():
        assert sum(t.mass_fractions.values()) == pytest.approx(1.0, abs=1e-4)
    data = json.loads(paths["organs"].read_text())
    assert {"schema_version", "phantom", "body", "organs", "composites", "icrp103"} <= set(data)
    liver = data["organs"]["liver"]
    assert set(liver) >= {"label_ids", "mass_g", "volume_cm3", "tissue", "reference_mass_g", "deviation_pct"}
    assert liver["reference_mass_g"] == 330 and liver["label_ids"] == [ph.organ("liver").label]
    assert abs(liver["deviation_pct"]) < 100 * ORGAN_MASS_TOL
    # design values (no ICRP 89 mass) are flagged as such
    assert data["organs"]["breast"]["mass_reference"] is None and "no ICRP 89" in data["organs"]["breast"]["note"]
    assert data["organs"]["urinary_bladder_contents"]["mass_reference"] is None
    assert data["icrp103"]["gonads"]["labels"] == [ph.organ("ovaries").label]
    assert data["icrp103"]["lymphatic_nodes"]["labels"] is None
    assert data["body"]["reference_mass_g"] == 10000
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_plot_phantom_writes_png(tmp_path):
    p = S.plot_phantom(phantom("newborn", "female"), tmp_path / "fig" / "phantom.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ bad input
def test_unsupported_age_lists_supported_ones():
    with pytest.raises(PhantomError, match=r"age must be one of \['newborn', '1y', '5y', '10y', '15y', 'adult'\].*'3y'"):
        build_reference_phantom("3y")
    assert issubclass(PhantomError, ValueError)
    assert S.SUPPORTED_AGES == AGES


@pytest.mark.parametrize("kwargs, msg", [
    (dict(sex="m"), r"sex must be one of \['male', 'female'\]"),
    (dict(voxel_mm=0.5), r"voxel_mm must be .*\[1, 10\]"),
    (dict(voxel_mm=11), "voxel_mm"),
    (dict(voxel_mm=float("nan")), "voxel_mm"),
    (dict(voxel_mm="two"), "voxel_mm"),
    (dict(voxel_mm=True), "voxel_mm"),
])
def test_bad_sex_and_voxel_size(kwargs, msg):
    with pytest.raises(PhantomError, match=msg):
        build_reference_phantom("adult", **kwargs)


def test_write_and_plot_reject_other_objects(tmp_path):
    with pytest.raises(PhantomError, match="ReferencePhantom"):
        write_phantom("not a phantom", tmp_path)
    with pytest.raises(PhantomError, match="ReferencePhantom"):
        S.plot_phantom(None, tmp_path / "x.png")
    with pytest.raises(PhantomError, match="no organ 'ovaries'"):
        phantom("adult", "male").organ("ovaries")
