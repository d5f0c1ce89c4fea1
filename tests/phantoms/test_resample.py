"""Tests for phantoms.resample: mass-preserving resampling, cropping to a scan range, export.

Truth: organ masses summed directly on the fine grid (mask × density × voxel volume), hand-made
blocks with a known majority, analytic sphere volumes, and world positions computed with
``pipeline.image.Volume.index_to_world`` on the original grid.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from phantoms.resample import (ResampleError, crop_to_scan_range, export_phantom,
                               resample_labels_mass_preserving)
from phantoms.tissues import tissue
from pipeline.image import Volume, read_image


def _masses(labels, density, spacing_mm):
    v = float(np.prod(spacing_mm)) / 1000.0
    return {int(L): float(density[labels == L].sum()) * v for L in np.unique(labels)}


def _volumes(labels, spacing_mm):
    v = float(np.prod(spacing_mm)) / 1000.0
    return {int(L): float(np.count_nonzero(labels == L)) * v for L in np.unique(labels)}


@pytest.fixture(scope="module")
def phantom():
    """A torso-like phantom: body, two spheres, a thin shell (skin), a 1-voxel organ; 1 mm voxels."""
    shape = (41, 64, 67)  # not divisible by 2 or 3 on every axis
    z, y, x = np.indices(shape).astype(float)
    c = np.array([20.0, 31.5, 33.0])
    lab = np.full(shape, 1000, dtype=np.int32)            # air
    body = ((y - c[1]) / 28.0) ** 2 + ((x - c[2]) / 30.0) ** 2 < 1.0
    lab[body] = 1                                          # soft tissue
    skin = body & ~(((y - c[1]) / 27.0) ** 2 + ((x - c[2]) / 29.0) ** 2 < 1.0)
    lab[skin] = 2                                          # ~1 mm shell
    lab[np.sqrt((z - 20) ** 2 + (y - 25) ** 2 + (x - 25) ** 2) < 8.0] = 3   # sphere r = 8
    lab[np.sqrt((z - 20) ** 2 + (y - 38) ** 2 + (x - 42) ** 2) < 6.0] = 4   # sphere r = 6
    lab[20, 31, 33] = 7                                    # a one-voxel organ
    rng = np.random.default_rng(1)
    base = {1000: 0.0012, 1: 1.03, 2: 1.09, 3: 1.06, 4: 1.92, 7: 1.05}
    rho = np.vectorize(base.get)(lab) * (1.0 + 0.05 * rng.standard_normal(shape))
    return lab, np.clip(rho, 0.0, None)


@pytest.mark.parametrize("new_spacing", [2.0, 3.0, (1.0, 2.0, 4.0), (2.5, 2.5, 2.5), (1.5, 3.2, 2.0)])
def test_every_organ_mass_is_preserved(phantom, new_spacing):
    lab, rho = phantom
    res = resample_labels_mass_preserving(lab, rho, (1.0, 1.0, 1.0), new_spacing)
    fine = _masses(lab, rho, (1.0, 1.0, 1.0))
    coarse = _masses(res.labels, res.density_g_cm3, res.spacing_mm)
    assert set(coarse) == set(fine)  # no organ vanished (the 1-voxel organ was rescued)
    for L, m in fine.items():
        assert coarse[L] == pytest.approx(m, rel=1e-6), L
        assert res.mass_g[L] == pytest.approx(m, rel=1e-12)
    assert sum(coarse.values()) == pytest.approx(sum(fine.values()), rel=1e-9)
    assert 7 in res.rescued_labels and np.count_nonzero(res.labels == 7) == 1


@pytest.mark.parametrize("new_spacing", [2.0, 3.0, (2.5, 2.5, 2.5)])
def test_volumes_approximately_preserved(phantom, new_spacing):
    lab, rho = phantom
    res = resample_labels_mass_preserving(lab, rho, (1.0, 1.0, 1.0), new_spacing)
    fine, coarse = _volumes(lab, (1, 1, 1)), _volumes(res.labels, res.spacing_mm)
    for L in (1, 3, 4):  # organs large compared with the coarse voxel (measured: within 6.2 %)
        assert coarse[L] == pytest.approx(fine[L], rel=0.08), L
        assert res.volume_cm3[L] == pytest.approx(coarse[L]) and res.volume_cm3_fine[L] == pytest.approx(fine[L])
    # sphere r = 8 mm: the fine voxelisation is close to 4/3 pi r^3
    sphere_cm3 = 4.0 / 3.0 * math.pi * 8.0 ** 3 / 1000.0
    assert fine[3] == pytest.approx(sphere_cm3, rel=0.03) and coarse[3] == pytest.approx(sphere_cm3, rel=0.08)
    # the coarse grid covers the fine one, sticking out by less than one coarse voxel per axis
    for n, n_c, h in zip(lab.shape, res.labels.shape, res.spacing_mm):
        assert n <= n_c * h < n + h


def test_majority_label_by_hand_and_masses():
    tie = np.array([4, 2, 4, 2, 2, 4, 2, 4])                # four 2s, four 4s
    blocks = [tie,                                          # block index sum 0 (even) -> smallest: 2
              tie,                                          # block index sum 1 (odd)  -> largest: 4
              np.array([3, 3, 3, 5, 5, 3, 3, 3]),           # six 3s, two 5s -> 3
              np.full(8, 5)]                                # uniform -> 5
    lab = np.concatenate([b.reshape(2, 2, 2) for b in blocks], axis=2)  # shape (2, 2, 8)
    rho = np.arange(lab.size, dtype=float).reshape(lab.shape) / 10.0 + 1.0
    res = resample_labels_mass_preserving(lab, rho, (1, 1, 1), 2)
    assert res.labels.shape == (1, 1, 4) and res.labels.ravel().tolist() == [2, 4, 3, 5]
    assert res.rescued_labels == ()
    fine = _masses(lab, rho, (1, 1, 1))
    coarse = _masses(res.labels, res.density_g_cm3, (2, 2, 2))
    assert coarse == pytest.approx(fine, rel=1e-12)
    # label 3's coarse voxel holds its whole block's mass before rescaling: s_3 = m_3 / m_block2
    block2 = rho[:, :, 4:6].sum() * 1e-3
    assert res.density_scale[3] == pytest.approx(fine[3] / block2, rel=1e-12)


def test_vanished_labels_are_rescued_into_the_block_where_they_overlap_most():
    lab = np.ones((4, 4, 4), dtype=np.int64)
    lab[0, 0, 0] = 9                     # one voxel of 9 in block (0,0,0)
    lab[3, 3, 2:4] = 8                   # two voxels of 8 in block (1,1,1) ...
    lab[3, 3, 0] = 8                     # ... and one in block (1,1,0): the larger overlap wins
    rho = np.full(lab.shape, 1.0)
    rho[lab == 9], rho[lab == 8] = 3.0, 2.0
    res = resample_labels_mass_preserving(lab, rho, (1, 1, 1), 2)
    assert set(res.rescued_labels) == {8, 9}
    assert res.labels[0, 0, 0] == 9 and res.labels[1, 1, 1] == 8 and np.count_nonzero(res.labels == 1) == 6
    coarse = _masses(res.labels, res.density_g_cm3, (2, 2, 2))
    assert coarse == pytest.approx({1: 60e-3, 8: 6e-3, 9: 3e-3}, rel=1e-12)


def test_uniform_blocks_keep_block_mean_density_exactly():
    rng = np.random.default_rng(3)
    coarse_lab = rng.integers(1, 4, size=(3, 4, 5))
    lab = np.repeat(np.repeat(np.repeat(coarse_lab, 2, 0), 2, 1), 2, 2)
    rho = rng.uniform(0.5, 2.0, lab.shape)
    res = resample_labels_mass_preserving(lab, rho, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(res.labels, coarse_lab)
    block_mean = rho.reshape(3, 2, 4, 2, 5, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(res.density_g_cm3, block_mean, rtol=1e-12)
    assert all(s == pytest.approx(1.0, rel=1e-12) for s in res.density_scale.values())


def test_unrescuable_label_is_reported():
    lab = np.array([[[1, 2], [2, 2]], [[2, 2], [2, 2]]])   # label 1 only inside the only voxel of label 2
    with pytest.raises(ResampleError, match="label 1 .*cannot keep any voxel.*smaller new_spacing_mm"):
        resample_labels_mass_preserving(lab, np.ones(lab.shape), (1, 1, 1), 2)


def test_new_origin_is_the_centre_of_the_first_block():
    lab = np.ones((6, 6, 9), dtype=np.int32)
    rho = np.ones(lab.shape)
    spacing, origin = (2.0, 0.8, 0.5), (10.0, -20.0, 30.0)
    direction = np.array([[-1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]])
    fine = Volume(lab, spacing, origin, direction)
    res = resample_labels_mass_preserving(lab, rho, spacing, (4.0, 2.4, 1.5), origin_xyz_mm=origin,
                                          direction_xyz=direction)
    assert res.factors == (2.0, 3.0, 3.0)
    # the centre of coarse voxel [0,0,0] is the mean of the centres of fine voxels [0:2, 0:3, 0:3]
    idx = np.stack(np.meshgrid(range(2), range(3), range(3), indexing="ij"), -1).reshape(-1, 3)
    expected = fine.index_to_world(idx).mean(axis=0)
    np.testing.assert_allclose(res.origin_xyz_mm, expected, atol=1e-12)
    coarse = res.labels_volume()
    np.testing.assert_allclose(coarse.index_to_world((1, 1, 1)),
                               fine.index_to_world(np.array([[2.5, 4.0, 4.0]]))[0], atol=1e-12)


@pytest.mark.parametrize("kwargs, what", [
    (dict(labels=np.ones((2, 2)), density=np.ones((2, 2))), "3-D"),
    (dict(labels=np.ones((2, 2, 2), int), density=np.ones((2, 2, 3))), "must match"),
    (dict(labels=np.full((2, 2, 2), -1), density=np.ones((2, 2, 2))), ">= 0"),
    (dict(labels=np.full((2, 2, 2), 1.5), density=np.ones((2, 2, 2))), "integer label"),
    (dict(labels=np.ones((2, 2, 2), int), density=-np.ones((2, 2, 2))), "finite and >= 0"),
    (dict(labels=np.ones((2, 2, 2), int), density=np.full((2, 2, 2), np.nan)), "finite and >= 0"),
    (dict(labels=np.ones((2, 2, 2), int), density=np.ones((2, 2, 2)), spacing_mm=(1, 0, 1)), "spacing_mm"),
    (dict(labels=np.ones((2, 2, 2), int), density=np.ones((2, 2, 2)), new_spacing_mm=(2, 2)), "new_spacing_mm"),
    (dict(labels=np.ones((2, 2, 2), int), density=np.ones((2, 2, 2)), new_spacing_mm=-2), "new_spacing_mm"),
])
def test_resample_bad_input(kwargs, what):
    args = dict(spacing_mm=(1, 1, 1), new_spacing_mm=2.0)
    args.update(kwargs)
    with pytest.raises(ResampleError, match=what):
        resample_labels_mass_preserving(args.pop("labels"), args.pop("density"), **args)


# ============================================================== cropping
@pytest.mark.parametrize("dir_z", [1.0, -1.0])
def test_crop_keeps_world_geometry(dir_z):
    arr = np.arange(20 * 3 * 4).reshape(20, 3, 4)
    direction = np.diag([1.0, -1.0, dir_z])
    vol = Volume(arr, (2.5, 1.0, 1.0), (10.0, 20.0, -50.0), direction)
    z_c = -50.0 + dir_z * 2.5 * np.arange(20)
    lo, hi = (-40.0, -30.0) if dir_z > 0 else (-70.0, -60.0)
    out = crop_to_scan_range(vol, lo, hi)
    keep = np.flatnonzero((z_c + 1.25 > lo) & (z_c - 1.25 < hi))
    assert out.shape[0] == keep.size > 0
    np.testing.assert_array_equal(out.array, arr[keep[0]:keep[-1] + 1])
    for k in range(out.shape[0]):  # every kept voxel keeps its world position
        np.testing.assert_allclose(out.index_to_world((k, 2, 3)), vol.index_to_world((k + keep[0], 2, 3)))
    assert out.spacing_mm == vol.spacing_mm and np.array_equal(out.direction_xyz, direction)
    assert out.array.base is not arr  # a copy


def test_crop_partial_slice_is_kept_and_errors():
    vol = Volume(np.zeros((10, 2, 2)), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    out = crop_to_scan_range(vol, 4.9, 5.1)   # touches slice 2 (z in [3, 5]) and slice 3 (z in [5, 7])
    assert out.shape[0] == 2 and out.origin_xyz_mm == (0.0, 0.0, 4.0)
    with pytest.raises(ResampleError, match=r"misses the volume, which spans z = \[-1, 19\] mm"):
        crop_to_scan_range(vol, 100.0, 200.0)
    with pytest.raises(ResampleError, match="z_min_mm < z_max_mm"):
        crop_to_scan_range(vol, 5.0, 5.0)
    with pytest.raises(ResampleError, match="pipeline.image.Volume"):
        crop_to_scan_range(np.zeros((2, 2, 2)), 0.0, 1.0)
    c, s = math.cos(0.3), math.sin(0.3)
    oblique = Volume(np.zeros((4, 2, 2)), direction_xyz=np.array([[1, 0, 0], [0, c, -s], [0, s, c]]))
    with pytest.raises(ResampleError, match="axial slices"):
        crop_to_scan_range(oblique, 0.0, 1.0)


# ============================================================== export
def test_export_round_trip_preserves_masses(phantom, tmp_path):
    from physics.transport import read_materials_csv as engine_read

    lab, rho = phantom
    res = resample_labels_mass_preserving(lab, rho, (1.0, 1.0, 1.0), 2.0, origin_xyz_mm=(5.0, 6.0, 7.0))
    names = {1000: "air", 1: "soft_tissue", 2: "skin", 3: "liver", 4: "cortical_bone", 7: "thyroid"}
    mats = {L: tissue(t) for L, t in names.items()}
    s = export_phantom(res.labels_volume(), res.density_g_cm3, mats, tmp_path / "ph",
                       label_info={3: {"name": "liver_organ"}}, metadata={"note": "test"})
    labv = read_image(tmp_path / "ph" / "labels.nii.gz")
    rhov = read_image(tmp_path / "ph" / "density.nii.gz")
    assert labv.origin_xyz_mm == pytest.approx(res.origin_xyz_mm) and labv.spacing_mm == pytest.approx((2, 2, 2))
    back = _masses(labv.array, rhov.array.astype(np.float64), labv.spacing_mm)
    fine = _masses(lab, rho, (1, 1, 1))
    doc = json.loads((tmp_path / "ph" / "organs.json").read_text())
    organs = {o["label_id"]: o for o in doc["organs"]}
    engine = engine_read(tmp_path / "ph" / "materials.csv")
    for L, m in fine.items():
        assert back[L] == pytest.approx(m, rel=1e-6)           # float32 file
        assert organs[L]["mass_g"] == pytest.approx(m, rel=1e-9)
        n = int(np.count_nonzero(labv.array == L))
        assert n * 8e-3 * engine[L].density_g_cm3 == pytest.approx(m, rel=1e-9)  # labels + table only
    assert organs[3]["name"] == "liver_organ" and organs[3]["tissue"] == "liver"
    assert organs[4]["name"] == "cortical_bone"  # default name: the tissue
    assert doc["note"] == "test" and doc["schema_version"] == "1.0"
    assert s["total_mass_g"] == pytest.approx(sum(fine.values()), rel=1e-9)


def test_export_refuses_labels_without_material(tmp_path):
    vol = Volume(np.array([[[1, 2]]]).repeat(2, 0))
    with pytest.raises(ResampleError, match=r"labels \[2\] .*no material"):
        export_phantom(vol, np.ones(vol.shape), {1: tissue("liver")}, tmp_path / "o")
    with pytest.raises(ResampleError, match="must match"):
        export_phantom(vol, np.ones((3, 3, 3)), {1: tissue("liver"), 2: tissue("air")}, tmp_path / "o")
    with pytest.raises(ResampleError, match="Tissue"):
        export_phantom(vol, np.ones(vol.shape), {1: "liver", 2: tissue("air")}, tmp_path / "o")
    assert not (tmp_path / "o").exists()
