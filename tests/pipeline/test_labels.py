"""Semantic / instance / panoptic maps and panoptic quality against hand-built maps whose answer is known:
connected components at 6/18/26 neighbours, a sphere's volume, centroid and equivalent diameter
against the analytic values, and PQ / SQ / RQ counted by hand as in Kirillov et al. (CVPR 2019)."""

import math

import numpy as np
import pytest

from pipeline.labels import (LabelError, instances_to_panoptic, neighbour_structure, panoptic_quality,
                             panoptic_to_instances, panoptic_to_semantic, segment_table, semantic_to_panoptic)


def _n_instances(pan, c=2):
    return len({int(v) for v in np.unique(pan) if v // 1000 == c and v % 1000})


# ------------------------------------------------------------------ connected components
def test_cubes_touching_at_a_corner_are_two_objects_at_6_and_18_one_at_26():
    s = np.zeros((4, 4, 4), dtype=np.uint8)
    s[0:2, 0:2, 0:2] = 2
    s[2:4, 2:4, 2:4] = 2  # shares only the vertex between voxels (1,1,1) and (2,2,2)
    assert [_n_instances(semantic_to_panoptic(s, things=[2], connectivity=c)) for c in (6, 18, 26)] == [2, 2, 1]


def test_cubes_touching_along_an_edge_are_two_objects_at_6_one_at_18():
    s = np.zeros((4, 4, 4), dtype=np.uint8)
    s[0:2, 0:2, 0:2] = 2
    s[0:2, 2:4, 2:4] = 2  # shares the edge between (k,1,1) and (k,2,2)
    assert [_n_instances(semantic_to_panoptic(s, things=[2], connectivity=c)) for c in (6, 18, 26)] == [2, 1, 1]


def test_neighbourhood_sizes():
    assert [int(neighbour_structure(c).sum()) - 1 for c in (6, 18, 26)] == [6, 18, 26]
    # 5 x 0.7 x 0.7 mm: within 5 mm are the 6 faces (5, 0.7 mm) and the 4 in-plane diagonals (0.99 mm);
    # the diagonals across slices are 5.05 mm (edge) and 5.10 mm (vertex) long
    st = neighbour_structure(26, spacing_mm=(5.0, 0.7, 0.7), max_neighbour_distance_mm=5.0)
    assert int(st.sum()) - 1 == 10
    assert st[1, 0, 0] and st[1, 2, 2] and st[0, 1, 1] and not st[0, 1, 2] and not st[2, 2, 2]
    # a limit below every face step still keeps the faces (a structure is never cut between slices)
    assert int(neighbour_structure(26, spacing_mm=(5.0, 0.7, 0.7), max_neighbour_distance_mm=0.1).sum()) - 1 == 6


def test_spacing_aware_connectivity_separates_objects_touching_diagonally_across_thick_slices():
    s = np.zeros((2, 4, 4), dtype=np.uint8)
    s[0, 0:2, 0:2] = 2
    s[1, 0:2, 2:4] = 2  # touches the first only through (0, j, 1) -> (1, j, 2): one slice up, one voxel across
    kw = dict(things=[2], spacing_mm=(5.0, 0.7, 0.7), connectivity=26)
    assert _n_instances(semantic_to_panoptic(s, **kw)) == 1
    assert _n_instances(semantic_to_panoptic(s, max_neighbour_distance_mm=5.0, **kw)) == 2
    s2 = np.zeros((2, 4, 4), dtype=np.uint8)
    s2[0, 0:2, 0:2] = 2
    s2[0, 2:4, 2:4] = 2  # an in-plane diagonal contact (0.99 mm) still connects
    assert _n_instances(semantic_to_panoptic(s2, max_neighbour_distance_mm=5.0, **kw)) == 1


def test_min_volume_drops_small_objects_to_void():
    s = np.zeros((6, 6, 6), dtype=np.uint8)
    s[0, 0, 0] = 2           # 1 voxel  = 2 mm³ at spacing (2, 1, 1)
    s[3:6, 3:6, 3:6] = 2     # 27 voxels = 54 mm³
    s[0, 5, 5] = 1           # stuff: never dropped
    pan = semantic_to_panoptic(s, things=[2], spacing_mm=(2.0, 1.0, 1.0), min_volume_mm3=3.0)
    assert pan[0, 0, 0] == 0 and pan[4, 4, 4] == 2001 and pan[0, 5, 5] == 1000
    assert _n_instances(pan) == 1
    # the limit is inclusive: an object of exactly 2 mm³ is kept
    pan = semantic_to_panoptic(s, things=[2], spacing_mm=(2.0, 1.0, 1.0), min_volume_mm3=2.0)
    assert _n_instances(pan) == 2 and pan[0, 0, 0] == 2001  # numbered in raster order of the first voxel


# ------------------------------------------------------------------ encoding, round trips
def _random_semantic(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((12, 14, 16)) * 4).astype(np.uint8) * (rng.random((12, 14, 16)) > 0.6)


def test_encoding_and_semantic_round_trip():
    s = _random_semantic()
    pan = semantic_to_panoptic(s, things=[2, 3], connectivity=6)
    assert np.array_equal(panoptic_to_semantic(pan), s)
    assert set(np.unique(pan[s == 1]).tolist()) == {1000}       # stuff keeps instance 0
    assert np.all(pan[s == 0] == 0)
    assert np.all(pan[s == 2] // 1000 == 2) and np.all(pan[s == 2] % 1000 > 0)
    # ids of a class are 1..n with no gaps
    ids = np.unique(pan[s == 3]) % 1000
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))
    pan256 = semantic_to_panoptic(s, things=[2, 3], connectivity=6, label_divisor=256)
    assert np.array_equal(panoptic_to_semantic(pan256, label_divisor=256), s)


def test_instance_map_round_trip():
    s = _random_semantic(1)
    pan = semantic_to_panoptic(s, things=[2, 3], connectivity=26)
    inst = panoptic_to_instances(pan)
    n = len(np.unique(pan[pan % 1000 != 0]))
    assert inst.max() == n and np.array_equal(np.unique(inst), np.arange(n + 1))
    assert np.all((inst == 0) == (pan % 1000 == 0))
    assert np.array_equal(instances_to_panoptic(s, inst, things=[2, 3]), pan)
    # arbitrary object labels are renumbered per class in label order
    s2 = np.zeros((2, 2, 6), dtype=np.uint8)
    s2[..., :4] = 2
    s2[..., 4:] = 1
    i2 = np.zeros_like(s2, dtype=np.int32)
    i2[..., :2], i2[..., 2:4] = 70, 9
    p2 = instances_to_panoptic(s2, i2, things=[2])
    assert p2[0, 0, 0] == 2002 and p2[0, 0, 2] == 2001 and p2[0, 0, 5] == 1000


def test_too_many_instances_for_the_divisor():
    s = np.zeros((1, 1, 5), dtype=np.uint8)
    s[0, 0, ::2] = 2  # three isolated voxels
    assert np.unique(semantic_to_panoptic(s, things=[2], connectivity=6, label_divisor=4)).tolist() == [0, 9, 10, 11]
    with pytest.raises(LabelError, match="too many for label_divisor 3"):
        semantic_to_panoptic(s, things=[2], connectivity=6, label_divisor=3)


# ------------------------------------------------------------------------------- table
def test_sphere_volume_centroid_and_equivalent_diameter_against_analytic_values():
    r_mm = 8.0
    spacing = (1.0, 0.5, 0.5)
    centre_idx = np.array([12.3, 20.2, 19.7])
    shape = (25, 41, 40)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum(((g - c) * h) ** 2 for g, c, h in zip((k, j, i), centre_idx, spacing))
    s = np.where(d2 <= r_mm ** 2, 3, 0).astype(np.uint8)
    s[0, 0, 0] = 1
    origin = (10.0, -20.0, 30.0)
    direction = np.diag([-1.0, -1.0, 1.0])
    pan = semantic_to_panoptic(s, things=[3], spacing_mm=spacing)
    rows = segment_table(pan, spacing_mm=spacing, origin_xyz_mm=origin, direction_xyz=direction)
    assert [(r["segment_id"], r["kind"], r["instance_label"]) for r in rows] == [(1000, "stuff", 0), (3001, "thing", 1)]
    sph = rows[1]
    v_true = 4.0 / 3.0 * math.pi * r_mm ** 3  # 2144.66 mm³
    print(f"sphere r=8 mm: volume {sph['volume_mm3']:.2f} vs {v_true:.2f} mm³, "
          f"equivalent diameter {sph['equivalent_diameter_mm']:.4f} vs 16 mm, centroid {sph['centroid_index_zyx']}")
    assert sph["volume_mm3"] == pytest.approx(v_true, rel=0.01)
    assert sph["equivalent_diameter_mm"] == pytest.approx(2 * r_mm, rel=0.004)
    assert sph["voxels"] * 0.25 == sph["volume_mm3"]  # 1.0 x 0.5 x 0.5 mm voxels
    assert np.allclose(sph["centroid_index_zyx"], centre_idx, atol=0.05)
    # world = origin + D diag(dx, dy, dz) (i, j, k), worked by hand: x = 10 - 0.5 i, y = -20 - 0.5 j, z = 30 + k
    kc, jc, ic = sph["centroid_index_zyx"]
    assert np.allclose(sph["centroid_world_xyz_mm"], [10 - 0.5 * ic, -20 - 0.5 * jc, 30 + kc], atol=1e-9)
    assert np.allclose(sph["centroid_world_xyz_mm"], [10 - 0.5 * 19.7, -20 - 0.5 * 20.2, 30 + 12.3], atol=0.05)
    idx = np.argwhere(s == 3)
    assert sph["bbox_index_zyx"] == {"lo": idx.min(0).tolist(), "hi": (idx.max(0) + 1).tolist()}
    # the extent along z is the sphere's: the centre 12.3 +- 8 voxels
    assert sph["bbox_index_zyx"]["lo"][0] == 5 and sph["bbox_index_zyx"]["hi"][0] == 21


def test_empty_map_has_an_empty_table():
    assert segment_table(np.zeros((2, 2, 2), dtype=np.int32)) == []


# -------------------------------------------------------------------- panoptic quality
def _line(n, fill, segs):
    a = np.full((1, 1, n), fill, dtype=np.int32)
    for (lo, hi), v in segs.items():
        a[0, 0, lo:hi] = v
    return a


def test_pq_hand_worked_example():
    # truth: stuff 1000 everywhere, objects 2001 [0,10), 2002 [20,30), 2003 [50,55)
    # pred : stuff 1000 elsewhere, 2001 [2,10), 2007 [20,26), 2009 [40,45)
    t = _line(60, 1000, {(0, 10): 2001, (20, 30): 2002, (50, 55): 2003})
    p = _line(60, 1000, {(2, 10): 2001, (20, 26): 2007, (40, 45): 2009})
    r = panoptic_quality(p, t)
    c2 = r.per_class[2]
    # 2001/2001: 8 / 10 = 0.8; 2002/2007: 6 / 10 = 0.6; 2009 FP; 2003 FN
    assert (c2.tp, c2.fp, c2.fn) == (2, 1, 1)
    assert [m[2] for m in c2.matches] == pytest.approx([0.8, 0.6])
    rq, sq = 2 / (2 + 0.5 + 0.5), (0.8 + 0.6) / 2
    assert c2.rq == pytest.approx(rq) and c2.sq == pytest.approx(0.7) and c2.pq == pytest.approx(0.4667, abs=5e-5)
    assert c2.pq == pytest.approx(sq * rq)
    # stuff: truth 35 voxels, pred 41, both on 30 -> IoU 30 / 46
    c1 = r.per_class[1]
    assert c1.kind == "stuff" and (c1.tp, c1.fp, c1.fn) == (1, 0, 0) and c1.pq == pytest.approx(30 / 46)
    print(f"class 2: TP 2 FP 1 FN 1, SQ {c2.sq:.4f} RQ {c2.rq:.4f} PQ {c2.pq:.4f}; class 1 PQ {c1.pq:.4f}")
    assert r.pq == pytest.approx((30 / 46 + 1.4 / 3) / 2)
    assert r.summary("things")["pq"] == pytest.approx(c2.pq) and r.summary("stuff")["pq"] == pytest.approx(30 / 46)
    assert r.summary("things")["n_classes"] == 1 and r.summary("stuff")["n_classes"] == 1


def test_iou_of_exactly_one_half_is_not_a_match():
    t = _line(20, 1000, {(0, 10): 2001})
    r = panoptic_quality(_line(20, 1000, {(0, 5): 2001}), t)  # 5 / 10 = 0.5
    assert (r.per_class[2].tp, r.per_class[2].fp, r.per_class[2].fn) == (0, 1, 1)
    assert r.per_class[2].pq == 0.0 and r.per_class[2].sq == 0.0
    r = panoptic_quality(_line(20, 1000, {(0, 6): 2001}), t)  # 6 / 10 = 0.6
    assert (r.per_class[2].tp, r.per_class[2].fp, r.per_class[2].fn) == (1, 0, 0)
    assert r.per_class[2].pq == pytest.approx(0.6)


def test_void_rule():
    # truth void (0) on [10, 20): the prediction's part there is removed before IoU
    t = _line(40, 1000, {(0, 10): 2001, (10, 20): 0})
    p = _line(40, 1000, {(0, 14): 2001, (14, 20): 0})
    r = panoptic_quality(p, t)
    assert r.per_class[2].matches[0][2] == pytest.approx(1.0)  # 10 / (14 + 10 - 10 - 4); without the rule 10 / 14
    # an unmatched predicted segment 6/10 void is not a FP; one 4/10 void is
    t = _line(40, 1000, {(0, 6): 0})
    assert panoptic_quality(_line(40, 1000, {(0, 10): 2005}), t).per_class[2].fp == 0
    t = _line(40, 1000, {(0, 4): 0})
    assert panoptic_quality(_line(40, 1000, {(0, 10): 2005}), t).per_class[2].fp == 1
    # exactly half void: counted (the rule needs more than half)
    t = _line(40, 1000, {(0, 5): 0})
    assert panoptic_quality(_line(40, 1000, {(0, 10): 2005}), t).per_class[2].fp == 1


def test_class_absent_from_both_maps_is_nan_and_left_out():
    t = _line(20, 1000, {(0, 10): 2001})
    r = panoptic_quality(t, t, things=[2, 3])
    assert math.isnan(r.per_class[3].pq) and math.isnan(r.per_class[3].sq) and math.isnan(r.per_class[3].rq)
    assert r.per_class[3].kind == "thing"
    assert r.pq == 1.0 and r.summary("all")["n_classes"] == 2 and r.summary("things")["n_classes"] == 1
    empty = panoptic_quality(np.zeros((1, 1, 4), int), np.zeros((1, 1, 4), int))
    assert empty.per_class == {} and math.isnan(empty.pq)


def test_pq_ignores_instance_numbering_and_class_mismatch_is_not_a_match():
    t = _line(30, 1000, {(0, 10): 2001, (10, 20): 2002})
    p = _line(30, 1000, {(0, 10): 2002, (10, 20): 2001})
    assert panoptic_quality(p, t).pq == 1.0
    # same voxels, other class: no match (FP in class 3, FN in class 2)
    r = panoptic_quality(_line(30, 1000, {(0, 10): 3001, (10, 20): 2002}), t)
    assert (r.per_class[3].fp, r.per_class[2].fn, r.per_class[2].tp) == (1, 1, 1)
    assert r.per_class[3].kind == "thing"  # inferred from its non-zero instance id


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad, match", [
    (np.full((2, 2, 2), 0.5), "non-integer values"),
    (np.full((2, 2, 2), -1), "negative labels"),
    (np.zeros((4, 4), int), "3-D array"),
    (np.array([[["a"]]]), "integer labels"),
])
def test_bad_maps_are_refused(bad, match):
    with pytest.raises(LabelError, match=match):
        semantic_to_panoptic(bad, things=[2])
    with pytest.raises(LabelError, match=match):
        panoptic_quality(bad, bad)


def test_bad_parameters_are_refused():
    s = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(LabelError, match="connectivity must be one of 6, 18, 26"):
        semantic_to_panoptic(s, things=[2], connectivity=8)
    with pytest.raises(LabelError, match="things must be positive"):
        semantic_to_panoptic(s, things=[0, 2])
    with pytest.raises(LabelError, match="min_volume_mm3"):
        semantic_to_panoptic(s, things=[2], min_volume_mm3=-1)
    with pytest.raises(LabelError, match="max_neighbour_distance_mm"):
        semantic_to_panoptic(s, things=[2], max_neighbour_distance_mm=0)
    with pytest.raises(LabelError, match="spacing_mm"):
        semantic_to_panoptic(s, things=[2], spacing_mm=(1, 0, 1))
    with pytest.raises(LabelError, match="label_divisor"):
        panoptic_to_semantic(s, label_divisor=1)
    with pytest.raises(LabelError, match="same grid"):
        panoptic_quality(np.zeros((2, 2, 2), int), np.zeros((2, 2, 3), int))
    with pytest.raises(LabelError, match="shape"):
        instances_to_panoptic(s, np.zeros((2, 2, 3), int), things=[2])
    two = np.zeros((1, 1, 4), np.uint8)
    two[..., :2], two[..., 2:] = 2, 3
    with pytest.raises(LabelError, match="covers voxels of classes"):
        instances_to_panoptic(two, np.ones((1, 1, 4), int), things=[2, 3])
    with pytest.raises(LabelError, match="not a thing class"):
        instances_to_panoptic(two, np.ones((1, 1, 4), int) * (two == 3), things=[2])
