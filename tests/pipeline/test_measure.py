"""Local thickness and minimum distance (pipeline.measure) against analytic truth.

Thickness: spherical shells of known thickness at several isotropic and anisotropic spacings
(the map's median and mode lie within one voxel of the truth), slabs (exactly n or n + 1
voxels, see the module docstring), a solid ball (one value, 2R to 2R + 2 voxels), and the
fast algorithm against a brute-force evaluation of the discrete definition on random shapes.
Distance: pairs of spheres, gap = |c1 - c2| - r1 - r2, exact when the surfaces pass through
voxel centres and within 0 to 2 voxels (along the line) above it for arbitrary placements;
the closest points lie on the line of centres.
"""

import numpy as np
import pytest
from scipy import ndimage

from pipeline.measure import MeasureError, local_thickness, min_distance, thickness_statistics


def _radius_mm(shape, spacing, centre_index):
    """Distance in mm of every voxel centre from a point given in (fractional) index units."""
    g = np.indices(shape).astype(float)
    s = np.asarray(spacing, float)[:, None, None, None]
    c = np.asarray(centre_index, float)[:, None, None, None]
    return np.sqrt((((g - c) * s) ** 2).sum(axis=0))


def _shell(spacing, r_in, r_out, margin_mm=2.0):
    s = np.asarray(spacing, float)
    shape = tuple(int(np.ceil(2 * (r_out + margin_mm) / v)) for v in s)
    r = _radius_mm(shape, s, [(n - 1) / 2 for n in shape])
    return (r >= r_in) & (r <= r_out)


# --------------------------------------------------------------------------- thickness
@pytest.mark.parametrize("spacing, r_in, r_out", [
    ((1.0, 1.0, 1.0), 10.0, 14.0),
    ((0.5, 0.5, 0.5), 10.0, 14.0),
    ((1.0, 0.5, 0.5), 10.0, 14.0),   # anisotropic: thick slices
    ((0.5, 0.5, 0.5), 8.3, 12.3),    # radii off the voxel grid
    ((0.6, 0.9, 0.5), 9.0, 13.0),    # three different spacings
    ((0.5, 0.5, 0.5), 8.0, 10.0),    # a thinner (2 mm) shell
])
def test_spherical_shell_thickness_is_within_one_voxel(spacing, r_in, r_out):
    """A spherical shell's local thickness is r_out - r_in everywhere (the largest inscribed
    sphere touches both surfaces); the map's median and mode are within one voxel of it."""
    truth = r_out - r_in
    mask = _shell(spacing, r_in, r_out)
    t = local_thickness(mask, spacing_mm=spacing)
    assert np.all(t[mask] > 0) and np.all(t[~mask] == 0)
    st = thickness_statistics(t, spacing_mm=spacing)
    voxel = min(spacing)
    print(f"shell {truth} mm at {spacing}: median {st['median_mm']:.3f}, mode {st['mode_mm']:.3f}, "
          f"mean {st['mean_mm']:.3f} mm")
    assert abs(st["median_mm"] - truth) <= voxel
    assert abs(st["mode_mm"] - truth) <= voxel
    assert st["n_voxels"] == int(mask.sum())
    assert st["volume_mm3"] == pytest.approx(mask.sum() * np.prod(spacing))
    assert st["p5_mm"] <= st["p25_mm"] <= st["median_mm"] <= st["p75_mm"] <= st["p95_mm"] <= st["max_mm"]


@pytest.mark.parametrize("n, spacing, axis", [
    (8, (0.5, 0.5, 0.5), 0), (7, (0.5, 0.5, 0.5), 0),
    (4, (1.0, 0.5, 0.5), 0),      # 4 thick slices: 4 mm
    (8, (1.0, 0.5, 0.5), 2),      # 8 in-plane voxels of 0.5 mm: 4 mm
    (5, (2.0, 0.7, 0.7), 1),
])
def test_slab_reads_n_voxels_when_even_and_n_plus_one_when_odd(n, spacing, axis):
    """A slab n voxels thick: the spheres reach the background voxel centres on both sides, so
    the diameter between centres is n voxels (n even) or n + 1 (n odd, the middle voxel is one
    voxel from the mid-plane of neither)."""
    lateral = 40
    shape = [lateral, lateral, lateral]
    shape[axis] = n + 4
    mask = np.zeros(shape, bool)
    sl = [slice(None)] * 3
    sl[axis] = slice(2, 2 + n)
    mask[tuple(sl)] = True
    t = local_thickness(mask, spacing_mm=spacing)
    expected = (n if n % 2 == 0 else n + 1) * spacing[axis]
    # away from the slab's lateral edges (more than its thickness) the value is exact
    inner = [slice(None)] * 3
    for ax in range(3):
        if ax != axis:
            edge = int(np.ceil(expected / spacing[ax])) + 1
            inner[ax] = slice(edge, lateral - edge)
    inner[axis] = slice(2, 2 + n)
    np.testing.assert_allclose(t[tuple(inner)], expected, rtol=1e-12)
    assert thickness_statistics(t, spacing_mm=spacing)["median_mm"] == pytest.approx(expected)


def test_solid_ball_is_one_sphere():
    """A ball of radius R centred on a voxel: the sphere at its centre holds every voxel, so the
    whole map is one value, the distance to the nearest outside voxel centre doubled: in
    [2R, 2R + 2 voxels)."""
    spacing = (1.0, 0.5, 0.5)
    shape = (31, 61, 61)
    R = 12.0
    mask = _radius_mm(shape, spacing, (15, 30, 30)) <= R
    t = local_thickness(mask, spacing_mm=spacing)
    v = np.unique(t[mask])
    assert v.size == 1
    assert 2 * R <= v[0] < 2 * R + 2 * max(spacing)


def _brute_force_thickness(mask, spacing):
    """The discrete definition evaluated directly: the largest open sphere B(c, d(c)) over all
    foreground centres c that holds the voxel, d(c) the distance to the nearest background
    voxel centre (outside the array is background)."""
    s = np.asarray(spacing, float)
    padded = np.pad(mask, 1)
    d = ndimage.distance_transform_edt(padded, sampling=s)[1:-1, 1:-1, 1:-1]
    centres = np.argwhere(mask)
    radii = d[mask]
    out = np.zeros(mask.shape)
    for x in centres:
        dist2 = (((centres - x) * s) ** 2).sum(axis=1)
        inside = dist2 < radii ** 2 * (1 - 1e-12)
        out[tuple(x)] = 2 * radii[inside].max()
    return out


@pytest.mark.parametrize("seed, spacing", [(0, (1.0, 1.0, 1.0)), (1, (1.0, 0.5, 0.5)), (2, (0.7, 1.3, 0.4))])
def test_fast_algorithm_equals_the_definition_on_random_shapes(seed, spacing):
    """Distance-ridge pruning and largest-first painting change nothing: identical to the
    brute-force maximum over every voxel's sphere."""
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.normal(size=(14, 16, 18)), 1.5) > 0.05
    mask[0, 0, 0] = True  # a structure touching the array's corner
    np.testing.assert_array_equal(local_thickness(mask, spacing_mm=spacing), _brute_force_thickness(mask, spacing))


def test_kernels_give_the_same_map_without_numba(monkeypatch):
    """The kernels are plain Python compiled by Numba on first use; run uncompiled they agree."""
    import pipeline.measure as M

    rng = np.random.default_rng(9)
    mask = ndimage.gaussian_filter(rng.normal(size=(8, 9, 10)), 1.2) > 0
    spacing = (1.2, 0.6, 0.9)
    compiled = local_thickness(mask, spacing_mm=spacing)
    monkeypatch.setattr(M, "_jit", lambda fn: fn)
    np.testing.assert_array_equal(local_thickness(mask, spacing_mm=spacing), compiled)


def test_a_single_voxel_and_a_structure_on_the_array_border():
    one = np.zeros((5, 5, 5), bool)
    one[2, 2, 2] = True
    t = local_thickness(one, spacing_mm=(2.0, 1.0, 0.5))
    assert t[2, 2, 2] == pytest.approx(1.0)  # nearest outside centre: 0.5 mm along x, diameter 1 mm
    full = np.ones((6, 6, 6), bool)  # outside the array is background: a 6-voxel cube
    assert local_thickness(full, spacing_mm=(1, 1, 1)).max() == pytest.approx(6.0)


def test_thickness_of_a_100_cubed_cap():
    """A hemispherical cap 3 mm thick on a 100³ grid of 0.4 mm voxels (cartilage-like)."""
    spacing = (0.4, 0.4, 0.4)
    shape = (100, 100, 100)
    r = _radius_mm(shape, spacing, (10, 49.5, 49.5))
    g = np.indices(shape)[0]
    mask = (r >= 14.0) & (r <= 17.0) & (g >= 10)
    st = thickness_statistics(local_thickness(mask, spacing_mm=spacing), spacing_mm=spacing)
    print(f"cap 3 mm at 0.4 mm: median {st['median_mm']:.3f} mm")
    assert abs(st["median_mm"] - 3.0) <= 0.4


@pytest.mark.parametrize("mask, spacing, match", [
    (np.ones((4, 4), bool), (1, 1, 1), "3-D"),
    (np.zeros((4, 4, 4), bool), (1, 1, 1), "no foreground"),
    (np.full((4, 4, 4), 2), (1, 1, 1), "boolean"),
    (np.ones((4, 4, 4), bool), (1, 1), "spacing_mm"),
    (np.ones((4, 4, 4), bool), (1, -1, 1), "spacing_mm"),
    (np.ones((4, 4, 4), bool), (1, np.nan, 1), "spacing_mm"),
])
def test_thickness_bad_input(mask, spacing, match):
    with pytest.raises(MeasureError, match=match):
        local_thickness(mask, spacing_mm=spacing)


def test_thickness_statistics_bad_input():
    with pytest.raises(MeasureError, match="no voxel"):
        thickness_statistics(np.zeros((3, 3, 3)), spacing_mm=(1, 1, 1))
    with pytest.raises(MeasureError, match="3-D"):
        thickness_statistics(np.ones((3, 3)), spacing_mm=(1, 1, 1))


# --------------------------------------------------------------------------- distance
def _two_spheres(shape, spacing, c1, r1, c2, r2):
    return _radius_mm(shape, spacing, c1) <= r1, _radius_mm(shape, spacing, c2) <= r2


@pytest.mark.parametrize("spacing, c1, c2, r1, r2", [
    ((1.0, 1.0, 1.0), (20, 20, 8), (20, 20, 30), 6.0, 7.0),     # along x
    ((1.0, 0.5, 0.5), (20, 30, 10), (20, 30, 50), 4.0, 5.0),    # along x at 0.5 mm
    ((1.0, 0.5, 0.5), (8, 30, 30), (32, 30, 30), 5.0, 6.0),     # along z at 1 mm
    ((1.0, 1.0, 1.0), (12, 12, 12), (28, 28, 28), 6.0, 5.0),    # body diagonal: surfaces through
])
def test_distance_between_spheres_is_exact_when_surfaces_meet_voxel_centres(spacing, c1, c2, r1, r2):
    """gap = |c1 - c2| - r1 - r2. With the centres on voxel centres and the closest surface
    points on voxel centres (radii a whole number of steps along the line) the boundary voxels
    sit on the true surfaces, and the distance is exact; the closest points are on the line of
    centres."""
    s = np.asarray(spacing)
    shape = (41, 61, 61) if spacing[1] == 0.5 else (41, 41, 41)
    if c1 == (12, 12, 12):  # along (1,1,1): radii of whole diagonal steps
        r1, r2 = 4 * np.sqrt(3), 3 * np.sqrt(3)
    a, b = _two_spheres(shape, spacing, c1, r1 + 1e-9, c2, r2 + 1e-9)
    truth = np.linalg.norm((np.subtract(c2, c1)) * s) - r1 - r2
    r = min_distance(a, b, spacing_mm=spacing)
    print(f"spheres at {spacing}: distance {r.distance_mm:.4f} mm, analytic {truth:.4f} mm")
    assert r.distance_mm == pytest.approx(truth, abs=1e-6)
    assert not r.overlap and not r.touching
    u = (np.subtract(c2, c1) * s) / np.linalg.norm(np.subtract(c2, c1) * s)
    for idx in (r.index_a, r.index_b):
        v = (np.asarray(idx) - c1) * s
        assert np.linalg.norm(v - (v @ u) * u) == pytest.approx(0.0, abs=1e-9)  # on the line of centres
    assert np.asarray(r.index_a) * s @ u < np.asarray(r.index_b) * s @ u  # a's point faces b


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 0.5, 0.5), (1.5, 1.0, 0.7)])
def test_distance_between_arbitrarily_placed_spheres(spacing):
    """Random directions, sub-voxel centres and radii: the boundary voxel centres lie inside the
    true surfaces, so their distance is at or above the gap, by at most two voxels along the line
    (about half a voxel on average), and the closest points lie within two voxels of the line;
    the sub-voxel surface distance is exact within half a voxel (the issue's check)."""
    rng = np.random.default_rng(7)
    s = np.asarray(spacing)
    shape = tuple(int(v) for v in np.ceil(36 / s))
    ext = np.array(shape) * s
    errors, sub_errors = [], []
    for _ in range(10):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        r1, r2, gap = rng.uniform(5, 7), rng.uniform(5, 7), rng.uniform(2, 6)
        c1 = ext / 2 - u * (r1 + r2 + gap) / 2 + rng.uniform(-0.5, 0.5, 3)
        c2 = c1 + u * (r1 + r2 + gap)
        a, b = _two_spheres(shape, spacing, c1 / s, r1, c2 / s, r2)
        r = min_distance(a, b, spacing_mm=spacing)
        errors.append((r.distance_mm - gap) / r.voxel_along_line_mm)
        for idx in (r.index_a, r.index_b):
            v = np.asarray(idx) * s - c1
            assert np.linalg.norm(v - (v @ u) * u) <= 2 * s.max()
        sub_errors.append((r.surface_distance_mm - gap) / r.voxel_along_line_mm)
        # the surface points lie on the spheres (within a voxel) and near the line of centres
        for xyz, c, rad in ((r.surface_point_a_xyz_mm, c1, r1), (r.surface_point_b_xyz_mm, c2, r2)):
            v = np.asarray(xyz)[::-1] - c  # (world x, y, z = i, j, k for an identity grid)
            assert abs(np.linalg.norm(v) - rad) <= s.max()
    errors, sub_errors = np.array(errors), np.array(sub_errors)
    print(f"random sphere pairs at {spacing}: (distance - gap) / voxel along the line: mean {errors.mean():.2f}, "
          f"range {errors.min():.2f} to {errors.max():.2f}; sub-voxel surfaces: mean {sub_errors.mean():+.2f}, "
          f"range {sub_errors.min():+.2f} to {sub_errors.max():+.2f}")
    assert np.all(errors >= 0) and np.all(errors <= 2.0)
    assert errors.mean() <= 0.7
    # the check: the sub-voxel distance is exact within half a voxel
    assert np.all(np.abs(sub_errors) <= 0.5)


def test_overlapping_and_touching_structures():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = True
    b[4:8, 4:8, 4:8] = True
    r = min_distance(a, b, spacing_mm=(2.0, 1.0, 1.0))
    assert r.overlap and r.distance_mm == 0.0 and r.touching
    assert r.overlap_voxels == 8 and r.overlap_volume_mm3 == pytest.approx(16.0)
    assert r.index_a == r.index_b and a[r.index_a] and b[r.index_b]
    c = np.zeros_like(a)
    c[6:9, 2:6, 2:6] = True  # face-adjacent to a along z: nothing between them
    r = min_distance(a, c, spacing_mm=(2.0, 1.0, 1.0))
    assert not r.overlap and r.touching and r.distance_mm == pytest.approx(2.0)
    assert r.voxel_along_line_mm == pytest.approx(2.0)


def test_closest_points_in_world_coordinates():
    """World (x, y, z) = origin + D diag(dx, dy, dz) (i, j, k) (pipeline.image conventions)."""
    a = np.zeros((6, 7, 8), bool)
    b = np.zeros_like(a)
    a[1, 2, 1] = True
    b[1, 2, 6] = True
    direction = np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])  # i -> -y, j -> +x
    r = min_distance(a, b, spacing_mm=(3.0, 2.0, 0.5), origin_xyz_mm=(10, 20, 30), direction_xyz=direction)
    assert r.distance_mm == pytest.approx(2.5)
    assert r.index_a == (1, 2, 1) and r.index_b == (1, 2, 6)
    assert r.point_a_xyz_mm == pytest.approx((10 + 2 * 2.0, 20 - 1 * 0.5, 30 + 1 * 3.0))
    assert r.point_b_xyz_mm == pytest.approx((10 + 2 * 2.0, 20 - 6 * 0.5, 30 + 1 * 3.0))
    d = r.to_dict()
    assert d["index_a_kji"] == [1, 2, 1] and d["distance_mm"] == pytest.approx(2.5)


def test_distance_bad_input():
    a = np.zeros((5, 5, 5), bool)
    a[2, 2, 2] = True
    with pytest.raises(MeasureError, match="same grid"):
        min_distance(a, np.ones((5, 5, 4), bool), spacing_mm=(1, 1, 1))
    with pytest.raises(MeasureError, match="mask b has no foreground"):
        min_distance(a, np.zeros_like(a), spacing_mm=(1, 1, 1))
    with pytest.raises(MeasureError, match="3-D"):
        min_distance(a[0], a[0], spacing_mm=(1, 1, 1))
    with pytest.raises(MeasureError, match="spacing_mm"):
        min_distance(a, a, spacing_mm=(1, 0, 1))
