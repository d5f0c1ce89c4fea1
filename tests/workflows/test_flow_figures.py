"""The vessel check figure: world points land where hand computation puts them, PNGs render, bad input is named.

The grid is anisotropic (0.879 x 0.879 x 1.5 mm) with the direction ``diag(-1, -1, 1)`` of an
LPS MRA and an origin away from zero, so a slip between index and world order, or a lost sign
of the direction, moves a voxel or an overlay to the wrong pixel.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.image import Volume
from workflows.flow.figures import (
    check_figure,
    intensity_window,
    panel_coordinates,
    sample_plane,
    slice_centre_xyz_mm,
)

SPACING = (1.5, 0.879, 0.879)        # (dz, dy, dx) mm
ORIGIN = (30.0, 20.0, -10.0)         # world (x, y, z) mm of voxel [0, 0, 0]
LPS_MRA = np.diag([-1.0, -1.0, 1.0])
SHAPE = (24, 40, 40)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _grid(shape=SHAPE, fill=0.0):
    return Volume(np.full(shape, fill), SPACING, ORIGIN, LPS_MRA)


def _world(vol):
    kji = np.indices(vol.shape).reshape(3, -1).T
    return vol.index_to_world(kji).reshape(vol.shape + (3,))


def _dist_to_segment(p, a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1)


def _tube(segments, radius_mm):
    """Mask of the union of round tubes around world segments, and the segments as centrelines."""
    vol = _grid()
    xyz = _world(vol)
    inside = np.zeros(vol.shape, bool)
    for a, b in segments:
        inside |= _dist_to_segment(xyz, a, b) < radius_mm
    lines = [np.linspace(a, b, 30) for a, b in segments]
    return vol.with_array(inside.astype(np.uint8)), lines


def _image(mask, lumen, tissue, noise, seed=0):
    rng = np.random.default_rng(seed)
    arr = np.where(mask.array > 0, lumen, tissue) + rng.normal(0.0, noise, mask.shape)
    return mask.with_array(arr)


STRAIGHT = [((13.0, 3.0, -10.0), (13.0, 3.0, 24.5))]
Y_SHAPE = [((13.0, 3.0, -10.0), (13.0, 3.0, 8.0)),
           ((13.0, 3.0, 8.0), (4.0, -5.0, 24.0)),
           ((13.0, 3.0, 8.0), (22.0, 11.0, 24.0))]


def _check_png(path):
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 10_000 < len(data) < 3_000_000
    img = mpimg.imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 1000
    assert img[..., :3].std() > 0.05  # not blank
    assert not list(path.parent.glob(".tmp-*"))


# ----------------------------------------------------------------------------- geometry against hand values
def test_panel_coordinates_hand_computed():
    p = np.array([22.089, 16.484, -1.0])
    np.testing.assert_allclose(panel_coordinates(p, "axial", -1.0), [22.089, 16.484, 0.0])
    np.testing.assert_allclose(panel_coordinates(p, "coronal", 0.0), [22.089, -1.0, 16.484])
    np.testing.assert_allclose(panel_coordinates(p, "sagittal", 20.0), [16.484, -1.0, 2.089])
    many = panel_coordinates(np.stack([p, p + 1]), "axial", 0.0)
    assert many.shape == (2, 3)
    with pytest.raises(ValueError, match="panel must be one of"):
        panel_coordinates(p, "oblique")


def test_voxel_lands_on_its_hand_computed_world_pixel():
    """Voxel (k, j, i) = (6, 4, 9) under diag(-1, -1, 1): x = 30 - 9 dx, y = 20 - 4 dy, z = -10 + 6 dz."""
    arr = np.zeros((10, 12, 14))
    arr[6, 4, 9] = 1.0
    arr[6, 4, 10] = 2.0     # one step along +i: world x decreases by dx
    arr[6, 5, 9] = 3.0      # one step along +j: world y decreases by dy
    arr[7, 4, 9] = 4.0      # one step along +k: world z increases by dz
    vol = Volume(arr, SPACING, ORIGIN, LPS_MRA)
    dz, dy, dx = SPACING
    x0, y0, z0 = 30.0 - 9 * dx, 20.0 - 4 * dy, -10.0 + 6 * dz
    np.testing.assert_allclose(vol.index_to_world([6, 4, 9]), [x0, y0, z0])

    ax = sample_plane(vol, "axial", z0, [x0 - dx, x0, x0 + dx], [y0 - dy, y0, y0 + dy])
    np.testing.assert_allclose(ax, [[0, 3, 0], [2, 1, 0], [0, 0, 0]], atol=1e-12)   # rows: v = y
    co = sample_plane(vol, "coronal", y0, [x0 - dx, x0, x0 + dx], [z0, z0 + dz])
    np.testing.assert_allclose(co, [[2, 1, 0], [0, 4, 0]], atol=1e-12)               # rows: v = z
    sa = sample_plane(vol, "sagittal", x0, [y0, y0 - dy, y0 + dy], [z0, z0 + dz])
    np.testing.assert_allclose(sa, [[1, 3, 0], [4, 0, 0]], atol=1e-12)               # h = y
    # the overlay mapping puts the same world point on the same (h, v)
    np.testing.assert_allclose(panel_coordinates([x0, y0, z0], "axial", z0)[:2], [x0, y0])
    # outside the image: more than half a voxel beyond the edge voxel (x = 30 is voxel i = 0)
    edge = sample_plane(vol, "axial", z0, [30.0 + 0.4 * dx, 30.0 + 0.6 * dx], [y0])
    assert np.isfinite(edge[0, 0]) and np.isnan(edge[0, 1])


def test_centreline_projects_into_the_sampled_lumen():
    """World centreline -> panel (h, v) -> sampled mask there is lumen, on all three panels."""
    mask, lines = _tube(Y_SHAPE, 3.0)
    for line in lines:
        for pt in line[3:-3]:
            for panel, level in (("axial", pt[2]), ("coronal", pt[1]), ("sagittal", pt[0])):
                h, v, depth = panel_coordinates(pt, panel, level)
                assert depth == 0.0
                assert sample_plane(mask, panel, level, [h], [v])[0, 0] > 0.5


def test_slice_centre_is_in_the_lumen_of_a_u_shape():
    arr = np.zeros((20, 20, 20), np.uint8)
    arr[2:18, 2:5, 8:12] = 1      # two limbs and a bridge: the centroid is in the gap
    arr[2:18, 15:18, 8:12] = 1
    arr[15:18, 2:18, 8:12] = 1
    mask = Volume(arr, SPACING, ORIGIN, LPS_MRA)
    kji = np.argwhere(arr > 0)
    centroid = mask.index_to_world(kji).mean(axis=0)
    assert arr[tuple(np.round(mask.world_to_index(centroid)).astype(int))] == 0
    c = slice_centre_xyz_mm(mask)
    assert arr[tuple(np.round(mask.world_to_index(c)).astype(int))] == 1


# ----------------------------------------------------------------------------- windowing
def test_window_suits_ct_hu_and_positive_mr():
    mask, _ = _tube(STRAIGHT, 4.0)
    ct = _image(mask, 400.0, 40.0, 15.0)
    ct.array[:, :, :3] = -1000.0          # air far from the vessel must not set the window
    lo, hi = intensity_window(ct, mask)
    assert -30 < lo < 40 and 400 < hi < 460
    mr = _image(mask, 800.0, 120.0, 20.0, seed=1)
    mr.array = np.abs(mr.array)            # magnitude MR: positive only
    lo, hi = intensity_window(mr, mask)
    assert 0 < lo < 120 and 800 < hi < 880
    dark = _image(mask, 50.0, 300.0, 5.0)   # black-blood: lumen darker than the wall
    lo, hi = intensity_window(dark, mask)
    assert lo < 50 and hi > 300
    lo, hi = intensity_window(mask.with_array(np.full(SHAPE, 7.0)), mask)
    assert lo < 7.0 < hi


# ----------------------------------------------------------------------------- figures
def test_straight_tube_ct(tmp_path):
    mask, lines = _tube(STRAIGHT, 4.0)
    hu = _image(mask, 400.0, 40.0, 15.0)
    ct = hu.with_array(np.round(hu.array).astype(np.int16))   # CT as stored: int16 HU
    caps = [{"name": "inlet", "centre_xyz_mm": (13.0, 3.0, -9.0), "normal_xyz": (0, 0, -1), "radius_mm": 4.0},
            {"name": "outlet1", "centre_xyz_mm": (13.0, 3.0, 23.5), "normal_xyz": (0, 0, 2), "radius_mm": 4.0}]
    out = check_figure(ct, mask, tmp_path / "check.png", centrelines=lines, caps=caps, title="straight tube")
    assert out == tmp_path / "check.png"
    _check_png(out)


def test_y_tube_mr_with_oblique_caps(tmp_path):
    mask, lines = _tube(Y_SHAPE, 3.0)
    mr = mask.with_array(np.abs(_image(mask, 800.0, 120.0, 30.0).array))
    caps = []
    for name, (a, b) in zip(("inlet", "outlet1", "outlet2"), [(Y_SHAPE[0][1], Y_SHAPE[0][0]), Y_SHAPE[1], Y_SHAPE[2]]):
        a, b = np.asarray(a), np.asarray(b)
        caps.append({"name": name, "centre_xyz_mm": b, "normal_xyz": b - a, "radius_mm": 3.0})
    caps.append(SimpleNamespace(name="wall_cap", centre_xyz_mm=(13.0, 6.0, 0.0), normal_xyz=(0, 1, 0), radius_mm=1.0))
    out = check_figure(mr, mask, tmp_path / "sub" / "y.png", centrelines=lines, caps=caps,
                       centre_xyz_mm=caps[0]["centre_xyz_mm"])
    _check_png(out)
    # no overlays at all still draws the slices and the lumen contour
    _check_png(check_figure(mr, mask, tmp_path / "bare.png"))


def test_bad_input(tmp_path):
    mask, lines = _tube(STRAIGHT, 4.0)
    img = _image(mask, 400.0, 40.0, 15.0)
    png = tmp_path / "x.png"
    with pytest.raises(TypeError, match="image must be a pipeline.image.Volume"):
        check_figure(img.array, mask, png)
    with pytest.raises(ValueError, match="one shape"):
        check_figure(img, Volume(np.ones((4, 5, 6)), SPACING, ORIGIN, LPS_MRA), png)
    with pytest.raises(ValueError, match="same grid"):
        check_figure(img, Volume(mask.array, SPACING, ORIGIN), png)
    with pytest.raises(ValueError, match="mask is empty"):
        check_figure(img, mask.with_array(np.zeros(SHAPE)), png)
    with pytest.raises(ValueError, match=r"centrelines\[0\] must have shape \(N, 3\)"):
        check_figure(img, mask, png, centrelines=[np.zeros((5, 2))])
    with pytest.raises(ValueError, match=r"pass \[points\]"):
        check_figure(img, mask, png, centrelines=lines[0])
    with pytest.raises(ValueError, match="non-finite"):
        check_figure(img, mask, png, centrelines=[np.full((3, 3), np.nan)])
    good = {"name": "inlet", "centre_xyz_mm": (13, 3, -9), "normal_xyz": (0, 0, -1), "radius_mm": 4.0}
    with pytest.raises(ValueError, match="has no 'radius_mm'"):
        check_figure(img, mask, png, caps=[{k: v for k, v in good.items() if k != "radius_mm"}])
    with pytest.raises(ValueError, match="radius_mm must be a positive"):
        check_figure(img, mask, png, caps=[{**good, "radius_mm": 0.0}])
    with pytest.raises(ValueError, match="normal_xyz must be 3 finite"):
        check_figure(img, mask, png, caps=[{**good, "normal_xyz": (0, 0, 0)}])
    with pytest.raises(ValueError, match="must end in .png"):
        check_figure(img, mask, tmp_path / "x.pdf")
    with pytest.raises(ValueError, match="centre_xyz_mm must be 3 finite"):
        check_figure(img, mask, png, centre_xyz_mm=(1.0, 2.0))
    assert not list(tmp_path.iterdir())   # nothing written by a refused call
