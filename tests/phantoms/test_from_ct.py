"""Tests for phantoms.from_ct: the Schneider (2000) table, HU -> materials, and CT phantoms.

Independent truth used here:
* numbers of the Schneider (2000) table as transcribed in GATE ``Schneider2000MaterialsTable.txt`` /
  ``Schneider2000DensitiesTable.txt`` (typed in below, not read from our CSV);
* the TOPAS default Schneider density parameterisation (topas-docs, "HUtoMaterialSchneider":
  sections -1000 -98 15 23 101 2001, offsets 0.00121 1.018 1.03 1.003 1.017, factors
  0.001029700665188 0.000893 0 0.001169 0.000592, factor offsets 1000 0 1000 0 0), an
  independent transcription of the paper's density fits;
* synthetic CTs (a water cylinder with a bone insert) whose masses follow from geometry.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from phantoms import from_ct as F
from phantoms.from_ct import CTPhantomError, HU_LABEL_OFFSET
from phantoms.tissues import AGES, TissueError, tissue, tissue_names
from pipeline.image import Volume, read_image, write_image

CSV_PATH = Path(F.__file__).resolve().parent / "data" / "schneider2000_hu_bins.csv"
ELEMENTS = ("H", "C", "N", "O", "Na", "Mg", "P", "S", "Cl", "Ar", "K", "Ca")


def _raw_rows(kind: str) -> list[dict]:
    with CSV_PATH.open(newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    return [r for r in rows if r["table"] == kind]


def rho_gate(h: float) -> float:
    """Linear interpolation of the GATE density knots, written out independently."""
    knots = [(-1000, 1.21e-3), (-98, 0.93), (-97, 0.930486), (14, 1.03), (23, 1.031), (100, 1.1199),
             (101, 1.0762), (1600, 1.9642), (3000, 2.8)]
    if h <= knots[0][0]:
        return knots[0][1]
    for (h0, r0), (h1, r1) in zip(knots, knots[1:]):
        if h0 <= h <= h1:
            return r0 + (r1 - r0) * (h - h0) / (h1 - h0)
    return knots[-1][1]


# ============================================================== the table
def test_table_has_24_bins_with_published_edges_and_header_citation():
    cal = F.schneider_calibration()
    assert len(cal.bins) == 24
    assert [b.name for b in cal.bins[:2]] == ["air", "lung"] and cal.bins[7].name == "soft_tissue"
    # lower edges of bins 1..23 as in GATE's table
    edges = [-950, -120, -82, -52, -22, 8, 19, 80, 120] + list(range(200, 1600, 100))
    assert [b.hu_lower for b in cal.bins[1:]] == edges
    assert cal.bins[0].hu_lower == -math.inf and cal.bins[-1].hu_upper == math.inf
    assert all(a.hu_upper == b.hu_lower for a, b in zip(cal.bins, cal.bins[1:]))
    header = "".join(line for line in CSV_PATH.open() if line.startswith("#"))
    assert "Phys. Med. Biol. 45 (2000) 459" in header and "Schneider" in header and "GATE" in header


def test_fractions_sum_to_one_in_every_bin():
    for r in _raw_rows("composition"):  # raw percent values in the file
        assert sum(float(r[f"{e}_pct"]) for e in ELEMENTS) == pytest.approx(100.0, abs=1e-9), r["name"]
    for b in F.schneider_calibration().bins:
        assert sum(b.mass_fractions.values()) == pytest.approx(1.0, abs=1e-12), b.name
        assert all(w > 0 for w in b.mass_fractions.values())


@pytest.mark.parametrize("name, expected_pct", [
    ("air", {"N": 75.5, "O": 23.2, "Ar": 1.3}),
    ("lung", {"H": 10.3, "C": 10.5, "N": 3.1, "O": 74.9, "Na": 0.2, "P": 0.2, "S": 0.3, "Cl": 0.3, "K": 0.2}),
    ("adipose_adrenal_si_1", {"H": 11.6, "C": 68.1, "N": 0.2, "O": 19.8, "Na": 0.1, "S": 0.1, "Cl": 0.1}),
    ("soft_tissue", {"H": 10.3, "C": 13.4, "N": 3.0, "O": 72.3, "Na": 0.2, "P": 0.2, "S": 0.2, "Cl": 0.2,
                     "K": 0.2}),
    ("connective_tissue", {"H": 9.4, "C": 20.7, "N": 6.2, "O": 62.2, "Na": 0.6, "S": 0.6, "Cl": 0.3}),
    ("marrow_bone_15", {"H": 3.4, "C": 15.5, "N": 4.2, "O": 43.5, "Na": 0.1, "Mg": 0.2, "P": 10.3, "S": 0.3,
                        "Ca": 22.5}),
])
def test_table_values_reproduced_exactly(name, expected_pct):
    raw = {r["name"]: r for r in _raw_rows("composition")}[name]
    assert {e: float(raw[f"{e}_pct"]) for e in ELEMENTS if float(raw[f"{e}_pct"]) > 0} == expected_pct
    b = {b.name: b for b in F.schneider_calibration().bins}[name]
    assert set(b.mass_fractions) == set(expected_pct)
    for e, pct in expected_pct.items():
        assert b.mass_fractions[e] == pytest.approx(pct / 100.0, rel=1e-12)


def test_density_knots_reproduced_exactly():
    got = {float(r["hu"]): float(r["density_g_cm3"]) for r in _raw_rows("density")}
    assert got == {-1000.0: 1.21e-3, -98.0: 0.93, -97.0: 0.930486, 14.0: 1.03, 23.0: 1.031, 100.0: 1.1199,
                   101.0: 1.0762, 1600.0: 1.9642, 3000.0: 2.8}
    for h, rho in got.items():
        assert F.hu_to_density([h])[0] == rho


def test_density_monotonic_in_hu_except_the_published_soft_tissue_to_bone_step():
    hu = np.arange(-1200.0, 3200.0, 0.5)
    rho = F.hu_to_density(hu)
    step = np.diff(rho)
    drop = (hu[:-1] >= 100.0) & (hu[1:] <= 101.0)
    assert np.all(step[~drop] >= 0)  # non-decreasing everywhere else
    assert rho[hu == 101.0][0] - rho[hu == 100.0][0] == pytest.approx(1.0762 - 1.1199, abs=1e-12)
    # strictly increasing inside each fitted line (not only non-decreasing)
    for lo, hi in [(-1000, -98), (-97, 14), (23, 100), (101, 3000)]:
        seg = F.hu_to_density(np.linspace(lo, hi, 50))
        assert np.all(np.diff(seg) > 0), (lo, hi)


def test_density_agrees_with_the_topas_transcription_of_the_fits():
    hu = np.arange(-1000, 1601)
    sections = [(-1000, -98, 0.00121, 0.001029700665188, 1000.0), (-98, 15, 1.018, 0.000893, 0.0),
                (15, 23, 1.03, 0.0, 1000.0), (23, 101, 1.003, 0.001169, 0.0), (101, 2001, 1.017, 0.000592, 0.0)]
    topas = np.empty(hu.shape)
    for lo, hi, off, fac, foff in sections:
        m = (hu >= lo) & (hu < hi)
        topas[m] = off + fac * (foff + hu[m])
    assert np.max(np.abs(F.hu_to_density(hu) - topas)) < 1.5e-3  # g/cm3; measured 1.11e-3 (at 23 HU)


def test_water_like_hu0_has_unit_density_and_soft_tissue_composition():
    idx, rho, mats = F.hu_to_materials(np.array([0.0]))
    assert float(rho[0]) == pytest.approx(1.0, abs=0.03)
    assert float(rho[0]) == pytest.approx(rho_gate(0.0), rel=1e-6)
    m = mats[int(idx[0])]
    assert m.name == "schneider2000_adipose_adrenal_si_4"
    icru = tissue("soft_tissue").mass_fractions  # ICRU-46 average soft tissue
    w = m.mass_fractions
    assert abs(w["H"] - icru["H"]) < 0.005 and abs(w.get("N", 0) - icru["N"]) < 0.01
    assert abs((w["C"] + w["O"]) - (icru["C"] + icru["O"])) < 0.01
    assert "Ca" not in w and w.get("P", 0.0) < 0.005


@pytest.mark.parametrize("hu, name", [(-3000, "air"), (-951, "air"), (-950, "lung"), (-121, "lung"),
                                      (-120, "adipose_adrenal_si_1"), (18.9, "adipose_adrenal_si_5"),
                                      (19, "soft_tissue"), (79, "soft_tissue"), (80, "connective_tissue"),
                                      (120, "marrow_bone_01"), (1499, "marrow_bone_14"),
                                      (1500, "marrow_bone_15"), (1e5, "marrow_bone_15")])
def test_bin_assignment_at_edges(hu, name):
    idx, _, mats = F.hu_to_materials([hu])
    assert mats[int(idx[0])].name == f"schneider2000_{name}"


def test_hu_to_materials_shapes_types_and_clamping():
    hu = np.array([[[-5000, -1000], [0, 100]], [[101, 1000], [3000, 9000]]], dtype=np.int16)
    idx, rho, mats = F.hu_to_materials(hu, age="10y")
    assert idx.shape == hu.shape and idx.dtype == np.int32 and rho.dtype == np.float32
    assert len(mats) == 24 and all(m.age == "10y" for m in mats)
    np.testing.assert_allclose(rho.ravel(), [rho_gate(float(h)) for h in hu.ravel()], rtol=1e-6)
    assert rho.ravel()[0] == pytest.approx(1.21e-3) and rho.ravel()[-1] == pytest.approx(2.8)


@pytest.mark.parametrize("bad, what", [(np.array([0.0, np.nan]), "non-finite"), (np.array([]), "empty"),
                                       (np.array(["a"]), "real CT numbers"), (np.array([True]), "real CT numbers")])
def test_hu_to_materials_bad_input(bad, what):
    with pytest.raises(CTPhantomError, match=what):
        F.hu_to_materials(bad)


def test_hu_to_materials_bad_age_lists_supported_ages():
    with pytest.raises(TissueError, match="supported ages.*newborn.*adult.*'7y'"):
        F.hu_to_materials([0.0], age="7y")


def test_custom_calibration_table_is_validated(tmp_path):
    lines = CSV_PATH.read_text().splitlines()
    bad = [ln.replace("composition,1,lung,-950,,10.3,", "composition,1,lung,-950,,20.3,") for ln in lines]
    (tmp_path / "cal.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(CTPhantomError, match="'lung' fractions sum to 110"):
        F.schneider_calibration(tmp_path / "cal.csv")
    with pytest.raises(CTPhantomError, match="does not exist"):
        F.schneider_calibration(tmp_path / "none.csv")
    (tmp_path / "ok.csv").write_text("\n".join(lines) + "\n")  # a copy reads back identically
    cal = F.schneider_calibration(tmp_path / "ok.csv")
    assert [b.name for b in cal.bins] == [b.name for b in F.schneider_calibration().bins]
    assert F.hu_to_density([55.0], cal)[0] == F.hu_to_density([55.0])[0]


# ============================================================== synthetic CT fixtures
SPACING = (5.0, 2.0, 2.0)          # dz, dy, dx (mm)
ORIGIN = (-39.0, -39.0, 12.5)      # world x, y, z of voxel [0,0,0] centre
R_WATER, R_BONE = 30.0, 8.0        # mm
HU_BONE = 1000


def _geometry(shape=(6, 40, 40)):
    z, y, x = np.indices(shape)
    xm = ORIGIN[0] + x * SPACING[2]
    ym = ORIGIN[1] + y * SPACING[1]
    return np.hypot(xm, ym)  # distance (mm) from the cylinder axis x = y = 0


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct")
    r = _geometry()
    hu = np.full(r.shape, -1000, dtype=np.int16)
    hu[r < R_WATER] = 0
    hu[r < R_BONE] = HU_BONE
    lab = np.zeros(r.shape, dtype=np.uint8)
    lab[r < R_BONE] = 5
    write_image(Volume(hu, SPACING, ORIGIN), d / "ct.nii.gz")
    write_image(Volume(hu, SPACING, ORIGIN), d / "ct.mha")
    write_image(Volume(hu, SPACING, ORIGIN), d / "ct.nrrd")
    write_image(Volume(lab, SPACING, ORIGIN), d / "labels.nii.gz")
    (d / "table.csv").write_text("# organ table\nlabel_id,organ,tissue\n5,bone_insert,cortical_bone\n9,unused,liver\n")
    return {"dir": d, "hu": hu, "labels": lab}


def _voxel_cm3():
    return SPACING[0] * SPACING[1] * SPACING[2] / 1000.0


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_ct_only_phantom_masses_and_files(ct_files, tmp_path, suffix):
    out = tmp_path / "ph"
    s = F.phantom_from_ct(ct_files["dir"] / f"ct{suffix}", out, "adult")
    assert sorted(p.name for p in out.iterdir()) == sorted(["labels.nii.gz", "density.nii.gz", "materials.csv",
                                                            "organs.json"])  # no temporary files left
    hu = ct_files["hu"]
    lab = read_image(out / "labels.nii.gz")
    rho = read_image(out / "density.nii.gz")
    assert lab.shape == hu.shape and lab.spacing_mm == pytest.approx(SPACING)
    assert lab.origin_xyz_mm == pytest.approx(ORIGIN) and rho.array.dtype == np.float32
    air, water, bone = HU_LABEL_OFFSET + 0, HU_LABEL_OFFSET + 5, HU_LABEL_OFFSET + 18
    expected = np.where(hu == 0, water, np.where(hu == HU_BONE, bone, air))
    np.testing.assert_array_equal(lab.array, expected)
    rho_w, rho_b = rho_gate(0.0), rho_gate(HU_BONE)
    assert rho_w == pytest.approx(0.930486 + (1.03 - 0.930486) * 97 / 111)
    np.testing.assert_allclose(rho.array[hu == 0], rho_w, rtol=1e-6)
    np.testing.assert_allclose(rho.array[hu == HU_BONE], rho_b, rtol=1e-6)
    organs = {o["label_id"]: o for o in json.loads((out / "organs.json").read_text())["organs"]}
    assert set(organs) == {air, water, bone} == {o["label_id"] for o in s["organs"]}
    n_w = int(np.count_nonzero(hu == 0))
    assert organs[water]["mass_g"] == pytest.approx(n_w * _voxel_cm3() * rho_w, rel=1e-9)
    assert organs[water]["volume_cm3"] == pytest.approx(n_w * _voxel_cm3(), rel=1e-12)
    assert organs[water]["kind"] == "hu_bin" and organs[water]["hu_range"] == [-22.0, 8.0]
    # geometry: the voxelised annulus is within 3 % of pi (R^2 - r^2) L
    analytic_cm3 = math.pi * (R_WATER ** 2 - R_BONE ** 2) * hu.shape[0] * SPACING[0] / 1000.0
    assert organs[water]["volume_cm3"] == pytest.approx(analytic_cm3, rel=0.03)
    assert s["total_mass_g"] == pytest.approx(sum(o["mass_g"] for o in organs.values()))
    assert s["n_voxels_from_hu"] == hu.size and s["hu_min"] == -1000 and s["hu_max"] == HU_BONE
    assert s["n_voxels_below_calibration"] == 0 and s["n_voxels_above_calibration"] == 0


def _write_dicom_series(arr: np.ndarray, folder: Path, spacing_mm, origin_xyz_mm) -> None:
    """A minimal CT DICOM series (one file per slice, rescale 1/0) written with SimpleITK."""
    import SimpleITK as sitk

    folder.mkdir()
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(reversed(spacing_mm)))
    img.SetOrigin(origin_xyz_mm)
    uid = "1.2.826.0.1.3680043.2.1125.424242"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(arr.shape[0]):
        sl = img[:, :, k]
        pos = "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, val in [("0008|0060", "CT"), ("0020|000e", uid + ".1"), ("0020|000d", uid + ".2"),
                         ("0020|0013", str(k + 1)), ("0020|0032", pos), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                         ("0018|0050", str(spacing_mm[0])), ("0028|1052", "0"), ("0028|1053", "1")]:
            sl.SetMetaData(tag, val)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder_gives_the_same_phantom_as_nifti(ct_files, tmp_path):
    hu = ct_files["hu"]
    _write_dicom_series(hu, tmp_path / "series", SPACING, ORIGIN)
    a = F.phantom_from_ct(tmp_path / "series", tmp_path / "from_dicom", "adult")
    b = F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", tmp_path / "from_nifti", "adult")
    assert a["shape_zyx"] == list(hu.shape) and a["origin_xyz_mm"] == pytest.approx(ORIGIN)
    counts = [[(o["label_id"], o["n_voxels"]) for o in s["organs"]] for s in (a, b)]
    assert counts[0] == counts[1]
    assert a["total_mass_g"] == pytest.approx(b["total_mass_g"], rel=1e-12)


def test_materials_csv_is_engine_readable_and_preserves_label_masses(ct_files, tmp_path):
    from physics.transport import read_materials_csv as engine_read

    out = tmp_path / "ph"
    s = F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", out, "adult")
    mats = engine_read(out / "materials.csv")
    lab = read_image(out / "labels.nii.gz").array
    assert set(mats) == set(np.unique(lab).tolist())
    for o in s["organs"]:  # an engine that uses only labels + materials still gets each label's mass
        n = int(np.count_nonzero(lab == o["label_id"]))
        assert n * _voxel_cm3() * mats[o["label_id"]].density_g_cm3 == pytest.approx(o["mass_g"], rel=1e-9)
    bone = mats[HU_LABEL_OFFSET + 18]
    assert bone.mass_fractions["Ca"] == pytest.approx(0.181) and bone.mass_fractions["P"] == pytest.approx(0.083)


def test_labelled_voxels_get_their_tissue_at_nominal_density(ct_files, tmp_path):
    out = tmp_path / "ph"
    s = F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", out, "5y", ct_files["dir"] / "labels.nii.gz",
                          ct_files["dir"] / "table.csv")
    lab = read_image(out / "labels.nii.gz").array
    rho = read_image(out / "density.nii.gz").array
    insert = ct_files["labels"] == 5
    assert np.all(lab[insert] == 5) and not np.any(lab[~insert] == 5)
    bone = tissue("cortical_bone", "5y")
    np.testing.assert_allclose(rho[insert], bone.density_g_cm3, rtol=1e-6)
    organs = {o["label_id"]: o for o in s["organs"]}
    assert organs[5]["name"] == "bone_insert" and organs[5]["tissue"] == "cortical_bone"
    assert organs[5]["kind"] == "organ"
    assert organs[5]["mass_g"] == pytest.approx(insert.sum() * _voxel_cm3() * bone.density_g_cm3, rel=1e-9)
    assert HU_LABEL_OFFSET + 18 not in organs  # no unlabelled bone voxels left
    assert s["table_labels_not_in_image"] == [9] and s["n_voxels_from_hu"] == int((~insert).sum())
    rows = {int(r["label_id"]): r for r in csv.DictReader((out / "materials.csv").open())}
    assert float(rows[5]["Ca"]) == pytest.approx(bone.mass_fractions["Ca"]) and rows[5]["age"] == "5y"


def test_assign_all_from_hu_keeps_organ_label_and_composition_with_hu_density(ct_files, tmp_path):
    out = tmp_path / "ph"
    s = F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", out, "adult", ct_files["dir"] / "labels.nii.gz",
                          ct_files["dir"] / "table.csv", assign_all_from_hu=True)
    insert = ct_files["labels"] == 5
    rho = read_image(out / "density.nii.gz").array
    np.testing.assert_allclose(rho[insert], rho_gate(HU_BONE), rtol=1e-6)
    organs = {o["label_id"]: o for o in s["organs"]}
    assert organs[5]["mass_g"] == pytest.approx(insert.sum() * _voxel_cm3() * rho_gate(HU_BONE), rel=1e-6)
    rows = {int(r["label_id"]): r for r in csv.DictReader((out / "materials.csv").open())}
    assert rows[5]["tissue_name"] == "cortical_bone"
    assert float(rows[5]["density_g_cm3"]) == pytest.approx(rho_gate(HU_BONE), rel=1e-6)
    assert s["assign_all_from_hu"] is True


# ============================================================== phantom_from_ct: bad input
def test_unknown_tissue_names_it_and_lists_known(ct_files, tmp_path):
    (tmp_path / "t.csv").write_text("label_id,organ,tissue\n5,insert,unobtainium\n")
    with pytest.raises(TissueError, match=r"unknown tissue 'unobtainium'.*known tissues.*'liver'"):
        F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", tmp_path / "o", "adult",
                          ct_files["dir"] / "labels.nii.gz", tmp_path / "t.csv")
    assert not (tmp_path / "o").exists()


def test_label_without_table_row_is_named(ct_files, tmp_path):
    (tmp_path / "t.csv").write_text("label_id,organ,tissue\n3,liver,liver\n")
    with pytest.raises(TissueError, match=r"labels \[5\].*no row"):
        F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", tmp_path / "o", "adult",
                          ct_files["dir"] / "labels.nii.gz", tmp_path / "t.csv")


@pytest.mark.parametrize("table, what", [
    ("label_id,organ\n5,insert\n", "missing column 'tissue'"),
    ("label_id,organ,tissue\nfive,insert,liver\n", "must be an integer"),
    ("label_id,organ,tissue\n5,a,liver\n5,b,liver\n", "appears twice"),
    ("label_id,organ,tissue\n1000,a,liver\n", "reserved"),
    ("label_id,organ,tissue\n0,a,liver\n", "out of range"),
    ("label_id,organ,tissue\n5,,liver\n", "empty organ name"),
])
def test_bad_label_table(tmp_path, table, what):
    (tmp_path / "t.csv").write_text(table)
    with pytest.raises(TissueError, match=what):
        F.read_label_map_table(tmp_path / "t.csv")


def test_label_map_on_another_grid_is_refused(ct_files, tmp_path):
    lab = ct_files["labels"]
    write_image(Volume(lab[:, :, :-1], SPACING, ORIGIN), tmp_path / "small.nii.gz")
    write_image(Volume(lab, SPACING, (ORIGIN[0] + 1.0, ORIGIN[1], ORIGIN[2])), tmp_path / "shifted.nii.gz")
    for name in ("small.nii.gz", "shifted.nii.gz"):
        with pytest.raises(CTPhantomError, match="not on the CT grid.*Resample the label map"):
            F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", tmp_path / "o", "adult", tmp_path / name,
                              ct_files["dir"] / "table.csv")


def test_bad_label_values(ct_files, tmp_path):
    lab = ct_files["labels"].astype(np.int32)
    lab[0, 0, 0] = 1200
    write_image(Volume(lab, SPACING, ORIGIN), tmp_path / "big.nii.gz")
    with pytest.raises(CTPhantomError, match="reserved for HU-derived"):
        F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", tmp_path / "o", "adult", tmp_path / "big.nii.gz",
                          ct_files["dir"] / "table.csv")
    frac = ct_files["labels"].astype(np.float32)
    frac[0, 0, 0] = 0.5
    write_image(Volume(frac, SPACING, ORIGIN), tmp_path / "frac.nii.gz")
    with pytest.raises(CTPhantomError, match="integer labels"):
        F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", tmp_path / "o", "adult", tmp_path / "frac.nii.gz",
                          ct_files["dir"] / "table.csv")


def test_bad_age_says_which_ages_are_supported(ct_files, tmp_path):
    with pytest.raises(TissueError, match=r"supported ages \['newborn', '1y', '5y', '10y', '15y', 'adult'\]"):
        F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", tmp_path / "o", "40y")
    assert list(AGES) == ["newborn", "1y", "5y", "10y", "15y", "adult"]


def test_labels_and_table_must_come_together(ct_files, tmp_path):
    with pytest.raises(CTPhantomError, match="labels_path was given without label_map_path"):
        F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", tmp_path / "o", "adult", ct_files["dir"] / "labels.nii.gz")
    with pytest.raises(CTPhantomError, match="label_map_path was given without labels_path"):
        F.phantom_from_ct(ct_files["dir"] / "ct.nii.gz", tmp_path / "o", "adult",
                          label_map_path=ct_files["dir"] / "table.csv")


def test_two_dimensional_dicom_is_refused(tmp_path):
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("CT_small.dcm"))
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(src, folder / src.name)
    for path in (src, folder):
        with pytest.raises(CTPhantomError, match="ct_path: .*2-D"):
            F.phantom_from_ct(path, tmp_path / "o", "adult")


def test_missing_and_non_finite_ct(tmp_path):
    with pytest.raises(CTPhantomError, match="ct_path: image not found"):
        F.phantom_from_ct(tmp_path / "nope.nii.gz", tmp_path / "o", "adult")
    hu = np.zeros((3, 4, 5), dtype=np.float32)
    hu[1, 2, 3] = np.nan
    write_image(Volume(hu), tmp_path / "nan.mha")  # (NIfTI writing turns NaN into 0)
    with pytest.raises(CTPhantomError, match="1 non-finite voxels"):
        F.phantom_from_ct(tmp_path / "nan.mha", tmp_path / "o", "adult")


def test_tissue_names_used_in_tests_exist():
    assert {"cortical_bone", "liver"} <= set(tissue_names())
