"""pipeline.topology against analytic truth.

Betti numbers of shapes whose topology is known (ball, solid torus, spherical shell, two
linked tori, a genus-2 body) digitised at two sizes and spacings; the Euler characteristic
against scikit-image's independent look-up-table count (Ohser et al. 2002); digital cases
where the 26/6 and 6/26 pairs differ, counted by hand; skeleton graphs of a tube, a Y and
a tree with a loop, with lengths against the drawn axes; clDice (Shit et al. 2021) of a tube
against itself and against itself with a gap (Tsens = 1 - gap / axis length); tree repair
of a gap and of a loop.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import euler_number

from pipeline.topology import (TopologyError, betti_numbers, cldice, euler_characteristic, repair_tree,
                               skeleton_graph, skeletonize_mask)

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- shapes (mm)
def grid(extent_mm, spacing_mm):
    """Voxel-centre coordinates (z, y, x) in mm of a grid covering ``extent_mm`` (lo, hi per axis)."""
    axes = [np.arange(lo, hi + 1e-9, s) for (lo, hi), s in zip(extent_mm, spacing_mm)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def capsule(g, a, b, r):
    """Voxels within ``r`` mm of the segment a-b (mm): a tube with round caps."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    t = np.clip(((g - a) @ d) / (d @ d), 0.0, 1.0)
    return np.linalg.norm(g - (a + t[..., None] * d), axis=-1) <= r


def torus(g, centre, normal_axis, big_r, small_r):
    """Solid torus: distance to the circle of radius big_r around ``centre`` in the plane normal to an axis."""
    p = g - np.asarray(centre, float)
    h = p[..., normal_axis]
    inplane = np.sqrt((p ** 2).sum(-1) - h ** 2)
    return (inplane - big_r) ** 2 + h ** 2 <= small_r ** 2


def dist_to_polyline(pt, pts):
    pt = np.asarray(pt, float)
    best = np.inf
    for a, b in zip(pts[:-1], pts[1:]):
        a, b = np.asarray(a, float), np.asarray(b, float)
        t = np.clip((pt - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
        best = min(best, np.linalg.norm(pt - (a + t * (b - a))))
    return best


SCALES = [pytest.param(1.0, (1.0, 1.0, 1.0), id="1mm"), pytest.param(1.5, (1.3, 0.7, 0.9), id="x1.5-aniso")]


def shapes(scale, sp):
    s = scale
    out = {}
    g = grid([(-12 * s, 12 * s)] * 3, sp)
    r2 = (g ** 2).sum(-1)
    out["ball"] = (r2 <= (10 * s) ** 2, (1, 0, 0))
    out["shell"] = ((r2 <= (10 * s) ** 2) & (r2 > (6 * s) ** 2), (1, 0, 1))
    holes = ((g[..., 2] - 5.5 * s) ** 2 + g[..., 1] ** 2 <= (3 * s) ** 2) | \
            ((g[..., 2] + 5.5 * s) ** 2 + g[..., 1] ** 2 <= (3 * s) ** 2)
    out["genus2"] = ((r2 <= (11.5 * s) ** 2) & ~holes, (1, 2, 0))
    g = grid([(-5 * s, 5 * s), (-15 * s, 15 * s), (-15 * s, 15 * s)], sp)
    out["torus"] = (torus(g, (0, 0, 0), 0, 10 * s, 3.5 * s), (1, 1, 0))
    g = grid([(-14 * s, 14 * s), (-14 * s, 14 * s), (-14 * s, 25 * s)], sp)
    link = torus(g, (0, 0, 0), 0, 10 * s, 3 * s) | torus(g, (0, 0, 10 * s), 1, 10 * s, 3 * s)
    out["linked tori"] = (link, (2, 2, 0))
    return out


# ----------------------------------------------------------------------------- Betti numbers
@pytest.mark.parametrize("scale,sp", SCALES)
def test_betti_numbers_of_analytic_shapes(scale, sp):
    for name, (mask, truth) in shapes(scale, sp).items():
        for conn in (26, 6):
            b = betti_numbers(mask, connectivity=conn)
            assert b.as_tuple() == truth, (name, conn, b)
            assert b.euler == truth[0] - truth[1] + truth[2]
            # independent count: scikit-image's look-up table (Ohser et al. 2002), 26/6 = connectivity 3
            assert b.euler == euler_number(mask, connectivity=3 if conn == 26 else 1), (name, conn)
        print(f"{name} x{scale}: {truth}")


def test_result_states_the_connectivity_pair():
    d = betti_numbers(np.ones((3, 3, 3), bool)).as_dict()
    assert (d["foreground_connectivity"], d["background_connectivity"]) == (26, 6)
    d = betti_numbers(np.ones((3, 3, 3), bool), connectivity=6).as_dict()
    assert (d["foreground_connectivity"], d["background_connectivity"]) == (6, 26)
    assert d["b0"] == 1 and d["euler_characteristic"] == 1


def test_euler_characteristic_matches_scikit_image_on_random_volumes():
    rng = np.random.default_rng(7)
    for k in range(6):
        m = rng.random((9, 11, 10)) < 0.3 + 0.08 * k
        assert euler_characteristic(m, connectivity=26) == euler_number(m, connectivity=3)
        assert euler_characteristic(m, connectivity=6) == euler_number(m, connectivity=1)
        b = betti_numbers(m)
        assert b.b1 >= 0 and b.b0 - b.b1 + b.b2 == b.euler


def test_digital_cases_where_the_two_pairs_differ():
    # two voxels sharing only a corner: one piece for 26, two for 6
    m = np.zeros((4, 4, 4), bool)
    m[1, 1, 1] = m[2, 2, 2] = True
    assert betti_numbers(m, connectivity=26).as_tuple() == (1, 0, 0)
    assert betti_numbers(m, connectivity=6).as_tuple() == (2, 0, 0)
    # a diamond of four voxels touching at edges round an empty voxel: a ring for 26 (the
    # empty voxel is a 6-connected tunnel through the plane), four pieces for 6
    m = np.zeros((3, 5, 5), bool)
    m[1, 1, 2] = m[1, 3, 2] = m[1, 2, 1] = m[1, 2, 3] = True
    assert betti_numbers(m, connectivity=26).as_tuple() == (1, 1, 0)
    assert betti_numbers(m, connectivity=6).as_tuple() == (4, 0, 0)
    # a 3x3x3 cube without its centre: a cavity for both pairs
    m = np.zeros((5, 5, 5), bool)
    m[1:4, 1:4, 1:4] = True
    m[2, 2, 2] = False
    assert betti_numbers(m, connectivity=26).as_tuple() == (1, 0, 1)
    assert betti_numbers(m, connectivity=6).as_tuple() == (1, 0, 1)
    # ... and with one corner removed too: the corner-connected cavity stays closed for 6-background only
    m[1, 1, 1] = False
    m[2, 2, 2] = False
    assert betti_numbers(m, connectivity=26).as_tuple() == (1, 0, 1)
    # the voxels touching the array faces: the outside is one background component
    assert betti_numbers(np.ones((4, 5, 6), bool)).as_tuple() == (1, 0, 0)
    assert betti_numbers(np.zeros((4, 5, 6), bool)).as_tuple() == (0, 0, 0)


def test_betti_bad_input():
    with pytest.raises(TopologyError, match="connectivity must be one of"):
        betti_numbers(np.ones((3, 3, 3), bool), connectivity=18)
    with pytest.raises(TopologyError, match="3-D array"):
        betti_numbers(np.ones((3, 3), bool))
    with pytest.raises(TopologyError, match="boolean"):
        betti_numbers(np.full((3, 3, 3), 2))
    with pytest.raises(TopologyError, match="empty array"):
        euler_characteristic(np.zeros((0, 3, 3), bool))


# ----------------------------------------------------------------------------- skeleton graph
@pytest.mark.parametrize("sp", [(1.0, 1.0, 1.0), (1.5, 0.8, 0.8), (0.6, 0.6, 0.6)])
@pytest.mark.parametrize("axis", [((20, 20, 6), (20, 20, 34)), ((8, 10, 10), (32, 28, 30))], ids=["along-x", "oblique"])
def test_straight_tube_has_two_ends_and_its_length(sp, axis):
    r = 4.0
    g = grid([(0, 40)] * 3, sp)
    a, b = axis
    gr = skeleton_graph(capsule(g, a, b, r), spacing_mm=sp)
    length = float(np.linalg.norm(np.subtract(b, a)))
    print(f"tube {length:.2f} mm at {sp}: skeleton {gr.total_length_mm:.2f} mm, "
          f"mean radius {gr.edges[0]['mean_radius_mm']:.2f} mm")
    assert (gr.n_end_points, gr.n_branch_points, gr.n_cycles, len(gr.edges)) == (2, 0, 0, 1)
    # the skeleton ends retreat into the round caps by less than a radius, and digital
    # staircases are smoothed before summing: L - r <= length <= L + one voxel
    assert length - r <= gr.total_length_mm <= length + max(sp)
    assert abs(gr.edges[0]["mean_radius_mm"] - r) <= max(sp)


def test_even_thickness_bars_keep_their_skeleton():
    """scikit-image's 3-D thinning deletes these entirely (issue #3757); ours keeps a line."""
    for w in (2, 4, 6):
        m = np.zeros((12, 12, 40), bool)
        m[3:3 + w, 3:3 + w, 5:35] = True
        gr = skeleton_graph(m)
        assert (gr.n_end_points, gr.n_branch_points) == (2, 0)
        assert 30 - w - 1 <= gr.total_length_mm <= 30


def _y_tree(g, r_trunk=3.0, r_branch=2.5):
    pts = {"root": (20, 20, 4), "fork": (20, 20, 20), "left": (20, 8, 34), "right": (20, 32, 34)}
    m = capsule(g, pts["root"], pts["fork"], r_trunk) | capsule(g, pts["fork"], pts["left"], r_branch) | \
        capsule(g, pts["fork"], pts["right"], r_branch)
    return m, pts


def _loop_tree(g, r_thick=3.0, r_thin=1.5):
    """A vessel that splits into a thick and a thin branch which join again (one loop)."""
    thick = [(20, 20, 14), (20, 10, 24), (20, 20, 34)]
    thin = [(20, 20, 14), (20, 30, 24), (20, 20, 34)]
    m = capsule(g, (20, 20, 4), (20, 20, 14), r_thick) | capsule(g, (20, 20, 34), (20, 20, 44), r_thick)
    for a, b in zip(thick[:-1], thick[1:]):
        m |= capsule(g, a, b, r_thick)
    for a, b in zip(thin[:-1], thin[1:]):
        m |= capsule(g, a, b, r_thin)
    return m, thick, thin


@pytest.mark.parametrize("sp", [(1.0, 1.0, 1.0), (1.2, 0.8, 0.9)])
def test_y_tree_has_one_branch_point_and_three_ends(sp):
    g = grid([(0, 40), (0, 40), (0, 40)], sp)
    m, p = _y_tree(g)
    gr = skeleton_graph(m, spacing_mm=sp)
    drawn = 16 + 2 * np.hypot(12, 14)
    print(f"Y at {sp}: skeleton {gr.total_length_mm:.2f} mm, drawn axes {drawn:.2f} mm")
    assert (gr.n_branch_points, gr.n_end_points, gr.n_cycles, len(gr.edges)) == (1, 3, 0, 3)
    assert abs(gr.total_length_mm - drawn) < 0.1 * drawn
    fork = [n for n in gr.nodes if n["kind"] == "branch"][0]
    assert np.linalg.norm(np.multiply(fork["index_zyx"], sp) - p["fork"]) < 3.0
    assert betti_numbers(gr.skeleton).as_tuple() == (1, 0, 0)


@pytest.mark.parametrize("sp", [(1.0, 1.0, 1.0), (1.2, 0.8, 0.9)])
def test_tree_with_a_loop_has_one_cycle(sp):
    g = grid([(10, 30), (0, 40), (0, 48)], sp)
    m, _, _ = _loop_tree(g)
    gr = skeleton_graph(m, spacing_mm=sp)
    assert gr.n_cycles == 1 == betti_numbers(m).b1
    assert (gr.n_branch_points, gr.n_end_points) == (2, 2)
    # the thin edge of the loop is the one with the smallest mean radius, about 1.5 mm
    radii = sorted(e["mean_radius_mm"] for e in gr.edges)
    assert abs(radii[0] - 1.5) <= max(sp) and radii[1] > 2.5


def test_torus_and_ball_graphs():
    g = grid([(-5, 5), (-16, 16), (-16, 16)], (1.0, 1.0, 1.0))
    gr = skeleton_graph(torus(g, (0, 0, 0), 0, 12.0, 4.0))
    print(f"torus core 2 pi 12 = {2 * np.pi * 12:.2f} mm, skeleton {gr.total_length_mm:.2f} mm")
    assert gr.n_cycles == 1 and [n["kind"] for n in gr.nodes] == ["loop"]
    assert abs(gr.total_length_mm - 2 * np.pi * 12) < 0.03 * 2 * np.pi * 12
    g = grid([(-8, 8)] * 3, (1.0, 1.0, 1.0))
    gr = skeleton_graph((g ** 2).sum(-1) <= 36)
    # a ball's medial axis is its centre; directional thinning leaves a short segment through
    # it (here 4 mm along z, the last direction thinned), shorter than the radius
    assert len(gr.nodes) <= 2 and gr.total_length_mm < 6.0 and gr.n_cycles == 0
    assert gr.skeleton[8, 8, 8]


def test_skeleton_keeps_the_topology():
    for name, (mask, truth) in shapes(1.0, (1.0, 1.0, 1.0)).items():
        if name in ("ball", "torus", "linked tori"):
            assert betti_numbers(skeletonize_mask(mask)).as_tuple() == truth, name


def test_thinning_kernel_without_jit(tmp_path):
    """The Numba kernel gives the same skeleton run as plain Python (NUMBA_DISABLE_JIT=1)."""
    code = ("import numpy as np\n"
            "from pipeline.topology import skeletonize_mask\n"
            "m = np.zeros((9, 10, 16), bool); m[2:6, 2:7, 2:14] = True; m[2:8, 3:5, 8:10] = True\n"
            "np.save(%r, skeletonize_mask(m))\n")
    out = {}
    for flag in ("0", "1"):
        path = str(tmp_path / f"s{flag}.npy")
        env = {**os.environ, "NUMBA_DISABLE_JIT": flag}
        subprocess.run([sys.executable, "-c", code % path], cwd=ROOT, env=env, check=True, timeout=120)
        out[flag] = np.load(path)
    assert out["0"].sum() > 5
    np.testing.assert_array_equal(out["0"], out["1"])


def test_skeleton_graph_bad_input():
    with pytest.raises(TopologyError, match="spacing_mm"):
        skeleton_graph(np.ones((3, 3, 3), bool), spacing_mm=(1, 0, 1))
    with pytest.raises(TopologyError, match="spur_ratio"):
        skeleton_graph(np.ones((3, 3, 3), bool), spur_ratio=-1)
    with pytest.raises(TopologyError, match="skeleton has shape"):
        skeleton_graph(np.ones((3, 3, 3), bool), skeleton=np.ones((3, 3, 4), bool))
    assert skeleton_graph(np.zeros((3, 3, 3), bool)).summary()["edges"] == 0


# ----------------------------------------------------------------------------- clDice
def _tube():
    g = grid([(0, 19), (0, 19), (0, 59)], (1.0, 1.0, 1.0))
    return g, capsule(g, (10, 10, 6), (10, 10, 54), 4.0)


def test_cldice_of_identical_masks_is_one():
    _, t = _tube()
    r = cldice(t, t)
    assert r["cldice"] == r["topology_precision"] == r["topology_sensitivity"] == 1.0


def test_cldice_with_a_gap_drops_by_the_gap_fraction():
    g, truth = _tube()
    gap_mm = 6.0
    pred = truth & ~((g[..., 2] >= 28) & (g[..., 2] < 28 + gap_mm))
    r = cldice(pred, truth)
    axis = 48.0  # the tube's axis, (10, 10, 6) to (10, 10, 54)
    expected_tsens = 1 - gap_mm / axis
    print(f"gap {gap_mm} mm of {axis} mm: Tsens {r['topology_sensitivity']:.4f} (1 - gap/axis = "
          f"{expected_tsens:.4f}), Tprec {r['topology_precision']:.4f}, clDice {r['cldice']:.4f}")
    assert r["topology_precision"] == 1.0  # the prediction lies inside the truth
    assert abs(r["topology_sensitivity"] - expected_tsens) < 0.015
    assert r["cldice"] == pytest.approx(2 * r["topology_sensitivity"] / (1 + r["topology_sensitivity"]))
    assert r["cldice"] < 1


def test_cldice_edge_cases_and_bad_input():
    _, t = _tube()
    r = cldice(np.zeros_like(t), t)
    assert np.isnan(r["topology_precision"]) and r["topology_sensitivity"] == 0.0 and np.isnan(r["cldice"])
    other = np.zeros_like(t)
    other[2:5, 2:5, 2:5] = True  # elsewhere: both ratios 0
    assert cldice(other, t)["cldice"] == 0.0
    with pytest.raises(TopologyError, match="pred has shape"):
        cldice(t[:, :, :10], t)
    with pytest.raises(TopologyError, match="truth must be a boolean"):
        cldice(t, t * 3)


# ----------------------------------------------------------------------------- repair
@pytest.mark.parametrize("sp", [(1.0, 1.0, 1.0), (1.2, 0.8, 0.9)])
def test_repair_bridges_a_small_gap(sp):
    g = grid([(0, 40), (0, 40), (0, 40)], sp)
    tree, p = _y_tree(g)
    a, b = np.array(p["fork"], float), np.array(p["right"], float)
    d = (b - a) / np.linalg.norm(b - a)
    mid = (a + b) / 2
    broken = tree & ~((np.abs((g - mid) @ d) <= 1.5) & (np.linalg.norm(g - mid, axis=-1) < 6))
    assert betti_numbers(broken).as_tuple() == (2, 0, 0)
    r = repair_tree(broken, spacing_mm=sp, max_gap_mm=5.0)
    br = r.bridges
    print(f"gap repair at {sp}: {len(br)} bridge, gap {br[0]['gap_mm']:.2f} mm, radius {br[0]['radius_mm']:.2f} mm, "
          f"+{r.voxels_added} voxels (cut out: {(tree & ~broken).sum()})")
    assert r.betti_after.as_tuple() == (1, 0, 0) and r.is_tree
    assert len(br) == 1 and r.cuts == [] and r.dropped == []
    assert 3.0 <= br[0]["gap_mm"] <= 3.0 + 2 * max(sp)  # a 3 mm slab, between voxel centres
    assert r.voxels_removed == 0 and r.voxels_added > 0
    # the bridge follows the branch: it refills most of the slab and little outside the tree
    assert (r.mask & ~tree).sum() <= 0.1 * r.voxels_added
    assert cldice(r.mask, tree)["topology_sensitivity"] == 1.0
    d = r.as_dict()
    assert (d["components_before"], d["components_after"], d["loops_before"], d["loops_after"]) == (2, 1, 0, 0)


def test_far_components_are_dropped_or_kept_and_reported():
    g = grid([(0, 40), (0, 40), (0, 48)], (1.0, 1.0, 1.0))
    tree, _ = _y_tree(g)
    speck = ((g - (5, 5, 44)) ** 2).sum(-1) <= 4
    m = tree | speck
    r = repair_tree(m, max_gap_mm=5.0)
    assert r.betti_after.as_tuple() == (1, 0, 0) and r.bridges == []
    assert len(r.dropped) == 1 and r.dropped[0]["action"] == "dropped" and r.dropped[0]["gap_mm"] > 5
    assert r.voxels_removed == speck.sum() and np.array_equal(r.mask, tree)
    np.testing.assert_allclose(r.dropped[0]["centroid_index_zyx"], (5, 5, 44), atol=0.5)
    r = repair_tree(m, max_gap_mm=5.0, far_components="keep")
    assert r.betti_after.as_tuple() == (2, 0, 0) and not r.is_tree and r.dropped[0]["action"] == "kept"
    r = repair_tree(m, max_gap_mm=40.0)
    assert r.betti_after.as_tuple() == (1, 0, 0) and len(r.bridges) == 1


def test_repair_chains_pieces_across_small_gaps():
    """Three pieces of a flat-ended tube, 3 empty voxels (4 mm between centres) apart: the last
    one is 20 mm from the largest but 4 mm from the middle one, so both are bridged."""
    g = grid([(0, 16), (0, 16), (0, 60)], (1.0, 1.0, 1.0))
    tube = (g[..., 0] - 8) ** 2 + (g[..., 1] - 8) ** 2 <= 9
    x = g[..., 2]
    m = tube & (((x >= 2) & (x <= 26)) | ((x >= 30) & (x <= 40)) | ((x >= 44) & (x <= 54)))
    assert betti_numbers(m).b0 == 3
    r = repair_tree(m, max_gap_mm=5.0)
    assert r.betti_after.as_tuple() == (1, 0, 0) and r.dropped == []
    assert sorted(b["gap_mm"] for b in r.bridges) == [4.0, 4.0]
    # the bridges fill the gaps with the tube's own cross-section
    assert (r.mask & ~tube).sum() == 0 and (tube & ~r.mask)[..., 3:55].sum() == 0
    r = repair_tree(m, max_gap_mm=3.5)
    assert r.bridges == [] and [d["gap_mm"] for d in r.dropped] == [4.0, 18.0]


@pytest.mark.parametrize("sp", [(1.0, 1.0, 1.0), (1.2, 0.8, 0.9)])
def test_repair_cuts_a_loop_at_its_thinner_branch(sp):
    g = grid([(10, 30), (0, 40), (0, 48)], sp)
    m, thick, thin = _loop_tree(g)
    lo = g[0, 0, 0]
    r = repair_tree(m, spacing_mm=sp)
    assert r.betti_before.as_tuple() == (1, 1, 0)
    assert r.betti_after.as_tuple() == (1, 0, 0) and r.is_tree
    assert len(r.cuts) == 1 and r.cuts[0]["severed"]
    c = np.asarray(r.cuts[0]["index_zyx"]) * sp + lo
    d_thin, d_thick = dist_to_polyline(c, thin), dist_to_polyline(c, thick)
    print(f"loop cut at {sp}: {d_thin:.2f} mm from the thin branch's axis, {d_thick:.2f} mm from the thick one's; "
          f"radius {r.cuts[0]['radius_mm']:.2f} mm, {r.voxels_removed} voxels removed")
    assert d_thin <= 1.5 and d_thick > 3.0
    assert r.cuts[0]["radius_mm"] < 2.5
    assert 0 < r.voxels_removed < 0.1 * m.sum() and r.voxels_added == 0


def test_repair_of_a_gap_and_a_loop_keeps_a_cavity():
    sp = (1.0, 1.0, 1.0)
    g = grid([(10, 30), (0, 40), (0, 60)], sp)
    m, _, _ = _loop_tree(g)
    m |= capsule(g, (20, 20, 53), (20, 20, 57), 3.0)  # a piece beyond a 3 mm gap (47 -> 50 along x)
    m |= capsule(g, (20, 20, 4), (20, 20, 8), 4.5)  # a wider root ...
    m &= ((g - (20, 20, 6)) ** 2).sum(-1) > 1.0  # ... with a small cavity inside
    assert betti_numbers(m).as_tuple() == (2, 1, 1)
    r = repair_tree(m, spacing_mm=sp)
    assert r.betti_after.as_tuple() == (1, 0, 1)
    assert len(r.bridges) == 1 and len(r.cuts) == 1
    assert r.bridges[0]["gap_mm"] == pytest.approx(3.0)


def test_repair_bad_input():
    m = np.zeros((5, 5, 5), bool)
    with pytest.raises(TopologyError, match="no foreground"):
        repair_tree(m)
    m[2, 2, 2] = True
    with pytest.raises(TopologyError, match="max_gap_mm"):
        repair_tree(m, max_gap_mm=-1)
    with pytest.raises(TopologyError, match="far_components must be one of"):
        repair_tree(m, far_components="merge")
    with pytest.raises(TopologyError, match="spacing_mm"):
        repair_tree(m, spacing_mm=(1, 1))
    with pytest.raises(TopologyError, match="3-D array"):
        repair_tree(np.ones((4, 4), bool))
    assert repair_tree(m).betti_after.as_tuple() == (1, 0, 0)
