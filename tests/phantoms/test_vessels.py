"""Tests for phantoms.vessels against analytic geometry (areas, volumes, Murray's law)."""

import json
import math

import numpy as np
import pytest
from skimage.measure import label

from phantoms.vessels import (
    MURRAY_RATIO,
    Calcification,
    Stenosis,
    VesselGeometryError,
    make_angiogram,
)

# fine in-plane voxels (a 1 mm radius is 10 voxels) for area truth
FINE = dict(shape_zyx=(16, 64, 64), spacing_mm=(0.5, 0.1, 0.1), radius_mm=1.0)
QUIET = dict(psf_fwhm_mm=0.0, noise_hu=0.0)


def slice_area_mm2(ang, k):
    _, dy, dx = ang.lumen.spacing_mm
    return float(ang.lumen.array[k].sum()) * dy * dx


def slice_centroid_xy_mm(ang, k):
    jj, ii = np.nonzero(ang.lumen.array[k])
    _, dy, dx = ang.lumen.spacing_mm
    ox, oy, _ = ang.lumen.origin_xyz_mm
    return ox + dx * ii.mean(), oy + dy * jj.mean()


# ------------------------------------------------------------------ straight tube
def test_straight_volume_matches_pi_r2_L():
    ang = make_angiogram("straight", **FINE, **QUIET)
    nz, _, _ = ang.lumen.shape
    dz = ang.lumen.spacing_mm[0]
    exact = math.pi * 1.0**2 * nz * dz  # each slice stands for a slab of thickness dz
    vol_mask = ang.lumen.array.sum() * ang.lumen.voxel_volume_mm3
    assert vol_mask == pytest.approx(exact, rel=0.02)
    # the partial-volume image (no blur, no noise) holds the lumen volume even more exactly
    frac = (ang.image.array - 40.0) / (400.0 - 40.0)
    assert frac.sum() * ang.image.voxel_volume_mm3 == pytest.approx(exact, rel=0.005)


def test_straight_radius_per_slice_and_centreline():
    ang = make_angiogram("straight", **FINE, **QUIET)
    for k in range(ang.lumen.shape[0]):
        r_meas = math.sqrt(slice_area_mm2(ang, k) / math.pi)
        assert r_meas == pytest.approx(1.0, rel=0.01)
    cl = ang.centrelines_xyz_mm[0]
    assert cl.shape == (16, 3)
    np.testing.assert_allclose(ang.radii_mm[0], 1.0)
    np.testing.assert_allclose(ang.lumen_area_mm2(0), math.pi)
    # centreline is the centroid of each slice's mask, and lies in the middle of the image
    cx, cy = slice_centroid_xy_mm(ang, 5)
    assert cx == pytest.approx(cl[5, 0], abs=0.01) and cy == pytest.approx(cl[5, 1], abs=0.01)
    assert cl[5, 0] == pytest.approx(0.5 * 63 * 0.1)
    np.testing.assert_allclose(cl[:, 2], 0.5 * np.arange(16))


def test_default_voxels_radius_within_voxelisation_error():
    ang = make_angiogram("straight", **QUIET)
    areas = ang.lumen.array.sum(axis=(1, 2)) * 0.4 * 0.4
    r = np.sqrt(areas / math.pi)
    assert np.all(np.abs(r - 2.0) < 0.1)  # 5-voxel radius: pixel-count error only


# ------------------------------------------------------------------ stenosis
@pytest.mark.parametrize("a", [0.5, 0.75])
def test_stenosis_throat_area_and_untouched_slices(a):
    shape = (41, 64, 64)
    st = Stenosis(area_reduction=a, length_mm=8.0, position=0.5)
    ang = make_angiogram("straight", shape_zyx=shape, spacing_mm=(0.5, 0.1, 0.1), radius_mm=1.0,
                         stenosis=st, **QUIET)
    throat = 20  # z = 10 mm = half of the 20 mm arc length
    assert ang.lumen_area_mm2(0)[throat] == pytest.approx((1 - a) * math.pi)
    assert slice_area_mm2(ang, throat) == pytest.approx((1 - a) * math.pi, rel=0.03)
    # outside |z - 10| >= 4 mm the lumen is the plain tube, slice by slice identical
    plain = make_angiogram("straight", shape_zyx=shape, spacing_mm=(0.5, 0.1, 0.1), radius_mm=1.0, **QUIET)
    outside = np.abs(0.5 * np.arange(41) - 10.0) >= 4.0
    np.testing.assert_array_equal(ang.lumen.array[outside], plain.lumen.array[outside])
    assert not np.array_equal(ang.lumen.array[~outside], plain.lumen.array[~outside])
    # whole area profile follows the raised-cosine law A = pi r0^2 (1 - a (1+cos)/2)
    z = 0.5 * np.arange(41)
    u = (z - 10.0) / 8.0
    exact = math.pi * (1 - a * np.where(np.abs(u) < 0.5, 0.5 * (1 + np.cos(2 * np.pi * u)), 0.0))
    measured = np.array([slice_area_mm2(ang, k) for k in range(41)])
    np.testing.assert_allclose(ang.lumen_area_mm2(0), exact, rtol=1e-9)
    np.testing.assert_allclose(measured, exact, rtol=0.04)


def test_eccentric_stenosis_shifts_centroid():
    kw = dict(shape_zyx=(41, 64, 64), spacing_mm=(0.5, 0.1, 0.1), radius_mm=1.0, **QUIET)
    a, e = 0.64, 1.0  # throat radius 0.6 mm: centre moves e (r0 - r) = 0.4 mm towards +y
    conc = make_angiogram("straight", stenosis=Stenosis(a, 8.0), **kw)
    ecc = make_angiogram("straight", stenosis=Stenosis(a, 8.0, eccentricity=e), **kw)
    y_c = 0.5 * 63 * 0.1
    cx0, cy0 = slice_centroid_xy_mm(conc, 20)
    cx1, cy1 = slice_centroid_xy_mm(ecc, 20)
    assert cy0 == pytest.approx(y_c, abs=0.01)
    assert cy1 - y_c == pytest.approx(0.4, abs=0.02)
    assert cx1 == pytest.approx(cx0, abs=0.01)
    assert ecc.centrelines_xyz_mm[0][20, 1] - y_c == pytest.approx(0.4, abs=1e-9)
    # same area: eccentricity moves the lumen, it does not change it
    assert slice_area_mm2(ecc, 20) == pytest.approx(slice_area_mm2(conc, 20), rel=0.02)
    # e = 1: the lumen stays inside the original wall and touches it on +y
    jj = np.nonzero(ecc.lumen.array[20])[0]
    assert (jj.max() * 0.1 - y_c) == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------------ image values
def test_mean_hu_and_noise_std():
    ang = make_angiogram("straight", seed=3)
    img, m = ang.image.array, ang.lumen.array
    # lumen core: within 1 mm of the axis (PSF 0.6 mm cannot reach the wall 1 mm away)
    k, j, i = np.indices(img.shape)
    y = j * 0.4 - 12.6
    x = i * 0.4 - 12.6
    core = np.hypot(x, y) < 1.0
    far = np.hypot(x, y) > 5.0
    assert img[core].mean() == pytest.approx(400.0, abs=2.0)
    assert img[far].mean() == pytest.approx(40.0, abs=0.5)
    assert img[far].std() == pytest.approx(15.0, rel=0.02)
    assert m[core].all() and not m[far].any()
    # the noise is exactly what was added to the noiseless image
    clean = make_angiogram("straight", seed=3, noise_hu=0.0)
    diff = img - clean.image.array
    assert diff.std() == pytest.approx(15.0, rel=0.01)
    assert abs(diff.mean()) < 0.1
    assert img.dtype == np.float32 and m.dtype == np.uint8


def test_psf_blur_width():
    # a separable Gaussian PSF adds sigma_x^2 to the x-variance of the HU excess profile
    # summed over y and z, and conserves the total excess
    sharp = make_angiogram("straight", psf_fwhm_mm=0.0, noise_hu=0.0)
    blur = make_angiogram("straight", psf_fwhm_mm=1.2, noise_hu=0.0)
    sigma_mm = 1.2 / (2 * math.sqrt(2 * math.log(2)))
    x = 0.4 * np.arange(64)

    def moments(img):
        p = (img.astype(float) - 40.0).sum(axis=(0, 1))
        mean = (p * x).sum() / p.sum()
        return p.sum(), (p * (x - mean) ** 2).sum() / p.sum()

    tot_s, var_s = moments(sharp.image.array)
    tot_b, var_b = moments(blur.image.array)
    assert tot_b == pytest.approx(tot_s, rel=1e-4)
    assert var_b - var_s == pytest.approx(sigma_mm**2, rel=0.02)
    assert blur.image.array.max() < sharp.image.array.max()


def test_seed_determinism():
    a = make_angiogram("bifurcation", seed=7)
    b = make_angiogram("bifurcation", seed=7)
    c = make_angiogram("bifurcation", seed=8)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.lumen.array, b.lumen.array)
    assert not np.array_equal(a.image.array, c.image.array)
    np.testing.assert_array_equal(a.lumen.array, c.lumen.array)  # truth does not depend on noise
    assert a.params["seed"] == 7
    json.dumps(a.params)  # JSON-serialisable


# ------------------------------------------------------------------ curved & bifurcation
def test_curved_tube_volume_is_pi_r2_times_arc_length():
    ang = make_angiogram("curved", shape_zyx=(64, 64, 96), spacing_mm=(0.25, 0.1, 0.25),
                         radius_mm=1.0, **QUIET)
    cl = ang.centrelines_xyz_mm[0]
    assert np.ptp(cl[:, 0]) > 2.0  # really curved in x
    arc = ang.params["derived"]["parent_arc_length_mm"]
    assert arc > 63 * 0.25 * 1.02
    # Pappus: volume = pi r^2 (arc length) (+ half a slice straight along z at each end)
    exact = math.pi * (arc + 0.25)
    assert ang.lumen.array.sum() * ang.lumen.voxel_volume_mm3 == pytest.approx(exact, rel=0.02)
    # the vessel enters through slice 0 and leaves through the last slice, straight along z
    for k in (0, -1):
        assert label(ang.lumen.array[k]).max() == 1
        assert slice_area_mm2(ang, k) == pytest.approx(math.pi, rel=0.03)
    # the centreline lies inside the mask and 2 radii away from the x faces
    idx = np.rint(ang.lumen.world_to_index(cl)).astype(int)
    assert ang.lumen.array[idx[:, 0], idx[:, 1], idx[:, 2]].all()
    assert cl[:, 0].min() - 1.0 >= 2.0 - 1e-9 and cl[:, 0].max() + 1.0 <= 95 * 0.25 - 2.0 + 1e-9


def test_bifurcation_openings_and_murray():
    ang = make_angiogram("bifurcation", shape_zyx=(80, 64, 96), spacing_mm=(0.5, 0.1, 0.1),
                         radius_mm=1.0, **QUIET)
    m = ang.lumen.array
    first, n_first = label(m[0], return_num=True)
    last, n_last = label(m[-1], return_num=True)
    assert n_first == 1 and n_last == 2
    r_d = 1.0 / 2 ** (1 / 3)
    assert MURRAY_RATIO == pytest.approx(r_d)
    assert len(ang.radii_mm) == 3
    np.testing.assert_allclose(ang.radii_mm[1], r_d)
    np.testing.assert_allclose(ang.radii_mm[2], r_d)
    # Murray's law r_p^3 = r_d1^3 + r_d2^3 from the *measured* opening areas
    r_p_meas = math.sqrt((first == 1).sum() * 0.01 / math.pi)
    r_d_meas = [math.sqrt((last == n).sum() * 0.01 / math.pi) for n in (1, 2)]
    assert r_p_meas == pytest.approx(1.0, rel=0.02)
    for r in r_d_meas:
        assert r == pytest.approx(r_d, rel=0.02)
    assert r_p_meas**3 == pytest.approx(sum(r**3 for r in r_d_meas), rel=0.05)
    # daughters diverge symmetrically in x, sharing the junction with the parent
    d1, d2 = ang.centrelines_xyz_mm[1], ang.centrelines_xyz_mm[2]
    x_c = 0.5 * 95 * 0.1
    np.testing.assert_allclose(d1[:, 0] - x_c, -(d2[:, 0] - x_c), atol=1e-9)
    np.testing.assert_allclose(d1[0], ang.centrelines_xyz_mm[0][-1])
    angle = 2 * math.degrees(math.atan(abs(d2[1, 0] - d2[0, 0]) / (d2[1, 2] - d2[0, 2])))
    assert 30.0 <= angle <= 60.0
    # the whole tree is one connected lumen
    assert label(m, connectivity=1).max() == 1


def test_default_demo_sizes_all_geometries():
    for shape, sp in (((64, 40, 40), (0.5, 0.5, 0.5)), ((100, 64, 64), (0.4, 0.4, 0.4))):
        for g in ("straight", "curved", "bifurcation"):
            ang = make_angiogram(g, shape_zyx=shape, spacing_mm=sp,
                                 stenosis=Stenosis(0.5, 6.0, eccentricity=0.3))
            m = ang.lumen.array
            assert label(m[0]).max() == 1
            assert label(m[-1]).max() == (2 if g == "bifurcation" else 1)
            # 2 radii from the x/y faces: 4 mm of tissue at every face
            n_edge = int(np.ceil(4.0 / sp[1])) - 1
            assert not m[:, :n_edge].any() and not m[:, -n_edge:].any()
            assert not m[:, :, :n_edge].any() and not m[:, :, -n_edge:].any()


# ------------------------------------------------------------------ anisotropic voxels
def test_anisotropic_spacing_and_origin():
    ang = make_angiogram("straight", shape_zyx=(12, 56, 112), spacing_mm=(1.0, 0.125, 0.0625),
                         radius_mm=1.0, origin_xyz_mm=(-10.0, 5.0, 100.0), **QUIET)
    assert ang.image.spacing_mm == (1.0, 0.125, 0.0625)
    area = ang.lumen.array.sum(axis=(1, 2)) * 0.125 * 0.0625
    np.testing.assert_allclose(area, math.pi, rtol=0.02)
    cl = ang.centrelines_xyz_mm[0]
    np.testing.assert_allclose(cl[:, 2], 100.0 + np.arange(12))
    # centroid in world coordinates matches the centreline
    cx, cy = slice_centroid_xy_mm(ang, 3)
    assert cx == pytest.approx(cl[3, 0], abs=0.01) and cy == pytest.approx(cl[3, 1], abs=0.01)
    idx = ang.lumen.world_to_index(cl)
    np.testing.assert_allclose(idx[:, 1], 27.5, atol=1e-9)
    np.testing.assert_allclose(idx[:, 2], 55.5, atol=1e-9)
    frac = (ang.image.array - 40.0) / 360.0
    assert frac.sum() * ang.image.voxel_volume_mm3 == pytest.approx(math.pi * 12.0, rel=0.005)


# ------------------------------------------------------------------ calcification
def test_calcification_in_wall_not_lumen():
    ang = make_angiogram("straight", calcification=Calcification(position=0.5, length_mm=3.0,
                                                                  thickness_mm=0.8, hu=900.0), **QUIET)
    img, m = ang.image.array, ang.lumen.array
    bright = img > 650.0
    assert bright.sum() > 10
    assert not (bright & (m == 1)).any()
    k, j, i = np.nonzero(bright)
    z = k * 0.5
    y = j * 0.4 - 12.6
    x = i * 0.4 - 12.6
    rho = np.hypot(x, y)
    assert np.all(np.abs(z - 23.75) <= 1.5 + 0.5)
    assert np.all((rho >= 2.0 - 0.4) & (rho <= 2.8 + 0.4))
    assert np.all(y < 0)  # on the plaque side, -y
    assert img.max() == pytest.approx(900.0, abs=1.0)
    # the lumen mask is identical with and without the calcification
    plain = make_angiogram("straight", **QUIET)
    np.testing.assert_array_equal(m, plain.lumen.array)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, name", [
    (dict(geometry="spiral"), "geometry"),
    (dict(radius_mm=5.0), "radius_mm"),
    (dict(radius_mm=-1.0), "radius_mm"),
    (dict(radius_mm=float("nan")), "radius_mm"),
    (dict(shape_zyx=(96, 64)), "shape_zyx"),
    (dict(shape_zyx=(96, 64, 7)), "shape_zyx"),
    (dict(shape_zyx=(96, 64, 64.5)), "shape_zyx"),
    (dict(spacing_mm=(0.5, -0.4, 0.4)), "spacing_mm"),
    (dict(spacing_mm=(0.5, 0.4)), "spacing_mm"),
    (dict(psf_fwhm_mm=-0.1), "psf_fwhm_mm"),
    (dict(noise_hu=-1.0), "noise_hu"),
    (dict(length_fraction=0.0), "length_fraction"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(origin_xyz_mm=(0, 0)), "origin_xyz_mm"),
    (dict(stenosis=0.5), "stenosis"),
    (dict(geometry="bifurcation", shape_zyx=(96, 64, 32)), "radius_mm"),
    (dict(geometry="curved", shape_zyx=(96, 64, 26)), "radius_mm"),
])
def test_bad_inputs_name_the_parameter(kwargs, name):
    kwargs = dict(kwargs)
    geometry = kwargs.pop("geometry", "straight")
    with pytest.raises(VesselGeometryError, match=name):
        make_angiogram(geometry, **kwargs)


@pytest.mark.parametrize("ctor, kwargs, name", [
    (Stenosis, dict(area_reduction=0.95, length_mm=5.0), "area_reduction"),
    (Stenosis, dict(area_reduction=-0.1, length_mm=5.0), "area_reduction"),
    (Stenosis, dict(area_reduction=0.5, length_mm=0.0), "length_mm"),
    (Stenosis, dict(area_reduction=0.5, length_mm=5.0, eccentricity=1.5), "eccentricity"),
    (Stenosis, dict(area_reduction=0.5, length_mm=5.0, position=1.2), "position"),
    (Calcification, dict(thickness_mm=-0.2), "thickness_mm"),
    (Calcification, dict(position=-0.1), "position"),
    (Calcification, dict(hu=float("inf")), "hu"),
])
def test_bad_dataclass_inputs(ctor, kwargs, name):
    with pytest.raises(VesselGeometryError, match=name):
        ctor(**kwargs)


def test_bad_branch_index_and_error_is_valueerror():
    ang = make_angiogram("straight", shape_zyx=(8, 32, 32), spacing_mm=(1, 0.5, 0.5), radius_mm=1.0)
    with pytest.raises(VesselGeometryError, match="branch"):
        ang.lumen_area_mm2(1)
    assert issubclass(VesselGeometryError, ValueError)
    with pytest.raises(VesselGeometryError, match="straight.*'spiral'"):
        make_angiogram("spiral")
