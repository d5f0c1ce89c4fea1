"""TotalSegmentator label maps as dosimetry organs, and what a CT holds of them.

Checked: the shipped table names every one of the 117 "total" classes (against the class list
in ``../shared/reference/real/abdomen_ct/``) with a known tissue, and its ICRP tissues agree
with the effective-dose code's names; lobes merge; a hollow organ's wall has the thickness
asked (an annulus's area, within a voxel's worth); the trachea keeps its CT-number material;
organs cut by the scan's ends are reported partial; unknown class ids are refused by name.
On the real abdominal CT with its TotalSegmentator map: the phantom holds liver, spleen,
kidneys, pancreas, stomach and colon walls, and the liver's mass is within 10 % of the mask's
volume times ICRP's liver density (1.05 g/cm³, ICRP Publication 110, 2009).
"""

import csv
import math

import numpy as np
import pytest

from phantoms.tissues import TissueError, tissue_names
from phantoms.totalsegmentator import FROM_HU, coverage, organ_labels, read_class_table


def _id(table, name):
    return next(k for k, m in table.items() if m.ts_name == name)


def test_table_covers_the_117_classes(shared_reference):
    table = read_class_table()
    ref = shared_reference("real", "abdomen_ct", "totalsegmentator_total_classes.csv")
    with ref.open() as fh:
        names = {int(r["label_id"]): r["name"] for r in csv.DictReader(fh)}
    assert len(names) == 117 and {k: m.ts_name for k, m in table.items()} == names
    known = set(tissue_names()) | {FROM_HU}
    assert all(m.tissue in known for m in table.values())
    from workflows.dose.effective_dose import icrp_tissue

    for m in table.values():
        if m.tissue != FROM_HU:
            assert (m.icrp103 or None) == icrp_tissue(m.organ), m


def test_lobes_merge_walls_have_their_thickness_and_the_trachea_keeps_its_ct_number():
    table = read_class_table()
    n, sp = 64, (1.0, 0.5, 0.5)
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float)] * 3, indexing="ij")
    cm = np.zeros((n, n, n), np.uint8)
    r_mm = 12.0
    colon = ((j - 32) * sp[1]) ** 2 + ((i - 32) * sp[2]) ** 2 <= r_mm ** 2
    cm[colon] = _id(table, "colon")
    cm[:, :4, :4] = _id(table, "lung_upper_lobe_left")
    cm[:, :4, -4:] = _id(table, "lung_lower_lobe_right")
    cm[:, -4:, :4] = _id(table, "trachea")
    o = organ_labels(cm, sp)
    names = {v[0]: kk for kk, v in o.organs.items()}
    assert {"colon_wall", "lungs"} <= set(names) and "trachea" not in names
    assert np.count_nonzero(o.labels == names["lungs"]) == 2 * 4 * 4 * n
    assert not o.labels[:, -4:, :4].any()  # trachea: material from its CT number, no organ
    wall = table[_id(table, "colon")].wall_mm
    expect = math.pi * (r_mm ** 2 - (r_mm - wall) ** 2) / (sp[1] * sp[2]) * n
    assert np.count_nonzero(o.labels == names["colon_wall"]) == pytest.approx(expect, rel=0.08)
    assert o.contents_voxels["colon"] == pytest.approx(math.pi * (r_mm - wall) ** 2 / 0.25 * n, rel=0.08)
    assert names["lungs"] in o.density_from_hu and names["colon_wall"] not in o.density_from_hu
    c = coverage(o.labels, o.organs, o.icrp103)
    assert c["organs"]["colon_wall"]["cut_by"] == ["the scan's first slice", "the scan's last slice"]
    assert "colon" in c["icrp103"]["partial"] and "brain" in c["icrp103"]["missing"]
    inner = o.labels.copy()
    inner[0] = inner[-1] = 0  # the colon inside the scan, the lungs cut by the field of view
    c2 = coverage(inner, o.organs, o.icrp103)
    assert "colon" in c2["icrp103"]["whole"] and c2["organs"]["lungs"]["cut_by"] == ["the field of view"]
    with pytest.raises(TissueError, match=r"class ids \[200\]"):
        organ_labels(np.full((2, 2, 2), 200), sp)


def test_phantom_from_the_real_ct_and_its_totalsegmentator_map(shared_reference, tmp_path):
    from phantoms.from_ct import phantom_from_ct
    from pipeline.image import read_image

    folder = shared_reference("real", "abdomen_ct")
    res = phantom_from_ct(folder / "example_ct_sm.nii.gz", tmp_path / "ph", "adult",
                          labels_path=folder / "example_seg.nii.gz", label_map_path="totalsegmentator")
    organs = {r["name"]: r for r in res["organs"] if r["kind"] == "organ"}
    assert {"liver", "spleen", "kidneys", "pancreas", "stomach_wall", "colon_wall", "lungs",
            "spongiosa_lumbar_vertebrae"} <= set(organs)
    seg = np.asarray(read_image(folder / "example_seg.nii.gz").array)
    voxel_cm3 = 0.3 ** 3
    liver_mask_g = np.count_nonzero(seg == 5) * voxel_cm3 * 1.05
    print(f"\n[TotalSegmentator phantom] liver {organs['liver']['mass_g']:.0f} g vs mask x 1.05 g/cm3 "
          f"{liver_mask_g:.0f} g; organs {sorted(organs)}")
    assert organs["liver"]["mass_g"] == pytest.approx(liver_mask_g, rel=0.10)
    cover = res["coverage"]["icrp103"]
    assert "liver" in cover["partial"] and "pancreas" in cover["whole"] and "thyroid" in cover["missing"]
    # hollow organs: the walls are a part of the masks, the contents take their CT numbers
    assert organs["colon_wall"]["n_voxels"] < np.count_nonzero(seg == 20)
