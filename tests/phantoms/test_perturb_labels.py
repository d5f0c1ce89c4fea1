"""Organ-contour and body-outline offsets of a label map against analytic truth, and bad input.

Truth used: a sphere of radius R grown by δ gains 4π/3((R+δ)³ − R³) ≈ A δ (A = 4πR²); a
cylinder's equivalent radius √(area/π) of a cross-section moves by δ; the tissue rules
(organs grow only into soft tissue, the skin is the body's one-voxel outer layer) are
checked voxel by voxel.
"""

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from phantoms.perturb_labels import (LabelPerturbationError, offset_body, offset_organs, organ_groups,
                                     skin_layer)

AIR, SOFT, SKIN, BONE, LUNG, ORGAN, OTHER, WALL, CONTENTS = 0, 1, 2, 3, 4, 5, 6, 7, 8
SP = (1.0, 1.0, 1.0)


def _grid(n, sp=SP):
    z, y, x = np.indices((n, n, n), dtype=float)
    c = (n - 1) / 2.0 + 0.13  # off the lattice
    return z * sp[0] - c * sp[0], y * sp[1] - c * sp[1], x * sp[2] - c * sp[2]


def _sphere_map(n=44, radius=15.0):
    z, y, x = _grid(n)
    lab = np.full((n, n, n), SOFT, dtype=np.uint8)
    lab[z * z + y * y + x * x <= radius * radius] = ORGAN
    return lab


def _mc_area_mm2(mask, sp=SP):
    """Marching-cubes area of a binary mask's boundary (lightly smoothed, as a contouring stage would)."""
    f = ndimage.gaussian_filter(np.pad(mask, 2).astype(float), 0.8)
    verts, faces, _, _ = measure.marching_cubes(f, 0.5, spacing=sp)
    return float(measure.mesh_surface_area(verts, faces))


@pytest.mark.parametrize("delta", [1.0, -1.0])
def test_organ_offset_changes_volume_by_area_times_delta(delta):
    lab = _sphere_map()
    r = offset_organs(lab, [ORGAN], delta, spacing_mm=SP, fill_label=SOFT)
    dv = float(np.count_nonzero(r.labels == ORGAN) - np.count_nonzero(lab == ORGAN))
    area = _mc_area_mm2(lab == ORGAN)
    assert dv == pytest.approx(area * delta, rel=0.15)
    exact = 4.0 / 3.0 * math.pi * ((15.0 + delta) ** 3 - 15.0 ** 3)
    assert dv == pytest.approx(exact, rel=0.10)
    rep = r.report["organs"]["label 5"]
    assert rep["volume_change_mm3"] == pytest.approx(dv)
    assert rep["area_times_delta_mm3"] == pytest.approx(area * delta, rel=0.05)  # its own marching-cubes area
    # only organ <-> soft tissue changed
    changed = r.labels != lab
    assert set(np.unique(lab[changed])) | set(np.unique(r.labels[changed])) <= {SOFT, ORGAN}


def test_organ_growth_never_takes_bone_lung_skin_or_other_organs():
    n, R = 44, 15.0
    z, y, x = _grid(n)
    lab = _sphere_map(n, R)
    lab[(z >= R + 0.5) & (lab == SOFT)] = BONE           # bone touching the top
    lab[(x <= -R - 0.5) & (lab == SOFT)] = LUNG          # lung touching one side
    lab[(y >= R + 0.5) & (lab == SOFT)] = OTHER          # another organ touching another side
    lab[0, :, :] = SKIN
    before = {k: np.count_nonzero(lab == k) for k in (BONE, LUNG, OTHER, SKIN)}
    r = offset_organs(lab, [ORGAN], 3.0, spacing_mm=SP, fill_label=SOFT)
    for k in before:
        assert np.array_equal(r.labels == k, lab == k), k  # untouched, voxel by voxel
    gained = (r.labels == ORGAN) & (lab != ORGAN)
    assert gained.any() and np.all(lab[gained] == SOFT)
    rep = r.report["organs"]["label 5"]
    assert rep["blocked_voxels"] > 0 and set(rep["blocked_by"]) <= {"label 3", "label 4", "label 6"}
    # bookkeeping: what the organ took plus what it was refused is the unconstrained offset
    assert rep["volume_change_mm3"] + rep["blocked_volume_mm3"] == pytest.approx(
        rep["unconstrained_volume_change_mm3"])


def test_two_organs_do_not_take_each_others_voxels():
    n = 40
    z, y, x = _grid(n)
    lab = np.full((n, n, n), SOFT, dtype=np.uint8)
    lab[(x + 7.5) ** 2 + y * y + z * z <= 36] = ORGAN
    lab[(x - 7.5) ** 2 + y * y + z * z <= 36] = OTHER  # 3 mm of soft tissue between them
    r = offset_organs(lab, [ORGAN, OTHER], 2.5, spacing_mm=SP, fill_label=SOFT)
    assert np.all(r.labels[lab == ORGAN] == ORGAN) and np.all(r.labels[lab == OTHER] == OTHER)
    gained = (r.labels != lab)
    assert np.all(lab[gained] == SOFT)


def test_zero_offset_is_an_exact_identity():
    lab = _sphere_map()
    lab[:3] = BONE
    for r in (offset_organs(lab, [ORGAN], 0.0, spacing_mm=SP, fill_label=SOFT),
              offset_body(lab, 0.0, spacing_mm=SP, fill_label=SOFT, skin_label=SKIN)):
        assert r.labels.dtype == lab.dtype and np.array_equal(r.labels, lab)
        assert r.pad_voxels == (0, 0, 0)


def test_shrinking_a_walled_organ_keeps_its_wall_closed():
    n = 40
    z, y, x = _grid(n)
    rr = np.sqrt(z * z + y * y + x * x)
    lab = np.full((n, n, n), SOFT, dtype=np.uint8)
    lab[rr <= 12.0] = WALL
    lab[rr <= 10.0] = CONTENTS
    r = offset_organs(lab, [(WALL, CONTENTS)], -3.0, spacing_mm=SP, fill_label=SOFT)
    organ = np.isin(r.labels, (WALL, CONTENTS))
    # every contents voxel has all six face neighbours inside the organ: the wall is closed
    assert np.all(ndimage.binary_erosion(organ, border_value=1)[r.labels == CONTENTS])
    assert np.all(r.labels[np.isin(lab, (WALL, CONTENTS)) & ~organ] == SOFT)  # lost voxels became soft tissue
    assert np.count_nonzero(r.labels == CONTENTS) < np.count_nonzero(lab == CONTENTS)
    # growth: gained voxels are wall, contents untouched
    g = offset_organs(lab, [(WALL, CONTENTS)], 2.0, spacing_mm=SP, fill_label=SOFT)
    assert np.array_equal(g.labels == CONTENTS, lab == CONTENTS)
    assert np.all(g.labels[(g.labels != lab)] == WALL)


def _cylinder_body(n_xy=60, n_z=30, radius=40.0, sp=(2.0, 2.0, 2.0)):
    """A closed circular cylinder body (axis z) with skin, a bone rod and an organ inside."""
    z, y, x = np.indices((n_z, n_xy, n_xy), dtype=float)
    yc = (y - (n_xy - 1) / 2 - 0.21) * sp[1]
    xc = (x - (n_xy - 1) / 2 + 0.17) * sp[2]
    body = (yc ** 2 + xc ** 2 <= radius ** 2) & (z >= 3) & (z <= n_z - 4)
    lab = np.where(body, SOFT, AIR).astype(np.uint8)
    lab[body & ((yc - 10) ** 2 + xc ** 2 <= 36)] = BONE
    lab[body & ((yc + 12) ** 2 + (xc - 5) ** 2 <= 64)] = ORGAN
    lab[skin_layer(body)] = SKIN
    return lab


def _slice_radius_mm(lab, k, sp):
    return math.sqrt(np.count_nonzero(lab[k] != AIR) * sp[1] * sp[2] / math.pi)


@pytest.mark.parametrize("delta", [4.0, -4.0, 6.0])
def test_body_offset_moves_the_equivalent_radius_by_delta_and_keeps_skin_closed(delta):
    sp = (2.0, 2.0, 2.0)
    lab = _cylinder_body(sp=sp)
    r = offset_body(lab, delta, spacing_mm=sp, fill_label=SOFT, skin_label=SKIN)
    pz = r.pad_voxels[0]
    k0 = lab.shape[0] // 2
    dr = np.mean([_slice_radius_mm(r.labels, k + pz, sp) - _slice_radius_mm(lab, k, sp) for k in (k0 - 2, k0, k0 + 2)])
    assert dr == pytest.approx(delta, rel=0.15, abs=0.15)
    dv = (np.count_nonzero(r.labels != AIR) - np.count_nonzero(lab != AIR)) * float(np.prod(sp))
    assert r.report["volume_change_mm3"] == pytest.approx(dv)
    new = r.labels
    assert np.array_equal(new == SKIN, skin_layer(new != AIR))  # a closed one-voxel skin
    old = np.pad(lab, [(p, p) for p in r.pad_voxels])
    grown = (old == AIR) & (new != AIR)
    lost = (old != AIR) & (new == AIR)
    if delta > 0:
        assert grown.any() and not lost.any() and set(np.unique(new[grown])) <= {SOFT, SKIN}
        assert np.array_equal(new == BONE, old == BONE) and np.array_equal(new == ORGAN, old == ORGAN)
    else:
        assert lost.any() and not grown.any()


def test_body_offset_pads_the_array_when_the_body_would_leave_it():
    lab = _cylinder_body(n_xy=44, radius=40.0)  # 2 voxels of air around the body in x and y
    r = offset_body(lab, 6.0, spacing_mm=(2.0, 2.0, 2.0), fill_label=SOFT, skin_label=SKIN)
    assert r.pad_voxels[1] >= 3 and r.pad_voxels[2] >= 3
    assert r.labels.shape == tuple(n + 2 * p for n, p in zip(lab.shape, r.pad_voxels))
    inner = r.labels[tuple(slice(p, p + n) for p, n in zip(r.pad_voxels, lab.shape))]
    assert np.array_equal(inner == BONE, lab == BONE)  # the original sits at offset pad_voxels


def test_stylized_phantom_rules_hold():
    """On the 5-year-old phantom: organs grow only into soft tissue; body growth keeps a closed skin."""
    from phantoms.stylized import LABELS, build_reference_phantom

    ph = build_reference_phantom("5y", "male", 5.0)
    lab = np.asarray(ph.labels.array)
    sp = ph.labels.spacing_mm
    names = {k: d.name for k, d in LABELS.items()}
    ids = {d.name: k for k, d in LABELS.items()}
    assert np.array_equal(lab == ids["skin"], skin_layer(lab != 0))  # the builder's skin is this layer
    organs = ["liver", "stomach_wall", "kidneys", "heart_wall"]
    groups = organ_groups(names, organs)
    assert (ids["stomach_wall"], ids["stomach_contents"]) in groups
    own = {i for g in groups for i in g}
    r = offset_organs(lab, groups, 5.0, spacing_mm=sp, fill_label=ids["soft_tissue"], names=names)
    ch = r.labels != lab
    assert ch.any() and np.all(lab[ch] == ids["soft_tissue"]) and set(np.unique(r.labels[ch])) <= own
    liver = r.report["organs"]["liver"]
    assert liver["blocked_by"] and "soft_tissue" not in liver["blocked_by"]
    s = offset_organs(lab, groups, -5.0, spacing_mm=sp, fill_label=ids["soft_tissue"], names=names)
    ch = s.labels != lab
    assert set(np.unique(lab[ch])) <= own and set(np.unique(s.labels[ch])) <= {ids["soft_tissue"]} | own
    b = offset_body(lab, 10.0, spacing_mm=sp, fill_label=ids["soft_tissue"], skin_label=ids["skin"], names=names)
    assert np.array_equal(b.labels == ids["skin"], skin_layer(b.labels != 0))
    # mid-trunk slices: the equivalent radius grows by about 10 mm (ellipse: ×1.03)
    k0 = int(round((0.5 * ph.body["trunk_height_cm"] * 10 - ph.labels.origin_xyz_mm[2]) / sp[0]))
    pz = b.pad_voxels[0]
    dr = np.mean([_slice_radius_mm(b.labels, k + pz, sp) - _slice_radius_mm(lab, k, sp) for k in (k0 - 3, k0, k0 + 3)])
    assert dr == pytest.approx(10.0, rel=0.15)


def test_bad_input_names_the_parameter():
    lab = _sphere_map(20, 5.0)
    with pytest.raises(LabelPerturbationError, match="delta_mm"):
        offset_organs(lab, [ORGAN], float("nan"), spacing_mm=SP, fill_label=SOFT)
    with pytest.raises(LabelPerturbationError, match="spacing_mm"):
        offset_organs(lab, [ORGAN], 1.0, spacing_mm=(1.0, 0.0, 1.0), fill_label=SOFT)
    with pytest.raises(LabelPerturbationError, match="no voxel"):
        offset_organs(lab, [OTHER], 1.0, spacing_mm=SP, fill_label=SOFT)
    with pytest.raises(LabelPerturbationError, match="completely"):
        offset_organs(lab, [ORGAN], -8.0, spacing_mm=SP, fill_label=SOFT)
    with pytest.raises(LabelPerturbationError, match="fill_label"):
        offset_organs(lab, [SOFT], 1.0, spacing_mm=SP, fill_label=SOFT)
    with pytest.raises(LabelPerturbationError, match="labels"):
        offset_organs(lab.astype(float), [ORGAN], 1.0, spacing_mm=SP, fill_label=SOFT)
    with pytest.raises(LabelPerturbationError, match="'spleen'.*liver"):
        organ_groups({17: "liver"}, ["spleen"])
    with pytest.raises(LabelPerturbationError, match="no body"):
        offset_body(np.zeros((5, 5, 5), np.uint8), 1.0, spacing_mm=SP, fill_label=SOFT, skin_label=SKIN)
    with pytest.raises(LabelPerturbationError, match="must differ"):
        offset_body(lab, 1.0, spacing_mm=SP, fill_label=SOFT, skin_label=SOFT)


def test_body_shrink_with_removable_labels_keeps_bone():
    """A cylinder body (soft tissue) with a bone rod touching its surface: narrowing the outline
    with removable=(soft, skin) never removes bone, and the rest shrinks as before."""
    sp = (2.0, 2.0, 2.0)
    z, y, x = np.indices((10, 40, 40))
    r = np.hypot((y - 19.5) * 2, (x - 19.5) * 2)
    lab = np.where(r < 30, SOFT, 0).astype(np.uint8)
    bone_id = 7
    rod = np.hypot((y - 19.5) * 2, (x - 33.5) * 2) < 4
    lab[rod & (lab == SOFT)] = bone_id
    free = offset_body(lab, -6.0, spacing_mm=sp, fill_label=SOFT, skin_label=SKIN)
    kept = offset_body(lab, -6.0, spacing_mm=sp, fill_label=SOFT, skin_label=SKIN, removable=(SOFT, SKIN))
    assert np.count_nonzero(free.labels == bone_id) < np.count_nonzero(lab == bone_id)
    assert np.count_nonzero(kept.labels == bone_id) == np.count_nonzero(lab == bone_id)
    assert kept.report["protected_voxels"] > 0 and kept.report["skin_gap_voxels"] > 0
    far = np.pad(r < 20, [(q, q) for q in kept.pad_voxels])  # away from the rod the two agree
    assert free.pad_voxels == kept.pad_voxels
    assert np.array_equal(free.labels[far], kept.labels[far])
